"""Gymnasium environments with ``Discrete`` spaces: their transition tables as :class:`Task` objects.

Toy-text environments (FrozenLake, CliffWalking, Taxi, ...) publish their model as ``env.unwrapped.P``
(``P[s][a] = [(prob, next_state, reward, terminated), ...]``). :func:`task_from_gym` turns it into a
Task so the exact solvers give the oracle's and random policy's expected returns for the normalised
score; the environment itself is still stepped by Gymnasium (see :func:`make_gym_vector_env`).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from .task import Task

#: Episode cap for registered environments that have none (CliffWalking): the oracle needs ~13 steps.
DEFAULT_MAX_STEPS = 200


def check_discrete(env: gym.Env, env_id: str) -> tuple[int, int]:
    """The (observations, actions) counts of an env with ``Discrete`` spaces, or a clear error."""
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, spaces.Discrete) or not isinstance(act, spaces.Discrete):
        raise ValueError(f"{env_id} has observation space {obs} and action space {act}; only environments "
                         "with Discrete observations and actions can be used here")
    if obs.start != 0 or act.start != 0:
        raise ValueError(f"{env_id}: Discrete spaces must start at 0")
    return int(obs.n), int(act.n)


def episode_limit(env_id: str, max_steps: int | None = None) -> int:
    """The episode cap of a registered env: ``max_steps`` if given, else its spec's, else the default."""
    if max_steps is not None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        return int(max_steps)
    spec_steps = gym.spec(env_id).max_episode_steps
    return int(spec_steps) if spec_steps else DEFAULT_MAX_STEPS


def task_from_gym(env_id: str, max_steps: int | None = None, **make_kwargs) -> Task | None:
    """The Task of a registered env's transition table, or ``None`` if it publishes none.

    A state is terminal if entering it terminates the episode; the start distribution is the env's
    ``initial_state_distrib`` (or a point mass at the state ``reset`` returns).
    """
    env = gym.make(env_id, **make_kwargs)
    n, na = check_discrete(env, env_id)
    table = getattr(env.unwrapped, "P", None)
    if table is None:
        env.close()
        return None
    transition = np.zeros((n, na, n))
    reward_sum = np.zeros((n, na, n))
    ends = np.zeros((n, na, n))  # probability of entering s' *and* terminating
    for s in range(n):
        for a in range(na):
            for prob, s2, r, done in table[s][a]:
                transition[s, a, s2] += prob
                reward_sum[s, a, s2] += prob * r
                ends[s, a, s2] += prob * bool(done)
    reward = np.divide(reward_sum, transition, out=np.zeros_like(reward_sum), where=transition > 0)
    start = getattr(env.unwrapped, "initial_state_distrib", None)
    if start is None:
        obs, _ = env.reset(seed=0)
        start = np.eye(n)[int(obs)]
    env.close()
    start = np.asarray(start, dtype=np.float64)
    terminal = _terminal_states(env_id, transition, ends, start)
    transition[terminal] = 0.0
    reward[terminal] = 0.0
    return Task(transition=transition, reward=reward, reward_std=np.zeros_like(reward), start=start / start.sum(),
                terminal=terminal, state_mapping=np.arange(n), n_states=n,
                max_steps=episode_limit(env_id, max_steps), kind="gym",
                version=f"gym:{env_id}", meta={"env_id": env_id, **make_kwargs})


def _terminal_states(env_id: str, transition: np.ndarray, ends: np.ndarray, start: np.ndarray) -> np.ndarray:
    """States whose entry ends the episode, judged on the transitions out of *reachable* states.

    Tables often hold states no episode can reach (Taxi's passenger already at the destination);
    what happens on entering a state from those does not matter, so only reachable ones are read.
    """
    n = len(start)
    moves = transition - ends  # probability of entering s' and going on
    reachable = start > 0
    frontier = reachable.copy()
    while frontier.any():
        nxt = (moves[frontier] > 0).any(axis=(0, 1)) & ~reachable
        reachable |= nxt
        frontier = nxt
    from_reachable = transition[reachable] > 0
    stops = (ends[reachable] > 0) & from_reachable
    goes = (moves[reachable] > 1e-12) & from_reachable
    terminal = stops.any(axis=(0, 1))
    conflict = terminal & goes.any(axis=(0, 1))
    if conflict.any():
        raise ValueError(f"{env_id}: entering state {int(np.flatnonzero(conflict)[0])} terminates on some transitions "
                         "and not on others, which a per-state terminal mask cannot express")
    return terminal


def make_gym_vector_env(env_id: str, num_envs: int, max_steps: int | None = None, **make_kwargs) -> SyncVectorEnv:
    """``num_envs`` copies of a registered env, capped at ``max_steps``, autoreset in the same step."""
    limit = episode_limit(env_id, max_steps)

    def make():
        return gym.make(env_id, max_episode_steps=limit, **make_kwargs)

    probe = make()
    check_discrete(probe, env_id)
    probe.close()
    return SyncVectorEnv([make] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
