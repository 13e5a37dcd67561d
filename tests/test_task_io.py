"""The Task object, its validation, and the task file format (save/load)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from helpers import make_task, three_action_task

from anymdp_agent.envs import (
    Task,
    TaskFileError,
    load_task,
    load_tasks,
    sample_anymdp_task,
    sample_bandit_task,
    sample_garnet_task,
    save_task,
    save_tasks,
)
from anymdp_agent.envs import task as task_module


def test_session_is_offline_with_a_temporary_hf_home(offline_hf_home):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert os.environ["HF_HOME"] == offline_hf_home and os.path.isdir(offline_hf_home)


@pytest.fixture(scope="module")
def task_set():
    return [
        sample_anymdp_task(16, seed=0),
        sample_anymdp_task(24, 3, seed=5, min_states=9, reward_parts=("position", "step")),
        sample_garnet_task(10, 4, seed=2, branching=3),
        sample_bandit_task(6, seed=1),
        three_action_task(),
    ]


# ---------------------------------------------------------------------- round trips


def test_single_task_round_trip(tmp_path):
    task = sample_anymdp_task(16, seed=3)
    path = save_task(tmp_path / "one.npz", task)
    assert path == tmp_path / "one.npz"
    loaded = load_task(path)
    assert loaded == task
    assert loaded.meta == task.meta and loaded.version == task.version and loaded.seed == 3
    assert sorted(os.listdir(tmp_path)) == ["one.npz"]  # no temporary file left behind


def test_task_set_round_trip(tmp_path, task_set):
    path = save_tasks(str(tmp_path / "set.npz"), task_set)  # a str path works too
    loaded = load_tasks(path)
    assert len(loaded) == len(task_set)
    for a, b in zip(loaded, task_set):
        assert a == b
        assert a.kind == b.kind and a.n_states == b.n_states and a.max_steps == b.max_steps
        for name in ("transition", "reward", "reward_std", "start", "terminal", "state_mapping"):
            arr = getattr(a, name)
            assert arr.dtype == getattr(b, name).dtype
            assert not arr.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                arr[(0,) * arr.ndim] = arr[(0,) * arr.ndim]
    assert sorted(os.listdir(tmp_path)) == ["set.npz"]
    # Overwriting an existing file is atomic too, and leaves a single file.
    save_tasks(path, task_set[:2])
    assert load_tasks(path) == task_set[:2]
    assert sorted(os.listdir(tmp_path)) == ["set.npz"]


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, task_set, monkeypatch):
    path = save_tasks(tmp_path / "set.npz", task_set[:2])
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(task_module.np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        save_tasks(path, task_set)
    assert sorted(os.listdir(tmp_path)) == ["set.npz"]
    assert path.read_bytes() == before


def test_task_is_immutable_and_compares_by_value():
    task = sample_garnet_task(8, 2, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.max_steps = 3
    with pytest.raises(ValueError, match="read-only"):
        task.transition[0, 0, 0] = 1.0
    same = Task(**{f.name: getattr(task, f.name) for f in dataclasses.fields(task)})
    assert same == task
    assert dataclasses.replace(task, max_steps=task.max_steps + 1) != task
    assert dataclasses.replace(task, meta={"other": 1}) != task
    assert task != "a task"
    with pytest.raises(TypeError):
        hash(task)
    # The constructor copies its inputs: changing the source array later changes nothing.
    t = np.zeros((2, 2, 2))
    t[:, :, 1] = 1.0
    source = t.copy()
    built = make_task(source, np.zeros((2, 2, 2)), start=[1.0, 0.0], terminal=[False, False], max_steps=3)
    source[0, 0] = [1.0, 0.0]
    np.testing.assert_array_equal(built.transition, t)


# ---------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    with pytest.raises(TaskFileError, match=r"task file .*nothing\.npz does not exist"):
        load_tasks(tmp_path / "nothing.npz")
    with pytest.raises(TaskFileError, match=r"does not exist"):
        load_task(tmp_path / "nothing.npz")


def test_random_bytes_file(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(TaskFileError, match=r"x\.npz is not a readable anymdp_agent task file"):
        load_tasks(path)
    assert issubclass(TaskFileError, ValueError)


def test_truncated_and_foreign_files(tmp_path, task_set):
    path = save_tasks(tmp_path / "x.npz", task_set)
    raw = path.read_bytes()
    for cut in (0, 10, len(raw) // 2, len(raw) - 5):
        path.write_bytes(raw[:cut])
        with pytest.raises(TaskFileError, match=r"not a readable anymdp_agent task file"):
            load_tasks(path)
    # A valid npz that is not a task file (no header).
    np.savez(tmp_path / "other.npz", a=np.arange(3))
    with pytest.raises(TaskFileError, match=r"not a readable anymdp_agent task file"):
        load_tasks(tmp_path / "other.npz")
    # A plain .npy array saved under an .npz name.
    with open(tmp_path / "array.npz", "wb") as fh:
        np.save(fh, np.arange(3))
    with pytest.raises(TaskFileError, match=r"not a readable anymdp_agent task file"):
        load_tasks(tmp_path / "array.npz")


def test_corrupted_bytes_never_escape_as_other_errors(tmp_path, task_set):
    """Flip single bytes all over a valid file: loading either fails with TaskFileError or (a flip in zip
    metadata nobody reads) returns exactly the saved tasks -- never another exception, never wrong data."""
    path = save_tasks(tmp_path / "x.npz", task_set[:3])
    raw = path.read_bytes()
    positions = np.random.default_rng(0).choice(len(raw), size=150, replace=False)
    other = {}
    for pos in positions:
        corrupt = bytearray(raw)
        corrupt[pos] ^= 0xFF
        path.write_bytes(bytes(corrupt))
        try:
            loaded = load_tasks(path)
        except TaskFileError:
            continue
        except Exception as e:  # noqa: BLE001 -- collected and reported below
            other.setdefault(f"{type(e).__module__}.{type(e).__qualname__}", int(pos))
            continue
        assert loaded == task_set[:3]
    assert not other, f"corrupt files raised non-TaskFileError exceptions (first byte offset): {other}"


def rewrite_header(path, **changes):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(bytes(arrays["header"]).decode())
    header.update(changes)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    return header


def test_wrong_format_version(tmp_path, task_set):
    path = save_tasks(tmp_path / "old.npz", task_set[:2])
    header = rewrite_header(path)
    assert header["format"] == task_module.TASK_FILE_FORMAT == 1 and header["count"] == 2
    assert load_tasks(path) == task_set[:2]  # the rewrite itself is harmless
    rewrite_header(path, format=2)
    with pytest.raises(TaskFileError, match=r"old\.npz has task file format 2; this anymdp_agent reads format 1"):
        load_tasks(path)
    rewrite_header(path, format=None)
    with pytest.raises(TaskFileError, match=r"has task file format None"):
        load_tasks(path)


def test_load_task_wants_exactly_one(tmp_path, task_set):
    path = save_tasks(tmp_path / "three.npz", task_set[:3])
    with pytest.raises(TaskFileError, match=r"holds 3 tasks; use load_tasks"):
        load_task(path)


def test_save_errors(tmp_path, task_set):
    with pytest.raises(ValueError, match=r"task files end in \.npz, got 'tasks\.json'.*tasks\.npz"):
        save_tasks(tmp_path / "tasks.json", task_set)
    with pytest.raises(ValueError, match=r"task files end in \.npz"):
        save_task(tmp_path / "task", task_set[0])
    with pytest.raises(FileNotFoundError, match=r"does not exist: create it first"):
        save_tasks(tmp_path / "missing" / "t.npz", task_set)
    with pytest.raises(ValueError, match=r"save_tasks needs at least one task"):
        save_tasks(tmp_path / "t.npz", [])
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------- validation of hand-built tasks


def _base():
    t = np.zeros((3, 2, 3))
    t[0, :, 1] = 1.0
    t[1, :, 2] = 1.0
    return dict(transition=t, reward=np.zeros((3, 2, 3)), reward_std=np.zeros((3, 2, 3)), start=[1.0, 0.0, 0.0],
                terminal=[False, False, True], state_mapping=[2, 0, 1], n_states=3, max_steps=5)


@pytest.mark.parametrize("change,match", [
    (dict(transition=np.zeros((3, 2, 2))), r"transition must have shape \[n, n_actions, n\]"),
    (dict(reward=np.zeros((3, 2, 2))), r"reward must have the transition's shape"),
    (dict(start=[1.0, 0.0]), r"start must have shape \[3\]"),
    (dict(n_states=2), r"n_states=2 is smaller than the 3 active states"),
    (dict(max_steps=0), r"max_steps must be >= 1"),
    (dict(reward_std=-np.ones((3, 2, 3))), r"must be non-negative"),
    (dict(reward=np.full((3, 2, 3), np.nan)), r"NaN or infinite"),
    (dict(terminal=[False, False, False]), r"each non-terminal transition row must sum to 1"),
    (dict(terminal=[False, True, True]), r"transition rows of terminal states must be all zero"),
    (dict(start=[0.5, 0.2, 0.0]), r"start must be a probability distribution"),
    (dict(start=[0.0, 0.0, 1.0]), r"a terminal state cannot be a start state"),
    (dict(state_mapping=[0, 0, 1]), r"state_mapping must hold 3 distinct ids in \[0, 3\)"),
    (dict(state_mapping=[0, 1, 3]), r"state_mapping must hold 3 distinct ids"),
])
def test_invalid_tasks_are_rejected(change, match):
    kwargs = _base()
    Task(**kwargs)  # the base is valid
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        Task(**kwargs)


def test_observation_space_views():
    task = Task(**{**_base(), "n_states": 5})
    np.testing.assert_array_equal(task.observation_to_state, [1, 2, 0, -1, -1])
    np.testing.assert_array_equal(task.in_observation_space(np.array([10.0, 20.0, 30.0]), fill=-1.0),
                                  [20.0, 30.0, 10.0, -1.0, -1.0])
    q = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(task.in_observation_space(q)[task.state_mapping], q)
