"""The task object every sampler returns, a padded batch of tasks, and their file format.

A task lives in *chain space*: its arrays are indexed by the hidden state index ``0..n_active-1``
(the AnyMDP chain order), and ``state_mapping[i]`` is the observation id the agent sees for state
``i``. Observation ids run over ``0..n_states-1`` (``n_states >= n_active``), so the chain order is
hidden from the agent even when every id is used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..fileio import atomic_write

#: Version of the task file format written by :func:`save_tasks`.
TASK_FILE_FORMAT = 1

_ARRAY_FIELDS = ("transition", "reward", "reward_std", "start", "terminal", "state_mapping")


class TaskFileError(ValueError):
    """A task file that cannot be read: missing, corrupt, or written by another format version."""


@dataclass(frozen=True, eq=False)
class Task:
    """One tabular MDP, immutable.

    Arrays (chain space, ``n = n_active``, ``na = n_actions``):

    - ``transition [n, na, n]``: ``P(s' | s, a)``; rows of terminal states are all zero.
    - ``reward [n, na, n]``: noiseless reward mean ``R(s, a, s')``.
    - ``reward_std [n, na, n]``: std of the Gaussian noise added to the reward.
    - ``start [n]``: start-state distribution.
    - ``terminal [n]`` (bool): entering such a state ends the episode.
    - ``state_mapping [n]``: observation id of each state, distinct ids in ``[0, n_states)``.

    Scalars: ``n_states`` (size of the observation-id space), ``n_actions``, ``max_steps`` (episode
    cap; reaching it truncates the episode), ``kind`` (``"anymdp"``, ``"garnet"``, ``"bandit"``,
    ``"gym"``), ``seed`` (the seed that names the task, ``-1`` if none), ``version`` (the generator
    version that drew it) and ``meta`` (small JSON-serialisable facts, e.g. the goal flag).
    """

    transition: np.ndarray
    reward: np.ndarray
    reward_std: np.ndarray
    start: np.ndarray
    terminal: np.ndarray
    state_mapping: np.ndarray
    n_states: int
    max_steps: int
    kind: str = "anymdp"
    seed: int = -1
    version: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        conv = {
            "transition": np.float64,
            "reward": np.float64,
            "reward_std": np.float64,
            "start": np.float64,
            "terminal": np.bool_,
            "state_mapping": np.int64,
        }
        for name, dtype in conv.items():
            arr = np.array(getattr(self, name), dtype=dtype, copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "n_states", int(self.n_states))
        object.__setattr__(self, "max_steps", int(self.max_steps))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "meta", dict(self.meta))
        self.validate()

    # ------------------------------------------------------------------ shape facts
    @property
    def n_active(self) -> int:
        """Number of reachable (chain) states."""
        return int(self.transition.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.transition.shape[1])

    @property
    def observation_to_state(self) -> np.ndarray:
        """``[n_states]`` chain index of each observation id, ``-1`` for ids no state uses."""
        inv = np.full(self.n_states, -1, dtype=np.int64)
        inv[self.state_mapping] = np.arange(self.n_active)
        return inv

    def validate(self) -> None:
        """Check shapes and probabilities; raise ``ValueError`` naming the first problem."""
        n, na = self.transition.shape[:2] if self.transition.ndim == 3 else (-1, -1)
        if self.transition.ndim != 3 or self.transition.shape[2] != n:
            raise ValueError(f"transition must have shape [n, n_actions, n], got {self.transition.shape}")
        for name in ("reward", "reward_std"):
            if getattr(self, name).shape != self.transition.shape:
                raise ValueError(f"{name} must have the transition's shape {self.transition.shape}, "
                                 f"got {getattr(self, name).shape}")
        for name in ("start", "terminal", "state_mapping"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape [{n}], got {getattr(self, name).shape}")
        if na < 1:
            raise ValueError("a task needs at least one action")
        if self.n_states < n:
            raise ValueError(f"n_states={self.n_states} is smaller than the {n} active states")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if np.any(self.transition < 0) or np.any(self.reward_std < 0):
            raise ValueError("transition probabilities and reward stds must be non-negative")
        if not (np.all(np.isfinite(self.transition)) and np.all(np.isfinite(self.reward))
                and np.all(np.isfinite(self.reward_std))):
            raise ValueError("task arrays hold NaN or infinite values")
        sums = self.transition.sum(-1)
        live = ~self.terminal
        if np.any(np.abs(sums[live] - 1.0) > 1e-8 + 1e-5):  # np.allclose(sums, 1, atol=1e-8), without its overhead
            raise ValueError("each non-terminal transition row must sum to 1")
        if np.any(np.abs(sums[self.terminal]) > 1e-8):
            raise ValueError("transition rows of terminal states must be all zero")
        if abs(self.start.sum() - 1.0) > 1e-8 or np.any(self.start < 0):
            raise ValueError("start must be a probability distribution")
        if np.any(self.start[self.terminal] > 0):
            raise ValueError("a terminal state cannot be a start state")
        m = self.state_mapping
        if np.any(m < 0) or np.any(m >= self.n_states) or len(np.unique(m)) != n:
            raise ValueError(f"state_mapping must hold {n} distinct ids in [0, {self.n_states})")

    # ------------------------------------------------------------------ observation-space views
    def in_observation_space(self, array: np.ndarray, axis: int = 0, fill: float = 0.0) -> np.ndarray:
        """Scatter a chain-indexed array to observation ids along ``axis`` (unused ids get ``fill``)."""
        array = np.asarray(array)
        shape = list(array.shape)
        shape[axis] = self.n_states
        out = np.full(shape, fill, dtype=array.dtype)
        idx = [slice(None)] * array.ndim
        idx[axis] = self.state_mapping
        out[tuple(idx)] = array
        return out

    def __repr__(self) -> str:
        return (f"Task(kind={self.kind!r}, seed={self.seed}, n_states={self.n_states}, n_active={self.n_active}, "
                f"n_actions={self.n_actions}, max_steps={self.max_steps}, terminals={int(self.terminal.sum())})")

    def __eq__(self, other) -> bool:
        if not isinstance(other, Task):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name)) if f.name in _ARRAY_FIELDS
            else getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
        )

    __hash__ = None


# ---------------------------------------------------------------------- padded batches


@dataclass(frozen=True, eq=False)
class TaskBatch:
    """Many tasks padded to common sizes, for numpy code vectorised over tasks.

    Padded states have all-zero transition rows (like terminals: never reached, worth 0); padded
    actions are marked False in ``action_mask`` and must never be taken. Arrays are ``[B, ...]``
    versions of :class:`Task`'s, plus ``n_active [B]``, ``n_actions [B]``, ``max_steps [B]``.
    """

    tasks: tuple
    transition: np.ndarray
    reward: np.ndarray
    reward_std: np.ndarray
    start: np.ndarray
    terminal: np.ndarray
    state_mapping: np.ndarray
    state_mask: np.ndarray
    action_mask: np.ndarray
    n_active: np.ndarray
    n_actions: np.ndarray
    max_steps: np.ndarray
    n_states: int

    def __len__(self) -> int:
        return len(self.tasks)


def stack_tasks(tasks: Sequence[Task] | Task, dtype=np.float64) -> TaskBatch:
    """Pad a list of tasks to common state/action sizes and stack them into a :class:`TaskBatch`."""
    if isinstance(tasks, Task):
        tasks = [tasks]
    if isinstance(tasks, TaskBatch):
        return tasks
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("stack_tasks needs at least one task")
    for t in tasks:
        if not isinstance(t, Task):
            raise TypeError(f"stack_tasks takes Task objects, got {type(t).__name__}")
    b = len(tasks)
    n = max(t.n_active for t in tasks)
    na = max(t.n_actions for t in tasks)
    transition = np.zeros((b, n, na, n), dtype=dtype)
    reward = np.zeros((b, n, na, n), dtype=dtype)
    reward_std = np.zeros((b, n, na, n), dtype=dtype)
    start = np.zeros((b, n), dtype=np.float64)
    terminal = np.zeros((b, n), dtype=bool)
    mapping = np.zeros((b, n), dtype=np.int64)
    state_mask = np.zeros((b, n), dtype=bool)
    action_mask = np.zeros((b, na), dtype=bool)
    for i, t in enumerate(tasks):
        k, ka = t.n_active, t.n_actions
        transition[i, :k, :ka, :k] = t.transition
        reward[i, :k, :ka, :k] = t.reward
        reward_std[i, :k, :ka, :k] = t.reward_std
        start[i, :k] = t.start
        terminal[i, :k] = t.terminal
        mapping[i, :k] = t.state_mapping
        state_mask[i, :k] = True
        action_mask[i, :ka] = True
    return TaskBatch(
        tasks=tasks,
        transition=transition,
        reward=reward,
        reward_std=reward_std,
        start=start,
        terminal=terminal,
        state_mapping=mapping,
        state_mask=state_mask,
        action_mask=action_mask,
        n_active=np.array([t.n_active for t in tasks], dtype=np.int64),
        n_actions=np.array([t.n_actions for t in tasks], dtype=np.int64),
        max_steps=np.array([t.max_steps for t in tasks], dtype=np.int64),
        n_states=max(t.n_states for t in tasks),
    )


# ---------------------------------------------------------------------- files


def save_tasks(path: str | os.PathLike, tasks: Iterable[Task] | Task) -> Path:
    """Write one task or a task set to a single ``.npz`` file, atomically (temporary name, then rename)."""
    tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
    if not tasks:
        raise ValueError("save_tasks needs at least one task")
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"task files end in .npz, got {path.name!r}: rename the target, e.g. {path.stem}.npz")
    if not path.parent.exists():
        raise FileNotFoundError(f"folder {path.parent} does not exist: create it first")
    header = {"format": TASK_FILE_FORMAT, "count": len(tasks), "tasks": []}
    arrays = {}
    for i, t in enumerate(tasks):
        header["tasks"].append({"n_states": t.n_states, "max_steps": t.max_steps, "kind": t.kind,
                                "seed": t.seed, "version": t.version, "meta": t.meta})
        for name in _ARRAY_FIELDS:
            arrays[f"t{i}_{name}"] = getattr(t, name)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))
    return path


def load_tasks(path: str | os.PathLike) -> list[Task]:
    """Read a task set written by :func:`save_tasks`; a clear :class:`TaskFileError` on any problem."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"task file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            fmt = header.get("format")
            if fmt != TASK_FILE_FORMAT:
                raise TaskFileError(
                    f"{path} has task file format {fmt!r}; this anymdp_agent reads format {TASK_FILE_FORMAT}: "
                    "regenerate the tasks with this version (the seeds in the file name them)")
            tasks = []
            for i, scal in enumerate(header["tasks"]):
                arrs = {name: data[f"t{i}_{name}"] for name in _ARRAY_FIELDS}
                tasks.append(Task(**arrs, **scal))
    except TaskFileError:
        raise
    except Exception as e:  # a corrupt file fails in zipfile, zlib, numpy's header parser, json, ...
        raise TaskFileError(f"{path} is not a readable anymdp_agent task file ({type(e).__name__}: {e}); "
                            "regenerate it with save_tasks") from e
    return tasks


def save_task(path: str | os.PathLike, task: Task) -> Path:
    """Write one task (see :func:`save_tasks`)."""
    return save_tasks(path, [task])


def load_task(path: str | os.PathLike) -> Task:
    """Read a file holding exactly one task."""
    tasks = load_tasks(path)
    if len(tasks) != 1:
        raise TaskFileError(f"{path} holds {len(tasks)} tasks; use load_tasks to read a task set")
    return tasks[0]
