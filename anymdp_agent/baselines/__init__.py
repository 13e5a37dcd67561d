"""In-context tabular learners, batched over environments: they start knowing nothing about their task.

========  ============================================================================
name      learner
========  ============================================================================
oracle    value iteration on the true model (scores 1 in expectation)
random    uniform random actions (scores 0 in expectation)
tql       tabular Q-learning with the reference's defaults (optimistic init, Boltzmann)
ucbq      Q-learning with a UCB-H style bonus
mbrl      count-based model-based planner (empirical model + optimism + value iteration)
========  ============================================================================

A learner is named ``name`` or ``name:key=value:key=value`` (e.g. ``mbrl:sweeps=10:gamma=0.95``).
"""

from __future__ import annotations

from .model_based import ModelBasedPlanner
from .protocol import EnvSpec, InContextLearner, Transition
from .qlearning import TabularQLearner, UCBQLearner
from .reference import OracleLearner, RandomLearner

LEARNERS = {cls.name: cls for cls in (OracleLearner, RandomLearner, TabularQLearner, UCBQLearner, ModelBasedPlanner)}


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def make_learner(spec: str, dry_run: bool = False) -> InContextLearner | None:
    """Build a learner from ``name`` or ``name:key=value:...``; a clear ``ValueError`` for anything unknown."""
    name, _, args = spec.partition(":")
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; choose from {', '.join(LEARNERS)}")
    kwargs = {}
    for item in filter(None, args.split(":")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"learner option {item!r} in {spec!r} is not of the form key=value")
        kwargs[key.strip()] = _parse_value(value.strip())
    try:
        learner = LEARNERS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad options for learner {name!r}: {e}") from e
    return None if dry_run else learner


__all__ = ["EnvSpec", "InContextLearner", "LEARNERS", "ModelBasedPlanner", "OracleLearner", "RandomLearner",
           "TabularQLearner", "Transition", "UCBQLearner", "make_learner"]
