"""AnyMDPAgentModel: config checks, the equivalence of its forms, the loss, batching, masking, bad input.

Everything runs on tiny configs (8-16 observations, 3-5 actions, width 16-32, chunks of 4-8 rows,
4-6 planning steps), for both backbones.

Tolerances (float32 throughout):

- ``sequence``: the chunkwise, recurrent and stepped forms compute the same gated-linear-attention
  recurrence in a different order of float32 operations; logits are O(0.1) and agree to ~1e-7, so
  ``atol=1e-5`` (with ``rtol=1e-4``) leaves two orders of magnitude of margin.
- ``planning``: the logits are ``Q / temperature`` with Q dominated by the optimism term
  ``u / (1 - gamma)`` (gamma 0.99), so untrained logits reach O(10^2) (O(10^3) with a temperature of
  0.1); the chunked, split and stepped forms agree to ~1e-7 *relative* (a few 1e-5 absolute at that
  size), so they are compared with ``rtol=1e-4, atol=1e-3``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import anymdp_agent.modeling_anymdp_agent as modeling
from anymdp_agent import AnyMDPAgentConfig, AnyMDPAgentModel
from anymdp_agent.baselines.protocol import EnvSpec
from anymdp_agent.modeling_anymdp_agent import END_TERMINATED, END_TRUNCATED, IGNORE_INDEX, AnyMDPAgentCache
from anymdp_agent.rollout import AgentLearner

BACKBONES = ("planning", "sequence")
S, A = 12, 4  # observations and actions of the tiny models
TOL = {"sequence": dict(rtol=1e-4, atol=1e-5), "planning": dict(rtol=1e-4, atol=1e-3)}


def tiny_config(backbone: str, **overrides) -> AnyMDPAgentConfig:
    kwargs = dict(num_observations=S, num_actions=A, hidden_size=16, num_heads=2, num_hidden_layers=2, chunk_size=5,
                  planning_steps=5, backbone=backbone)
    kwargs.update(overrides)
    return AnyMDPAgentConfig(**kwargs)


def tiny_model(backbone: str, seed: int = 0, **overrides) -> AnyMDPAgentModel:
    torch.manual_seed(seed)
    return AnyMDPAgentModel(tiny_config(backbone, **overrides)).eval()


def random_rows(b: int, t: int, n_obs: int = S, n_act: int = A, seed: int = 0, end_rate: float = 0.12):
    """Observations, actions (with episode-end rows, reward 0 there) and rewards ``[b, t]``."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, n_obs, (b, t), generator=g)
    act = torch.randint(0, n_act, (b, t), generator=g)
    rew = torch.randn(b, t, generator=g) * 2.0
    end = torch.rand(b, t, generator=g) < end_rate
    kind = torch.where(torch.rand(b, t, generator=g) < 0.5, END_TERMINATED, END_TRUNCATED)
    act = torch.where(end, kind, act)
    rew = torch.where(end, torch.zeros_like(rew), rew)
    return obs, act, rew


def assert_close(a, b, backbone, msg=""):
    torch.testing.assert_close(a, b, **TOL[backbone], msg=msg or None)


def assert_cache_close(c1: AnyMDPAgentCache, c2: AnyMDPAgentCache, backbone: str):
    assert c1.tensors.keys() == c2.tensors.keys()
    for k in c1.tensors:
        if c1.tensors[k].dtype == torch.long:
            assert torch.equal(c1.tensors[k], c2.tensors[k]), k
        else:
            assert_close(c1.tensors[k], c2.tensors[k], backbone, msg=k)
    assert len(c1.layers) == len(c2.layers)
    for x, y in zip(c1.layers, c2.layers):
        assert_close(x, y, backbone)


# ---------------------------------------------------------------------- config validation


