"""The model's API at its edges: input dtypes, non-finite and huge rewards, batch and mask errors, loading
weights that do not cover the config (in any loader), and the corpus/model contract defined once."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

import anymdp_agent.configuration_anymdp_agent as contract
from anymdp_agent import AnyMDPAgentConfig, AnyMDPAgentModel
from anymdp_agent.modeling_anymdp_agent import LEGACY_KEY_MAPPING, WeightsDoNotMatchConfig, reward_scale
from test_agent_model import A, BACKBONES, S, random_rows, tiny_model

NO = torch.zeros(3, dtype=torch.bool)


def _stepped(model, obs, act, rew, term=None):
    """Policy logits of ``act``/``observe`` over ``[B, T]`` rows (actions taken from ``act``; no sampling)."""
    b, t = obs.shape
    state, out = model.initial_state(b), []
    for i in range(t - 1):
        _, logits, state = model.act(state, obs[:, i], temperature=0.0)
        done = torch.zeros(b, dtype=torch.bool) if term is None else term[:, i]
        state = model.observe(state, act[:, i], rew[:, i], obs[:, i + 1], done, torch.zeros(b, dtype=torch.bool))
        out.append(logits)
    return torch.stack(out, 1), state


# ---------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
def test_ids_of_any_integer_dtype_give_the_int64_numbers(backbone, dtype):
    """The on-the-fly corpus is int16 (the default training settings crashed on step 1 with it)."""
    model = tiny_model(backbone)
    obs, act, rew = random_rows(2, 11, seed=3, end_rate=0.0 if dtype == torch.uint8 else 0.15)
    labels = act.clamp(min=0)
    with torch.no_grad():
        ref = model(obs, act, rew, labels=labels, tags=torch.full_like(obs, 2), prompts=torch.tensor([0, 4]))
        got = model(obs.to(dtype), act.to(dtype), rew, labels=labels.to(dtype), tags=torch.full_like(obs, 2).to(dtype),
                    prompts=torch.tensor([0, 4], dtype=dtype))
    assert torch.equal(got.policy_logits, ref.policy_logits) and torch.equal(got.loss, ref.loss)
    ref_steps, _ = _stepped(model, obs, act.clamp(min=0), rew)
    got_steps, _ = _stepped(model, obs.to(dtype), act.clamp(min=0).to(dtype), rew)
    assert torch.equal(got_steps, ref_steps)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_non_integer_ids_are_refused_by_name(backbone):
    model = tiny_model(backbone)
    obs, act, rew = random_rows(2, 5, seed=1)
    with pytest.raises(TypeError, match="observations must hold integer ids, got dtype torch.float32"):
        model(obs.float(), act, rew)
    with pytest.raises(TypeError, match="actions must hold integer ids, got dtype torch.bool"):
        model(obs, act > 0, rew)
    with pytest.raises(TypeError, match="observations must hold integer ids"):
        model.act(model.initial_state(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="action_mask must be a bool tensor"):
        model.act(model.initial_state(2), torch.tensor([0, 1]), action_mask=torch.ones(2, A, dtype=torch.long))


def test_a_uint8_action_out_of_range_is_named_as_it_is():
    """uint8 used to be compared with the negative end ids unconverted ("action 0 is outside 0..4")."""
    model = tiny_model("planning")
    _, _, state = model.act(model.initial_state(1), torch.tensor([0], dtype=torch.uint8))
    no = torch.zeros(1, dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"action 255 is outside 0\.\.{A - 1}"):
        model.observe(state, torch.tensor([255], dtype=torch.uint8), torch.zeros(1), torch.tensor([1]), no, no)


# ---------------------------------------------------------------------- rewards


@pytest.mark.parametrize("backbone", BACKBONES)
def test_observe_refuses_non_finite_rewards_naming_the_histories(backbone):
    model = tiny_model(backbone)
    _, _, state = model.act(model.initial_state(3), torch.tensor([0, 1, 2]))
    before = state.clone()
    with pytest.raises(ValueError, match=r"rewards must be finite: histories 1, 2 hold NaN"):
        model.observe(state, torch.tensor([0, 1, 2]), torch.tensor([0.5, float("nan"), float("inf")]),
                      torch.tensor([1, 2, 3]), NO, NO)
    for k, v in before.tensors.items():  # nothing of the bad step reached the state
        assert torch.equal(state.tensors[k], v), k


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_refuses_non_finite_rewards(backbone):
    obs, act, rew = random_rows(2, 6, seed=2)
    rew[1, 3] = -float("inf")
    with pytest.raises(ValueError, match="histories 1 hold NaN or infinite"):
        tiny_model(backbone)(obs, act, rew)


def test_the_float32_sum_of_squares_would_overflow():
    """What the robust reward scale guards against: one reward of 1e20 squared is inf in float32."""
    assert torch.isinf(torch.tensor(1e20) * torch.tensor(1e20))
    scale = reward_scale(torch.tensor([1e40], dtype=torch.float64), torch.tensor([1.0]))
    assert scale.dtype == torch.float32 and scale.item() == pytest.approx(1e20 / 2 ** 0.5, rel=1e-6)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("big", [1e20, 1e30, 3e38])
def test_reward_statistics_stay_finite_for_huge_rewards(backbone, big):
    model = tiny_model(backbone)
    obs, act, rew = random_rows(2, 13, seed=5, end_rate=0.0)
    rew[:, 4] = big
    rew[1, 9] = -big
    with torch.no_grad():
        out = model(obs, act, rew, labels=act)
    # (the reward loss of the row that *receives* the huge reward is not: it is predicted in units of the
    # scale seen before it, and a 1e20-scale surprise squared is no float32 number)
    assert torch.isfinite(out.cache.r_sq).all() and torch.isfinite(out.policy_loss) and torch.isfinite(out.observation_loss)
    assert torch.isfinite(out.policy_logits).all() and torch.isfinite(out.reward_prediction).all()
    n = float(out.cache.r_count[1])
    expected = ((2 * big ** 2 + float((rew[1].double() ** 2).sum() - 2 * big ** 2) + 1) / (n + 1)) ** 0.5
    assert reward_scale(out.cache.r_sq, out.cache.r_count)[1].item() == pytest.approx(expected, rel=1e-5)
    logits, state = _stepped(model, obs, act, rew)  # stepping: the next act after a huge reward plans finitely
    assert torch.isfinite(logits).all() and torch.isfinite(state.r_sq).all()


# ---------------------------------------------------------------------- the API's unclear cases


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_batch_size_mismatch_names_both_sizes(backbone):
    model = tiny_model(backbone)
    obs, act, rew = random_rows(2, 4, seed=1)
    with pytest.raises(ValueError, match="observations hold 2 histories but the state holds 3"):
        model(obs, act, rew, cache=model.initial_state(3))
    with pytest.raises(ValueError, match="observations hold 2 histories but the state holds 3"):
        model.act(model.initial_state(3), torch.tensor([0, 1]))
    _, _, state = model.act(model.initial_state(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="rewards hold 2 histories but the state holds 3"):
        model.observe(state, torch.tensor([0, 1, 2]), torch.zeros(2), torch.tensor([1, 2, 3]), NO, NO)
    with pytest.raises(ValueError, match="prompts must have shape"):
        model(obs, act, rew, prompts=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("temperature", [-0.5, float("nan"), float("inf"), torch.tensor([1.0, -1.0])])
def test_act_refuses_a_negative_or_non_finite_temperature(temperature):
    model = tiny_model("planning")
    with pytest.raises(ValueError, match="temperature must be finite and >= 0"):
        model.act(model.initial_state(2), torch.tensor([0, 1]), temperature=temperature)
    with pytest.raises(ValueError, match="one per history"):
        model.act(model.initial_state(2), torch.tensor([0, 1]), temperature=torch.ones(3))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_an_action_mask_row_that_allows_nothing_is_refused(backbone):
    model = tiny_model(backbone)
    mask = torch.ones(3, A, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match="action_mask allows no action in histories 1"):
        model.act(model.initial_state(3), torch.tensor([0, 1, 2]), action_mask=mask)
    obs, act, rew = random_rows(3, 4, seed=1)
    with pytest.raises(ValueError, match="allows no action"):
        model(obs, act, rew, action_mask=mask)


@pytest.mark.parametrize("value", [0, -1, 2.0, True])
def test_initial_state_refuses_a_non_positive_num_observations(value):
    with pytest.raises(ValueError, match="num_observations must be a positive integer"):
        tiny_model("planning").initial_state(2, num_observations=value)


def test_an_observation_beyond_a_reduced_state_names_the_state():
    model = tiny_model("planning")
    state = model.initial_state(2, num_observations=6)
    with pytest.raises(ValueError, match=r"observation id 7 is outside the state's 6 ids \(initial_state\(num_obs"):
        model.act(state, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=rf"outside the vocabulary of {S} ids \(config.num_observations\)"):
        model.act(model.initial_state(2), torch.tensor([0, S]))


# ---------------------------------------------------------------------- loading: weights must cover the config


def _edited(folder, dest, **changes):
    shutil.copytree(folder, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(changes)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A saved tiny planning model, and copies whose config.json the weights do not cover."""
    root = tmp_path_factory.mktemp("covering")
    good = root / "good"
    tiny_model("planning").save_pretrained(good)
    return {"good": good, "backbone": _edited(good, root / "other-backbone", backbone="sequence"),
            "memory_decay": _edited(good, root / "memory-decay", memory_decay=True)}


