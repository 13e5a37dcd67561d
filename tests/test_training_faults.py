"""training/train.py under faults and bad input: nothing lost, nothing silently wrong, one clear line.

The int16 data of the default settings, non-finite losses and gradients, a second writer on output_dir, half-written
checkpoints, an interrupted best/ swap, standard JSON, the guarded in-training push, the launch settings
(trackers, mixed precision, the learning-rate schedule, gradient accumulation). In-process runs of the tiny recipe
wherever the launcher does not matter; the launched ones are marked slow.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
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

FAST_EVAL = ["--eval_tasks", "1", "--eval_steps", "8", "--eval_baselines", "random"]


def tiny(output_dir, *extra) -> list[str]:
    return ["--config", str(TINY), "--output_dir", str(output_dir), *FAST_EVAL, *map(str, extra)]


def run_main(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = train.main(list(map(str, argv)))
    return rc, capsys.readouterr().err


def strict_json(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity (what standard JSON readers do)."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def steps_of(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "checkpoints").glob("*") if p.name.isdigit())


def loss_lines(run: Path) -> list[dict]:
    lines = [strict_json(x) for x in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "policy_loss" in x]


# ---------------------------------------------------------------------- issue: int16 data reached the model


def test_model_inputs_are_int64_whatever_the_data_dtype():
    batch = {"observations": np.array([[1, 2]], np.int16), "actions": np.array([[0, 1]], np.uint8),
             "rewards": np.array([[0.5, 1.0]], np.float64), "tags": np.array([[0, 0]], np.int32),
             "labels": np.array([[-1, 3]], np.int16), "prompts": np.array([0], np.int8),
             "n_actions": np.array([4], np.int16)}
    out = train.model_inputs(batch, "cpu")
    assert {k: v.dtype for k, v in out.items()} == {**{k: torch.int64 for k in batch}, "rewards": torch.float32}
    assert out["labels"].tolist() == [[-100, 3]] and out["observations"].tolist() == [[1, 2]]


def test_default_settings_without_onpolicy_data_train(tmp_path, capsys):
    """--onpolicy_fraction 0 (the TrainArgs default) with tasks on the fly: int16 rows from roll_sequences."""
    run = tmp_path / "run"
    rc, err = run_main(tiny(run, "--onpolicy_fraction", 0, "--max_steps", 2, "--eval_every", 0), capsys)
    assert rc == 0, err
    assert steps_of(run) == [2] and [x["step"] for x in loss_lines(run)] == [1, 2]


@pytest.mark.slow
def test_real_script_with_default_onpolicy_fraction(tmp_path):
    proc = subprocess.run([sys.executable, "training/train.py", *tiny(tmp_path / "run", "--onpolicy_fraction", 0,
                                                                     "--max_steps", 2, "--eval_every", 0)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert steps_of(tmp_path / "run") == [2]


# ---------------------------------------------------------------------- non-finite loss or gradient


def test_non_finite_gradient_stops_before_anything_is_saved(tmp_path, capsys, monkeypatch):
    real = train._forward_backward
    calls = []

    def poisoned(accelerator, model, *args):
        out = real(accelerator, model, *args)
        calls.append(1)
        if len(calls) == 3:  # step 3: one NaN in the gradient
            next(p for p in model.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(train, "_forward_backward", poisoned)
    run = tmp_path / "run"
    rc, err = run_main(tiny(run, "--max_steps", 6, "--save_every", 2, "--eval_every", 0), capsys)
    assert rc == 2
    lines = [x for x in err.splitlines() if x.startswith("train: error:")]
    assert len(lines) == 1 and "step 3: the gradient norm is not finite" in lines[0], err
    assert "tasks generated on the fly" in lines[0] and "0000002" in lines[0]
    assert steps_of(run) == [2]  # nothing after the bad step
    assert [x["step"] for x in loss_lines(run)] == [1, 2]
    for value in load_file(str(run / "checkpoints" / "0000002" / "pretrained_model" / "model.safetensors")).values():
        assert torch.isfinite(value).all()


def test_huge_rewards_never_finish_with_an_infinite_loss(tmp_path, capsys, monkeypatch):
    """Rewards x 1e30 (finite, so no data check refuses them): the run must not end with exit 0 and inf losses."""
    real = train.TaskStream.batch

    def huge(self, *args):
        out = real(self, *args)
        return {**out, "rewards": out["rewards"].astype(np.float64) * 1e30}

    monkeypatch.setattr(train.TaskStream, "batch", huge)
    run = tmp_path / "run"
    rc, err = run_main(tiny(run, "--onpolicy_fraction", 0, "--max_steps", 2, "--eval_every", 0), capsys)
    if rc == 0:  # the model keeps its reward statistics finite: then every logged loss must be finite
        assert all(math.isfinite(x[k]) for x in loss_lines(run) for k in ("policy_loss", "reward_loss"))
    else:
        assert rc == 2 and "train: error:" in err, err
        assert not steps_of(run)


def test_check_finite_names_the_loss_and_the_data(tmp_path):
    from accelerate import Accelerator

    args = train.parse_args(tiny(tmp_path / "run", "--corpus", "some/corpus"))
    logs = {"policy_loss": 1.0, "observation_loss": 2.0, "reward_loss": math.inf}
    with pytest.raises(train.TrainingStopped, match=r"step 5: the loss is not finite \(.*reward_loss=inf\) on the "
                                                    r"batch of process 0, data: corpus 'some/corpus'"):
        train.check_finite(Accelerator(cpu=True), args, 4, logs, 1.0, None)
    train.check_finite(Accelerator(cpu=True), args, 4, {**logs, "reward_loss": 3.0}, 1.0, None)  # all finite: no-op


# ---------------------------------------------------------------------- one writer per output_dir


def _hold_lock(run: Path):
    run.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
            "time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run / train.LOCK)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        rc, err = run_main(tiny(run, "--max_steps", 1, "--eval_every", 0), capsys)
        assert rc == 2 and f"in use by another training run (pid {holder.pid})" in err, err
        assert not (run / "checkpoints").exists() and not (run / "logs").exists()  # refused before any work
    finally:
        holder.kill()
        holder.wait()
    assert (run / train.LOCK).read_text().strip() == str(holder.pid)  # the dead writer's lock file is still there
    rc, err = run_main(tiny(run, "--max_steps", 1, "--save_every", 1, "--eval_every", 0), capsys)
    assert rc == 0, err
    assert steps_of(run) == [1]


# ---------------------------------------------------------------------- checkpoints: complete or skipped


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
    """The tiny recipe, 6 steps, a checkpoint every 2 (2, 4, 6), no evaluation before the end."""
    run = tmp_path_factory.mktemp("six") / "run"
    assert train.main(tiny(run, "--max_steps", 6, "--save_every", 2, "--eval_every", 0)) == 0
    return run


def _weights(run: Path, step: int) -> dict:
    return load_file(str(run / "checkpoints" / f"{step:07d}" / "pretrained_model" / "model.safetensors"))


def test_every_checkpoint_carries_a_manifest_written_last(six_steps):
    assert steps_of(six_steps) == [2, 4, 6]
    for step in (2, 4, 6):
        folder = six_steps / "checkpoints" / f"{step:07d}"
        manifest = strict_json((folder / train.MANIFEST).read_text())
        assert manifest["step"] == step
        assert "training_state/model.safetensors" in manifest["files"]
        assert "pretrained_model/train_config.json" in manifest["files"]
        assert train.checkpoint_problem(folder) is None
    assert not [p for p in (six_steps / "checkpoints").iterdir() if p.name.startswith(".")]


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path):
    shutil.rmtree(path)
    path.mkdir()


@pytest.mark.parametrize("damage", [
    lambda f: (f / "pretrained_model" / "train_config.json").unlink(),
    lambda f: _empty(f / "training_state"),
    lambda f: _truncate(f / "training_state" / "model.safetensors"),
    lambda f: (f / train.MANIFEST).unlink(),
], ids=["no-train-config", "empty-training-state", "truncated-state-weights", "no-manifest"])
def test_resume_skips_an_incomplete_latest_checkpoint(six_steps, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(six_steps, run)
    damage(run / "checkpoints" / "0000006")
    (run / "checkpoints" / ".tmp-0000008").mkdir()  # what a kill during a save leaves
    rc, err = run_main(tiny(run, "--max_steps", 6, "--save_every", 2, "--eval_every", 0, "--resume"), capsys)
    assert rc == 0, err
    assert "skipping the incomplete checkpoint" in err and "0000006" in err, err
    assert steps_of(run) == [2, 4, 6] and not (run / "checkpoints" / ".tmp-0000008").exists()
    assert train.checkpoint_problem(run / "checkpoints" / "0000006") is None
    # resumed from step 4: the same weights as the uninterrupted run
    for key, value in _weights(six_steps, 6).items():
        assert torch.equal(_weights(run, 6)[key], value), key


def test_resume_with_only_incomplete_checkpoints_is_refused(six_steps, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(six_steps, run)
    for folder in (run / "checkpoints").iterdir():
        (folder / train.MANIFEST).unlink()
    rc, err = run_main(tiny(run, "--max_steps", 6, "--resume"), capsys)
    assert rc == 2 and "no checkpoint" in err and err.count("skipping the incomplete checkpoint") == 3, err


# ---------------------------------------------------------------------- best/: never missing, never lost


def _fake_checkpoint(run: Path, step: int) -> Path:
    folder = run / "checkpoints" / f"{step:07d}"
    (folder / "pretrained_model").mkdir(parents=True)
    (folder / "pretrained_model" / "train_config.json").write_text(json.dumps({"step": step}))
    (folder / "pretrained_model" / "config.json").write_text("{}")
    train.write_json(folder / train.MANIFEST, {"step": step, "files": train._files_of(folder)})
    return folder


def test_rotation_keeps_the_best_checkpoint_while_best_is_missing(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4, 6, 8):
        _fake_checkpoint(run, step)
    train.rotate_checkpoints(run, keep=2, best_step=2)  # no best/: checkpoint 2 is the only copy of the best weights
    assert steps_of(run) == [2, 6, 8]
    shutil.copytree(run / "checkpoints" / "0000002" / "pretrained_model", run / "best")
    train.rotate_checkpoints(run, keep=2, best_step=2)  # best/ holds step 2 now
    assert steps_of(run) == [6, 8]


def test_an_interrupted_best_swap_is_finished_on_resume(tmp_path, monkeypatch):
    from anymdp_agent import hub

    monkeypatch.setattr(train, "write_model_card", lambda folder, repo_id=None: hub.atomic_write(
        Path(folder) / "README.md", lambda fh: fh.write(b"card")) if hasattr(hub, "atomic_write") else
        (Path(folder) / "README.md").write_text("card"))
    run = tmp_path / "run"
    for step in (2, 4):
        _fake_checkpoint(run, step)
    train.install_best(run, run / "checkpoints" / "0000002" / "pretrained_model", None)
    assert train._best_step(run) == 2
    real, calls = os.replace, []

    def killed_between_the_renames(src, dst):
        calls.append(dst)
        if Path(dst).name == "best":
            raise KeyboardInterrupt  # the kill: old best/ moved aside, the new one not yet in place
        return real(src, dst)

    monkeypatch.setattr(train.os, "replace", killed_between_the_renames)
    with pytest.raises(KeyboardInterrupt):
        train.install_best(run, run / "checkpoints" / "0000004" / "pretrained_model", None)
    monkeypatch.setattr(train.os, "replace", real)
    assert not (run / "best").exists() and (run / ".best.new").is_dir() and (run / ".best.old").is_dir()
    train.repair_best(run, {"step": 4}, None, say=lambda m: None)
    assert train._best_step(run) == 4
    assert not [p.name for p in run.iterdir() if p.name.startswith(".best")]


@pytest.mark.parametrize("leftover", ["old-only", "nothing"])
def test_a_missing_best_is_restored_or_rebuilt(tmp_path, monkeypatch, leftover):
    monkeypatch.setattr(train, "write_model_card", lambda folder, repo_id=None: (Path(folder) / "README.md").write_text("c"))
    run = tmp_path / "run"
    for step in (2, 4):
        _fake_checkpoint(run, step)
    train.install_best(run, run / "checkpoints" / "0000004" / "pretrained_model", None)
    if leftover == "old-only":
        os.replace(run / "best", run / ".best.old")
    else:
        shutil.rmtree(run / "best")
    (run / ".best.tmp").mkdir()  # a copy that was being made: never taken for a best/
    said = []
    train.repair_best(run, {"step": 4}, None, say=said.append)
    assert train._best_step(run) == 4 and said
    assert not [p.name for p in run.iterdir() if p.name.startswith(".best")]


def test_best_card_names_best_itself(six_steps):
    """best/ is rendered for itself: its load snippet survives checkpoint rotation."""
    card = (six_steps / "best" / "README.md").read_text()
    assert f'from_pretrained("{six_steps / "best"}"' in card and "checkpoints/" not in card.split("```python")[1]


# ---------------------------------------------------------------------- standard JSON


def test_written_json_is_standard(six_steps):
    config = strict_json((six_steps / "checkpoints" / "0000002" / "pretrained_model" / "train_config.json").read_text())
    assert config["best"] == {"auc": None, "step": None}  # not yet evaluated: null, never -Infinity
    for line in (six_steps / "logs" / "metrics.jsonl").read_text().splitlines():
        strict_json(line)
    strict_json((six_steps / "logs" / "config.json").read_text())


def test_dumps_json_writes_null_for_non_finite_numbers():
    from anymdp_agent.fileio import dumps_json

    text = dumps_json({"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": np.float32(2.0), "d": np.array([np.nan])})
    assert strict_json(text) == {"a": None, "b": [None, None, 1.5], "c": 2.0, "d": [None]}


# ---------------------------------------------------------------------- the in-training push


def test_push_to_hub_failure_warns_once_per_checkpoint_and_the_run_finishes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    run = tmp_path / "run"
    rc, err = run_main(tiny(run, "--max_steps", 2, "--save_every", 1, "--eval_every", 2, "--push_to_hub", "true",
                            "--hub_repo_id", "someone/tiny-agent"), capsys)
    assert rc == 0, err
    warnings = [x for x in err.splitlines() if x.startswith("train: warning: push of")]
    assert len(warnings) == 2 and all("someone/tiny-agent" in x and "anymdp-agent push" in x for x in warnings), err
    assert (run / "checkpoints" / "0000002" / "pretrained_model" / "eval").is_dir()


# ---------------------------------------------------------------------- launch settings


def test_every_accelerate_tracker_is_accepted_when_installed():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    assert train.tracker_names("jsonl") == ["jsonl"]
    for name in LOGGER_TYPE_TO_CLASS:
        if name in available:
            assert train.tracker_names(f"jsonl,{name}") == ["jsonl", name]
        else:
            with pytest.raises(ValueError, match=rf"--report_to {name}: the {name} package is not installed \(pip "):
                train.tracker_names(name)
    with pytest.raises(ValueError, match="unknown tracker 'nonsense' in --report_to: choose from jsonl, .*trackio"):
        train.tracker_names("nonsense")


def test_mixed_precision_comes_from_the_launcher_unless_bf16_is_given(tmp_path):
    assert train.parse_args(tiny(tmp_path)).bf16 is None  # Accelerator(mixed_precision=None): the launcher's
    assert train.parse_args(tiny(tmp_path, "--bf16")).bf16 is True
    assert train.parse_args(tiny(tmp_path, "--bf16", "false")).bf16 is False


def test_learning_rate_follows_the_transformers_schedule_per_optimiser_step(six_steps):
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=6, min_lr_rate=0.1)
    expected = []
    for _ in range(6):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [x["lr"] for x in loss_lines(six_steps)] == pytest.approx(expected, rel=1e-12)


def test_gradient_accumulation_resumes_exactly(tmp_path, capsys):
    common = ["--onpolicy_fraction", 0, "--max_steps", 3, "--save_every", 1, "--eval_every", 0,
              "--gradient_accumulation_steps", 2]
    assert run_main(tiny(tmp_path / "straight", *common), capsys)[0] == 0
    assert run_main(tiny(tmp_path / "resumed", *common, "--stop_at_step", 2), capsys)[0] == 0
    rc, err = run_main(tiny(tmp_path / "resumed", *common, "--resume"), capsys)
    assert rc == 0, err
    for key, value in _weights(tmp_path / "straight", 3).items():
        assert torch.equal(_weights(tmp_path / "resumed", 3)[key], value), key
    # two batches per step: not the one-batch run
    assert run_main(tiny(tmp_path / "one", *common[:-2]), capsys)[0] == 0
    assert not all(torch.equal(v, _weights(tmp_path / "one", 3)[k]) for k, v in _weights(tmp_path / "straight", 3).items())


def test_yaml_syntax_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: [1\n")
    rc, err = run_main(["--config", bad, "--output_dir", tmp_path / "run"], capsys)
    assert rc == 2 and err.count("\n") == 1 and f"{bad} is not valid YAML" in err and "line 2" in err, err
    bad.write_text("- a\n- b\n")
    rc, err = run_main(["--config", bad, "--output_dir", tmp_path / "run"], capsys)
    assert rc == 2 and "must be a mapping" in err, err


def test_simple_launcher_asked_for_several_processes_is_refused():
    env = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(ValueError, match="asked for several processes but started one"):
        train.check_launch(env)
    train.check_launch({**env, "WORLD_SIZE": "2"})  # torchrun: fine
    train.check_launch({"ACCELERATE_USE_CPU": "True"})  # one process asked: fine


# ---------------------------------------------------------------------- `anymdp-agent train` (subprocesses)


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "anymdp_agent.cli", "train", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.slow
def test_cli_user_errors_are_one_line_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: [1\n")
    for extra in ([], ["--num-processes", 2]):
        proc = cli("--cpu", *extra, "--", "--config", bad, "--output_dir", tmp_path / "run")
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.strip().count("\n") == 0 and "is not valid YAML" in proc.stderr, proc.stderr
    # an error found by the training process itself (here: a second writer) keeps its status through the launcher
    holder = _hold_lock(tmp_path / "locked")
    try:
        proc = cli("--cpu", "--", *tiny(tmp_path / "locked", "--max_steps", 1))
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2 and f"pid {holder.pid}" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "CalledProcessError" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_cli_config_file_starts_two_processes():
    proc = cli("--config-file", "training/accelerate/cpu-2proc.yaml", "--", "--help",
               env={k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("usage: train.py") == 2


def test_a_stopping_trainer_ignores_the_launchers_sigterm_and_dies_on_a_second_ctrl_c():
    """`anymdp-agent train` signals the whole launch and the launcher then terminates its child too: the trainer
    gets the stop twice. The duplicate SIGTERM must not cut the clean stop short; Ctrl-C again still ends it."""
    script = (
        "import os, signal, sys, time\n"
        f"sys.path.insert(0, {str(ROOT / 'training')!r})\n"
        "import train\n"
        "train._stop_on_signals()\n"
        "for first in (signal.SIGTERM, signal.SIGINT):\n"
        "    try:\n"
        "        os.kill(os.getpid(), first); time.sleep(5)\n"
        "    except train.Interrupted as e:\n"
        "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)\n"
        "        print('stopping cleanly after', signal.Signals(e.signum).name, flush=True)\n"
        "    train._stop_on_signals()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
        "except train.Interrupted:\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
        "print('still alive')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines() == ["stopping cleanly after SIGTERM", "stopping cleanly after SIGINT"], \
        proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == -signal.SIGINT, proc.stderr[-3000:]


@pytest.mark.slow
def test_cli_forwards_sigterm_to_the_training_processes(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "anymdp_agent.cli", "train", "--cpu", "--",
                             *tiny(run, "--max_steps", 10000, "--save_every", 1, "--eval_every", 0)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 400
    while not steps_of(run) if (run / "checkpoints").exists() else True:
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    trainer_pid = int((run / train.LOCK).read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    # the trainer's own clean stop, not the wrapper's fallback line ("anymdp-agent train: stopped by ...")
    assert any(line.startswith("train: stopped by SIGTERM") for line in err.splitlines()), err[-3000:]
    with pytest.raises(ProcessLookupError):  # the training process ended with the wrapper
        os.kill(trainer_pid, 0)
    done = steps_of(run)
    time.sleep(2)
    assert steps_of(run) == done  # nobody writes any more
    rc = subprocess.run([sys.executable, "training/train.py", *tiny(run, "--max_steps", done[-1] + 1, "--save_every", 1,
                                                                    "--eval_every", 0, "--resume")],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rc.returncode == 0, rc.stderr[-3000:]


def test_accumulated_batches_are_the_data_of_more_processes(tmp_path):
    """Batch m of process r under --gradient_accumulation_steps K is data rank r*K+m of world*K, streamed or not."""
    import dataclasses

    from anymdp_agent.data import CorpusConfig, generate_corpus

    corpus = tmp_path / "corpus-accumulation"
    generate_corpus(corpus, CorpusConfig(tasks=4, seq_len=40, labels=("oracle",)), progress=False)
    base = train.TrainArgs(corpus=str(corpus), output_dir=str(tmp_path / "run"), num_observations=16, seq_len=24,
                           batch_size=1, label="oracle", streaming=True)
    accumulated = train.CorpusSource(dataclasses.replace(base, gradient_accumulation_steps=2), rank=0, world=1)
    for rank in (0, 1):
        alone = train.CorpusSource(base, rank=rank, world=2)
        for step in range(3):
            a, b = accumulated.batch(step, rank, 1), alone.batch(step, rank, 1)
            for key in a:
                assert np.array_equal(a[key], b[key]), (rank, step, key)
