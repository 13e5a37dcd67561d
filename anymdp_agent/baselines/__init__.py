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
``mbrl:known=transitions|rewards|both`` is the planner's known-model ablation (it reads the true model);
``mbrl:prior=bundled`` (or the folder of a trained prior) is the planner with a learned prior over next
observations (:mod:`.transition_prior`), which reads only the history.
"""

from __future__ import annotations

import inspect
import math

from .model_based import ModelBasedPlanner
from .protocol import EnvSpec, InContextLearner, Transition
from .qlearning import TabularQLearner, UCBQLearner
from .reference import OracleLearner, RandomLearner

LEARNERS = {cls.name: cls for cls in (OracleLearner, RandomLearner, TabularQLearner, UCBQLearner, ModelBasedPlanner)}


def _parse_option(spec: str, key: str, text: str, default):
    """An option's text as the type of the constructor's default (``int`` or ``float``), or a clear error."""
    kind = type(default)
    try:
        value = kind(text) if kind in (int, float) else text
    except ValueError:
        raise ValueError(f"learner {spec!r}: {key} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"learner {spec!r}: {key} must be a finite number, got {text!r}")
    return value


def make_learner(spec: str, dry_run: bool = False) -> InContextLearner | None:
    """Build a learner from ``name`` or ``name:key=value:...``; a clear ``ValueError`` for anything unknown.

    Each value is read as the type of the option's default (``sweeps=2`` an int, ``alpha=0.3`` a float)."""
    name, _, args = spec.partition(":")
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; choose from {', '.join(LEARNERS)}")
    params = {k: p.default for k, p in inspect.signature(LEARNERS[name]).parameters.items()
              if p.default is not inspect.Parameter.empty}
    kwargs = {}
    for item in filter(None, args.split(":")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"learner option {item!r} in {spec!r} is not of the form key=value")
        key = key.strip()
        if key not in params:
            raise ValueError(f"learner {spec!r}: unknown option {key!r}; {name} takes "
                             f"{', '.join(params) or 'no options'}")
        kwargs[key] = _parse_option(spec, key, value.strip(), params[key])
    try:
        learner = LEARNERS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad options for learner {name!r}: {e}") from e
    return None if dry_run else learner


__all__ = ["EnvSpec", "InContextLearner", "LEARNERS", "ModelBasedPlanner", "OracleLearner", "RandomLearner",
           "TabularQLearner", "Transition", "UCBQLearner", "make_learner"]
