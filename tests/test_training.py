"""training/train.py: the tiny recipe end to end, exact resume, the data sources, clear errors, the card.

In-process runs (``train.main([...])``, one process) are used wherever the launcher does not matter:
they take seconds. The multi-process runs go through ``accelerate launch`` in a subprocess (slow).

Two processes on CPU: with accelerate's simple launcher, ``accelerate launch --cpu --num_processes 2``
starts *one* process (it needs mpirun for more), so the two-process tests launch through accelerate's
torchrun launcher (``--multi_gpu``) with ``ACCELERATE_USE_CPU=true``, which gives two gloo processes on
any machine, and check that both ranks really ran (``random_states_1.pkl``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "training" / "configs" / "tiny.yaml"
if str(ROOT / "training") not in sys.path:
    sys.path.insert(0, str(ROOT / "training"))

import train  # noqa: E402  (training/train.py)

from anymdp_agent.baselines import OracleLearner, RandomLearner  # noqa: E402
from anymdp_agent.data import CorpusConfig, generate_corpus  # noqa: E402
from anymdp_agent.data.behaviours import TAG  # noqa: E402
from anymdp_agent.data.onpolicy import roll_learner  # noqa: E402
from anymdp_agent.envs import sample_anymdp_task, stack_tasks  # noqa: E402
from anymdp_agent.envs.seeds import TRAIN  # noqa: E402
from anymdp_agent.envs.solvers import oracle_q  # noqa: E402

#: Small evaluation settings: the final evaluation of every run costs a fraction of a second.
FAST_EVAL = ["--eval_tasks", "1", "--eval_steps", "8", "--eval_baselines", "random"]
PRETRAINED_FILES = ("config.json", "model.safetensors", "modeling_anymdp_agent.py", "configuration_anymdp_agent.py",
                    "train_config.json", "README.md")
LOSS_KEYS = ("policy_loss", "observation_loss", "reward_loss", "grad_norm", "lr")


def tiny(output_dir, *extra) -> list[str]:
    return ["--config", str(TINY), "--output_dir", str(output_dir), *FAST_EVAL, *map(str, extra)]


def run_main(argv, capsys) -> tuple[int, str]:
    """``train.main(argv)`` as the command line would end: (exit status, stderr)."""
    capsys.readouterr()
    try:
        rc = train.main(argv)
    except SystemExit as e:  # what the interpreter would do with it
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    return rc, capsys.readouterr().err


def checkpoints(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "checkpoints").glob("*"))


def weights(run: Path, step: int) -> dict:
    return load_file(str(run / "checkpoints" / f"{step:07d}" / "pretrained_model" / "model.safetensors"))


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def loss_lines(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "policy_loss" in x]


def assert_no_training(run: Path):
    """Nothing trained: no optimiser step was logged and no checkpoint written."""
    if (run / "logs" / "metrics.jsonl").exists():
        assert loss_lines(run) == []
    assert not list((run / "checkpoints").glob("*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(argv, timeout=300) -> subprocess.CompletedProcess:
    """``accelerate launch`` of training/train.py with two CPU processes (see the module docstring)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "training/train.py", *argv]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def assert_two_ranks(run: Path, step: int):
    state = run / "checkpoints" / f"{step:07d}" / "training_state"
    for rank in (0, 1):
        assert (state / f"random_states_{rank}.pkl").is_file(), sorted(os.listdir(state))
        assert (state / f"onpolicy_rank{rank}.npz").is_file(), sorted(os.listdir(state))


# ---------------------------------------------------------------------- in-process runs (one process)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The tiny recipe, 6 steps uninterrupted, one process: checkpoints 4 (not evaluated) and 6 (evaluated)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert train.main(tiny(run, "--max_steps", 6, "--eval_every", 0)) == 0
    return run