@pytest.mark.parametrize("overrides, name", [
    (dict(num_actions=1), "num_actions"),
    (dict(num_actions=0), "num_actions"),
    (dict(hidden_size=30, num_heads=4), "hidden_size"),
    (dict(hidden_size=16.0), "hidden_size"),
    (dict(backbone="transformer"), "backbone"),
    (dict(policy_loss_weight=-0.1), "policy_loss_weight"),
    (dict(observation_loss_weight=-1.0), "observation_loss_weight"),
    (dict(reward_loss_weight=-1e-3), "reward_loss_weight"),
    (dict(planning_gamma=1.0), "planning_gamma"),
    (dict(planning_gamma=0.0), "planning_gamma"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(planning_steps=0), "planning_steps"),
    (dict(num_observations=0), "num_observations"),
    (dict(context_warmup=-1), "context_warmup"),
    (dict(warmup_start=0.0), "warmup_start"),
])
def test_config_rejects_bad_settings_by_name(overrides, name):
    with pytest.raises(ValueError, match=name):
        tiny_config(**{"backbone": "sequence", **overrides})


def test_config_defaults_and_intermediate_size():
    cfg = AnyMDPAgentConfig()
    assert cfg.backbone == "planning"
    assert (cfg.policy_loss_weight, cfg.observation_loss_weight, cfg.reward_loss_weight) == (0.8, 0.1, 0.1)
    assert tiny_config("sequence", hidden_size=24, num_heads=3).intermediate_size == 48
    assert tiny_config("sequence", intermediate_size=20).intermediate_size == 20


# ---------------------------------------------------------------------- equivalences


def test_sequence_chunkwise_equals_recurrent():
    model = tiny_model("sequence")
    obs, act, rew = random_rows(3, 23)  # 23 rows = 46 tokens: chunks of 5 do not divide it
    with torch.no_grad():
        chunk = model(obs, act, rew)
        rec = model(obs, act, rew, recurrent=True)
    for field in ("policy_logits", "observation_logits", "reward_prediction"):
        assert_close(getattr(chunk, field), getattr(rec, field), "sequence", msg=field)
    assert_cache_close(chunk.cache, rec.cache, "sequence")


@pytest.mark.parametrize("chunk_size", [4, 8])
def test_sequence_chunk_size_does_not_change_the_numbers(chunk_size):
    ref = tiny_model("sequence", chunk_size=5)
    other = tiny_model("sequence", chunk_size=chunk_size)
    other.load_state_dict(ref.state_dict())
    obs, act, rew = random_rows(2, 19, seed=4)
    with torch.no_grad():
        assert_close(ref(obs, act, rew).policy_logits, other(obs, act, rew).policy_logits, "sequence")


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("split", [3, 7, 13])  # chunk_size 5: none aligned to a chunk boundary
def test_forward_split_in_two_segments_with_the_cache_equals_one_pass(backbone, split):
    model = tiny_model(backbone)
    obs, act, rew = random_rows(2, 23, seed=split)
    with torch.no_grad():
        full = model(obs, act, rew)
        first = model(obs[:, :split], act[:, :split], rew[:, :split])
        second = model(obs[:, split:], act[:, split:], rew[:, split:], cache=first.cache)
    for field in ("policy_logits", "observation_logits", "reward_prediction"):
        joined = torch.cat([getattr(first, field), getattr(second, field)], 1)
        assert_close(getattr(full, field), joined, backbone, msg=field)
    assert_cache_close(full.cache, second.cache, backbone)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("masked", [False, True])
