"""Two classic tabular families from the exploration literature, as :class:`Task` objects (``docs/anymdp.md``
section 7). Nothing in training draws from them: they are families the agent never saw.

- :func:`sample_riverswim_task`: RiverSwim (Strehl and Littman, 2008), the standard test of *deep* exploration.
  A small reward sits one step away at the bank; the large one is far upstream, behind moves that mostly fail.
- :func:`sample_dirichlet_task`: dense random MDPs, every row a draw from a symmetric Dirichlet over all states
  (``alpha`` 1 is uniform on the simplex; small ``alpha`` gives a few likely successors).
"""

from __future__ import annotations

import numbers

import numpy as np

from .anymdp import check_seed, check_sizes, episode_cap
from .task import Task

RIVERSWIM_VERSION = "riverswim-1"
DIRICHLET_VERSION = "dirichlet-1"

#: The fewest states RiverSwim is defined for: the bank, one stretch of river, the far end.
RIVERSWIM_MIN_STATES = 3


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value > 0 and np.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def sample_riverswim_task(n_states: int = 6, n_actions: int = 2, *, seed: int, max_steps: int = 40,
                          bank_reward: float = 0.005, far_reward: float = 1.0) -> Task:
    """RiverSwim as an episodic task of ``max_steps`` steps, with rewards scaled as in Osband et al. (2013).

    A chain of ``n_states`` states; the episode starts in state 0 or 1 with equal probability. At every state
    one action, drawn from the seed (the agent cannot tell which), *swims upstream*: at state 0 it moves on with
    probability 0.6 and stays with 0.4; in between it moves on with 0.35, stays with 0.6 and drifts back with
    0.05; at the far end it stays with 0.6 and drifts back with 0.4, earning ``far_reward`` when it stays. Every
    other action *swims downstream*: one state back, surely; at state 0 it earns ``bank_reward``. Observation ids
    are a permutation of the states. The oracle swims upstream all the way; a learner that trusts its first few
    upstream moves settles for the bank.
    """
    check_sizes(n_states, n_actions, minimum=RIVERSWIM_MIN_STATES)
    seed = check_seed(seed)
    if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    bank_reward, far_reward = _positive("bank_reward", bank_reward), _positive("far_reward", far_reward)
    rng = np.random.default_rng(seed)
    n = n_states
    upstream = rng.integers(0, n_actions, size=n)
    transition = np.zeros((n, n_actions, n))
    reward = np.zeros((n, n_actions, n))
    for s in range(n):
        transition[s, :, max(s - 1, 0)] = 1.0  # downstream: every action but the upstream one
        up = transition[s, upstream[s]]
        up[:] = 0.0
        if s == 0:
            up[0], up[1] = 0.4, 0.6
        elif s == n - 1:
            up[s], up[s - 1] = 0.6, 0.4
            reward[s, upstream[s], s] = far_reward
        else:
            up[s + 1], up[s], up[s - 1] = 0.35, 0.6, 0.05
    downstream = np.arange(n_actions) != upstream[0]
    reward[0, downstream, 0] = bank_reward
    start = np.zeros(n)
    start[:2] = 0.5
    return Task(transition=transition, reward=reward, reward_std=np.zeros_like(reward), start=start,
                terminal=np.zeros(n, dtype=bool), state_mapping=rng.permutation(n), n_states=n,
                max_steps=int(max_steps), kind="riverswim", seed=seed, version=RIVERSWIM_VERSION,
                meta={"upstream": upstream.tolist(), "bank_reward": bank_reward, "far_reward": far_reward})


def sample_dirichlet_task(n_states: int, n_actions: int = 5, *, seed: int, alpha: float = 1.0,
                          reward_std: float = 0.3) -> Task:
    """A dense random MDP: every row ``P(. | s, a) ~ Dirichlet(alpha, ..., alpha)`` over all ``n_states`` states.

    The mean reward ``R(s, a) ~ N(0, 1)`` is the same whatever the next state, observed with Gaussian noise of
    std ``reward_std``; the episode starts uniformly at random, has no terminal states and AnyMDP's episode cap.
    Unlike AnyMDP there is no chain: any state may follow any other.
    """
    check_sizes(n_states, n_actions)
    seed = check_seed(seed)
    alpha = _positive("alpha", alpha)
    if isinstance(reward_std, bool) or not isinstance(reward_std, numbers.Real) or not reward_std >= 0:
        raise ValueError(f"reward_std must be a number >= 0, got {reward_std!r}")
    rng = np.random.default_rng(seed)
    n = n_states
    transition = rng.dirichlet(np.full(n, alpha), size=(n, n_actions))
    transition /= transition.sum(-1, keepdims=True)  # tiny alpha can leave rows a rounding error off 1
    reward = np.repeat(rng.normal(size=(n, n_actions, 1)), n, axis=-1)
    return Task(transition=transition, reward=reward, reward_std=np.full_like(reward, float(reward_std)),
                start=np.full(n, 1.0 / n), terminal=np.zeros(n, dtype=bool), state_mapping=rng.permutation(n),
                n_states=n, max_steps=episode_cap(rng, n), kind="dirichlet", seed=seed, version=DIRICHLET_VERSION,
                meta={"alpha": alpha, "reward_std": float(reward_std)})


__all__ = ["DIRICHLET_VERSION", "RIVERSWIM_MIN_STATES", "RIVERSWIM_VERSION", "sample_dirichlet_task",
           "sample_riverswim_task"]
