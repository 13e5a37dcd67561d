"""The package as installed: every package listed, training and cards inside it, recipes by name, light imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _clean_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"})
    return env


def test_every_package_folder_is_in_the_wheel():
    """pyproject lists packages explicitly (for the package-dir mapping): a new subpackage must be added there."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "anymdp_agent").rglob("__init__.py")
             if "pretrained" not in p.parts}
    assert found <= listed, f"not in pyproject's packages: {sorted(found - listed)}"
    assert config["package-dir"] == {"anymdp_agent.training": "training", "anymdp_agent.cards": "cards"}
    for package, folder in config["package-dir"].items():
        assert (ROOT / folder / "__init__.py").is_file() and package in listed


def test_training_and_cards_are_read_through_the_package():
    import anymdp_agent.cards
    import anymdp_agent.training.train as train_module
    from anymdp_agent.cards import template

    assert Path(train_module.__file__).resolve() == ROOT / "training" / "train.py"
    assert Path(anymdp_agent.cards.__file__).resolve().parent == ROOT / "cards"
    assert template("model_card.md") == (ROOT / "cards" / "model_card.md").read_text()
    assert template("dataset_card.md") == (ROOT / "cards" / "dataset_card.md").read_text()


def test_bundled_recipes_resolve_by_name_and_files_still_work(tmp_path, monkeypatch):
    from anymdp_agent.training.recipes import recipe_names, resolve_recipe

    assert {"cpu-default", "gpu-large", "tiny"} <= set(recipe_names())
    assert recipe_names() == sorted(p.stem for p in (ROOT / "training" / "configs").glob("*.yaml"))
    for name in recipe_names():
        assert resolve_recipe(name) == ROOT / "training" / "configs" / f"{name}.yaml"
    assert resolve_recipe("tiny.yaml") == ROOT / "training" / "configs" / "tiny.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("max_steps: 3\n")
    assert resolve_recipe(str(own)) == own
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text("max_steps: 5\n")  # a file of that name here wins over the bundled recipe
    assert resolve_recipe("tiny.yaml") == Path("tiny.yaml")
    with pytest.raises(ValueError, match=r"no recipe at tinny: .*\(cpu-default, .*gpu-large, .*tiny\)"):
        resolve_recipe("tinny")
    with pytest.raises(ValueError, match="no recipe at configs/tiny.yaml"):
        resolve_recipe("configs/tiny.yaml")  # a path that is not there is not silently a bundled recipe


def test_train_takes_a_bundled_recipe_by_name(tmp_path, monkeypatch):
    from anymdp_agent.training.train import parse_args

    monkeypatch.chdir(tmp_path)  # any folder
    args = parse_args(["--config", "tiny", "--max_steps", "3"])
    assert (args.recipe, args.max_steps, args.planning_steps) == ("tiny", 3, 4)
    assert parse_args(["--config", "cpu-default"]).recipe == "cpu-default"
    with pytest.raises(ValueError, match="no recipe at nope"):
        parse_args(["--config", "nope"])


def test_cli_train_launches_the_packaged_module(monkeypatch):
    import subprocess as sp

    from anymdp_agent import cli

    calls = []

    class FakeLauncher:  # records the command; the trainer itself is not started
        def __init__(self, cmd, env=None, start_new_session=False):
            calls.append(cmd)
            self.pid = 0

        def wait(self):
            return 0

    monkeypatch.setattr(sp, "Popen", FakeLauncher)
    assert cli.main(["train", "--cpu", "--", "--config", "tiny", "--max_steps", "2"]) == 0
    cmd, = calls
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and "--cpu" in cmd
    assert cmd[cmd.index("-m", 3):] == ["-m", cli.TRAIN_MODULE, "--config", "tiny", "--max_steps", "2"]
    assert cli.TRAIN_MODULE == "anymdp_agent.training.train"


@pytest.mark.slow
def test_the_trainer_runs_as_a_module_from_any_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "anymdp_agent.training.train", "--help"], cwd=tmp_path,
                          env=_clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = " ".join(proc.stdout.split())
    assert text.startswith("usage: train.py") and "bundled recipe by name: tiny, cpu-default, gpu- large" in text


