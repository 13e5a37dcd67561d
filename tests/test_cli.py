"""The command line: ``anymdp-agent eval`` / ``demo`` in process and as ``python -m anymdp_agent.cli``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from anymdp_agent.cli import build_parser, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OPTIONS = ("--suite", "--learners", "--tasks", "--steps", "--window", "--seed", "--seed-offset", "--out",
           "--no-progress", "--paired")
SMALL = ["--suite", "anymdp-16", "--learners", "random,oracle", "--tasks", "4", "--steps", "300", "--window", "100",
         "--no-progress"]


def run_cli(args, cwd=None):
    return subprocess.run([sys.executable, "-m", "anymdp_agent.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_eval_writes_json_png_and_prints_a_table(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["eval", *SMALL, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["eval-anymdp-16.json", "eval-anymdp-16.png"]
    assert (out / "eval-anymdp-16.png").read_bytes()[:8] == PNG_MAGIC
    result = json.loads((out / "eval-anymdp-16.json").read_text())
    assert result["config"] == {"suite": "anymdp-16", "learners": ["random", "oracle"], "tasks": 4, "steps": 300,
                                "seed": 0, "window": 100, "seed_offset": 0, "paired": None}
    assert list(result["learners"]) == ["random", "oracle"]
    assert len(result["suite"]["oracle_return"]) == 4
    lines = printed.splitlines()
    assert lines[0].startswith("suite anymdp-16:") and "4 instances, 300 steps" in lines[0]
    assert "AUC mean [95% CI]" in printed and "AUC IQM [95% CI]" in printed
    for name in ("random", "oracle"):
        row = next(line for line in lines if line.startswith(name))
        assert f"{result['learners'][name]['auc']['mean']:.3f}" in row
    assert lines[-1] == f"wrote {out / 'eval-anymdp-16.json'} and {out / 'eval-anymdp-16.png'}"


def test_eval_options_reach_the_config(tmp_path, capsys):
    out = tmp_path / "o"
    args = ["eval", "--suite", "garnet-8", "--learners", " mbrl:sweeps=2 , random ,", "--tasks", "2", "--steps", "120",
            "--window", "60", "--seed", "5", "--seed-offset", "7", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    result = json.loads((out / "eval-garnet-8.json").read_text())
    assert result["config"] == {"suite": "garnet-8", "learners": ["mbrl:sweeps=2", "random"], "tasks": 2, "steps": 120,
                                "seed": 5, "window": 60, "seed_offset": 7, "paired": None}
    assert result["suite"]["task_seeds"] == [1_100_000_007, 1_100_000_008]
    assert result["learners"]["mbrl:sweeps=2"]["hyperparameters"] == {"gamma": 0.99, "sweeps": 2, "lookahead": 0,
                                                                           "optimism": 1.0, "known": "none", "prior": "",
                                                                           "prior_weight": 1.0, "novelty": 0.0, "tail": 0,
                                                                           "seen_only": 0, "refresh_fraction": 0.0, "evidence": 0,
                                                                           "off_terminal": 0, "arrival": 0}


@pytest.mark.parametrize("args, message", [
    (["--suite", "nope"], "unknown suite 'nope'"),
    (["--suite", "gym:NoSuchEnv-v0"], "unknown Gymnasium environment"),
    (["--learners", "random,bogus"], "unknown learner 'bogus'"),
    (["--learners", "mbrl:sweeps"], "not of the form key=value"),
    (["--learners", ","], "at least one learner"),
    (["--steps", "0"], "steps must be a positive integer"),
    (["--tasks", "-1"], "tasks must be a positive integer"),
    (["--window", "0"], "window must be a positive integer"),
    (["--seed", "-3"], "seed"),
    (["--paired", "random:oracle"], "--paired 'random:oracle' does not name two of its learners"),
])
def test_bad_input_exits_2_before_writing(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    base = ["--suite", "anymdp-16", "--learners", "random", "--tasks", "2", "--steps", "50", "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main(["eval", *base, *args, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("anymdp-agent eval: error: ") and message in err
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_eval_paired_prints_and_stores_the_difference(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["eval", *SMALL, "--out", str(out), "--paired", "oracle:random,random:random"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "eval-anymdp-16.json").read_text())
    assert result["config"]["paired"] == ["oracle:random", "random:random"]
    better, same = result["paired"]
    assert (better["learner"], better["baseline"]) == ("oracle", "random") and better["ci_low"] > 0
    assert (same["mean"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    row = next(line for line in printed.splitlines() if line.startswith("oracle - random"))
    assert f"{better['mean']:.3f} [{better['ci_low']:.3f}, {better['ci_high']:.3f}]" in row
    assert main(["eval", *SMALL, "--out", str(out), "--paired", "none"]) == 0
    assert json.loads((out / "eval-anymdp-16.json").read_text())["paired"] == []
    capsys.readouterr()


def test_an_agent_that_cannot_run_fails_before_the_baselines_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    # Taxi has 6 actions; an agent that embeds ids knows 5 (the default, model_based agent takes any number)
    agent = "agent:anymdp-agent-planning-cpu"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--suite", "gym:Taxi-v4", "--learners", f"random,{agent}", "--tasks", "1", "--steps", "100000",
              "--no-progress", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (f"learner '{agent}' cannot run on suite gym:Taxi-v4: the environments have 6 actions but the agent "
            "knows 5: use an agent trained with more actions, or a model_based one (any number)") in err
    assert os.listdir(tmp_path) == []  # no empty --out folder (nor its parent)


@pytest.mark.parametrize("args, message", [
    (["--seed", str(2**63)], "--seed must be in 0..2**63 - 1, got 9223372036854775808"),
    (["--suite", "anymdp-999999999"], "suite anymdp-999999999 with 2 tasks (999999999 states each) needs about"),
    (["--suite", "gym:LunarLander-v3"], "needs a package that is not installed"),
    (["--learners", "tql:alpha=abc"], "learner 'tql:alpha=abc': alpha must be a number, got 'abc'"),
    (["--learners", "agent:NOPE"], "no checkpoint folder at NOPE"),
])
@pytest.mark.slow
def test_more_bad_input_exits_2_in_one_line(tmp_path, args, message):
    base = ["eval", "--suite", "anymdp-16", "--learners", "random", "--tasks", "2", "--steps", "50", "--no-progress"]
    r = run_cli([*base, *args, "--out", str(tmp_path / "o")], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_broken_agent_checkpoints_exit_2_in_one_line(tmp_path):
    import shutil

    from anymdp_agent.rollout import bundled_agent_path

    src = bundled_agent_path()
    weights, config = tmp_path / "weights", tmp_path / "config"
    for d in (weights, config):
        shutil.copytree(src, d)
    (weights / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[:1000])
    (config / "config.json").write_text("{not json")
    base = ["eval", "--suite", "anymdp-16", "--tasks", "2", "--steps", "50", "--no-progress", "--out", str(tmp_path / "o")]
    for spec, message in [(f"agent:{weights}", "are corrupt or truncated"),
                          (f"agent:{config}", f"{config / 'config.json'} is not valid JSON"),
                          (f"agent:{src}:device=cuda", "has no CUDA device"),
                          (f"agent:{src}:device=gpu7", "is not a torch device"),
                          (f"agent:{src}:decay_steps=abc", "decay_steps must be an integer, got 'abc'")]:
        if "cuda" in spec and __import__("torch").cuda.is_available():
            continue
        r = run_cli([*base, "--learners", f"random,{spec}"], cwd=tmp_path)
        assert r.returncode == 2, (spec, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (spec, r.stderr)
    assert not (tmp_path / "o").exists()


def test_demo_names_the_flag(tmp_path, capsys):
    for flag in ("--frozenlake-steps", "--frozenlake-runs", "--tasks", "--steps"):
        with pytest.raises(SystemExit) as exc:
            main(["demo", flag, "0", "--out", str(tmp_path / "d"), "--no-progress"])
        assert exc.value.code == 2
        assert f"anymdp-agent demo: error: {flag} must be a positive integer, got 0" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_unwritable_out_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        main(["eval", *SMALL, "--out", str(blocker / "sub")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "cannot write to output folder" in err and "choose another --out" in err
    assert os.listdir(tmp_path) == ["a-file"] and blocker.read_text() == "not a folder"


def test_non_discrete_gym_suite_exits_2_without_writing_results(tmp_path, capsys):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--suite", "gym:CartPole-v1", "--learners", "random", "--tasks", "1", "--steps", "10",
              "--no-progress", "--out", str(out)])
    assert exc.value.code == 2
    assert "only environments with Discrete observations and actions" in capsys.readouterr().err
    assert not out.exists() or os.listdir(out) == []


def test_argparse_type_errors_exit_2(capsys):
    for args in (["eval", "--steps", "abc"], ["eval", "--bogus"], [], ["nocommand"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
    capsys.readouterr()


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option in text, option
    for learner in ("oracle", "random", "tql", "ucbq", "mbrl"):
        assert learner in text
    assert "gym:<EnvId>" in text and "frozenlake" in text


def test_demo_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--tasks", "--steps", "--frozenlake-runs", "--frozenlake-steps", "--seed", "--out", "--no-progress"):
        assert option in text, option


def test_defaults():
    parser = build_parser()
    e = parser.parse_args(["eval"])
    assert (e.suite, e.learners, e.tasks, e.steps, e.window, e.seed, e.seed_offset, e.out, e.no_progress) == (
        "anymdp-16", "oracle,random,tql,ucbq,mbrl", 64, 4000, 500, 0, 0, "results", False)
    d = parser.parse_args(["demo"])
    assert (d.tasks, d.steps, d.frozenlake_runs, d.frozenlake_steps, d.out) == (64, 4000, 16, 8000, "results/demo")


def test_module_entry_point(tmp_path):
    top = run_cli(["--help"])
    assert top.returncode == 0 and "eval" in top.stdout and "demo" in top.stdout
    ok = run_cli(["eval", *SMALL, "--out", str(tmp_path / "r")])
    assert ok.returncode == 0, ok.stderr
    assert "random" in ok.stdout and "oracle" in ok.stdout
    assert (tmp_path / "r" / "eval-anymdp-16.json").is_file() and (tmp_path / "r" / "eval-anymdp-16.png").is_file()
    bad = run_cli(["eval", "--suite", "nope", "--out", str(tmp_path / "x")])
    assert bad.returncode == 2 and "unknown suite 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    assert main(["eval", "--suite", "anymdp-16", "--learners", "random", "--tasks", "2", "--steps", "200",
                 "--window", "100", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("suite anymdp-16")
    assert "random" in captured.out


def test_demo_runs_the_bundled_agent_next_to_the_baselines(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--tasks", "3", "--steps", "200", "--frozenlake-runs", "2", "--frozenlake-steps", "200",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for name, agents in (("eval-anymdp-16", ["agent", "sequence-agent"]), ("eval-frozenlake", ["agent"])):
        result = json.loads((out / f"{name}.json").read_text())
        assert list(result["learners"]) == agents + ["mbrl", "ucbq", "tql", "random", "oracle"]
        assert result["learners"]["agent"]["hyperparameters"]["backbone"] == "model_based"
        if "sequence-agent" in agents:  # the paper's route beside the default agent
            assert result["learners"]["sequence-agent"]["hyperparameters"]["backbone"] == "sequence"
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(re.findall(r"\nagent +-?\d", text)) == 2 and "success rate" in text and "demo finished" in text
    # the bundled agent is paired with every baseline on the same tasks, in the JSON and in the table
    pairs = result["paired"]
    assert [(p["learner"], p["baseline"]) for p in pairs] == [("agent", b) for b in (
        "mbrl", "ucbq", "tql", "random", "oracle")]
    assert text.count("\nagent - mbrl ") == 2 and text.count("\nagent - ") == 10
