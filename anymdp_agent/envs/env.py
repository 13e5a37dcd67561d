"""``AnyMDPEnv``: one tabular task (AnyMDP, Garnet, bandit) behind the Gymnasium 1.x API."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .dynamics import TabularDynamics
from .seeds import check_seed
from .task import Task


class AnyMDPEnv(gym.Env):
    """A :class:`~anymdp_agent.envs.task.Task` as a Gymnasium environment.

    The task is a constructor argument, so the spaces are fixed at construction (``Discrete(n_states)``
    observations, ``Discrete(n_actions)`` actions) and ``check_env`` holds. ``reset(seed=s)`` makes
    the episodes that follow reproducible (a later ``reset()`` without a seed continues the same
    stream); ``terminated`` on entering a terminal state, ``truncated`` at ``task.max_steps``.
    ``info`` carries ``reward_mean`` (the noiseless reward of the transition) and ``state`` (the
    hidden chain index, for oracles and labels; an agent must not read it).

    Unlike the reference, the seed is honoured, the episode cap is the task's integer, and nothing
    is injected after construction.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, task: Task, render_mode: str | None = None):
        if not isinstance(task, Task):
            raise TypeError(f"AnyMDPEnv takes a Task (e.g. sample_anymdp_task(16, seed=0)), got {type(task).__name__}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.task = task
        self.render_mode = render_mode
        self.observation_space = spaces.Discrete(task.n_states)
        self.action_space = spaces.Discrete(task.n_actions)
        self._dyn = TabularDynamics([task])
        self._idx = np.zeros(1, dtype=np.int64)
        self._seeded = False
        self._needs_reset = True
        self._last = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            seed = check_seed(seed)
        super().reset(seed=seed)
        if seed is not None:
            self._dyn.seed([seed])
            self._seeded = True
        elif not self._seeded:
            self._dyn.seed([int(self.np_random.integers(2**62))])
            self._seeded = True
        obs = int(self._dyn.reset(self._idx)[0])
        self._needs_reset = False
        self._last = None
        return obs, {"state": int(self._dyn.state[0])}

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("call reset() before step(): the episode has ended or never started")
        action = np.asarray(action)
        if action.size != 1:
            raise ValueError(f"action must be a single integer in 0..{self.task.n_actions - 1}, got shape {action.shape}")
        a = self._dyn.check_actions(action.reshape(1), self._idx)
        obs, reward, mean, terminated, truncated = self._dyn.step(a, self._idx)
        term, trunc = bool(terminated[0]), bool(truncated[0])
        self._needs_reset = term or trunc
        self._last = (int(a[0]), float(reward[0]))
        info = {"reward_mean": float(mean[0]), "state": int(self._dyn.state[0])}
        return int(obs[0]), float(reward[0]), term, trunc, info

    @property
    def state(self) -> int:
        """The hidden chain index of the current state."""
        return int(self._dyn.state[0])

    @property
    def elapsed_steps(self) -> int:
        return int(self._dyn.elapsed[0])

    def render(self):
        if self.render_mode != "ansi":
            return None
        obs = int(self.task.state_mapping[self.state])
        last = "" if self._last is None else f" after action {self._last[0]} (reward {self._last[1]:+.3f})"
        return (f"step {self.elapsed_steps}/{self.task.max_steps}: observation {obs} "
                f"(chain state {self.state} of {self.task.n_active}){last}")