def test_token_by_token_stepping_equals_forward(backbone, masked):
    """act/_begin_row/_end_row one row at a time, each history alone, equal the teacher-forced pass."""
    model = tiny_model(backbone)
    b, t = 2, 23
    obs, act, rew = random_rows(b, t, seed=11)
    mask = None
    if masked:
        mask = torch.ones(b, A, dtype=torch.bool)
        mask[0, 3] = False
        mask[1, 1] = False
        act = torch.where((act >= 0) & ~mask.gather(1, act.clamp(min=0)), 0, act)  # taken actions are allowed
    assert (act == END_TERMINATED).any() and (act == END_TRUNCATED).any()
    with torch.no_grad():
        full = model(obs, act, rew, action_mask=mask)
    for i in range(b):
        state = model.initial_state(1)
        m_i = None if mask is None else mask[i:i + 1]
        logits = []
        with torch.no_grad():
            for j in range(t):
                o, a = obs[i:i + 1, j], act[i:i + 1, j]
                if int(a) >= 0:
                    actions, lg, state = model.act(state, o, action_mask=m_i, temperature=0)
                    assert int(actions) == int(lg.argmax(-1))
                    state = model._end_row(state, a, rew[i:i + 1, j])
                else:
                    lg, state = model._begin_row(state, o, m_i)
                    state = model._end_row(state, a, torch.zeros(1))
                logits.append(lg)
        assert_close(torch.cat(logits), full.policy_logits[i], backbone)
        assert_cache_close(state, full.cache.index(slice(i, i + 1)), backbone)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_observe_adds_the_episode_end_row(backbone):
    """act + observe(terminated/truncated) is the forward pass over the rows with the end rows added."""
    model = tiny_model(backbone)
    g = torch.Generator().manual_seed(5)
    t = 18
    obs = torch.randint(0, S, (t + 1,), generator=g)
    rew = torch.randn(t, generator=g)
    term = torch.zeros(t, dtype=torch.bool)
    trunc = torch.zeros(t, dtype=torch.bool)
    term[4], trunc[9], term[13] = True, True, True
    state = model.initial_state(1)
    rows_obs, rows_act, rows_rew, logits = [], [], [], []
    for j in range(t):
        a, lg, state = model.act(state, obs[j:j + 1], temperature=0)
        logits.append(lg[0])
        rows_obs.append(int(obs[j]))
        rows_act.append(int(a))
        rows_rew.append(float(rew[j]))
        # The episode ends in a final observation (here obs[j + 1]); the next episode starts at obs[j + 1] too.
        state = model.observe(state, a, rew[j:j + 1], obs[j + 1:j + 2], term[j:j + 1], trunc[j:j + 1])
        if term[j] or trunc[j]:
            rows_obs.append(int(obs[j + 1]))
            rows_act.append(END_TERMINATED if term[j] else END_TRUNCATED)
            rows_rew.append(0.0)
            logits.append(None)
    with torch.no_grad():
        full = model(torch.tensor([rows_obs]), torch.tensor([rows_act]), torch.tensor([rows_rew]))
    keep = [k for k, lg in enumerate(logits) if lg is not None]
    assert_close(torch.stack([lg for lg in logits if lg is not None]), full.policy_logits[0, keep], backbone)
    assert_cache_close(state, full.cache, backbone)


def test_planning_rejects_several_rows_for_histories_at_different_rows():
    model = tiny_model("planning")
    state = model.initial_state(2)
    _, _, state = model.act(state, torch.tensor([0, 1]))
    state = model.observe(state, torch.tensor([0, 1]), torch.zeros(2), torch.tensor([2, 3]),
                          torch.tensor([True, False]), torch.tensor([False, False]))
    obs, act, rew = random_rows(2, 4)
    with pytest.raises(ValueError, match="same row"):
        model(obs, act, rew, cache=state)


# ---------------------------------------------------------------------- loss


