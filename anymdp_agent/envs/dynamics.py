"""The one step function of every environment here: ``B`` tabular tasks advanced at once in numpy.

:class:`~anymdp_agent.envs.AnyMDPEnv` is this with ``B = 1``; :class:`~anymdp_agent.envs.BatchedAnyMDPEnv`
wraps it for ``B`` up to tens of thousands. Sharing the code (and the counter-based random streams
of :mod:`.random_stream`) is what makes the two agree step for step.
"""

from __future__ import annotations

import numpy as np

from .random_stream import keys_from_seeds, standard_normal, uniforms
from .task import Task, TaskBatch, stack_tasks

#: Random draws consumed per step (next state, two for the reward noise) and per reset (start state).
DRAWS_PER_STEP = 3
DRAWS_PER_RESET = 1


class TabularDynamics:
    """Sampling state for ``B`` tasks: chain states, episode step counts and random streams.

    Transition rows are kept as flat float32 *cumulative* rows (``[B * n * na, n]``), so a step
    gathers one row per environment and counts the entries below a uniform draw: no per-step
    cumulative sum, no Python loop over environments.
    """

    def __init__(self, tasks: Task | TaskBatch | list):
        batch = tasks if isinstance(tasks, TaskBatch) else stack_tasks(tasks, dtype=np.float32)
        self.batch = batch
        b, n, na, _ = batch.transition.shape
        self.num_envs, self.n, self.na = b, n, na
        self._cdf_rows = np.cumsum(batch.transition, axis=-1, dtype=np.float32).reshape(b * n * na, n)
        self._r_flat = np.ascontiguousarray(batch.reward, dtype=np.float32).reshape(-1)
        self._s_flat = np.ascontiguousarray(batch.reward_std, dtype=np.float32).reshape(-1)
        self._has_noise = bool(np.any(self._s_flat > 0))
        self._start_cdf = np.cumsum(batch.start, axis=1)
        self.terminal = batch.terminal
        self.state_mapping = batch.state_mapping
        self.action_mask = batch.action_mask
        self.n_actions = batch.n_actions
        self.max_steps = batch.max_steps
        self._row_base = np.arange(b, dtype=np.int64) * (n * na)
        self.state = np.zeros(b, dtype=np.int64)
        self.elapsed = np.zeros(b, dtype=np.int64)
        self.keys = keys_from_seeds(np.arange(b))
        self.counters = np.zeros(b, dtype=np.uint64)

    # ------------------------------------------------------------------ streams
    def seed(self, seeds, which: np.ndarray | None = None) -> None:
        """Restart the random streams of the environments ``which`` (all by default) from ``seeds``."""
        idx = np.arange(self.num_envs) if which is None else np.asarray(which)
        self.keys[idx] = keys_from_seeds(seeds)
        self.counters[idx] = 0

    def _draw(self, idx: np.ndarray, k: int) -> np.ndarray:
        u = uniforms(self.keys[idx], self.counters[idx], k)
        self.counters[idx] += np.uint64(k)
        return u

    # ------------------------------------------------------------------ dynamics
    def reset(self, idx: np.ndarray) -> np.ndarray:
        """Draw start states for environments ``idx``; returns their observations."""
        u = self._draw(idx, DRAWS_PER_RESET)[:, 0]
        cdf = self._start_cdf[idx]
        s = np.minimum((cdf <= (u * cdf[:, -1])[:, None]).sum(1), self.n - 1)
        self.state[idx] = s
        self.elapsed[idx] = 0
        return self.state_mapping[idx, s]

    def check_actions(self, actions: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Integer actions inside each task's action set, or a ``ValueError`` naming the first bad one."""
        a = np.asarray(actions)
        if a.shape != idx.shape:
            raise ValueError(f"expected {len(idx)} actions (one per environment), got shape {a.shape}")
        if a.dtype.kind not in "iu":
            if a.dtype.kind == "f" and np.all(np.mod(a, 1) == 0):
                a = a.astype(np.int64)
            else:
                raise ValueError(f"actions must be integers, got dtype {a.dtype}")
        a = a.astype(np.int64, copy=False)
        bad = (a < 0) | (a >= self.na)
        if not bad.any():
            bad = ~self.action_mask[idx, a]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"action {int(a[i])} is out of range for environment {int(idx[i])}, "
                             f"which has {int(self.n_actions[idx[i]])} actions (valid: 0..{int(self.n_actions[idx[i]]) - 1})")
        return a

    def step(self, actions: np.ndarray, idx: np.ndarray):
        """Advance environments ``idx`` (not in a terminal state) by one step.

        Returns ``(observation, reward, reward_mean, terminated, truncated)`` arrays for ``idx``.
        """
        s = self.state[idx]
        row = self._row_base[idx] + s * self.na + actions
        cdf = self._cdf_rows[row]
        u = self._draw(idx, DRAWS_PER_STEP)
        total = cdf[:, -1]
        # Strictly below the row total, so the count never runs past the row's last possible state.
        x = np.minimum(u[:, 0].astype(np.float32) * total, np.nextafter(total, np.float32(0)))
        nxt = (cdf <= x[:, None]).sum(1)
        flat = row * self.n + nxt
        mean = self._r_flat[flat].astype(np.float64)
        reward = mean + self._s_flat[flat] * standard_normal(u[:, 1], u[:, 2]) if self._has_noise else mean.copy()
        self.state[idx] = nxt
        self.elapsed[idx] += 1
        terminated = self.terminal[idx, nxt]
        truncated = (self.elapsed[idx] >= self.max_steps[idx]) & ~terminated
        return self.state_mapping[idx, nxt], reward, mean, terminated, truncated
