"""Return-driven meta-training (training/meta_rl.py) and the planning backbone's context head."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "training") not in sys.path:
    sys.path.insert(0, str(ROOT / "training"))

import meta_rl  # noqa: E402  (training/meta_rl.py)

from anymdp_agent import AnyMDPAgentConfig, AnyMDPAgentModel  # noqa: E402
from anymdp_agent.modeling_anymdp_agent import END_TERMINATED  # noqa: E402
from anymdp_agent.rollout import load_agent  # noqa: E402


def _rows(seed=0, b=3, t=40, n=8, a=3):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, n, (b, t), generator=g)
    act = torch.randint(0, a, (b, t), generator=g)
    act[:, 11] = END_TERMINATED
    rew = torch.randn(b, t, generator=g)
    return obs, act, rew


def _model(context: bool, seed=0, num_actions=3, num_observations=8):
    torch.manual_seed(seed)
    return AnyMDPAgentModel(AnyMDPAgentConfig(num_observations=num_observations, num_actions=num_actions,
                                              planning_steps=4, chunk_size=16, context_adaptation=context))


def test_context_head_starts_as_the_fixed_planner():
    plain, ctx = _model(False), _model(True)
    ctx.load_state_dict(plain.state_dict(), strict=False)
    obs, act, rew = _rows()
    a = plain(observations=obs, actions=act, rewards=rew).policy_logits
    b = ctx(observations=obs, actions=act, rewards=rew).policy_logits
    torch.testing.assert_close(a, b)


def test_context_head_changes_the_policy_and_steps_like_the_chunks():
    m = _model(True)
    with torch.no_grad():
        m.planner.context.weight.normal_(std=0.5)
        m.planner.context.bias.normal_(std=0.5)
    obs, act, rew = _rows(1)
    chunked = m(observations=obs, actions=act, rewards=rew).policy_logits
    plain = _model(False)
    plain.load_state_dict(m.state_dict(), strict=False)
    assert (chunked - plain(observations=obs, actions=act, rewards=rew).policy_logits).abs().max() > 1e-3
    state = m.initial_state(obs.shape[0])
    stepped = []
    for t in range(obs.shape[1]):
        logits, state = m._begin_row(state, obs[:, t], None)
        stepped.append(logits)
        state = m._end_row(state, act[:, t], rew[:, t])
    torch.testing.assert_close(torch.stack(stepped, 1), chunked, rtol=1e-4, atol=1e-3)
    chunked.sum().backward()
    assert m.planner.context.weight.grad.abs().sum() > 0


def test_rows_without_policy_update_the_memory_alike():
    m = _model(True)
    obs, act, rew = _rows(2)
    cache = m.initial_state(obs.shape[0])
    full = m.planner(obs, act, rew, cache)[-1]
    lean = m.planner(obs, act, rew, cache, policy=False)[-1]
    for key in ("n_sa", "r_sum", "n_ss", "terminal", "r_count", "r_nonzero", "episodes", "step"):
        torch.testing.assert_close(getattr(full, key), getattr(lean, key))
    assert float(full.episodes.max()) == 1.0  # the closing row at 11 is counted once


def test_advantages_are_leave_one_out_per_step():
    # two runs of one task: run 0 earns 1 at its 2nd step, run 1 nothing; closing rows are skipped
    rows = {"actions": np.array([[0, 1, -1, 0], [1, 0, 1, 0]]), "rewards": np.array([[0.0, 1.0, 0.0, 0.0], [0.0] * 4])}
    adv, keep = meta_rl.advantages(rows, gap=np.array([1.0]), rollouts=2)
    assert keep.tolist() == [[True, True, False, True], [True, True, True, False]]  # 3 steps each
    episodes = 1.0 + 0.5  # one closing row over the two runs, +1
    np.testing.assert_allclose(adv[0, :2], [1 / episodes, 1 / episodes])
    np.testing.assert_allclose(adv[1, :2], [-1 / episodes, -1 / episodes])
    assert adv[0, 3] == 0.0 and adv[1, 2] == 0.0  # step 3: no reward left in either run
    same = {"actions": np.array([[0, 1], [0, 1]]), "rewards": np.array([[1.0, 2.0], [1.0, 2.0]])}
    assert not meta_rl.advantages(same, np.array([1.0]), 2)[0].any()


def test_bad_settings_are_refused_before_any_work():
    with pytest.raises(ValueError, match="rollouts must be >= 2"):
        meta_rl.MetaRLArgs(rollouts=1)
    with pytest.raises(ValueError, match="weight of anymdp"):
        meta_rl.MetaRLArgs(families="anymdp=nan")
    with pytest.raises(ValueError, match="FAMILY-N"):
        meta_rl.MetaRLArgs(eval_suites="frozenlake")
    assert meta_rl.main(["--max_steps", "1"]) == 2  # no --init_from


def _tiny(tmp: Path, start: Path, out: str) -> list[str]:
    return ["--init_from", str(start), "--output_dir", str(tmp / out), "--tasks", "4", "--seq_len", "48",
            "--segment_len", "16", "--max_steps", "2", "--eval_every", "2", "--eval_tasks", "3", "--eval_steps", "60",
            "--n_states", "8", "--learning_rate", "0.05"]


@pytest.mark.slow
def test_tiny_run_trains_the_context_head_and_reproduces(tmp_path):
    start = tmp_path / "start"
    _model(False, num_actions=5, num_observations=16).save_pretrained(start)  # the validation suites have 5 actions
    corpus = tmp_path / "my-corpus"  # stage 1's record names its corpus; the corpus records its command
    corpus.mkdir()
    (corpus / "corpus.json").write_text(json.dumps({"commands": {"train": "anymdp-agent generate --out my-corpus"}}))
    (start / "train_config.json").write_text(json.dumps({"recipe": "cpu-meta-imitation", "corpus": str(corpus),
                                                         "label": "planner", "step": 100, "max_steps": 100}))
    assert meta_rl.main(_tiny(tmp_path, start, "a")) == 0
    assert meta_rl.main(_tiny(tmp_path, start, "b")) == 0
    last_a, last_b = load_agent(tmp_path / "a" / "last"), load_agent(tmp_path / "b" / "last")
    assert last_a.config.context_adaptation
    assert last_a.planner.context.weight.abs().sum() > 0  # it moved from its zero start
    for (name, x), (_, y) in zip(last_a.state_dict().items(), last_b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=name)  # the same seed gives the same weights
    record = json.loads((tmp_path / "a" / "best" / "train_config.json").read_text())
    assert record["best"]["step"] in (0, 2)
    assert record["imitation"]["recipe"] == "cpu-meta-imitation"
    assert record["corpus_command"] == "anymdp-agent generate --out my-corpus"
    # its card names both stages and the corpus, and parses
    from huggingface_hub import ModelCard

    from anymdp_agent.hub import write_model_card

    card = ModelCard.load(write_model_card(tmp_path / "a" / "best"))
    assert card.data.datasets == ["my-corpus"]
    assert "Return-driven meta-training" in card.text and "`anymdp-agent generate --out my-corpus`" in card.text
    log = [json.loads(line) for line in (tmp_path / "a" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
