"""The sequence backbone's optional per-observation statistics (``config.observation_statistics``).

The chunked, split and stepped forms must count the same transitions (each row reads the memory of every
transition before it), and the memory must be the exact counts and reward sums.
"""

from __future__ import annotations

import pytest
import torch

from anymdp_agent import AnyMDPAgentConfig, AnyMDPAgentModel
from anymdp_agent.modeling_anymdp_agent import END_TERMINATED, END_TRUNCATED

from test_agent_model import A, S, assert_cache_close, assert_close, random_rows


def stats_model(seed: int = 0, **overrides) -> AnyMDPAgentModel:
    torch.manual_seed(seed)
    kwargs = dict(num_observations=S, num_actions=A, hidden_size=16, num_heads=2, num_hidden_layers=2, chunk_size=5,
                  backbone="sequence", observation_statistics=True)
    kwargs.update(overrides)
    model = AnyMDPAgentModel(AnyMDPAgentConfig(**kwargs)).eval()
    with torch.no_grad():  # the projection starts at 0.02 std: make the features matter to the numbers
        model.backbone.statistics.proj.weight.mul_(50.0)
    return model


def test_statistics_are_off_by_default_and_add_only_a_projection():
    plain = AnyMDPAgentModel(AnyMDPAgentConfig(backbone="sequence", num_observations=S, num_actions=A))
    assert plain.backbone.statistics is None and "stat_n" not in plain.initial_state(1).tensors
    with_stats = AnyMDPAgentModel(AnyMDPAgentConfig(backbone="sequence", num_observations=S, num_actions=A,
                                                    observation_statistics=True))
    extra = set(with_stats.state_dict()) - set(plain.state_dict())
    assert extra == {"backbone.statistics.proj.weight", "backbone.statistics.proj.bias"}
    assert with_stats.backbone.statistics.proj.in_features == 4 * A


def test_config_rejects_a_non_boolean_statistics_setting():
    with pytest.raises(ValueError, match="observation_statistics"):
        AnyMDPAgentConfig(backbone="sequence", observation_statistics=1)


def test_memory_holds_the_exact_counts_and_reward_sums():
    model = stats_model()
    obs, act, rew = random_rows(2, 23, seed=3)
    with torch.no_grad():
        out = model(obs, act, rew)
    # Every transition but the last row's (which the cache keeps as last_obs/last_action/last_reward).
    n = torch.zeros(2, S, A)
    r = torch.zeros(2, S, A)
    for i in range(2):
        for j in range(22):
            if act[i, j] >= 0:
                n[i, obs[i, j], act[i, j]] += 1
                r[i, obs[i, j], act[i, j]] += rew[i, j]
    torch.testing.assert_close(out.cache.stat_n, n)
    torch.testing.assert_close(out.cache.stat_r, r, rtol=1e-5, atol=1e-5)


def test_return_memory_is_the_discounted_reward_after_each_visit_within_its_episode():
    model = stats_model()
    gamma = model.backbone.statistics.discount
    obs, act, rew = random_rows(2, 31, seed=8, end_rate=0.15)
    assert (act < 0).any()
    with torch.no_grad():
        out = model(obs, act, rew)
    g = torch.zeros(2, S, A)
    for i in range(2):
        for j in range(30):  # the last row's transition is not in the memory yet
            if act[i, j] < 0:
                continue
            ret, k = 0.0, j
            while k < 30 and act[i, k] >= 0:  # rewards of the visit's own episode, up to the last counted row
                ret += gamma ** (k - j) * float(rew[i, k])
                k += 1
            g[i, obs[i, j], act[i, j]] += ret
    torch.testing.assert_close(out.cache.stat_g, g, rtol=1e-5, atol=1e-5)


