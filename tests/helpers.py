"""Helpers shared by the test modules: hand-built tasks with known structure."""

from __future__ import annotations

import numpy as np

from anymdp_agent.envs import Task


def make_task(transition, reward, start, terminal, max_steps, reward_std=None, n_states=None, mapping=None):
    """A hand-built :class:`Task` in chain space (identity observation mapping unless given)."""
    transition = np.asarray(transition, dtype=float)
    n = transition.shape[0]
    reward = np.broadcast_to(np.asarray(reward, dtype=float), transition.shape)
    std = np.zeros_like(transition) if reward_std is None else np.broadcast_to(reward_std, transition.shape)
    return Task(transition=transition, reward=reward, reward_std=std, start=start, terminal=terminal,
                state_mapping=np.arange(n) if mapping is None else mapping,
                n_states=n if n_states is None else n_states, max_steps=max_steps, kind="gym")


def three_action_task(max_steps: int = 20) -> Task:
    """A 4-state, 3-action task with one terminal state: smaller action set than the samplers' default 5."""
    t = np.zeros((4, 3, 4))
    t[0, 0] = [0.2, 0.8, 0.0, 0.0]
    t[0, 1] = [0.5, 0.0, 0.5, 0.0]
    t[0, 2] = [1.0, 0.0, 0.0, 0.0]
    t[1, 0] = [0.0, 0.1, 0.6, 0.3]
    t[1, 1] = [0.7, 0.3, 0.0, 0.0]
    t[1, 2] = [0.0, 0.0, 0.0, 1.0]
    t[2, 0] = [0.3, 0.3, 0.4, 0.0]
    t[2, 1] = [0.0, 0.0, 0.5, 0.5]
    t[2, 2] = [0.0, 1.0, 0.0, 0.0]
    # state 3 is terminal: zero rows
    r = np.zeros((4, 3, 4))
    r[:, :, 1] = 0.5
    r[:, :, 2] = 1.0
    r[:, :, 3] = -2.0
    r[1, 2, :] -= 0.25
    return make_task(t, r, start=[0.6, 0.4, 0.0, 0.0], terminal=[False, False, False, True], max_steps=max_steps,
                     reward_std=0.1 * np.ones((4, 3, 4)), n_states=6, mapping=np.array([5, 0, 3, 2]))
