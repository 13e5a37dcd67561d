"""Checkpoints: save_pretrained / from_pretrained, the Auto classes (also in a clean Python), load_agent's errors."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

import anymdp_agent
from anymdp_agent import AnyMDPAgentConfig, AnyMDPAgentModel
from anymdp_agent.rollout import load_agent

BACKBONES = ("planning", "sequence")
S, A = 12, 4

#: A fixed input (episode-end rows included) whose policy logits the clean Python must reproduce.
FIXED_OBS = [[0, 3, 5, 7, 2, 11, 4, 4, 9]]
FIXED_ACT = [[1, 2, 3, -1, 0, 1, -2, 2, 0]]
FIXED_REW = [[0.5, -1.0, 2.0, 0.0, 1.0, 0.3, 0.0, -0.7, 1.5]]


def tiny_model(backbone: str, seed: int = 0, **overrides) -> AnyMDPAgentModel:
    kwargs = dict(num_observations=S, num_actions=A, hidden_size=16, num_heads=2, num_hidden_layers=2, chunk_size=4,
                  planning_steps=5, backbone=backbone)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = AnyMDPAgentModel(AnyMDPAgentConfig(**kwargs)).eval()
    if backbone == "planning":
        # Values the initialiser would never produce: loading must keep them, not re-initialise.
        with torch.no_grad():
            model.planner.gamma_logit.fill_(1.234)
            model.planner.log_temperature.fill_(0.5)
            model.planner.optimism.copy_(torch.tensor([0.3, -0.2]))
            model.planner.world_smoothing.copy_(torch.tensor([-0.4, 0.25]))
            model.planner.bonus_out.weight.normal_()
            model.planner.bonus_out.bias.fill_(0.05)
    else:
        with torch.no_grad():
            model.backbone.layers[0].attn.decay.bias.fill_(-3.0)
            model.backbone.norm.weight.mul_(1.5)
    return model


def fixed_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(FIXED_OBS), torch.tensor(FIXED_ACT), torch.tensor(FIXED_REW)).policy_logits


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One saved tiny model per backbone: {backbone: (folder, model)}."""
    root = tmp_path_factory.mktemp("agent-ckpt")
    out = {}
    for backbone in BACKBONES:
        model = tiny_model(backbone)
        folder = root / backbone
        model.save_pretrained(folder)
        out[backbone] = (folder, model)
    return out


@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_and_load_round_trip_exactly(checkpoints, backbone):
    folder, model = checkpoints[backbone]
    loaded = AnyMDPAgentModel.from_pretrained(folder)
    assert isinstance(loaded, AnyMDPAgentModel)

    def settings(cfg):
        return {k: v for k, v in cfg.to_dict().items() if k not in ("_name_or_path", "transformers_version")}

    assert settings(loaded.config) == settings(model.config)
    assert_same_weights(model, loaded)
    assert torch.equal(fixed_logits(loaded.eval()), fixed_logits(model))