def test_in_process_run_writes_checkpoints_logs_and_best(straight_run):
    run = straight_run
    assert checkpoints(run) == [4, 6]
    for step in (4, 6):
        folder = run / "checkpoints" / f"{step:07d}"
        for name in PRETRAINED_FILES:
            assert (folder / "pretrained_model" / name).is_file(), (step, name)
        assert (folder / "training_state" / "model.safetensors").is_file()
        assert (folder / "training_state" / "onpolicy_rank0.npz").is_file()
        cfg = json.loads((folder / "pretrained_model" / "train_config.json").read_text())
        assert cfg["step"] == step and cfg["recipe"] == "tiny" and cfg["max_steps"] == 6
    lines = loss_lines(run)
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(x["policy_loss"]) for x in lines)
    # the curriculum: 64 rows in the first stage (steps 0-3), 96 after
    assert [x["seq_len"] for x in lines] == [64] * 4 + [96] * 2
    assert (run / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("stop", [3, 2])
def test_resume_in_process_is_exact(straight_run, tmp_path, capsys, stop):
    """Interrupted at ``stop`` and resumed == uninterrupted, bit for bit (stop 2 resumes on the saved buffer)."""
    run = tmp_path / "run"
    assert train.main(tiny(run, "--max_steps", 6, "--eval_every", 0, "--stop_at_step", stop)) == 0
    assert checkpoints(run) == [stop]
    assert [x["step"] for x in loss_lines(run)] == list(range(1, stop + 1))
    assert train.main(tiny(run, "--max_steps", 6, "--eval_every", 0, "--resume")) == 0
    assert checkpoints(run)[-1] == 6
    assert_same_tensors(weights(run, 6), weights(straight_run, 6))
    resumed, straight = loss_lines(run), loss_lines(straight_run)
    assert [x["step"] for x in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(resumed, straight):
        assert {k: a[k] for k in LOSS_KEYS} == {k: b[k] for k in LOSS_KEYS}


def test_resume_with_more_steps_continues_from_the_last_checkpoint(straight_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    assert train.main(tiny(run, "--max_steps", 8, "--eval_every", 0, "--resume")) == 0
    assert checkpoints(run) == [4, 6, 8]  # keep_checkpoints 3
    lines = loss_lines(run)
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert lines[:6] == loss_lines(straight_run)  # the log was continued, not rewritten
    assert_same_tensors(weights(run, 6), weights(straight_run, 6))
    assert not all(torch.equal(v, weights(run, 6)[k]) for k, v in weights(run, 8).items())
    cfg = json.loads((run / "checkpoints" / "0000008" / "pretrained_model" / "train_config.json").read_text())
    assert (cfg["step"], cfg["max_steps"], cfg["resume"]) == (8, 8, True)


# ---------------------------------------------------------------------- the on-the-fly task stream


@pytest.fixture(scope="module")
def tiny_args(tmp_path_factory):
    return train.parse_args(["--config", str(TINY), "--output_dir", str(tmp_path_factory.mktemp("args") / "run")])


def test_curriculum_stages_follow_the_string(tiny_args):
    assert tiny_args.curriculum == "4:8:2-3:64;inf:8-12:3-5:96"
    first, last = (4, (8, 8), (2, 3), 64), (math.inf, (8, 12), (3, 5), 96)
    assert tiny_args.stages() == [first, last]
    assert [tiny_args.stage(s) for s in (0, 3, 4, 7, 10**6)] == [first, first, last, last, last]
    args = dataclasses.replace(tiny_args, curriculum="2:8:2:32;5:10-12:3:48;-:16:5:64")
    assert [args.stage(s)[1:] for s in (0, 1, 2, 4, 5, 99)] == [((8, 8), (2, 2), 32)] * 2 + \
        [((10, 12), (3, 3), 48)] * 2 + [((16, 16), (5, 5), 64)] * 2
    plain = dataclasses.replace(tiny_args, curriculum="", n_states="9-11", n_actions="4", seq_len=40)
    assert plain.stages() == [(math.inf, (9, 11), (4, 4), 40)]


def test_task_stream_is_deterministic_per_step_and_rank(tiny_args):
    stream = train.TaskStream(tiny_args)
    a, b = stream.batch(0, 0, 2), train.TaskStream(tiny_args).batch(0, 0, 2)
    assert a.keys() == {"observations", "actions", "rewards", "tags", "labels", "prompts", "n_actions"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    for other in (stream.batch(0, 1, 2), stream.batch(1, 0, 2)):
        assert not np.array_equal(a["observations"], other["observations"]) or \
            not np.array_equal(a["actions"], other["actions"])
    seeded = train.TaskStream(dataclasses.replace(tiny_args, seed=1)).batch(0, 0, 2)
    assert not np.array_equal(a["actions"], seeded["actions"])


@pytest.mark.parametrize("step", [0, 5])
def test_task_stream_uses_train_seeds_and_the_stage_sizes(tiny_args, step):
    stream = train.TaskStream(tiny_args)
    _, states, actions, seq_len = tiny_args.stage(step)
    tasks, _ = stream.tasks(step, 0, 6, 2)
    other, _ = stream.tasks(step, 1, 6, 2)
    assert {t.seed for t in tasks}.isdisjoint({t.seed for t in other})  # ranks see different tasks
    for t in tasks:
        assert t.seed in TRAIN
        assert states[0] <= t.n_states <= states[1]
        assert actions[0] <= t.n_actions <= actions[1]
    batch = stream.batch(step, 0, 3)
    for key in ("observations", "actions", "rewards", "tags", "labels"):
        assert batch[key].shape == (3, seq_len), key
    assert batch["observations"].min() >= 0 and batch["observations"].max() < states[1]
    real = batch["actions"] >= 0
    assert set(np.unique(batch["actions"][~real])) <= {-1, -2}
    assert batch["actions"][real].max() < actions[1]
    assert (batch["labels"][~real] == -1).all()
    assert batch["labels"][real].min() >= 0 and batch["labels"][real].max() < actions[1]
    assert (batch["prompts"] == 4).all()  # the tiny recipe trains on planner labels


def test_task_stream_mixes_labels_with_their_prompts(tiny_args):
    stream = train.TaskStream(dataclasses.replace(tiny_args, label="mix"))
    prompts = np.concatenate([stream.batch(s, 0, 4)["prompts"] for s in range(3)])
    assert set(prompts.tolist()) == {0, 4}


# ---------------------------------------------------------------------- on-policy rows


class SpecOracle(OracleLearner):
    """The oracle, handed the true tasks (roll_learner's spec carries none)."""

    def __init__(self, tasks):
        super().__init__(gamma=0.994)
        self.tasks = stack_tasks(tasks)

    def initial_state(self, spec, seed):
        return super().initial_state(dataclasses.replace(spec, tasks=self.tasks), seed)


@pytest.fixture(scope="module")
def onpolicy_tasks():
    sizes = [(8, 3), (12, 5), (16, 5), (9, 2)]
    return [sample_anymdp_task(n, na, seed=TRAIN.start + 100 + i) for i, (n, na) in enumerate(sizes)]


def check_onpolicy_rows(tasks, rows, stats, seq_len):
    assert set(rows) == {"observations", "actions", "rewards", "tags", "label_oracle", "label_planner"}
    for key, value in rows.items():
        assert value.shape == (len(tasks), seq_len), key
    assert (rows["tags"] == TAG["unknown"]).all()
    for i, task in enumerate(tasks):
        greedy = oracle_q(task, 0.994)[0].argmax(-1)  # [n_active] the oracle's action per true state
        to_state = task.observation_to_state
        obs, act, rew = rows["observations"][i], rows["actions"][i], rows["rewards"][i]
        states = to_state[obs]
        assert (states >= 0).all()
        real = act >= 0
        assert (act[real] < task.n_actions).all()
        np.testing.assert_array_equal(rows["label_oracle"][i][real], greedy[states[real]])
        assert (rows["label_planner"][i][real] >= 0).all() and (rows["label_planner"][i][real] < task.n_actions).all()
        assert (rows["label_oracle"][i][~real] == -1).all() and (rows["label_planner"][i][~real] == -1).all()
        assert (rew[~real] == 0).all()
        assert task.start[states[0]] > 0
        since_start = 0
        for t in range(seq_len):
            if real[t]:
                assert not task.terminal[states[t]], (i, t)
                since_start += 1
                if t + 1 < seq_len:  # the next row is where the action led (a closing row or the next step)
                    assert task.transition[states[t], act[t], states[t + 1]] > 0, (i, t)
                    if real[t + 1]:
                        assert since_start < task.max_steps
            else:
                # a closing row ends the episode its preceding real row ended
                assert t > 0 and real[t - 1], (i, t)
                if act[t] == -1:
                    assert task.terminal[states[t]], (i, t)
                else:
                    assert act[t] == -2 and since_start == task.max_steps and not task.terminal[states[t]], (i, t)
                if t + 1 < seq_len:
                    assert real[t + 1] and task.start[states[t + 1]] > 0, (i, t)
                since_start = 0
    real = rows["actions"] >= 0
    for kind in ("oracle", "planner"):
        share = stats["agreement"][kind]
        assert 0.0 <= share <= 1.0
        assert share == pytest.approx(float((rows["actions"][real] == rows[f"label_{kind}"][real]).mean()))


def test_onpolicy_rows_are_labelled_at_the_true_state(onpolicy_tasks):
    seq_len = 120
    rows, stats = roll_learner(onpolicy_tasks, RandomLearner(), seq_len, ("oracle", "planner"), seed=3)
    check_onpolicy_rows(onpolicy_tasks, rows, stats, seq_len)
    assert (rows["actions"] < 0).any()  # episodes ended within the rows: closing rows were checked
    assert stats["agreement"]["oracle"] < 1.0


def test_onpolicy_oracle_agrees_with_its_labels(onpolicy_tasks):
    seq_len = 80
    rows, stats = roll_learner(onpolicy_tasks, SpecOracle(onpolicy_tasks), seq_len, ("oracle", "planner"), seed=1)
    check_onpolicy_rows(onpolicy_tasks, rows, stats, seq_len)
    assert stats["agreement"]["oracle"] == 1.0
    again, _ = roll_learner(onpolicy_tasks, SpecOracle(onpolicy_tasks), seq_len, ("oracle", "planner"), seed=1)
    for key in rows:
        np.testing.assert_array_equal(rows[key], again[key])


def test_onpolicy_labels_only_those_asked(onpolicy_tasks):
    rows, stats = roll_learner(onpolicy_tasks[:2], RandomLearner(), 30, ("oracle",), seed=0)
    assert "label_planner" not in rows and set(stats["agreement"]) == {"oracle"}


# ---------------------------------------------------------------------- corpus batches


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # Folder names are unique in this module: see test_regenerated_corpus_is_read_afresh.
    folder = tmp_path_factory.mktemp("corpus") / "corpus-both-labels"
    generate_corpus(folder, CorpusConfig(tasks=3, seq_len=40, labels=("oracle", "planner")))
    return folder


def corpus_args(tmp_path, corpus, **kw):
    base = dict(corpus=str(corpus), output_dir=str(tmp_path / "run"), num_observations=16, seq_len=24, batch_size=2)
    return train.TrainArgs(**{**base, **kw})


def locate(crop_obs, crop_act, table):
    """(sequence, start) of a crop in the corpus (observations and actions must match)."""
    hits = []
    for i, (obs, act) in enumerate(zip(table["observations"], table["actions"])):
        for s in range(len(obs) - len(crop_obs) + 1):
            window = slice(s, s + len(crop_obs))
            if np.array_equal(obs[window], crop_obs) and np.array_equal(act[window], crop_act):
                hits.append((i, s))
    assert hits
    return hits


@pytest.mark.parametrize("label", ["oracle", "planner", "mix"])
def test_corpus_source_batches(tmp_path, corpus, label):
    from datasets import load_dataset

    table = load_dataset(str(corpus), split="train").with_format("numpy")[:]
    source = train.CorpusSource(corpus_args(tmp_path, corpus, label=label))
    assert tuple(source.kinds) == (("oracle", "planner") if label == "mix" else (label,))
    batches = [source.batch(s, r, 4) for s in range(3) for r in range(2)]
    again = source.batch(2, 1, 4)
    for key in again:
        np.testing.assert_array_equal(again[key], batches[-1][key])
    assert not np.array_equal(batches[0]["observations"], batches[1]["observations"])  # other rank
    assert not np.array_equal(batches[0]["observations"], batches[2]["observations"])  # other step
    prompts = []
    for batch in batches:
        for key in ("observations", "actions", "rewards", "tags", "labels"):
            assert batch[key].shape == (4, 24), key
        for j in range(4):
            kind = "planner" if batch["prompts"][j] == 4 else "oracle"
            assert batch["prompts"][j] in (0, 4)
            if label != "mix":
                assert kind == label
            ok = False
            for i, s in locate(batch["observations"][j], batch["actions"][j], table):
                ok |= (np.array_equal(batch["labels"][j], table[f"label_{kind}"][i][s:s + 24])
                       and np.array_equal(batch["rewards"][j], table["rewards"][i][s:s + 24]))
            assert ok, (label, j)
            prompts.append(int(batch["prompts"][j]))
    if label == "mix":
        assert set(prompts) == {0, 4}
    one = source.batch(7, 0, 1)  # a batch of one sequence
    assert one["observations"].shape == (1, 24) and one["prompts"].shape == (1,)


def test_corpus_training_runs(tmp_path, corpus, capsys):
    # A corpus as `anymdp-agent generate` leaves it: corpus.json records the command that wrote it.
    command = "anymdp-agent generate --out data/x --tasks 8 --labels oracle"
    corpus = Path(shutil.copytree(corpus, tmp_path / "corpus"))
    meta = json.loads((corpus / "corpus.json").read_text())
    (corpus / "corpus.json").write_text(json.dumps({**meta, "commands": {"train": command}}))
    run = tmp_path / "run"
    rc, err = run_main(tiny(run, "--corpus", corpus, "--label", "oracle", "--curriculum", "", "--seq_len", 32,
                            "--max_steps", 2, "--eval_every", 0), capsys)
    assert rc == 0, err
    assert checkpoints(run) == [2]
    folder = run / "checkpoints" / "0000002" / "pretrained_model"
    record = json.loads((folder / "train_config.json").read_text())
    assert record["corpus"] == str(corpus)
    # The command that generated the corpus travels with the checkpoint, and its card says it.
    assert record["corpus_command"] == command
    assert f"made with `{command}`" in (folder / "README.md").read_text()


def test_regenerated_corpus_is_read_afresh(tmp_path):
    """A corpus folder regenerated with other settings (same path) must not be read from a stale cache."""
    folder = tmp_path / "corpus-regenerated"
    generate_corpus(folder, CorpusConfig(tasks=3, seq_len=40, labels=("oracle", "planner")))
    assert len(train.CorpusSource(corpus_args(tmp_path, folder, label="planner")).ds) == 3
    shutil.rmtree(folder)
    generate_corpus(folder, CorpusConfig(tasks=2, seq_len=40, labels=("oracle",)))
    source = train.CorpusSource(corpus_args(tmp_path, folder, label="mix"))
    assert (len(source.ds), tuple(source.kinds)) == (2, ("oracle",))


# ---------------------------------------------------------------------- clear errors before training


def write_parquet_corpus(folder: Path, drop=(), wrong=()):
    """A one-shard parquet folder with the corpus' columns and features (label_oracle), some dropped,
    some (``wrong``) stored as int64 lists."""
    from datasets import Dataset, Features, List, Value

    from anymdp_agent.data import corpus_features

    n = 32
    cols = {"observations": [list(range(n))], "actions": [[0] * n], "rewards": [[0.0] * n], "tags": [[0] * n],
            "label_oracle": [[1] * n], "task_seed": [0], "n_states": [16], "n_actions": [5], "prompt": [0],
            "sampler_version": ["x"]}
    feats = dict(corpus_features(("oracle",)))
    for name in drop:
        cols.pop(name), feats.pop(name)
    for name in wrong:
        feats[name] = List(Value("int64"))
    (folder / "data").mkdir(parents=True)
    Dataset.from_dict(cols, features=Features(feats)).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder


def expect_error(capsys, argv, *fragments):
    rc, err = run_main(argv, capsys)
    assert rc == 2, err
    assert "train: error: " in err, err
    line = err[err.index("train: error: "):]
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def test_error_corpus_without_label_columns(tmp_path, capsys):
    corpus = write_parquet_corpus(tmp_path / "corpus-no-labels", drop=("label_oracle",))
    expect_error(capsys, tiny(tmp_path / "run", "--corpus", corpus), "not an anymdp-agent corpus", "label_oracle")
    assert_no_training(tmp_path / "run")


def test_error_corpus_with_wrong_features(tmp_path, capsys):
    corpus = write_parquet_corpus(tmp_path / "corpus-int64", wrong=("observations",))  # int64 lists, not int16
    expect_error(capsys, tiny(tmp_path / "run", "--corpus", corpus, "--label", "oracle"), "observations", "int16")
    assert_no_training(tmp_path / "run")


def test_error_corpus_missing_a_column(tmp_path, capsys):
    corpus = write_parquet_corpus(tmp_path / "corpus-no-tags", drop=("tags",))
    expect_error(capsys, tiny(tmp_path / "run", "--corpus", corpus, "--label", "oracle"), "'tags' is missing")


def test_error_corpus_without_the_chosen_label(tmp_path, capsys):
    folder = tmp_path / "corpus-oracle-only"
    generate_corpus(folder, CorpusConfig(tasks=2, seq_len=40, labels=("oracle",)))
    expect_error(capsys, tiny(tmp_path / "run", "--corpus", folder, "--label", "planner", "--seq_len", 24),
                 "no label_planner column")
    assert_no_training(tmp_path / "run")


def test_error_corpus_shards_training_cannot_use(tmp_path, capsys):
    """NaN/inf rewards, a 0-row shard, a truncated shard: refused at load, the file named (check_corpus_files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, change in [("nan", lambda t: t.set_column(2, "rewards", pa.array([[float("nan")] * 32], t.schema.field(2).type))),
                         ("empty", lambda t: t.slice(0, 0))]:
        corpus = write_parquet_corpus(tmp_path / f"corpus-{name}")
        shard = corpus / "data" / "train-00000-of-00001.parquet"
        pq.write_table(change(pq.read_table(shard)), shard)
        expect_error(capsys, tiny(tmp_path / f"run-{name}", "--corpus", corpus, "--label", "oracle"), str(shard),
                     "NaN or infinite rewards" if name == "nan" else "holds no rows")
        assert_no_training(tmp_path / f"run-{name}")


def test_error_no_corpus_there(tmp_path, capsys):
    expect_error(capsys, tiny(tmp_path / "run", "--corpus", tmp_path / "missing"), "no corpus at")


def test_error_vocabulary_smaller_than_the_corpus(tmp_path, corpus, capsys):
    # The on-policy tasks (curriculum / n_states) fit the small vocabulary; the corpus' 16-state tasks do not.
    expect_error(capsys, tiny(tmp_path / "run", "--corpus", corpus, "--num_observations", 8, "--curriculum", "",
                              "--n_states", 8, "--n_actions", "2-5"),
                 "16 states", "num_observations is 8")
    assert_no_training(tmp_path / "run")


def test_error_corpus_sequences_shorter_than_seq_len(tmp_path, corpus, capsys):
    expect_error(capsys, tiny(tmp_path / "run", "--corpus", corpus, "--seq_len", 64, "--curriculum", ""),
                 "40 rows", "seq_len 64")


def test_error_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    expect_error(capsys, tiny(blocker / "run"), "cannot write to output_dir")


@pytest.mark.parametrize("override,key", [(("--hidden_size", 32), "hidden_size"),
                                          (("--backbone", "sequence"), "backbone"),
                                          (("--planning_steps", 2), "planning_steps"),
                                          (("--label", "oracle"), "label")])
def test_error_resume_with_other_settings(straight_run, capsys, override, key):
    before = checkpoints(straight_run)
    expect_error(capsys, tiny(straight_run, "--max_steps", 8, "--resume", *override), "--resume", key,
                 "other settings")
    assert checkpoints(straight_run) == before


def test_error_resume_without_checkpoint(tmp_path, capsys):
    expect_error(capsys, tiny(tmp_path / "run", "--resume"), "no checkpoint")
    assert_no_training(tmp_path / "run")


def test_error_existing_checkpoints_without_resume(straight_run, capsys):
    expect_error(capsys, tiny(straight_run), "already holds checkpoints", "--resume")
    assert checkpoints(straight_run) == [4, 6]


@pytest.mark.parametrize("value", ["foo", "Planner", ""])
def test_error_unknown_label(tmp_path, capsys, value):
    expect_error(capsys, tiny(tmp_path / "run", "--label", value), "label must be oracle, planner or mix")


@pytest.mark.parametrize("value", ["4:8:64", "x:8:2:64", "4:8:2:64;inf:8:a:96", "4:8:2:64;", "4:8:2:6.5"])
def test_error_bad_curriculum_string(tmp_path, capsys, value):
    expect_error(capsys, tiny(tmp_path / "run", "--curriculum", value), "curriculum stage",
                 "UNTIL:STATES:ACTIONS:SEQ_LEN")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value,fragment", [("2:8:2:32;inf:32:5:32", "vocabulary"),  # a later stage outgrows the
                                            ("2:8:2:32;inf:8:9:32", "actions"),      # vocabulary, the actions,
                                            ("2:8:2:32;inf:4:2:32", "too small")])   # or is no MDP (< 8 states)
def test_error_curriculum_that_does_not_fit_the_model(tmp_path, capsys, value, fragment):
    """Checked before training starts, not when the run reaches the stage (here: after two steps)."""
    expect_error(capsys, tiny(tmp_path / "run", "--curriculum", value, "--max_steps", 4, "--eval_every", 0), fragment)
    assert_no_training(tmp_path / "run")


def test_error_unknown_yaml_keys(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(TINY.read_text() + "learning_rat: 0.1\nfoo: 1\n")
    expect_error(capsys, ["--config", str(recipe), "--output_dir", str(tmp_path / "run")], "unknown keys",
                 "learning_rat", "foo")
    assert not (tmp_path / "run").exists()


def test_error_missing_recipe(tmp_path, capsys):
    expect_error(capsys, ["--config", str(tmp_path / "nope.yaml")], "no recipe at")


def test_error_unknown_command_line_field(tmp_path, capsys):
    expect_error(capsys, tiny(tmp_path / "run", "--learnig_rate", "0.1"), "learnig_rate")


@pytest.mark.parametrize("field_,value,fragment", [("--seq_len", 0, "seq_len must be >= 1"),
                                                   ("--onpolicy_fraction", 1.5, "onpolicy_fraction"),
                                                   ("--push_to_hub", "true", "--hub_repo_id")])
def test_error_bad_numbers(tmp_path, capsys, field_, value, fragment):
    expect_error(capsys, tiny(tmp_path / "run", field_, value), fragment)


def test_yaml_sets_defaults_and_the_command_line_overrides():
    args = train.parse_args(["--config", str(TINY), "--max_steps", "3", "--label", "mix"])
    assert (args.recipe, args.max_steps, args.label, args.planning_steps, args.output_dir) == \
        ("tiny", 3, "mix", 4, "runs/tiny")


# ---------------------------------------------------------------------- the model card and --help


def test_model_card_of_an_evaluated_checkpoint(straight_run, capsys):
    from anymdp_agent.hub import render_model_card

    folder = straight_run / "checkpoints" / "0000006" / "pretrained_model"
    assert list((folder / "eval").glob("*.json"))
    card = render_model_card(folder)
    assert (folder / "README.md").read_text() == card
    head = card.split("\n---\n")[0]
    assert "model-index:" in head and "- name: pretrained_model" in head
    assert "type: anymdp-8" in head and "type: normalized_score_auc" in head
    assert re.search(r"value: -?\d+\.\d{4}", head)
    assert "Recipe: `tiny`" in card and "tasks generated on the fly" in card
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert f'AutoModel.from_pretrained("{folder}", trust_remote_code=True)' in code
    # run the snippet, shortened
    short = code.replace('load_suite("anymdp-16", 8)', 'load_suite("anymdp-16", 2)').replace("steps=2000", "steps=40")
    assert short != code
    capsys.readouterr()
    exec(compile(short, "model-card-snippet", "exec"), {})
    printed = capsys.readouterr().out
    assert "mean" in printed
    named = render_model_card(folder, repo_id="someone/tiny-agent")
    assert "- name: tiny-agent" in named and 'from_pretrained("someone/tiny-agent"' in named


def test_model_card_of_a_checkpoint_not_yet_evaluated(straight_run):
    from anymdp_agent.hub import render_model_card

    folder = straight_run / "checkpoints" / "0000004" / "pretrained_model"
    assert not (folder / "eval").exists()
    card = render_model_card(folder)
    assert "model-index" not in card and "Not evaluated yet" in card and "Recipe: `tiny`" in card


@pytest.mark.slow
def test_help_lists_every_field():
    proc = subprocess.run([sys.executable, "training/train.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for f in dataclasses.fields(train.TrainArgs):
        assert re.search(rf"--{f.name}\b", proc.stdout), f.name
    assert "--config" in proc.stdout


# ---------------------------------------------------------------------- launched runs (subprocesses)


@pytest.mark.slow
def test_cli_train(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "anymdp_agent.cli", "train", "--cpu", "--", "--config", "training/configs/tiny.yaml",
           "--output_dir", str(run), "--max_steps", "2", "--eval_every", "0", *FAST_EVAL]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert checkpoints(run) == [2]
    assert [x["step"] for x in loss_lines(run)] == [1, 2]


@pytest.mark.slow
def test_cli_train_two_processes_on_cpu():
    """``anymdp-agent train --cpu --num-processes 2`` must start two training processes, not one.

    Cheap probe: every process started runs train.py's ``--help``, so the usage appears once per process.
    """
    cmd = [sys.executable, "-m", "anymdp_agent.cli", "train", "--cpu", "--num-processes", "2", "--", "--help"]
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    started = proc.stdout.count("usage: train.py")
    assert started == 2, f"{started} training process(es) started for --num-processes 2"


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """Two processes: a straight 6-step run and one interrupted at step 3 then resumed."""
    base = tmp_path_factory.mktemp("two")
    straight, resumed = base / "straight", base / "resumed"
    launch_two(tiny(straight, "--max_steps", 6, "--eval_every", 0))
    launch_two(tiny(resumed, "--max_steps", 6, "--eval_every", 0, "--stop_at_step", 3))
    stopped = checkpoints(resumed)
    launch_two(tiny(resumed, "--max_steps", 6, "--eval_every", 0, "--resume"))
    return straight, resumed, stopped


@pytest.mark.slow
def test_two_process_resume_is_exact(two_process_runs, straight_run):
    straight, resumed, stopped = two_process_runs
    assert stopped == [3]
    assert checkpoints(resumed) == [3, 4, 6]
    for run in (straight, resumed):
        assert_two_ranks(run, 6)
    assert_same_tensors(weights(resumed, 6), weights(straight, 6))
    a, b = loss_lines(resumed), loss_lines(straight)
    assert [x["step"] for x in a] == [x["step"] for x in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b):
        assert {k: x[k] for k in LOSS_KEYS} == {k: y[k] for k in LOSS_KEYS}
    # two processes see twice the data: not the one-process run
    assert not all(torch.equal(v, weights(straight_run, 6)[k]) for k, v in weights(straight, 6).items())


@pytest.mark.slow
def test_learning_rate_per_step_is_the_same_with_one_and_two_processes(two_process_runs, straight_run):
    """The schedule counts optimiser steps: accelerate's prepared scheduler would step once per process."""
    one = [x["lr"] for x in loss_lines(straight_run)]
    for run in two_process_runs[:2]:
        assert [x["lr"] for x in loss_lines(run)] == one
    assert one[0] == 0.0 and max(one) == pytest.approx(0.01) and one[-1] > 0.001  # warm-up from 0, cosine not ended


@pytest.mark.slow
def test_tiny_recipe_end_to_end(two_process_runs):
    """Launched with two processes: checkpoints, logs, resume, then load the final model and roll it out."""
    from transformers import AutoModel

    from anymdp_agent.evaluation import load_suite, run_learner
    from anymdp_agent.rollout import AgentLearner

    run = two_process_runs[0]
    assert checkpoints(run) == [4, 6]
    for step in (4, 6):
        folder = run / "checkpoints" / f"{step:07d}"
        for name in PRETRAINED_FILES:
            assert (folder / "pretrained_model" / name).is_file(), (step, name)
        assert (folder / "training_state").is_dir()
        assert "Recipe: `tiny`" in (folder / "pretrained_model" / "README.md").read_text()
    assert_two_ranks(run, 4)
    assert (run / "checkpoints" / "0000006" / "pretrained_model" / "eval").is_dir()
    lines = loss_lines(run)
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(x[k]) for x in lines for k in ("policy_loss", "observation_loss", "reward_loss"))

    # the interrupted run: --resume continued from its last checkpoint (3) to the end
    resumed = two_process_runs[1]
    assert checkpoints(resumed) == [3, 4, 6]
    assert [x["step"] for x in loss_lines(resumed)] == [1, 2, 3, 4, 5, 6]
    cfg = json.loads((resumed / "checkpoints" / "0000006" / "pretrained_model" / "train_config.json").read_text())
    assert cfg["step"] == 6 and cfg["resume"] is True

    final = resumed / "checkpoints" / "0000006" / "pretrained_model"
    model = AutoModel.from_pretrained(str(final), trust_remote_code=True)
    state = model.state_dict()
    for key, value in load_file(str(final / "model.safetensors")).items():
        assert torch.equal(state[key], value), key
    suite = load_suite("anymdp-8", 2)
    result = run_learner(AgentLearner(model), suite, steps=30)
    assert result.steps == 30 and result.num_envs == 2
    assert np.isfinite(result.ret).all()


# ---------------------------------------------------------------------- streamed corpus


def test_streamed_corpus_batches_replay_exactly_on_resume(tmp_path, corpus):
    args = corpus_args(tmp_path, corpus, streaming=True)
    source = train.CorpusSource(args)
    straight = [source.batch(step, 0, 2) for step in range(5)]  # 10 sequences: the 3-sequence stream cycles
    resumed = train.CorpusSource(args).batch(4, 0, 2)            # a fresh source asked for step 4 replays to it
    for key in resumed:
        assert np.array_equal(resumed[key], straight[4][key]), key
    assert straight[0]["observations"].shape == (2, 24)
    assert not np.array_equal(straight[0]["observations"], straight[1]["observations"])
    split = [train.CorpusSource(args, rank=r, world=2).batch(0, r, 1)["observations"] for r in (0, 1)]
    assert not np.array_equal(split[0], split[1])  # each process reads its own part of the stream


def test_training_on_a_streamed_corpus_resumes_exactly(tmp_path, corpus, capsys):
    common = ["--corpus", corpus, "--streaming", "true", "--seq_len", 24, "--curriculum", "", "--n_states", 8,
              "--onpolicy_fraction", 0, "--max_steps", 4, "--eval_every", 0, "--save_every", 2]
    assert run_main(tiny(tmp_path / "straight", *common), capsys)[0] == 0
    assert run_main(tiny(tmp_path / "resumed", *common, "--stop_at_step", 3), capsys)[0] == 0
    assert run_main(tiny(tmp_path / "resumed", *common, "--resume"), capsys)[0] == 0
    assert_same_tensors(weights(tmp_path / "resumed", 4), weights(tmp_path / "straight", 4))


def test_memory_decay_trains_from_exact_statistics(tmp_path, capsys):
    """--memory_decay gives the planning backbone its learned forgetting rate, starting at exactly 1.0 (the exact
    statistics), and training moves it."""
    run = tmp_path / "decay"
    rc, err = run_main(tiny(run, "--memory_decay", "true", "--max_steps", "3", "--save_every", "3"), capsys)
    assert rc == 0, err
    folder = run / "checkpoints" / f"{3:07d}" / "pretrained_model"
    assert json.loads((folder / "config.json").read_text())["memory_decay"] is True
    decay = [v for k, v in load_file(str(folder / "model.safetensors")).items() if "decay" in k]
    assert len(decay) == 1 and float(decay[0]) != 0.0  # log decay: 0 at initialisation, moved by training