def test_from_pretrained_refuses_weights_that_do_not_cover_the_config(folders):
    with pytest.raises(WeightsDoNotMatchConfig, match=r"memory_decay=True\): missing keys: \['planner.memory_log_"):
        AnyMDPAgentModel.from_pretrained(folders["memory_decay"])
    with pytest.raises(WeightsDoNotMatchConfig, match=r"backbone='sequence'.*missing keys.*unexpected keys.*planner"):
        AnyMDPAgentModel.from_pretrained(folders["backbone"])
    model, info = AnyMDPAgentModel.from_pretrained(folders["good"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


_CLEAN_PYTHON = textwrap.dedent("""
    import json, sys
    from transformers import AutoModel
    result = {}
    for folder in sys.argv[1:]:
        try:
            model = AutoModel.from_pretrained(folder, trust_remote_code=True)
            result[folder] = "loaded " + type(model).__module__
        except Exception as e:
            result[folder] = type(e).__name__ + ": " + str(e)
    result["leaked"] = sorted(m for m in sys.modules if m.startswith("anymdp_agent"))
    print("RESULT " + json.dumps(result))
""")


@pytest.mark.slow
def test_automodel_with_remote_code_refuses_weights_that_do_not_cover_the_config(folders, tmp_path):
    """The README's loading path, in a Python that never imports anymdp_agent (the checkpoint's own code)."""
    names = ("good", "backbone", "memory_decay")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON", "TRANSFORMERS_"))}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"})
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-c", _CLEAN_PYTHON, *(str(folders[n]) for n in names)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    assert result["leaked"] == []
    assert result[str(folders["good"])].startswith("loaded transformers_modules.")
    assert re.match(r"WeightsDoNotMatchConfig: .*backbone='sequence'.*missing keys", result[str(folders["backbone"])])
    assert re.match(r"WeightsDoNotMatchConfig: .*missing keys: \['planner.memory_log_decay'\]",
                    result[str(folders["memory_decay"])])