def test_loading_keeps_planner_parameters_that_differ_from_the_init(checkpoints):
    folder, model = checkpoints["planning"]
    fresh = AnyMDPAgentModel(model.config)
    assert not torch.equal(fresh.planner.gamma_logit, model.planner.gamma_logit)  # the init would differ
    for loaded in (AnyMDPAgentModel.from_pretrained(folder), load_agent(folder), AutoModel.from_pretrained(folder)):
        p = loaded.planner
        assert p.gamma_logit.item() == pytest.approx(1.234)
        assert p.log_temperature.item() == 0.5
        assert torch.equal(p.optimism, model.planner.optimism)
        assert torch.equal(p.world_smoothing, model.planner.world_smoothing)
        assert torch.equal(p.bonus_out.weight, model.planner.bonus_out.weight)
        assert_same_weights(model, loaded)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_checkpoint_folder_is_self_contained(checkpoints, backbone):
    folder, _ = checkpoints[backbone]
    names = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "configuration_anymdp_agent.py", "modeling_anymdp_agent.py"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "anymdp_agent"
    assert config["backbone"] == backbone
    assert config["auto_map"] == {"AutoConfig": "configuration_anymdp_agent.AnyMDPAgentConfig",
                                  "AutoModel": "modeling_anymdp_agent.AnyMDPAgentModel"}
    package = os.path.dirname(anymdp_agent.__file__)
    for name in ("configuration_anymdp_agent.py", "modeling_anymdp_agent.py"):
        with open(os.path.join(package, name)) as fh:
            assert (folder / name).read_text() == fh.read()
    # The two files import nothing from the package: only the standard library, torch, transformers and
    # (relatively) the config file beside them; optional packages only under try (transformers' remote-code
    # loader skips those, and so does this check).
    for name in ("configuration_anymdp_agent.py", "modeling_anymdp_agent.py"):
        tree = ast.parse((folder / name).read_text())
        optional = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for s in t.body for n in ast.walk(s)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module == "configuration_anymdp_agent", (name, node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                roots = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for root in roots:
                    assert root.split(".")[0] in {"__future__", "dataclasses", "functools", "inspect", "math",
                                                  "numbers", "torch", "transformers"}, root


@pytest.mark.parametrize("backbone", BACKBONES)
def test_auto_classes_after_importing_the_package(checkpoints, backbone):
    folder, model = checkpoints[backbone]
    assert isinstance(AutoConfig.from_pretrained(folder), AnyMDPAgentConfig)
    loaded = AutoModel.from_pretrained(folder)
    assert type(loaded) is AnyMDPAgentModel
    assert_same_weights(model, loaded)


_CLEAN_PYTHON = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModel
    out = {}
    for folder in sys.argv[1:]:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        obs, act, rew = (torch.tensor(json.loads(x)) for x in (%r, %r, %r))
        with torch.no_grad():
            logits = model(obs, act, rew.float()).policy_logits
        out[folder] = {"class": type(model).__name__, "module": type(model).__module__,
                       "backbone": model.config.backbone, "logits": logits.tolist()}
    out["leaked"] = sorted(m for m in sys.modules if m == "anymdp_agent" or m.startswith("anymdp_agent."))
    print("RESULT " + json.dumps(out))
""") % (json.dumps(FIXED_OBS), json.dumps(FIXED_ACT), json.dumps(FIXED_REW))


@pytest.mark.slow
def test_trust_remote_code_in_a_clean_python(checkpoints, tmp_path):
    """A fresh interpreter that never imports anymdp_agent loads both checkpoints from their own code."""
    folders = [str(checkpoints[b][0]) for b in BACKBONES]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON", "TRANSFORMERS_"))}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"})
    proc = subprocess.run([sys.executable, "-c", _CLEAN_PYTHON, *folders], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["leaked"] == []
    for backbone, folder in zip(BACKBONES, folders):
        got = result[folder]
        assert got["class"] == "AnyMDPAgentModel" and got["backbone"] == backbone
        assert got["module"].startswith("transformers_modules.")  # the checkpoint's copy of the code
        # Same code, same weights, same input: equal up to float32 printing (exact in practice).
        torch.testing.assert_close(torch.tensor(got["logits"]), fixed_logits(checkpoints[backbone][1]),
                                   rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- load_agent's errors


def test_load_agent_returns_an_eval_model(checkpoints):
    folder, model = checkpoints["sequence"]
    loaded = load_agent(str(folder))
    assert not loaded.training
    assert_same_weights(model, loaded)


def test_load_agent_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        load_agent(tmp_path / "nowhere")


def test_load_agent_folder_without_weights_or_config(checkpoints, tmp_path):
    folder, _ = checkpoints["planning"]
    no_weights = tmp_path / "no-weights"
    shutil.copytree(folder, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_agent(no_weights)
    no_config = tmp_path / "no-config"
    shutil.copytree(folder, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_agent(no_config)


def _edited_copy(folder, dest, **changes):
    shutil.copytree(folder, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(changes)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.mark.parametrize("changes", [dict(hidden_size=32), dict(num_observations=16), dict(num_actions=5)])
def test_load_agent_weights_that_do_not_match_the_config(checkpoints, tmp_path, changes):
    folder, _ = checkpoints["sequence"]
    edited = _edited_copy(folder, tmp_path / "edited", **changes)
    with pytest.raises(ValueError, match="do not match"):
        load_agent(edited)


def test_load_agent_invalid_config(checkpoints, tmp_path):
    folder, _ = checkpoints["planning"]
    edited = _edited_copy(folder, tmp_path / "bad", num_actions=1)
    with pytest.raises(ValueError, match="num_actions"):
        load_agent(edited)


def test_load_agent_refuses_a_config_for_the_other_backbone(checkpoints, tmp_path):
    """Every weight of the checkpoint is unexpected and every weight of the model missing: not a silent re-init."""
    folder, _ = checkpoints["planning"]
    edited = _edited_copy(folder, tmp_path / "switched", backbone="sequence")
    with pytest.raises(ValueError):
        load_agent(edited)


def test_load_agent_refuses_missing_weights(checkpoints, tmp_path):
    """A weight absent from model.safetensors must not be silently re-initialised."""
    folder, _ = checkpoints["planning"]
    dest = tmp_path / "partial"
    shutil.copytree(folder, dest)
    weights = load_file(dest / "model.safetensors")
    del weights["planner.gamma_logit"]
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="gamma_logit"):
        load_agent(dest)
