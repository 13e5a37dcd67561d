"""The planning backbone's chunked backups against the per-row reference, and its learned memory decay.

``planner_reference.ReferencePlanner`` is the implementation before the chunked form (every row's
next-observation counts materialised, one matrix-vector product per row and sweep). The chunked form
sums the same terms in another order, so outputs and gradients agree to float32 rounding: policy logits
are O(10^2) (optimism over a 1/(1 - 0.99) horizon), hence a relative tolerance of 1e-5 and an absolute one
of 1e-3 on them; the world-model outputs are O(1).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from anymdp_agent import AnyMDPAgentConfig, AnyMDPAgentModel
from planner_reference import ReferencePlanner
from test_agent_model import random_rows as agent_random_rows

S, A = 12, 4
BUNDLED = Path(__file__).resolve().parent.parent / "anymdp_agent" / "pretrained" / "anymdp-agent-planning-cpu"
FIELDS = ("policy_logits", "observation_logits", "reward_prediction")
TOL = {"policy_logits": dict(rtol=1e-5, atol=1e-3), "observation_logits": dict(rtol=1e-5, atol=1e-5),
       "reward_prediction": dict(rtol=1e-5, atol=1e-5)}


def planner_model(seed: int = 0, trained_like: bool = True, **overrides) -> AnyMDPAgentModel:
    kwargs = dict(num_observations=S, num_actions=A, chunk_size=5, planning_steps=6, backbone="planning")
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = AnyMDPAgentModel(AnyMDPAgentConfig(**kwargs)).eval()
    if trained_like:  # parameters away from the init, so every learned term matters
        with torch.no_grad():
            for p in model.planner.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return model


random_rows = functools.partial(agent_random_rows, end_rate=0.1)


def with_reference(model: AnyMDPAgentModel) -> AnyMDPAgentModel:
    """The same model (same parameters) with the reference planner in place of the chunked one."""
    ref = AnyMDPAgentModel(model.config).eval()
    ref.load_state_dict(model.state_dict())
    ref.planner = ReferencePlanner.wrapping(model.planner)
    return ref


def assert_outputs_close(out, ref):
    for f in FIELDS:
        torch.testing.assert_close(getattr(out, f), getattr(ref, f), **TOL[f], msg=f)
    for k, v in ref.cache.tensors.items():
        if v.dtype == torch.long:
            assert torch.equal(out.cache.tensors[k], v), k
        else:
            torch.testing.assert_close(out.cache.tensors[k], v, rtol=1e-5, atol=1e-3, msg=k)


# ---------------------------------------------------------------------- chunked == per-row reference


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("carry_values", [False, True])
def test_chunked_backups_equal_the_per_row_reference(masked, carry_values):
    model = planner_model(carry_values=carry_values)
    ref = with_reference(model)
    obs, act, rew = random_rows(3, 27, seed=1)
    mask = None
    if masked:
        mask = torch.ones(3, A, dtype=torch.bool)
        mask[0, 1] = mask[2, 3] = False
    with torch.no_grad():
        first, first_ref = model(obs[:, :8], act[:, :8], rew[:, :8], action_mask=mask), \
            ref(obs[:, :8], act[:, :8], rew[:, :8], action_mask=mask)
        assert_outputs_close(first, first_ref)
        # continuing from a cache, from a row that is not on a chunk boundary
        out = model(obs[:, 8:], act[:, 8:], rew[:, 8:], action_mask=mask, cache=first.cache)
        out_ref = ref(obs[:, 8:], act[:, 8:], rew[:, 8:], action_mask=mask, cache=first_ref.cache)
    assert_outputs_close(out, out_ref)


def test_one_row_at_a_time_equals_the_per_row_reference():
    """The stepping path (chunks of one row read the memory after the row directly)."""
    model = planner_model()
    ref = with_reference(model)
    obs, act, rew = random_rows(2, 14, seed=8)
    with torch.no_grad():
        full_ref = ref(obs, act, rew)
        cache, logits = model.initial_state(2), []
        for j in range(obs.shape[1]):
            out = model(obs[:, j:j + 1], act[:, j:j + 1], rew[:, j:j + 1], cache=cache)
            cache = out.cache
            logits.append(out.policy_logits)
    torch.testing.assert_close(torch.cat(logits, 1), full_ref.policy_logits, **TOL["policy_logits"])
    for k, v in full_ref.cache.tensors.items():
        torch.testing.assert_close(cache.tensors[k].float(), v.float(), rtol=1e-5, atol=1e-3, msg=k)


def test_chunked_backups_give_the_reference_gradients():
    model = planner_model().train()
    ref = with_reference(model).train()
    obs, act, rew = random_rows(2, 23, seed=2)
    labels = obs % A
    losses = []
    for m in (model, ref):
        out = m(obs, act, rew, labels=labels)
        out.loss.backward()
        losses.append(out.loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    grads = dict(ref.planner.named_parameters())
    for name, p in model.planner.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.skipif(not (BUNDLED / "model.safetensors").exists(), reason="no bundled checkpoint")
def test_bundled_agent_gives_the_reference_outputs():
    """The shipped checkpoint (24 sweeps, chunks of 64) over 150 rows of a 16-state history."""
    model = AnyMDPAgentModel.from_pretrained(BUNDLED).eval()
    ref = with_reference(model)
    obs, act, rew = random_rows(2, 150, n_obs=16, n_act=5, seed=3, end_rate=0.03)
    with torch.no_grad():
        assert_outputs_close(model(obs, act, rew), ref(obs, act, rew))


# ---------------------------------------------------------------------- the learned memory decay


def test_memory_decay_at_its_initial_value_is_the_exact_statistics_model():
    exact = planner_model(trained_like=False)
    gated = planner_model(trained_like=False, memory_decay=True)
    assert gated.planner.memory_log_decay.item() == 0.0
    missing, unexpected = gated.load_state_dict(exact.state_dict(), strict=False)
    assert missing == ["planner.memory_log_decay"] and not unexpected
    obs, act, rew = random_rows(2, 23, seed=4)
    with torch.no_grad():
        a, b = exact(obs, act, rew), gated(obs, act, rew)
    for f in FIELDS:
        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=1e-6, atol=1e-6, msg=f)
    for k in a.cache.tensors:
        torch.testing.assert_close(a.cache.tensors[k], b.cache.tensors[k], rtol=0, atol=0, msg=k)
    # and the gate is learnable from there: the loss gives it a gradient
    gated.train()
    gated(obs, act, rew, labels=obs % A).loss.backward()
    assert gated.planner.memory_log_decay.grad is not None and float(gated.planner.memory_log_decay.grad) != 0.0


def test_memory_decay_forgets_old_transitions():
    """Counts are sums of decay^(age) over past visits; the cache holds the decayed counts."""
    model = planner_model(trained_like=False, memory_decay=True)
    decay = 0.8
    with torch.no_grad():
        model.planner.memory_log_decay.fill_(torch.log(torch.tensor(decay)))
    # (0, a=1) -> 2, then (2, a=0) -> 0, then (0, a=1) -> 2 again: 4 rows, 3 transitions
    obs = torch.tensor([[0, 2, 0, 2]])
    act = torch.tensor([[1, 0, 1, 3]])
    rew = torch.tensor([[1.0, 0.0, 3.0, 0.0]])
    with torch.no_grad():
        cache = model(obs, act, rew).cache
    # row 3's memory: transitions at rows 1, 2, 3 with ages 2, 1, 0 (decay applied once per row)
    torch.testing.assert_close(cache.n_sa[0, 0, 1], torch.tensor(decay ** 2 + 1.0))
    torch.testing.assert_close(cache.r_sum[0, 0, 1], torch.tensor(decay ** 2 * 1.0 + 3.0))
    torch.testing.assert_close(cache.n_sa[0, 2, 0], torch.tensor(decay))
    torch.testing.assert_close(cache.n_ss[0, 0, 1, 2], torch.tensor(decay ** 2 + 1.0))
    assert float(cache.r_count[0]) == 3.0  # the reward scale stays exact


@pytest.mark.parametrize("split", [3, 11])
def test_memory_decay_chunkwise_equals_one_row_at_a_time(split):
    model = planner_model(memory_decay=True)
    with torch.no_grad():
        model.planner.memory_log_decay.fill_(-0.15)
    b, t = 2, 23
    obs, act, rew = random_rows(b, t, seed=5)
    with torch.no_grad():
        full = model(obs, act, rew)
        first = model(obs[:, :split], act[:, :split], rew[:, :split])
        second = model(obs[:, split:], act[:, split:], rew[:, split:], cache=first.cache)
        cache, rows = model.initial_state(b), []
        for j in range(t):
            out = model(obs[:, j:j + 1], act[:, j:j + 1], rew[:, j:j + 1], cache=cache)
            cache = out.cache
            rows.append(out)
    for f in FIELDS:
        stepped = torch.cat([getattr(o, f) for o in rows], 1)
        split_two = torch.cat([getattr(first, f), getattr(second, f)], 1)
        torch.testing.assert_close(getattr(full, f), stepped, **TOL[f], msg=f)
        torch.testing.assert_close(getattr(full, f), split_two, **TOL[f], msg=f)
    for k, v in full.cache.tensors.items():
        torch.testing.assert_close(cache.tensors[k], v, rtol=1e-5, atol=1e-5, msg=k)
        torch.testing.assert_close(second.cache.tensors[k], v, rtol=1e-5, atol=1e-5, msg=k)
    # and it is not the exact-statistics model any more
    assert float(full.cache.n_sa.sum()) < float((act[:, 1:] >= 0).sum())


def test_memory_decay_gradient_is_finite_with_strong_forgetting():
    model = planner_model(memory_decay=True, chunk_size=16).train()
    with torch.no_grad():
        model.planner.memory_log_decay.fill_(-12.0)  # decay^15 underflows to 0 inside a chunk
    obs, act, rew = random_rows(2, 40, seed=6)
    model(obs, act, rew, labels=obs % A).loss.backward()
    for name, p in model.planner.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_memory_decay_round_trips_through_save_and_load(tmp_path):
    model = planner_model(memory_decay=True)
    with torch.no_grad():
        model.planner.memory_log_decay.fill_(-0.05)
    model.save_pretrained(tmp_path)
    loaded = AnyMDPAgentModel.from_pretrained(tmp_path).eval()
    assert loaded.config.memory_decay is True
    assert loaded.planner.memory_log_decay.item() == pytest.approx(-0.05)
    obs, act, rew = random_rows(1, 12, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(obs, act, rew).policy_logits, model(obs, act, rew).policy_logits,
                                   rtol=0, atol=0)