def test_checkpoints_with_the_earlier_head_names_load_unchanged(tmp_path):
    """Sequence checkpoints written before the heads moved into SequenceBackbone (top-level policy_head.*)."""
    model = tiny_model("sequence")
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert {k for k in weights if "head" in k} == {f"backbone.{h}_head.{p}" for h in ("policy", "observation", "reward")
                                                  for p in ("weight", "bias")}
    (pattern, target), = LEGACY_KEY_MAPPING.items()
    old = {re.sub(r"^backbone\.(policy_head|observation_head|reward_head)\.", r"\1.", k): v for k, v in weights.items()}
    assert {re.sub(pattern, target, k) for k in old} == set(weights)
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = AnyMDPAgentModel.from_pretrained(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


# ---------------------------------------------------------------------- one home for the corpus/model contract


def test_the_contract_is_defined_once_and_imported():
    from anymdp_agent.data import behaviours, corpus, onpolicy
    from anymdp_agent import modeling_anymdp_agent as modeling
    import corpus_checks

    for module in (corpus, onpolicy, modeling, corpus_checks):
        for name in ("END_TERMINATED", "END_TRUNCATED"):
            assert getattr(module, name) is getattr(contract, name)
    for name in ("LABEL_KINDS", "ORACLE_PROMPTS", "PLANNER_PROMPT", "NUM_PROMPTS", "NO_LABEL"):
        assert getattr(corpus, name) is getattr(contract, name), name
    assert behaviours.TAGS is contract.TAGS and modeling.IGNORE_INDEX is contract.IGNORE_INDEX
    assert contract.label_kinds("mix") == contract.LABEL_KINDS and contract.label_kinds("oracle") == ("oracle",)
    assert contract.label_prompt("planner", 2) == contract.PLANNER_PROMPT and contract.label_prompt("oracle", 2) == 2
    with pytest.raises(ValueError, match="label must be oracle, planner or mix"):
        contract.label_kinds("both")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_default_config_takes_planner_labelled_rows(backbone):
    """The default num_prompts used to be 4, which refused the planner's prompt (4)."""
    cfg = AnyMDPAgentConfig(backbone=backbone, hidden_size=16, num_heads=2, num_hidden_layers=1)
    assert cfg.num_prompts == contract.NUM_PROMPTS > contract.PLANNER_PROMPT
    assert cfg.num_tags == len(contract.TAGS) > contract.UNKNOWN_TAG
    obs, act, rew = random_rows(1, 4, seed=1)
    out = AnyMDPAgentModel(cfg)(obs, act, rew, prompts=torch.tensor([contract.PLANNER_PROMPT]))
    assert torch.isfinite(out.policy_logits).all()
    with pytest.raises(ValueError, match="num_tags"):
        AnyMDPAgentConfig(num_tags=contract.UNKNOWN_TAG)
