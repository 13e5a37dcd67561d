"""The peer's (``xenoverse``) AnyMDP tasks as this package's :class:`~anymdp_agent.envs.Task`."""

from __future__ import annotations

import math

import numpy as np

from anymdp_agent.envs import Task


def peer_to_task(d: dict, seed: int) -> Task:
    """The peer's task dict as our ``Task`` (chain space), so one code computes both sides' statistics and one
    harness runs learners on both sides' tasks."""
    n = d["transition"].shape[0]
    start = np.zeros(n)
    start[np.asarray(d["s_0"], dtype=np.int64)] = d["s_0_prob"]
    terminal = np.zeros(n, dtype=bool)
    terminal[np.asarray(d["s_e"], dtype=np.int64)] = True
    reward_std = np.broadcast_to(d["reward_noise"], d["transition"].shape)
    # The peer truncates when steps >= its float cap, i.e. after ceil(cap) steps.
    return Task(transition=d["transition"], reward=d["reward"], reward_std=reward_std, start=start,
                terminal=terminal, state_mapping=d["state_mapping"], n_states=d["ns"],
                max_steps=int(math.ceil(d["max_steps"])), kind="anymdp", seed=seed, version="xenoverse")
