"""``BatchedAnyMDPEnv``: ``B`` independent tabular tasks stepped at once (one compiled loop), as a Gymnasium ``VectorEnv``.

This is the engine of corpus generation and evaluation. Tasks of different sizes are padded to a
common observation space (``Discrete(max n_states)``) and action space (``Discrete(max n_actions)``;
an action a task does not have is an error). Environment ``i`` reset with ``seed=s`` draws exactly
what ``AnyMDPEnv(tasks[i]).reset(seed=s + i)`` draws, step for step, including across autoresets
(the single env's next ``reset()`` without a seed).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .dynamics import TabularDynamics
from .seeds import check_seed
from .task import Task, TaskBatch


class BatchedAnyMDPEnv(VectorEnv):
    """A vector environment over a list of :class:`Task` (or a :class:`TaskBatch`).

    Args:
        tasks: the tasks, one per environment.
        autoreset_mode: Gymnasium's ``AutoresetMode`` (``NEXT_STEP``, the default, ``SAME_STEP`` or
            ``DISABLED``). With ``NEXT_STEP`` the step after an episode's end resets that environment
            (its action is ignored, reward 0); with ``SAME_STEP`` the reset observation is returned
            at once and the final one is in ``info["final_obs"]``; with ``DISABLED`` ended
            environments must be reset with ``reset(options={"reset_mask": mask})``.

    ``info`` holds ``reward_mean`` (noiseless rewards) and ``state`` (hidden chain indices, for
    labels and oracles) as ``[B]`` arrays; the step counts of the episodes are in ``elapsed_steps``.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, tasks: Sequence[Task] | TaskBatch, autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP):
        if isinstance(tasks, Task):
            tasks = [tasks]
        mode = AutoresetMode(autoreset_mode) if isinstance(autoreset_mode, str) else autoreset_mode
        if not isinstance(mode, AutoresetMode):
            raise ValueError(f"autoreset_mode must be a gymnasium AutoresetMode, got {autoreset_mode!r}")
        self._dyn = TabularDynamics(tasks)
        self.tasks = self._dyn.batch.tasks
        self.num_envs = self._dyn.num_envs
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.autoreset_mode = mode
        self.single_observation_space = spaces.Discrete(self._dyn.batch.n_states)
        self.single_action_space = spaces.Discrete(self._dyn.na)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._all = np.arange(self.num_envs)
        self._ended = np.ones(self.num_envs, dtype=bool)
        self._obs = np.zeros(self.num_envs, dtype=np.int64)
        self._never_reset = np.ones(self.num_envs, dtype=bool)  # step() refuses these, as AnyMDPEnv does
        self._seeded = False

    @property
    def batch(self) -> TaskBatch:
        return self._dyn.batch

    @property
    def state(self) -> np.ndarray:
        """Hidden chain indices ``[B]`` of the current states (a copy)."""
        return self._dyn.state.copy()

    @property
    def elapsed_steps(self) -> np.ndarray:
        return self._dyn.elapsed.copy()

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        """Reset all environments (or those in ``options["reset_mask"]``); ``seed`` an int or one per env."""
        mask = None if not options or "reset_mask" not in options else np.asarray(options["reset_mask"], dtype=bool)
        if mask is not None and mask.shape != (self.num_envs,):
            raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},)")
        idx = self._all if mask is None else np.flatnonzero(mask)
        if seed is not None:
            if isinstance(seed, (str, bytes)) or np.ndim(seed) == 0:
                first = check_seed(seed, count=self.num_envs)
                seeds = np.arange(first, first + self.num_envs, dtype=np.int64)
            else:
                if len(seed) != self.num_envs:
                    raise ValueError(f"seed must be an int or a list of {self.num_envs} ints, got {len(seed)}")
                seeds = np.array([check_seed(s, name=f"seed[{i}]") for i, s in enumerate(seed)], dtype=np.int64)
            self._np_random_seed = int(seeds[0])
            self._dyn.seed(seeds[idx], idx)
            self._seeded = True
        elif not self._seeded:
            self._dyn.seed(self.np_random.integers(2**62, size=self.num_envs))
            self._seeded = True
        self._obs[idx] = self._dyn.reset(idx)
        self._ended[idx] = False
        self._never_reset[idx] = False
        return self._obs.copy(), {"state": self._dyn.state.copy()}

    def step(self, actions):
        if self._never_reset.any():
            raise RuntimeError(f"call reset() before step(): environments {np.flatnonzero(self._never_reset)[:8].tolist()} "
                               "were never reset")
        b = self.num_envs
        reward = np.zeros(b)
        mean = np.zeros(b)
        terminated = np.zeros(b, dtype=bool)
        truncated = np.zeros(b, dtype=bool)
        info = {}
        actions = np.asarray(actions)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            restart = np.flatnonzero(self._ended)
            live = np.flatnonzero(~self._ended)
            if len(restart):
                self._obs[restart] = self._dyn.reset(restart)
                self._ended[restart] = False
        else:
            if self.autoreset_mode == AutoresetMode.DISABLED and self._ended.any():
                raise RuntimeError(f"environments {np.flatnonzero(self._ended)[:8].tolist()} have ended: reset them "
                                   "with reset(options={'reset_mask': mask}) (autoreset is disabled)")
            live = self._all
        if actions.shape != (b,):
            raise ValueError(f"expected one action per environment, shape ({b},), got {actions.shape}")
        a = self._dyn.check_actions(actions[live], live)
        obs, reward[live], mean[live], terminated[live], truncated[live] = self._dyn.step(a, live)
        self._obs[live] = obs
        self._ended[live] = terminated[live] | truncated[live]
        info["reward_mean"] = mean
        if self.autoreset_mode == AutoresetMode.SAME_STEP and self._ended.any():
            done = np.flatnonzero(self._ended)
            info["final_obs"] = self._obs.copy()
            info["_final_obs"] = self._ended.copy()
            self._obs[done] = self._dyn.reset(done)
            self._ended[done] = False
        info["state"] = self._dyn.state.copy()
        return self._obs.copy(), reward, terminated, truncated, info


def final_observations(next_obs: np.ndarray, info: dict, done: np.ndarray) -> np.ndarray:
    """Where an episode ended and the env autoreset in the same step, the observation it ended in."""
    final = np.array(next_obs, dtype=np.int64, copy=True)
    if done.any() and "final_obs" in info:
        mask = np.asarray(info.get("_final_obs", done), dtype=bool)
        final[mask] = np.asarray(info["final_obs"][mask]).astype(np.int64)
    return final
