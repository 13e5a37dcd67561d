"""Behaviour policies and the corpus builder: sequences of behaviour on AnyMDP tasks with step-wise labels."""

from .behaviours import BEHAVIOURS, DEFAULT_WEIGHTS, TAGS, BehaviourMixture, MixtureConfig
from .corpus import (
    LABEL_KINDS,
    ORACLE_PROMPTS,
    PLANNER_PROMPT,
    CorpusConfig,
    check_corpus_features,
    corpus_features,
    generate_corpus,
    generate_shard,
    roll_sequences,
)

__all__ = ["BEHAVIOURS", "DEFAULT_WEIGHTS", "LABEL_KINDS", "ORACLE_PROMPTS", "PLANNER_PROMPT", "TAGS",
           "BehaviourMixture", "CorpusConfig", "MixtureConfig", "check_corpus_features", "corpus_features",
           "generate_corpus", "generate_shard", "roll_sequences"]
