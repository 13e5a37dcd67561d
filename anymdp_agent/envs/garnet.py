"""Contrast samplers: Garnet MDPs and multi-armed bandits (``docs/anymdp.md`` section 7), as :class:`Task` objects."""

from __future__ import annotations

import numbers

import numpy as np

from .anymdp import check_seed, check_sizes, episode_cap
from .task import Task

GARNET_VERSION = "garnet-1"
BANDIT_VERSION = "bandit-2"


def sample_garnet_task(
    n_states: int,
    n_actions: int = 5,
    *,
    seed: int,
    min_states: int | None = None,
    branching: int = 2,
    reward_std: float = 0.1,
) -> Task:
    """A Garnet MDP: each ``(s, a)`` leads to ``branching`` random successors with random probabilities.

    Rewards ``R(s, a, s') ~ N(0, reward_std)`` are fixed per triple (observed without noise), the
    episode starts in chain state 0 and has no terminals; the episode cap follows AnyMDP's rule.
    """
    check_sizes(n_states, n_actions, min_states)
    seed = check_seed(seed)
    if isinstance(branching, bool) or not isinstance(branching, numbers.Integral) or branching < 1:
        raise ValueError(f"branching must be a positive integer, got {branching!r}")
    if not reward_std >= 0:
        raise ValueError(f"reward_std must be >= 0, got {reward_std!r}")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(min_states, n_states + 1)) if min_states is not None else n_states
    if branching > n:
        raise ValueError(f"branching={branching} exceeds the {n} states")
    mapping = rng.permutation(n_states)[:n]
    max_steps = episode_cap(rng, n)
    successors = np.argsort(rng.random((n, n_actions, n)), axis=-1)[..., :branching]
    # A uniform random partition of 1 into `branching` parts (sorted uniforms' gaps).
    cuts = np.sort(rng.random((n, n_actions, branching - 1)), axis=-1)
    probs = np.diff(np.concatenate([np.zeros((n, n_actions, 1)), cuts, np.ones((n, n_actions, 1))], -1), axis=-1)
    transition = np.zeros((n, n_actions, n))
    np.put_along_axis(transition, successors, probs, axis=-1)
    transition /= transition.sum(-1, keepdims=True)
    reward = rng.normal(size=(n, n_actions, n)) * reward_std
    start = np.zeros(n)
    start[0] = 1.0
    return Task(transition=transition, reward=reward, reward_std=np.zeros_like(reward), start=start,
                terminal=np.zeros(n, dtype=bool), state_mapping=mapping, n_states=n_states, max_steps=max_steps,
                kind="garnet", seed=seed, version=GARNET_VERSION,
                meta={"branching": int(branching), "reward_std": float(reward_std)})


def sample_bandit_task(n_actions: int = 5, *, seed: int) -> Task:
    """A multi-armed bandit: one pull per episode.

    Arm means ``U(base/2, base)`` with ``base = clip(Exp(1), 0.05, 2)`` (redrawn until the arms
    differ, std > 0.01), noise std ``max(U(-0.3, 0.3), 0) * mean``. The pull moves from the start
    state (observation 0) into a terminal state (observation 1), so the episode *terminates* after
    one step, as a bandit's does (the documented one-state bandit plus the state that marks the end).
    """
    check_sizes(8, n_actions)
    seed = check_seed(seed)
    rng = np.random.default_rng(seed)
    base = float(np.clip(rng.exponential(1.0), 0.05, 2.0))
    noise = max(rng.uniform(-0.3, 0.3), 0.0)
    while True:
        means = rng.uniform(0.5 * base, base, size=n_actions)
        if means.std() > 0.01:
            break
    transition = np.zeros((2, n_actions, 2))
    transition[0, :, 1] = 1.0
    reward = np.zeros((2, n_actions, 2))
    reward[0, :, 1] = means
    return Task(transition=transition, reward=reward, reward_std=noise * reward, start=np.array([1.0, 0.0]),
                terminal=np.array([False, True]), state_mapping=np.arange(2), n_states=2, max_steps=1,
                kind="bandit", seed=seed, version=BANDIT_VERSION, meta={"base": base})