def warmup_weights(positions: torch.Tensor, warmup: int, start: float) -> torch.Tensor:
    return start + (1.0 - start) * (positions.float() / warmup).clamp(max=1.0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_ignored_labels_do_not_count(backbone):
    model = tiny_model(backbone)
    obs, act, rew = random_rows(2, 14, seed=2)
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, A, (2, 14), generator=g)
    ignored = torch.rand(2, 14, generator=g) < 0.4
    ignored[:, -1] = True
    ignored[:, 0] = False
    labelled = torch.where(ignored, IGNORE_INDEX, labels)
    with torch.no_grad():
        out = model(obs, act, rew, labels=labelled)
    # Hand-computed: the mean cross-entropy over the kept positions only (no warm-up by default);
    # -100 must not be read as a target (e.g. clamped to action 0).
    logp = F.log_softmax(out.policy_logits.float(), -1)
    kept = ~ignored
    expected = -logp[kept].gather(1, labels[kept][:, None]).mean()
    torch.testing.assert_close(out.policy_loss, expected, rtol=1e-5, atol=1e-6)
    # Changing what the logits at an ignored position are (the last row's observation only reaches
    # the last row's policy logits: the model is causal) leaves the policy loss unchanged.
    obs2 = obs.clone()
    obs2[:, -1] = (obs2[:, -1] + 1) % S
    with torch.no_grad():
        out2 = model(obs2, act, rew, labels=labelled)
    assert not torch.allclose(out2.policy_logits[:, -1], out.policy_logits[:, -1])
    torch.testing.assert_close(out2.policy_logits[:, :-1], out.policy_logits[:, :-1], rtol=0, atol=0)
    assert torch.equal(out2.policy_loss, out.policy_loss)
    # And the loss has no gradient through the policy logits of ignored positions.
    train = tiny_model(backbone).train()
    out3 = train(obs, act, rew, labels=labelled)
    grads = {}
    out3.policy_logits.register_hook(lambda g_: grads.setdefault("g", g_))
    out3.policy_loss.backward()
    assert torch.all(grads["g"][ignored] == 0)
    assert torch.all(grads["g"][kept].abs().sum(-1) > 0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_all_labels_ignored_gives_zero_policy_loss_and_no_nan(backbone):
    model = tiny_model(backbone).train()
    obs, act, rew = random_rows(2, 9, seed=6)
    labels = torch.full((2, 9), IGNORE_INDEX)
    out = model(obs, act, rew, labels=labels)
    assert float(out.policy_loss.detach()) == 0.0
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("backbone", BACKBONES)
def test_context_warmup_weights_early_labels_down(backbone):
    warmup = 6
    model = tiny_model(backbone, context_warmup=warmup, warmup_start=1e-3)
    obs, act, rew = random_rows(2, 10, seed=7)
    labels = torch.randint(0, A, (2, 10), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        out = model(obs, act, rew, labels=labels)
    ce = F.cross_entropy(out.policy_logits.reshape(-1, A), labels.reshape(-1), reduction="none").view(2, 10)
    w = warmup_weights(torch.arange(10), warmup, 1e-3)[None].expand(2, -1)
    assert w[0, 0] == pytest.approx(1e-3) and w[0, warmup] == 1.0
    torch.testing.assert_close(out.policy_loss, (ce * w).sum() / w.sum(), rtol=1e-5, atol=1e-6)

    # One label at position 0 and one at position >= warmup: the first counts 1e-3 as much.
    two = torch.full((2, 10), IGNORE_INDEX)
    two[0, 0], two[0, 8] = labels[0, 0], labels[0, 8]
    with torch.no_grad():
        loss = model(obs, act, rew, labels=two).policy_loss
    expected = (1e-3 * ce[0, 0] + ce[0, 8]) / (1e-3 + 1.0)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # The same by gradients: d(loss * normaliser)/d(CE at a position) is that position's weight.
    train = tiny_model(backbone, context_warmup=warmup, warmup_start=1e-3).train()
    out2 = train(obs, act, rew, labels=two)
    grads = {}
    out2.policy_logits.register_hook(lambda g_: grads.setdefault("g", g_))
    (out2.policy_loss * (1e-3 + 1.0)).backward()
    p = torch.softmax(out2.policy_logits.detach(), -1)
    onehot = F.one_hot(two.clamp(min=0), A).float()
    torch.testing.assert_close(grads["g"][0, 0], 1e-3 * (p[0, 0] - onehot[0, 0]), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(grads["g"][0, 8], 1.0 * (p[0, 8] - onehot[0, 8]), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_context_warmup_counts_absolute_rows_across_segments(backbone):
    warmup = 8
    model = tiny_model(backbone, context_warmup=warmup, warmup_start=1e-3)
    obs, act, rew = random_rows(1, 12, seed=9)
    labels = torch.randint(0, A, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first = model(obs[:, :5], act[:, :5], rew[:, :5])
        second = model(obs[:, 5:], act[:, 5:], rew[:, 5:], labels=labels[:, 5:], cache=first.cache)
    ce = F.cross_entropy(second.policy_logits[0], labels[0, 5:], reduction="none")
    w = warmup_weights(torch.arange(5, 12), warmup, 1e-3)
    torch.testing.assert_close(second.policy_loss, (ce * w).sum() / w.sum(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_loss_is_the_weighted_sum_of_its_parts(backbone):
    model = tiny_model(backbone)
    obs, act, rew = random_rows(2, 12, seed=12)
    labels = obs % A
    with torch.no_grad():
        out = model(obs, act, rew, labels=labels)
    for part in (out.policy_loss, out.observation_loss, out.reward_loss):
        assert torch.isfinite(part) and float(part) > 0
    torch.testing.assert_close(out.loss, 0.8 * out.policy_loss + 0.1 * out.observation_loss + 0.1 * out.reward_loss)
    only_policy = tiny_model(backbone, policy_loss_weight=1.0, observation_loss_weight=0.0, reward_loss_weight=0.0)
    with torch.no_grad():
        out2 = only_policy(obs, act, rew, labels=labels)
    torch.testing.assert_close(out2.loss, out2.policy_loss)


# ---------------------------------------------------------------------- batched deployment


def _episode_inputs(b: int, t: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, S, (b, t + 1), generator=g)
    rew = torch.randn(b, t, generator=g)
    term = torch.rand(b, t, generator=g) < 0.1
    trunc = (torch.rand(b, t, generator=g) < 0.1) & ~term
    return obs, rew, term, trunc


def _run_act_observe(model, obs, rew, term, trunc, rows, state=None, start=0, steps=None):
    state = state if state is not None else model.initial_state(len(rows))
    logits, actions = [], []
    steps = steps if steps is not None else rew.shape[1] - start
    for j in range(start, start + steps):
        a, lg, state = model.act(state, obs[rows, j], temperature=0)
        state = model.observe(state, a, rew[rows, j], obs[rows, j + 1], term[rows, j], trunc[rows, j])
        logits.append(lg)
        actions.append(a)
    return torch.stack(logits, 1), torch.stack(actions, 1), state


@pytest.mark.parametrize("backbone", BACKBONES)
def test_batched_act_observe_equals_single_histories(backbone):
    model = tiny_model(backbone)
    b, t = 3, 20
    obs, rew, term, trunc = _episode_inputs(b, t, seed=3)
    assert term.any() and trunc.any()
    logits, actions, state = _run_act_observe(model, obs, rew, term, trunc, list(range(b)))
    for i in range(b):
        lg_i, a_i, st_i = _run_act_observe(model, obs, rew, term, trunc, [i])
        assert_close(lg_i[0], logits[i], backbone)
        assert torch.equal(a_i[0], actions[i])
        assert_cache_close(st_i, state.index(slice(i, i + 1)), backbone)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_cache_reset_forgets_one_history_and_keeps_the_others(backbone):
    model = tiny_model(backbone)
    b, t = 3, 24
    obs, rew, term, trunc = _episode_inputs(b, t, seed=4)
    _, _, state = _run_act_observe(model, obs, rew, term, trunc, list(range(b)), steps=12)
    fresh = model.initial_state(b)
    reset = state.reset(torch.tensor([False, True, False]), fresh)
    for k, v in state.tensors.items():
        assert torch.equal(reset.tensors[k][[0, 2]], v[[0, 2]]), k
        assert torch.equal(reset.tensors[k][1], fresh.tensors[k][1]), k
    for x, y, f in zip(reset.layers, state.layers, fresh.layers):
        assert torch.equal(x[[0, 2]], y[[0, 2]])
        assert torch.equal(x[1], f[1])
    assert len(reset.layers) == len(state.layers) == (2 if backbone == "sequence" else 0)
    # Continuing: slot 1 behaves as a brand-new history, slots 0 and 2 as if nothing happened.
    lg, _, _ = _run_act_observe(model, obs, rew, term, trunc, list(range(b)), state=reset, start=12)
    lg_new, _, _ = _run_act_observe(model, obs, rew, term, trunc, [1], start=12)
    assert_close(lg[1], lg_new[0], backbone)
    lg_old, _, _ = _run_act_observe(model, obs, rew, term, trunc, list(range(b)), state=state, start=12)
    assert torch.equal(lg[[0, 2]], lg_old[[0, 2]])
    # numpy masks work too
    again = state.reset(np.array([True, False, False]), fresh)
    assert torch.equal(again.step, torch.stack([fresh.step[0], state.step[1], state.step[2]]))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_cache_size_does_not_grow_with_the_history(backbone):
    model = tiny_model(backbone)

    def shapes(c):
        return {k: tuple(v.shape) for k, v in c.tensors.items()}, [tuple(x.shape) for x in c.layers]

    obs, act, rew = random_rows(2, 200, seed=1)
    with torch.no_grad():
        short = model(obs[:, :10], act[:, :10], rew[:, :10]).cache
        long = model(obs, act, rew).cache
    assert shapes(short) == shapes(long) == shapes(model.initial_state(2))
    eo, er, et, etr = _episode_inputs(2, 60, seed=2)
    _, _, s10 = _run_act_observe(model, eo, er, et, etr, [0, 1], steps=10)
    _, _, s60 = _run_act_observe(model, eo, er, et, etr, [0, 1], steps=60)
    assert shapes(s10) == shapes(s60) == shapes(short)
    assert int(s60.step.min()) >= 60


# ---------------------------------------------------------------------- action masking


@pytest.mark.parametrize("backbone", BACKBONES)
def test_action_mask_hides_actions(backbone):
    model = tiny_model(backbone)
    b = 48
    mask = torch.ones(b, A, dtype=torch.bool)
    mask[: b // 2, 0] = False        # half the histories lack action 0
    mask[b // 2:, 1:3] = False       # the other half lack actions 1 and 2
    state = model.initial_state(b)
    obs = torch.randint(0, S, (b,), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    seen = torch.zeros(b, A, dtype=torch.bool)
    for step in range(6):
        for temp in (0.0, 1.0, 50.0):
            actions, logits, _ = model.act(state, obs, action_mask=mask, temperature=temp, generator=gen)
            assert mask.gather(1, actions[:, None]).all(), (step, temp)
            seen[torch.arange(b), actions] = True
            hidden = logits[~mask]
            assert torch.all(hidden == torch.finfo(logits.dtype).min)
            assert torch.all(logits.min(-1).values == torch.finfo(logits.dtype).min)
            assert torch.all(logits[mask] > torch.finfo(logits.dtype).min)
        actions, _, state = model.act(state, obs, action_mask=mask, temperature=1.0, generator=gen)
        no = torch.zeros(b, dtype=torch.bool)
        state = model.observe(state, actions, torch.randn(b, generator=gen), obs.roll(1), no, no, action_mask=mask)
    assert not (seen & ~mask).any()
    obs2, act2, rew2 = random_rows(b, 6, seed=3)
    act2 = torch.where(act2 >= 0, 3, act2)  # action 3 is allowed everywhere
    with torch.no_grad():
        pi = model(obs2, act2, rew2, action_mask=mask).policy_logits
    assert torch.all(pi[~mask[:, None, :].expand_as(pi)] == torch.finfo(pi.dtype).min)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_rejects_bad_input_by_name(backbone):
    model = tiny_model(backbone)
    obs, act, rew = random_rows(2, 6, seed=1)

    def bad(match, **changes):
        kw = dict(observations=obs, actions=act, rewards=rew)
        kw.update(changes)
        with pytest.raises(ValueError, match=match):
            model(**kw)

    bad("observation id 12", observations=torch.where(obs == obs[0, 0], S, obs))
    too_big, too_small = act.clone(), act.clone()
    too_big[0, 1] = A
    too_small[1, 2] = -3
    bad(r"action 4 is outside", actions=too_big)
    bad(r"action -3", actions=too_small)
    bad("tag ids", tags=torch.full_like(obs, 5))
    bad("tag ids", tags=torch.full_like(obs, -1))
    bad("prompt ids", prompts=torch.tensor([0, model.config.num_prompts]))
    bad("labels", labels=torch.full_like(obs, A))
    bad("labels", labels=torch.full_like(obs, -1))
    bad("shape", actions=act[:, :3])
    bad("action_mask", action_mask=torch.ones(2, A + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_observations"):
        model.initial_state(2, num_observations=S + 1)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_negative_observation_id_is_named_in_the_error(backbone):
    model = tiny_model(backbone)
    obs, act, rew = random_rows(1, 4, seed=1)
    obs[0, 2] = -1
    with pytest.raises(ValueError, match=r"observation id -1\b"):
        model(obs, act, rew)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_act_rejects_an_observation_outside_the_vocabulary(backbone):
    model = tiny_model(backbone)
    with pytest.raises(ValueError, match="observation"):
        model.act(model.initial_state(2), torch.tensor([0, S]))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_observe_rejects_an_action_outside_the_model(backbone):
    """An action id >= num_actions must not slip into the state (it would alias another pair / an end id)."""
    model = tiny_model(backbone)
    _, _, state = model.act(model.initial_state(2), torch.tensor([0, 1]))
    no = torch.zeros(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="action"):
        model.observe(state, torch.tensor([A, 0]), torch.zeros(2), torch.tensor([2, 3]), no, no)


@pytest.mark.parametrize("n_obs, n_act, match", [(S + 1, A, "observations"), (S, A + 1, "actions")])
def test_agent_learner_rejects_environments_larger_than_the_model(n_obs, n_act, match):
    learner = AgentLearner(tiny_model("planning"))
    with pytest.raises(ValueError, match=match):
        learner.initial_state(EnvSpec.uniform(2, n_obs, n_act), seed=0)


# ---------------------------------------------------------------------- training


def test_sequence_backbone_overfits_a_tiny_corpus():
    """8 sequences x 32 rows, label = observation % num_actions: the policy loss falls below 0.3x its start."""
    n_obs, n_act = 8, 3
    torch.manual_seed(0)
    model = AnyMDPAgentModel(AnyMDPAgentConfig(num_observations=n_obs, num_actions=n_act, hidden_size=32, num_heads=2,
                                               num_hidden_layers=1, chunk_size=8, backbone="sequence")).train()
    obs, act, rew = random_rows(8, 32, n_obs=n_obs, n_act=n_act, seed=0, end_rate=0.05)
    labels = obs % n_act
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.no_grad():
        start = float(model(obs, act, rew, labels=labels).policy_loss)
    for _ in range(150):
        out = model(obs, act, rew, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        end = model(obs, act, rew, labels=labels)
    assert start > 0.9  # about log(3) at the start
    assert float(end.policy_loss) < 0.3 * start
    assert (end.policy_logits.argmax(-1) == labels).float().mean() > 0.95


def test_planning_backbone_loss_decreases_on_a_fixed_batch():
    n_obs, n_act = 8, 3
    torch.manual_seed(0)
    model = AnyMDPAgentModel(AnyMDPAgentConfig(num_observations=n_obs, num_actions=n_act, chunk_size=8,
                                               planning_steps=4, backbone="planning")).train()
    obs, act, rew = random_rows(8, 32, n_obs=n_obs, n_act=n_act, seed=0, end_rate=0.05)
    labels = obs % n_act
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    with torch.no_grad():
        start = float(model(obs, act, rew, labels=labels).loss)
    for _ in range(30):
        out = model(obs, act, rew, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        end = float(model(obs, act, rew, labels=labels).loss)
    assert math.isfinite(end) and end < 0.8 * start


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5 renames it activation_checkpointing_enable
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(monkeypatch):
    model = tiny_model("sequence").train()
    obs, act, rew = random_rows(3, 20, seed=5)
    labels = obs % A
    out = model(obs, act, rew, labels=labels)
    out.loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    calls = []
    real = modeling.checkpoint
    monkeypatch.setattr(modeling, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    model.gradient_checkpointing_enable()
    assert model.backbone.gradient_checkpointing
    out2 = model(obs, act, rew, labels=labels)
    out2.loss.backward()
    assert len(calls) == model.config.num_hidden_layers  # the checkpointed path really ran
    torch.testing.assert_close(out2.loss, out.loss, rtol=0, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-7, msg=n)
    # not in eval mode
    model.eval()
    calls.clear()
    with torch.no_grad():
        model(obs, act, rew)
    assert not calls
