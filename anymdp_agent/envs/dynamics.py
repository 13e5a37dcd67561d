"""The one step function of every environment here: ``B`` tabular tasks advanced at once, in one
numba-compiled loop over environments (the reward noise's Box-Muller stays vectorised in numpy).

:class:`~anymdp_agent.envs.AnyMDPEnv` is this with ``B = 1``; :class:`~anymdp_agent.envs.BatchedAnyMDPEnv`
wraps it for ``B`` up to tens of thousands. Sharing the code (and the counter-based random streams
of :mod:`.random_stream`) is what makes the two agree step for step.
"""

from __future__ import annotations

import numba
import numpy as np

from .random_stream import keys_from_seeds, standard_normal, uniform_at
from .task import Task, TaskBatch, stack_tasks

#: Random draws consumed per step (next state, two for the reward noise) and per reset (start state).
DRAWS_PER_STEP = 3
DRAWS_PER_RESET = 1


class TabularDynamics:
    """Sampling state for ``B`` tasks: chain states, episode step counts and random streams.

    Transition rows are kept as flat float32 *cumulative* rows (``[B * n * na, n]``), so a step
    gathers one row per environment and counts the entries below a uniform draw: no per-step
    cumulative sum, and no Python loop over environments (the loop is compiled).
    """

    def __init__(self, tasks: Task | TaskBatch | list):
        batch = tasks if isinstance(tasks, TaskBatch) else stack_tasks(tasks, dtype=np.float32)
        self.batch = batch
        b, n, na, _ = batch.transition.shape
        self.num_envs, self.n, self.na = b, n, na
        self._cdf_rows = np.cumsum(batch.transition, axis=-1, dtype=np.float32).reshape(b * n * na, n)
        # Strictly below each row's total, so a draw never counts past the row's last possible state.
        self._cdf_cap = np.nextafter(self._cdf_rows[:, -1], np.float32(0))
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

    # ------------------------------------------------------------------ dynamics
    def reset(self, idx: np.ndarray) -> np.ndarray:
        """Draw start states for environments ``idx``; returns their observations."""
        idx = np.asarray(idx, dtype=np.int64)
        obs = np.empty(len(idx), dtype=np.int64)
        _reset(idx, self.keys, self.counters, self._start_cdf, self.state, self.elapsed, self.state_mapping, obs)
        return obs

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
        idx = np.asarray(idx, dtype=np.int64)
        m = len(idx)
        obs, mean, u1, u2, noise_std = np.empty(m, np.int64), np.empty(m), np.empty(m), np.empty(m), np.empty(m)
        terminated, truncated = np.empty(m, bool), np.empty(m, bool)
        _step(idx, np.asarray(actions, dtype=np.int64), self.state, self.elapsed, self.keys, self.counters,
              self._row_base, self._cdf_rows, self._cdf_cap, self._r_flat, self._s_flat, self.terminal,
              self.max_steps, self.state_mapping, obs, mean, u1, u2, noise_std, terminated, truncated)
        reward = mean + noise_std * standard_normal(u1, u2) if self._has_noise else mean.copy()
        return obs, reward, mean, terminated, truncated


@numba.njit(cache=True)
def _reset(idx, keys, counters, start_cdf, state, elapsed, mapping, obs):
    """The reset of :meth:`TabularDynamics.reset` per environment: one draw (``DRAWS_PER_RESET``) picks the start."""
    n = start_cdf.shape[1]
    for j in range(len(idx)):
        i = idx[j]
        counters[i] += np.uint64(1)
        x = uniform_at(keys[i], counters[i]) * start_cdf[i, n - 1]
        s = 0
        for k in range(n):
            s += start_cdf[i, k] <= x
        s = min(s, n - 1)
        state[i] = s
        elapsed[i] = 0
        obs[j] = mapping[i, s]


@numba.njit(cache=True)
def _step(idx, actions, state, elapsed, keys, counters, row_base, cdf_rows, cdf_cap, r_flat, s_flat, terminal,
          max_steps, mapping, obs, mean, u1, u2, noise_std, terminated, truncated):
    """The step of :meth:`TabularDynamics.step` per environment: ``DRAWS_PER_STEP`` draws (next state,
    then the two uniforms of the reward noise, returned for a vectorised Box-Muller)."""
    n = cdf_rows.shape[1]
    na = cdf_rows.shape[0] // (len(row_base) * n)
    for j in range(len(idx)):
        i = idx[j]
        row = row_base[i] + state[i] * na + actions[j]
        c = counters[i]
        x = min(np.float32(uniform_at(keys[i], c + np.uint64(1))) * cdf_rows[row, n - 1], cdf_cap[row])
        nxt = 0
        for k in range(n):
            nxt += cdf_rows[row, k] <= x
        u1[j] = uniform_at(keys[i], c + np.uint64(2))
        u2[j] = uniform_at(keys[i], c + np.uint64(3))
        counters[i] = c + np.uint64(3)
        flat = row * n + nxt
        mean[j] = r_flat[flat]
        noise_std[j] = s_flat[flat]
        state[i] = nxt
        elapsed[i] += 1
        terminated[j] = terminal[i, nxt]
        truncated[j] = elapsed[i] >= max_steps[i] and not terminated[j]
        obs[j] = mapping[i, nxt]