_LIGHT = """
import json, sys
import anymdp_agent.envs
from anymdp_agent.envs import sample_anymdp_task
import anymdp_agent
task = anymdp_agent.sample_anymdp_task(8, seed=1)
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
model_cls = anymdp_agent.AnyMDPAgentModel          # the first use imports transformers and registers
from transformers import AutoConfig, AutoModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
print("RESULT " + json.dumps({"heavy": heavy, "after": "torch" in sys.modules,
                              "registered": CONFIG_MAPPING["anymdp_agent"].__name__,
                              "n_states": task.n_states, "dir": "AnyMDPAgentModel" in dir(anymdp_agent)}))
"""


@pytest.mark.slow
def test_importing_envs_does_not_load_torch_or_transformers(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _LIGHT], cwd=tmp_path, env=_clean_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    assert result == {"heavy": [], "after": True, "registered": "AnyMDPAgentConfig", "n_states": 8, "dir": True}


def test_unknown_top_level_names_raise_attribute_error():
    import anymdp_agent

    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        anymdp_agent.nothing_here  # noqa: B018


def test_nothing_in_the_repository_points_outside_it():
    """Users have the repository (or the wheel) only: no reference to the developers' shared specs."""
    outside = ("shared" + "/spec", "../" + "shared")
    skip = {".git", ".venv", "runs", "results", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}
    hits = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if skip & set(rel.parts) or any(p.endswith(".egg-info") for p in rel.parts) or not path.is_file() or path.suffix not in (".py", ".md", ".yaml", ".toml", ".sh", ".txt", ""):
            continue
        text = path.read_text(errors="ignore")
        hits += [f"{rel}: {needle}" for needle in outside if needle in text]
    assert hits == []


def test_bundled_agents_carry_the_packages_own_modeling_files():
    """Each bundled checkpoint loads with remote code from the two files beside it: they must be the package's
    current ones, or `trust_remote_code` would run other code than `AnyMDPAgentModel` (a stale copy misses
    config fields such as the sampling schedule)."""
    import anymdp_agent
    from anymdp_agent.hub import pretrained_dir

    package = Path(anymdp_agent.__file__).parent
    bundled = sorted(p for p in pretrained_dir().iterdir() if (p / "config.json").is_file())
    assert bundled
    for folder in bundled:
        for name in ("modeling_anymdp_agent.py", "configuration_anymdp_agent.py"):
            assert (folder / name).read_text() == (package / name).read_text(), (
                f"{folder.name}/{name} differs from anymdp_agent/{name}: copy the package's file into the folder")


def test_bundle_ships_the_packages_own_modeling_files(tmp_path, monkeypatch):
    """``training/bundle.py`` evaluates a checkpoint with the package's ``AnyMDPAgentModel``, so the remote code it
    ships beside the weights is the package's too, even where the checkpoint was saved under an older package."""
    import anymdp_agent
    import anymdp_agent.hub as hub
    from anymdp_agent.training import bundle as bundler

    from test_rollout import tiny_model

    checkpoint = tmp_path / "checkpoint"
    tiny_model("model_based").save_pretrained(checkpoint)
    (checkpoint / "modeling_anymdp_agent.py").write_text((checkpoint / "modeling_anymdp_agent.py").read_text()
                                                         + "\n# saved under an older package\n")
    evaluated = []
    monkeypatch.setattr(hub, "pretrained_dir", lambda: tmp_path / "pretrained")
    monkeypatch.setattr(bundler, "evaluate_checkpoint", lambda folder, *a, **k: evaluated.append(Path(folder)))
    carded = []  # the name the card is rendered under: the bundle's, not a file copied on the way
    monkeypatch.setattr(bundler, "render_card", lambda folder, name, *a, **k: (
        carded.append(name), (Path(folder) / "README.md").write_text("card")))
    (tmp_path / "pretrained").mkdir()
    dest = bundler.bundle(checkpoint, "tiny-agent")
    assert dest == tmp_path / "pretrained" / "tiny-agent" and evaluated[0].name == ".tiny-agent.tmp"
    assert carded == ["tiny-agent"]
    package = Path(anymdp_agent.__file__).parent
    for name in hub.CODE_FILES:
        assert (dest / name).read_text() == (package / name).read_text()
    assert (dest / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()