def test_statistics_change_the_policy():
    """The same history with other rewards at an earlier visit of the current observation changes the logits."""
    model = stats_model()
    obs = torch.tensor([[1, 2, 1]])
    act = torch.tensor([[0, 1, 2]])
    with torch.no_grad():
        a = model(obs, act, torch.tensor([[1.0, 0.0, 0.0]])).policy_logits[0, 2]
        model.backbone.statistics.proj.weight.zero_()
        model.backbone.statistics.proj.bias.zero_()
        b = model(obs, act, torch.tensor([[1.0, 0.0, 0.0]])).policy_logits[0, 2]
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("lookahead", [False, True])
def test_chunkwise_equals_recurrent_and_segments(lookahead):
    model = stats_model(statistics_lookahead=lookahead)
    obs, act, rew = random_rows(3, 23)
    with torch.no_grad():
        chunk = model(obs, act, rew)
        rec = model(obs, act, rew, recurrent=True)
        first = model(obs[:, :7], act[:, :7], rew[:, :7])
        second = model(obs[:, 7:], act[:, 7:], rew[:, 7:], cache=first.cache)
    assert_close(chunk.policy_logits, rec.policy_logits, "sequence")
    assert_cache_close(chunk.cache, rec.cache, "sequence")
    assert_close(chunk.policy_logits, torch.cat([first.policy_logits, second.policy_logits], 1), "sequence")
    assert_cache_close(chunk.cache, second.cache, "sequence")


@pytest.mark.parametrize("lookahead", [False, True])
def test_stepping_and_observe_equal_forward(lookahead):
    """act/_end_row and observe's episode-end rows count the same transitions as the teacher-forced pass."""
    model = stats_model(statistics_lookahead=lookahead)
    obs, act, rew = random_rows(1, 40, seed=11, end_rate=0.2)
    assert (act == END_TERMINATED).any() and (act == END_TRUNCATED).any()
    with torch.no_grad():
        full = model(obs, act, rew)
        state = model.initial_state(1)
        logits = []
        for j in range(obs.shape[1]):
            o, a = obs[:, j], act[:, j]
            if int(a) >= 0:
                _, lg, state = model.act(state, o, temperature=0)
                state = model._end_row(state, a, rew[:, j])
            else:
                lg, state = model._begin_row(state, o, None)
                state = model._end_row(state, a, torch.zeros(1))
            logits.append(lg)
    assert_close(torch.cat(logits), full.policy_logits[0], "sequence")
    assert_cache_close(state, full.cache, "sequence")


def test_lookahead_is_the_mean_best_return_of_the_next_observations():
    """``statistics_lookahead``: exact next-observation counts, and per action the count-weighted mean of the next
    observations' best mean discounted return (in reward-scale units; 0 where nothing was tried)."""
    model = stats_model(statistics_lookahead=True)
    stats = model.backbone.statistics
    assert stats.proj.in_features == 5 * A
    obs, act, rew = random_rows(2, 23, seed=3)
    with torch.no_grad():
        out = model(obs, act, rew)
    nxt = torch.zeros(2, S, A, S)
    for i in range(2):
        for j in range(22):
            if act[i, j] >= 0:
                nxt[i, obs[i, j], act[i, j], obs[i, j + 1]] += 1
    torch.testing.assert_close(out.cache.stat_next, nxt)
    # One more row at observation o: its lookahead features from the memory that includes the pending transition.
    seen = {}
    hook = stats.proj.register_forward_hook(lambda mod, inp, res: seen.update(x=inp[0]))
    o = torch.tensor([[1], [2]])
    scale = torch.full((2, 1), 2.0)
    cache = out.cache
    with torch.no_grad():
        _, memory = stats(cache, cache.last_obs[:, None], cache.last_action[:, None], cache.last_reward[:, None], o, scale)
    hook.remove()
    n, g, nx = memory["stat_n"], memory["stat_g"], memory["stat_next"]
    for i in range(2):
        value = torch.zeros(S)
        for s2 in range(S):
            tried = n[i, s2] > 0
            if tried.any():
                value[s2] = (g[i, s2][tried] / n[i, s2][tried]).max() / 2.0
        oi = int(o[i, 0])
        expected = (nx[i, oi] * value).sum(-1) / n[i, oi].clamp(min=1.0)
        torch.testing.assert_close(seen["x"][i, 0, 4 * A:], expected, rtol=1e-5, atol=1e-5)
        assert (n[i, oi] > 0).any()
