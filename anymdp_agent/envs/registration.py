"""Gymnasium registration: ``gym.make("anymdp_agent/AnyMDP-v0", n_states=16, seed=3)`` and friends."""

from __future__ import annotations

import gymnasium as gym

from .anymdp import sample_anymdp_task
from .env import AnyMDPEnv
from .garnet import sample_garnet_task
from .vector_env import BatchedAnyMDPEnv

ANYMDP_ID = "anymdp_agent/AnyMDP-v0"
GARNET_ID = "anymdp_agent/Garnet-v0"


def make_anymdp_env(n_states: int = 16, n_actions: int = 5, seed: int = 0, render_mode=None, **sampler_kwargs) -> AnyMDPEnv:
    """The AnyMDP task named by ``seed`` (a *task* seed; episodes are seeded by ``reset(seed=)``)."""
    return AnyMDPEnv(sample_anymdp_task(n_states, n_actions, seed=seed, **sampler_kwargs), render_mode=render_mode)


def make_garnet_env(n_states: int = 16, n_actions: int = 5, seed: int = 0, render_mode=None, **sampler_kwargs) -> AnyMDPEnv:
    """The Garnet task named by ``seed``."""
    return AnyMDPEnv(sample_garnet_task(n_states, n_actions, seed=seed, **sampler_kwargs), render_mode=render_mode)


def make_anymdp_vector_env(num_envs: int = 1, n_states: int = 16, n_actions: int = 5, seed: int = 0,
                           autoreset_mode=None, **sampler_kwargs) -> BatchedAnyMDPEnv:
    """``num_envs`` AnyMDP tasks with task seeds ``seed, seed + 1, ...`` in one :class:`BatchedAnyMDPEnv`."""
    tasks = [sample_anymdp_task(n_states, n_actions, seed=seed + i, **sampler_kwargs) for i in range(num_envs)]
    kwargs = {} if autoreset_mode is None else {"autoreset_mode": autoreset_mode}
    return BatchedAnyMDPEnv(tasks, **kwargs)


def register_envs() -> None:
    """Register the environments with Gymnasium (idempotent)."""
    if ANYMDP_ID not in gym.registry:
        gym.register(ANYMDP_ID, entry_point=make_anymdp_env, vector_entry_point=make_anymdp_vector_env,
                     kwargs={"n_states": 16, "n_actions": 5, "seed": 0})
    if GARNET_ID not in gym.registry:
        gym.register(GARNET_ID, entry_point=make_garnet_env, kwargs={"n_states": 16, "n_actions": 5, "seed": 0})
