"""The ``model_based`` backbone: the count-based planner with a learned transition prior inside the agent.

It must be the harness' ``mbrl:prior=...`` planner, decision for decision, when both read the same history, and
with a zero prior exactly ``mbrl``; it loads and steps through the agent's own API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anymdp_agent.baselines import make_learner
from anymdp_agent.baselines.model_based import ModelBasedPlanner, agent_rule
from anymdp_agent.baselines.transition_prior import TransitionPrior
from anymdp_agent.configuration_anymdp_agent import AnyMDPAgentConfig
from anymdp_agent.envs import sample_anymdp_task
from anymdp_agent.evaluation import run_learner
from anymdp_agent.rollout import AgentLearner
from anymdp_agent.modeling_anymdp_agent import (DISCOVERY_WINDOW, PRIOR_FEATURES, AnyMDPAgentModel, edge_count,
                                                history_features, history_graph, relative_arrival, still_discovering,
                                                transition_prior_features)

from test_baselines import Recorder, task_suite


def zero_prior() -> TransitionPrior:
    """A prior of pseudo-counts softplus(-200) = 0 in float32: the plain planner."""
    prior = TransitionPrior(hidden=4)
    torch.nn.init.constant_(prior.net[-1].bias, -200.0)
    return prior


def model_based_agent(prior: TransitionPrior, **kwargs) -> AnyMDPAgentModel:
    cfg = AnyMDPAgentConfig(**{"backbone": "model_based", "num_observations": 16, "num_actions": 5,
                               "prior_hidden": prior.hidden, **kwargs})
    model = AnyMDPAgentModel(cfg).eval()
    model.model_based.prior.load_state_dict(prior.state_dict())
    return model


def bundled_rule_agent(prior: TransitionPrior, **kwargs) -> AnyMDPAgentModel:
    """:func:`model_based_agent` with the bundled agent's planner settings (those ``agent_rule()`` writes besides the
    prior, without ``prior_evidence`` and ``prior_off_terminal``, which ``kwargs`` add)."""
    return model_based_agent(prior, prior_weight=4.0, planner_novelty=1e-3, prior_chain_features=True,
                             planner_tail_steps=10, prior_seen_only=True, prior_refresh_fraction=0.125, **kwargs)


def bundled_rule_run(rule: str) -> tuple:
    """The harness planner ``rule`` recorded for 900 steps on four AnyMDP tasks whose episodes end in terminals (the
    equivalence tests of the bundled rules); returns ``(suite, planner, recorder, the bundled agent's prior)``."""
    from anymdp_agent.rollout import bundled_agent_path

    tasks = [sample_anymdp_task(14, a, seed=s, min_states=8) for s, a in ((31, 4), (32, 5), (36, 4), (38, 5))]
    suite = task_suite(tasks)
    planner = make_learner(rule)
    rec = Recorder(planner)
    run_learner(rec, suite, 900, seed=2)
    return suite, planner, rec, TransitionPrior.load(str(bundled_agent_path()))


def replay(model: AnyMDPAgentModel, rec: Recorder, n_obs: int | None, mask: np.ndarray,
           num_actions: int | None = None, q: bool = False):
    """Feed the recorded history to the agent row by row (a state of ``n_obs`` ids, or ``None``: the config's
    whole vocabulary, not sized to the environment; ``num_actions`` actions, the config's by default); return its
    greedy sets [T, B, A] and its state (with ``q``: also its Q there, [T, B, A])."""
    b = rec.actions.shape[1]
    full_mask = torch.zeros(b, num_actions or model.config.num_actions, dtype=torch.bool)
    full_mask[:, :mask.shape[1]] = torch.as_tensor(mask)
    state = model.initial_state(b, num_observations=n_obs, num_actions=num_actions)
    best, qs = [], []
    for obs, t in zip(rec.obs, rec._transitions):
        logits, state = model._begin_row(state, torch.as_tensor(obs), full_mask)
        best.append((logits == 0).numpy())
        if q:
            q_row = model.model_based.q_values(dict(state.tensors), state.values, torch.as_tensor(obs))
            qs.append(q_row.masked_fill(~full_mask, -torch.inf).numpy())
        state = model.observe(state, torch.as_tensor(t.actions), torch.as_tensor(t.rewards, dtype=torch.float32),
                              torch.as_tensor(t.next_obs), torch.as_tensor(t.terminated), torch.as_tensor(t.truncated),
                              action_mask=full_mask)
    # the agent plans when it next acts: one more row makes its plan the planner's after the last transition
    _, state = model._begin_row(state, torch.as_tensor(rec._transitions[-1].next_obs), full_mask)
    return (np.stack(best), state, np.stack(qs)) if q else (np.stack(best), state)


def chain_prior(path) -> str:
    """A prior reading the chain inputs, its last layer drawn so its pseudo-counts vary with them, saved at
    ``path``."""
    torch.manual_seed(0)
    prior = TransitionPrior(hidden=8, chain=True)
    torch.nn.init.normal_(prior.net[-1].weight, std=2.0)
    torch.nn.init.constant_(prior.net[-1].bias, -1.0)
    return str(prior.save(path))


@pytest.mark.parametrize("prior, weight, novelty, tail", [
    ("none", 1.0, 0.0, 0), ("bundled", 1.0, 0.0, 0), ("bundled", 4.0, 0.0, 0), ("none", 1.0, 1e-3, 0),
    ("bundled", 4.0, 1e-3, 0), ("chain", 4.0, 1e-3, 0), ("none", 1.0, 0.0, 30), ("bundled", 4.0, 1e-3, 30)])
def test_the_agent_takes_the_planners_decisions_on_the_planners_history(prior, weight, novelty, tail, tmp_path):
    """Every action ``mbrl`` (or ``mbrl:prior=bundled:prior_weight=W``, ``:novelty=D``, ``:tail=K``, or a prior
    reading the chain inputs) took is among the agent's best actions on that history, across episode ends and a
    task with fewer actions; the plans' values agree. With novelty the tasks pay only their goal and pitfall
    rewards, so the optimism level is novelty's for a while. With a tail both plan each episode's last ``K`` steps
    for the steps left, once an episode has been truncated."""
    parts = {"reward_parts": ()} if novelty else {}
    tasks = [sample_anymdp_task(12, 4, seed=31, **parts), sample_anymdp_task(12, 5, seed=32, **parts),
             sample_anymdp_task(10, 5, seed=33, **parts)]
    suite = task_suite(tasks)
    source = {"none": "", "bundled": "bundled", "chain": chain_prior(tmp_path / "chain") if prior == "chain" else ""}
    planner = ModelBasedPlanner(prior=source[prior], prior_weight=weight, novelty=novelty, tail=tail)
    rec = Recorder(planner)
    run_learner(rec, suite, 700, seed=2)
    loaded = TransitionPrior.load(source[prior]) if source[prior] else zero_prior()
    model = model_based_agent(loaded, prior_weight=weight, planner_novelty=novelty,
                              prior_chain_features=loaded.chain, planner_tail_steps=tail)
    if prior == "chain":  # the chain inputs move the pseudo-counts, so this case tests them
        assert model.model_based.prior.num_features == 24 and (rec._state.pseudo.std(-1) > 0.1).any()
    best, state, q = replay(model, rec, suite.tasks.n_states, rec._mask, q=True)
    assert_same_decisions(rec, best, state, q)
    if tail:  # histories with a truncated episode learnt its length, and planned its tails for the steps left
        assert (rec._state.episode_cap > 0).any()
        np.testing.assert_array_equal(state.episode_cap.numpy(), rec._state.episode_cap)


def assert_same_decisions(rec: Recorder, best: np.ndarray, state, q: np.ndarray) -> None:
    """Every action the recorded planner took is among the agent's best on its history, and the two end with the
    same plan and statistics. The harness keeps pseudo-counts in float32, the agent in float64: a decision may
    differ only where the planner's action is within 1e-7 (relative) of the agent's best, a tie up to rounding."""
    taken = np.take_along_axis(best, rec.actions[..., None], -1)[..., 0]
    q_taken = np.take_along_axis(q, rec.actions[..., None], -1)[..., 0]
    near_tie = q_taken >= q.max(-1) - 1e-7 * np.abs(q.max(-1))
    assert (taken | near_tie).all(), f"{(~(taken | near_tie)).sum()} of {taken.size} decisions differ"
    assert (~taken).sum() <= 0.002 * taken.size, f"{(~taken).sum()} of {taken.size} decisions differ at near-ties"
    assert any(t.terminated.any() for t in rec._transitions)  # episode ends were replayed
    np.testing.assert_allclose(state.values.numpy(), rec._state.values, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(state.n_ss.numpy(), rec._state.counts)
    np.testing.assert_array_equal(state.terminal.numpy(), rec._state.terminal)


def test_with_seen_only_and_refresh_fraction_the_harness_planner_is_the_bundled_agents_rule():
    """``mbrl:prior=AGENT:...:seen_only=V:refresh_fraction=f`` is the agent with ``prior_seen_only`` and
    ``prior_refresh_fraction`` (the bundled settings), decision for decision, on tasks with ids their environment
    never uses: the discovery window closes during the run, and from then on neither puts prior mass on those ids
    (without ``seen_only`` the planner still would)."""
    import copy

    from anymdp_agent.rollout import bundled_agent_path

    tasks = [sample_anymdp_task(14, 4, seed=31, min_states=8), sample_anymdp_task(14, 5, seed=36, min_states=8),
             sample_anymdp_task(14, 5, seed=33)]  # 11, 10 and 14 of 14 ids used
    suite = task_suite(tasks)
    path = str(bundled_agent_path())
    rule = agent_rule()  # the bundled agent's config, written as the harness planner's options
    assert rule == ("mbrl:prior=agent:prior_weight=4:novelty=0.001:tail=10:seen_only=64:refresh_fraction=0.125:"
                    "evidence=1:off_terminal=1:arrival=1")
    planner = make_learner(rule.removesuffix(":evidence=1:off_terminal=1:arrival=1"))  # those three: own tests below
    assert all(torch.equal(a, b) for a, b in zip(planner._prior.state_dict().values(),
                                                 TransitionPrior.load(path).state_dict().values()))
    rec = Recorder(planner)
    run_learner(rec, suite, 900, seed=2)
    model = bundled_rule_agent(TransitionPrior.load(path))
    best, state, q = replay(model, rec, suite.tasks.n_states, rec._mask, q=True)
    assert_same_decisions(rec, best, state, q)
    s = rec._state
    np.testing.assert_array_equal(state.discovered_at.numpy(), s.discovered_at)
    unshown = (s.visits + s.arrival_n) == 0
    assert unshown[:2].any(-1).all() and not unshown[2].any()  # the first two environments have unused ids
    assert (s.discovered_at[:2] + DISCOVERY_WINDOW < 900).all() and not planner.open_ids(s)[unshown].any()
    at_unshown = np.broadcast_to(unshown[:, None, None, :], s.pseudo.shape)
    assert not s.pseudo[at_unshown].any() and not state.pseudo.numpy()[at_unshown].any()
    everywhere = copy.deepcopy(s)
    make_learner(f"mbrl:prior={path}:prior_weight=4").refresh_prior(everywhere)
    assert (everywhere.pseudo[at_unshown & (s.n_sa > 0)[..., None]] > 0).all()


def test_with_evidence_the_harness_planner_is_the_agent_with_prior_evidence():
    """``mbrl:...:evidence=1`` is the agent with ``prior_evidence``, decision for decision: both score every
    transition from a tried pair under each weight of ``EVIDENCE_WEIGHTS`` before counting it, and plan with the
    pseudo-counts times the best. Where a history contradicts the prior the weight falls below 1; the evidence is
    the sequential log-likelihood of the history."""
    import copy

    from anymdp_agent.modeling_anymdp_agent import EVIDENCE_WEIGHTS, evidence_weight

    # the bundled rule with evidence=1 (off_terminal and arrival: their own tests below)
    suite, planner, rec, prior = bundled_rule_run(agent_rule().removesuffix(":off_terminal=1:arrival=1"))
    model = bundled_rule_agent(prior, prior_evidence=True)
    best, state, q = replay(model, rec, suite.tasks.n_states, rec._mask, q=True)
    assert_same_decisions(rec, best, state, q)
    s = rec._state
    np.testing.assert_allclose(state.evidence.numpy(), s.evidence, rtol=1e-5)
    np.testing.assert_array_equal(state.prior_scale.numpy(), s.prior_scale)
    assert (s.prior_scale < 1).any() and (s.prior_scale == 1).any()  # shrunk where contradicted, kept elsewhere
    assert set(s.prior_scale) <= set(EVIDENCE_WEIGHTS)
    np.testing.assert_array_equal(evidence_weight(torch.from_numpy(s.evidence)).numpy(), s.prior_scale)
    # what the plan used: the network's pseudo-counts times prior_weight, and times the weight at the ids shown
    fresh = copy.deepcopy(s)
    fresh.prior_scale = fresh.evidence = None
    make_learner(agent_rule().removesuffix(":evidence=1:off_terminal=1:arrival=1")).refresh_prior(fresh)
    planner.refresh_prior(s)
    shown = (s.visits + s.arrival_n) > 0
    assert not shown.all()  # ids the environments never use keep the prior's full weight (here: none, seen_only)
    factor = np.where(shown, s.prior_scale[:, None], 1.0).astype(np.float32)
    np.testing.assert_allclose(s.pseudo, fresh.pseudo * factor[:, None, None, :], rtol=1e-6)


def test_the_evidence_is_the_sequential_log_likelihood_and_ties_go_to_the_largest_weight():
    """``evidence_terms``: log((w g_t + c_t + 1e-6) / (w G + n)) for each weight, checked by hand;
    ``evidence_weight``: the argmax, and 1 before any evidence (all tied)."""
    from anymdp_agent.modeling_anymdp_agent import EVIDENCE_WEIGHTS, evidence_terms, evidence_weight

    terms = evidence_terms(torch.tensor([0.5, 0.0]), torch.tensor([2.0, 1.0]), torch.tensor([3.0, 0.0]),
                           torch.tensor([4.0, 2.0]))
    w = np.array(EVIDENCE_WEIGHTS)
    np.testing.assert_allclose(terms.numpy(), np.log([(w * 0.5 + 3 + 1e-6) / (w * 2 + 4), (1e-6 + 0 * w) / (w + 2)]))
    assert evidence_weight(torch.zeros(3, len(w))).tolist() == [1.0] * 3
    ev = torch.tensor([[0.0, 1.0, 1.0, -1.0, -2.0], [5.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert evidence_weight(ev).tolist() == [w[2], w[0]]
    with pytest.raises(ValueError, match="prior_evidence"):
        AnyMDPAgentConfig(backbone="model_based", prior_weight=0.0, prior_evidence=True)
    with pytest.raises(ValueError, match="evidence 0 or 1"):
        make_learner("mbrl:prior=bundled:evidence=2")


def test_a_state_may_hold_more_ids_and_actions_than_the_config_names():
    """The backbone is sized by nothing learned: an agent configured for 16 ids and 5 actions, started with 24 ids
    and 7 actions, takes the harness planner's decisions on a 24-state, 7-action task, and runs in the harness
    (which refuses such tasks to the backbones that embed ids)."""
    tasks = [sample_anymdp_task(24, 7, seed=41), sample_anymdp_task(24, 6, seed=42)]
    suite = task_suite(tasks)
    rec = Recorder(ModelBasedPlanner(prior="bundled", prior_weight=4.0))
    run_learner(rec, suite, 500, seed=3)
    model = model_based_agent(TransitionPrior.load("bundled"), prior_weight=4.0)
    assert model.size_free and model.config.num_observations == 16 and model.config.num_actions == 5
    best, state = replay(model, rec, 24, rec._mask, num_actions=7)
    assert best.shape[-1] == 7 and model.state_actions(state) == 7
    assert (rec.actions >= 5).any()  # the actions beyond the config's were taken, by both
    taken = np.take_along_axis(best, rec.actions[..., None], -1)[..., 0]
    assert taken.all(), f"{(~taken).sum()} of {taken.size} decisions differ"
    np.testing.assert_allclose(state.values.numpy(), rec._state.values, rtol=1e-4, atol=1e-4)

    run = run_learner(AgentLearner(model), suite, 200, seed=0)
    assert len(run.ret) > 0 and np.isfinite(run.ret).all()
    planning = AnyMDPAgentModel(AnyMDPAgentConfig(backbone="planning", num_observations=16, num_actions=5,
                                                  planning_steps=2, chunk_size=4))
    assert not planning.size_free
    with pytest.raises(ValueError, match="model_based one"):
        run_learner(AgentLearner(planning), suite, 5)
    with pytest.raises(ValueError, match="only the model_based backbone takes more"):
        planning.initial_state(1, num_observations=24)
    with pytest.raises(ValueError, match="num_actions=7"):
        planning.initial_state(1, num_actions=7)


def test_ids_and_actions_beyond_the_state_are_refused_with_the_fix():
    model = model_based_agent(TransitionPrior.load("bundled"))
    state = model.initial_state(2, num_observations=20, num_actions=6)
    with pytest.raises(ValueError, match=r"observation id 20 is outside the state's 20 ids .*num_observations"):
        model.act(state, torch.tensor([20, 1]))
    with pytest.raises(ValueError, match=r"action_mask must have shape \[2, 6\]"):
        model.act(state, torch.tensor([19, 1]), action_mask=torch.ones(2, 5, dtype=torch.bool))
    _, _, state = model.act(state, torch.tensor([19, 1]))
    with pytest.raises(ValueError, match=r"action 6 is outside 0..5 .*initial_state\(num_actions=...\)"):
        model.observe(state, torch.tensor([6, 0]), torch.zeros(2), torch.tensor([0, 1]), torch.zeros(2, dtype=torch.bool),
                      torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_actions must be a positive integer"):
        model.initial_state(1, num_actions=0)
    with pytest.raises(ValueError, match="num_observations must be a positive integer"):
        model.initial_state(1, num_observations=np.int64(0))
    # a gymnasium space's n is a numpy integer: taken as the int it is
    state = model.initial_state(np.int64(1), num_observations=np.int64(30), num_actions=np.int32(6))
    assert state.n_sa.shape[1:] == (30, 6) and model.state_actions(state) == 6


def test_an_untrained_model_based_agent_is_about_the_plain_planner_and_trains_only_its_prior():
    model = model_based_agent(TransitionPrior(hidden=8))
    torch.manual_seed(0)
    fresh = AnyMDPAgentModel(model.config)
    g = fresh.model_based.prior(torch.randn(64, PRIOR_FEATURES))
    assert torch.all(g < 1e-3)  # softplus(-8): the empirical model
    names = {n for n, _ in fresh.named_parameters()}
    assert names and all(n.startswith("model_based.prior.net.") for n in names)
    with pytest.raises(ValueError, match="prior_hidden"):
        AnyMDPAgentConfig(backbone="model_based", prior_hidden=0)


def test_save_load_and_the_agent_api(tmp_path):
    """Round trip through save_pretrained/from_pretrained; act and observe with episode ends and the forward pass."""
    model = model_based_agent(TransitionPrior.load("bundled"), temperature_start=1.0, temperature_end=1.0,
                              temperature_decay_steps=0)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AnyMDPAgentModel.from_pretrained(tmp_path / "ckpt").eval()
    for a, b in zip(model.parameters(), loaded.parameters()):
        torch.testing.assert_close(a, b)
    state = loaded.initial_state(3, num_observations=6)
    gen = torch.Generator().manual_seed(0)
    for step in range(30):
        obs = torch.tensor([step % 6, (step * 2) % 6, 1])
        actions, logits, state = loaded.act(state, obs, generator=gen)
        assert ((logits == 0) | (logits == loaded.model_based.NOT_BEST)).all()
        assert (logits.gather(1, actions[:, None]) == 0).all()  # always one of the best actions
        done = torch.tensor([step % 7 == 6, False, step % 5 == 4])
        state = loaded.observe(state, actions, torch.randn(3), (obs + 1) % 6, done, torch.zeros(3, dtype=torch.bool))
    # every step is counted, the last one when the next row begins (where its episode did not end)
    assert state.terminal.any() and int(state.r_count.sum()) + int((state.last_action >= 0).sum()) == 90
    obs = torch.randint(0, 6, (2, 12))
    act = torch.randint(0, 5, (2, 12))
    out = loaded(obs, act, torch.randn(2, 12), cache=loaded.initial_state(2, num_observations=6),
                 labels=act)
    assert out.observation_logits.shape == (2, 12, 6)
    torch.testing.assert_close(out.observation_logits.exp().sum(-1), torch.ones(2, 12))
    assert torch.isfinite(out.loss)


def test_features_of_the_agent_and_the_planner_are_one_definition():
    """The harness planner's numpy features are the agent's torch features."""
    from anymdp_agent.baselines.transition_prior import prior_features

    rng = np.random.default_rng(0)
    counts = rng.integers(0, 3, (2, 5, 3, 5)).astype(np.float32)
    args = (counts, counts.sum(-1), rng.random((2, 5)) < 0.3, rng.integers(0, 9, (2, 5)).astype(float),
            rng.normal(size=(2, 5)))
    np.testing.assert_array_equal(prior_features(*args),
                                  transition_prior_features(*(torch.as_tensor(x) for x in args)).numpy())


def test_the_history_features_say_how_deterministic_it_is_and_how_many_ids_it_showed():
    """The prior's three whole-history inputs: the share of pairs tried twice or more that always landed on one
    id, log(1 + how many such pairs), 1 / the ids shown; every (s, a, t) of a history reads the same three."""
    counts = np.zeros((3, 6, 2, 6), dtype=np.float32)
    counts[0, 0, 0, 1] = 3                        # deterministic: both repeated pairs land on one id
    counts[0, 1, 1, 2] = 2
    counts[0, 2, 0, 3] = 1                        # tried once: not counted either way
    counts[1, 0, 0, [1, 2]] = [2, 1]              # one of two repeated pairs stochastic
    counts[1, 1, 0, 4] = 5
    # history 2: nothing yet
    visits = counts.sum((2, 3))
    whole = history_features(torch.as_tensor(counts), torch.as_tensor(counts.sum(-1)), torch.as_tensor(visits))
    torch.testing.assert_close(whole, torch.tensor([[1.0, np.log1p(2), 1 / 4], [0.5, np.log1p(2), 1 / 4],
                                                    [0.0, 0.0, 1.0]], dtype=torch.float32))
    features = transition_prior_features(torch.as_tensor(counts), torch.as_tensor(counts.sum(-1)),
                                         torch.zeros(3, 6, dtype=torch.bool), torch.as_tensor(visits),
                                         torch.zeros(3, 6))
    torch.testing.assert_close(features[..., -3:], whole[:, None, None, None, :].expand(3, 6, 2, 6, 3))
    # ids the state holds but the history never showed change nothing
    wide = np.zeros((3, 9, 2, 9), dtype=np.float32)
    wide[:, :6, :, :6] = counts
    torch.testing.assert_close(history_features(torch.as_tensor(wide), torch.as_tensor(wide.sum(-1)),
                                                torch.as_tensor(wide.sum((2, 3)))), whole)


def test_every_pairs_pseudo_counts_are_refreshed_on_the_schedule():
    """Every pair's pseudo-counts are recomputed after max(prior_refresh, prior_refresh_fraction * steps)
    transitions, those of the observation just left after every other one."""
    model = model_based_agent(TransitionPrior.load("bundled"), prior_refresh=4, prior_refresh_fraction=0.5)
    state = model.initial_state(1, num_observations=5)
    since, full_at = 0, []
    for step in range(60):
        _, state = model._begin_row(state, torch.tensor([step % 5]), None)
        if step and int(state.since_refresh) == 0:
            full_at.append(step)
        state = model.observe(state, torch.tensor([step % 3]), torch.tensor([1.0]), torch.tensor([(step + 1) % 5]),
                              torch.tensor([False]), torch.tensor([False]))
    expected, since = [], 0
    for step in range(1, 60):  # the plan at row `step` follows transition number `step`
        since += 1
        if since >= max(4, 0.5 * step):
            expected.append(step)
            since = 0
    assert full_at == expected and len(expected) < 59 // 4  # fewer than a fixed every-4 schedule
    with pytest.raises(ValueError, match="prior_refresh_fraction"):
        AnyMDPAgentConfig(backbone="model_based", prior_refresh_fraction=-1.0)
    with pytest.raises(ValueError, match="prior_weight"):
        ModelBasedPlanner(prior_weight=-1.0)
    with pytest.raises(ValueError, match="planner_novelty must be a finite number >= 0"):
        AnyMDPAgentConfig(backbone="model_based", planner_novelty=-0.5)


def test_with_prior_seen_only_ids_beyond_the_environments_change_nothing():
    """``prior_seen_only``: a state started with the whole vocabulary (``initial_state`` without
    ``num_observations``) puts no pseudo-counts on ids the history never showed, so it plans as one started with
    exactly the environment's ids. A state sized to its environment (within the config's vocabulary) keeps mass on
    its ids not yet shown while it is still finding new ones, and none once it has gone :data:`DISCOVERY_WINDOW`
    transitions (or as many as it took to find the last) without one; a state without the option keeps it
    throughout."""
    tasks = [sample_anymdp_task(8, 4, seed=41), sample_anymdp_task(8, 4, seed=42)]
    rec = Recorder(ModelBasedPlanner())
    run_learner(rec, task_suite(tasks), 3 * DISCOVERY_WINDOW // 2, seed=1)
    prior = TransitionPrior.load("bundled")
    states = {}
    for seen_only in (True, False):
        for n_vocab in (8, 16):  # the config's vocabulary; the state is started without num_observations
            model = model_based_agent(prior, prior_seen_only=seen_only, prior_weight=4.0, num_observations=n_vocab)
            states[seen_only, n_vocab] = replay(model, rec, None, rec._mask)[1]
        model = model_based_agent(prior, prior_seen_only=seen_only, prior_weight=4.0)
        states[seen_only, "sized 16"] = replay(model, rec, 16, rec._mask)[1]
    exact, wide, sized = states[True, 8], states[True, 16], states[True, "sized 16"]
    assert not exact.sized.any() and sized.sized.all()
    torch.testing.assert_close(wide.pseudo[:, :8, :, :8], exact.pseudo)
    assert (wide.pseudo[:, :, :, 8:] == 0).all()
    torch.testing.assert_close(wide.values[:, :8], exact.values)
    for without in (states[False, 16], states[False, "sized 16"]):  # no option: mass on unshown ids throughout
        assert (without.pseudo[:, :8, :, 8:] > 0).any()
    # every id of these tasks was shown long before the last full refresh (every 16 transitions): no mass beyond
    assert (sized.discovered_at < 100).all() and (sized.r_count - sized.discovered_at > DISCOVERY_WINDOW).all()
    assert not still_discovering(sized.r_count, sized.discovered_at, sized.sized).any()
    assert (sized.pseudo[:, :, :, 8:] == 0).all()
    # while it is still finding ids (the first 30 transitions), the sized state keeps mass on those not yet shown
    rec._obs, rec._actions, rec._transitions = rec._obs[:30], rec._actions[:30], rec._transitions[:30]
    early = replay(model_based_agent(prior, prior_seen_only=True, prior_weight=4.0), rec, 16, rec._mask)[1]
    unshown = ((early.visits + early.arrival_n) == 0)[:, None, None, :] & (early.n_sa > 0)[..., None]
    assert still_discovering(early.r_count, early.discovered_at, early.sized).all()
    assert (early.pseudo[unshown.expand_as(early.pseudo)] > 0).all()
    # ... unless it holds more ids than the config's vocabulary: then it keeps mass on shown ids only
    beyond = replay(model_based_agent(prior, prior_seen_only=True, prior_weight=4.0, num_observations=8), rec, 16,
                    rec._mask)[1]
    assert still_discovering(beyond.r_count, beyond.discovered_at, beyond.sized).all()
    assert (beyond.pseudo[unshown.expand_as(beyond.pseudo)] == 0).all() and (beyond.pseudo > 0).any()


def test_a_sized_state_counts_when_it_last_showed_a_new_id():
    """``discovered_at``: the transitions so far when either end of a transition was an id the history had not
    shown; the window of :func:`still_discovering` is the larger of :data:`DISCOVERY_WINDOW` and that count."""
    model = model_based_agent(zero_prior(), prior_seen_only=True)
    state = model.initial_state(1, num_observations=6)
    path = [0, 1, 0, 1, 2, 2, 0]  # new ids at transitions 1 (0 -> 1) and 4 (1 -> 2)
    seen = []
    for i, o in enumerate(path):
        _, state = model._begin_row(state, torch.tensor([o]), None)
        seen.append(float(state.discovered_at))
        if i + 1 < len(path):
            state = model.observe(state, torch.tensor([0]), torch.tensor([0.0]), torch.tensor([path[i + 1]]),
                                  torch.tensor([False]), torch.tensor([False]))
    assert seen == [0.0, 1.0, 1.0, 1.0, 4.0, 4.0, 4.0]
    one = torch.ones(1, dtype=torch.bool)
    win = DISCOVERY_WINDOW
    assert still_discovering(torch.tensor([4.0 + win]), torch.tensor([4.0]), one).all()
    assert not still_discovering(torch.tensor([5.0 + win]), torch.tensor([4.0]), one).any()
    late = 1.5 * win  # a last new id later than the window: the window is as long as finding it took
    assert still_discovering(torch.tensor([2.0 * late]), torch.tensor([late]), one).all()
    assert not still_discovering(torch.tensor([2.0 * late + 1]), torch.tensor([late]), one).any()
    assert not still_discovering(torch.tensor([4.0]), torch.tensor([4.0]), ~one).any()  # not sized: never


@pytest.mark.parametrize("seen_only, n_obs", [(True, None), (True, 16), (False, 16)])
def test_the_prior_runs_only_where_it_counts_and_gives_what_the_whole_network_would(seen_only, n_obs):
    """Tried pairs get ``prior(features) * prior_weight`` (at the ids the history showed, with ``prior_seen_only``
    in a state not sized to its environment), exactly what the network gives when run on every pair and id;
    untried pairs, whose value is the optimism, get no pseudo-counts (their observation prediction is uniform)."""
    tasks = [sample_anymdp_task(12, 4, seed=51), sample_anymdp_task(10, 5, seed=52)]
    rec = Recorder(ModelBasedPlanner())
    run_learner(rec, task_suite(tasks), 150, seed=3)
    model = model_based_agent(TransitionPrior.load("bundled"), prior_refresh=1, prior_weight=4.0,
                              prior_seen_only=seen_only)
    _, state = replay(model, rec, n_obs, rec._mask)  # every step a full refresh: the whole history's pseudo-counts
    arrival = relative_arrival(state.arrival_sum, state.arrival_n, state.r_sq, state.visits.sum(-1))
    with torch.no_grad():
        every = model.model_based.prior(transition_prior_features(
            state.n_ss, state.n_sa, state.terminal, state.visits, arrival)).double() * 4.0
    tried = (state.n_sa > 0)[..., None]
    shown = (((state.visits + state.arrival_n) > 0)[:, None, None, :] if seen_only and n_obs is None
             else torch.ones_like(tried))
    unshown = ((state.visits + state.arrival_n) == 0)[:, None, None, :] & tried
    assert unshown.any() and (state.pseudo[unshown.expand_as(state.pseudo)] > 0).any() == bool(shown.all())
    assert (~tried).any() and tried.any()
    torch.testing.assert_close(state.pseudo, torch.where(tried & shown, every, torch.zeros_like(every)),
                               rtol=1e-5, atol=1e-6)  # float32 network, other batch shapes
    torch.testing.assert_close(state.pseudo_total, state.pseudo.sum(-1))


def test_a_refresh_in_parts_gives_the_same_prior_as_one_in_one_go(monkeypatch):
    """A full refresh computes the prior's inputs a part of the rows at a time (:func:`prior_row_parts`), so its
    memory stays bounded at hundreds of ids: the whole-history graph is computed once and gives the same features,
    and an agent refreshing one row at a time takes the same decisions with the same pseudo-counts (up to float32
    rounding)."""
    import anymdp_agent.modeling_anymdp_agent as modeling

    tasks = [sample_anymdp_task(24, 4, seed=71), sample_anymdp_task(20, 5, seed=72)]
    rec = Recorder(ModelBasedPlanner())
    run_learner(rec, task_suite(tasks), 400, seed=5)
    s = rec._state
    args = (torch.from_numpy(s.counts), torch.from_numpy(s.n_sa), torch.from_numpy(s.terminal), torch.ones(2, 24),
            torch.zeros(2, 24))
    envs, states = torch.tensor([0, 1, 1]), torch.tensor([3, 0, 7])
    graph = history_graph(args[0], args[1], args[3])
    assert torch.equal(transition_prior_features(*args, envs, states, graph), transition_prior_features(*args, envs, states))
    edges = graph[0]
    assert torch.equal(edges, (torch.from_numpy(s.counts).sum(2) > 0).float())
    # Only the rows a refresh reads (the ids each refreshed observation was seen to lead to): the same features,
    # bit for bit, and those rows of the two-step and near matrices are the full ones, the rest 0.
    needed = torch.zeros(2, 24, dtype=torch.bool)
    r, x = torch.nonzero(edges[envs, states] > 0, as_tuple=True)
    needed[envs[r], x] = True  # history 1 has two rows
    few = history_graph(args[0], args[1], args[3], envs, states)
    assert 0 < needed.sum() < 24 and torch.equal(few[0], edges) and torch.equal(few[3], graph[3])
    for full_m, few_m in zip(graph[1:3], few[1:3]):
        assert torch.equal(few_m[needed], full_m[needed]) and not few_m[~needed].any() and full_m[~needed].any()
    assert torch.equal(transition_prior_features(*args, envs, states, few),
                       transition_prior_features(*args, envs, states))
    every = history_graph(args[0], args[1], args[3], torch.arange(2).repeat_interleave(24),
                          torch.arange(24).repeat(2))  # every row: all at once
    assert all(torch.equal(a, b) for a, b in zip(every[:4], graph[:4])) and every[4] is None and graph[4] is None
    # with the chain inputs: the whole history's places, the same for the few rows as for all of them
    chained = history_graph(args[0], args[1], args[3], envs, states, chain=True)
    assert chained[4][0].shape == (2, 24) and torch.equal(
        chained[4][0], history_graph(args[0], args[1], args[3], chain=True)[4][0])
    assert torch.equal(chained[4][1], edge_count(chained[0]))
    assert torch.equal(transition_prior_features(*args, envs, states, chained, chain=True),
                       transition_prior_features(*args, envs, states, chain=True))
    with pytest.raises(ValueError, match="chain=True"):
        transition_prior_features(*args, envs, states, few, chain=True)
    # a place known from an earlier call is kept where no edge was added since, recomputed where one was
    place, count = chained[4]
    fake = torch.full_like(place, 0.5)
    kept = history_graph(args[0], args[1], args[3], chain=True, known=(fake, count))[4][0]
    assert torch.equal(kept, fake)  # nothing added: the eigensolver did not run
    stale = history_graph(args[0], args[1], args[3], chain=True, known=(fake, count - torch.tensor([1.0, 0.0])))[4][0]
    assert torch.equal(stale[0], place[0]) and torch.equal(stale[1], fake[1])

    assert len(modeling.prior_row_parts(2 * 24, 24)) == 1
    replays, parts = [], []
    for one_row in (False, True):  # all rows in one part; one row per part
        if one_row:
            monkeypatch.setattr(modeling, "prior_row_parts", lambda rows, n: parts.append(rows) or
                                [slice(i, i + 1) for i in range(rows)])
        model = model_based_agent(TransitionPrior.load("bundled"), prior_refresh=1, prior_weight=4.0,
                                  prior_seen_only=True)
        replays.append(replay(model, rec, 24, rec._mask))
    (best_a, a), (best_b, b) = replays
    assert max(parts) > 1  # full refreshes of several rows were split
    np.testing.assert_array_equal(best_a, best_b)
    assert (a.pseudo > 0).any()
    torch.testing.assert_close(a.pseudo, b.pseudo, rtol=1e-5, atol=1e-5)


def test_the_harness_planner_refreshes_its_prior_in_parts_too(monkeypatch):
    """``mbrl:prior=...`` recomputes every pair's pseudo-counts in the same bounded parts
    (:func:`prior_row_parts`): one row per part gives what one part gives, to float32 rounding."""
    import anymdp_agent.modeling_anymdp_agent as modeling

    tasks = [sample_anymdp_task(16, 4, seed=81), sample_anymdp_task(12, 4, seed=82)]
    planner = ModelBasedPlanner(prior="bundled", prior_weight=4.0)
    rec = Recorder(planner)
    run_learner(rec, task_suite(tasks), 300, seed=6)
    state = rec._state
    planner.refresh_prior(state)
    whole = state.pseudo.copy(), state.pseudo_total.copy()
    assert len(modeling.prior_row_parts(2 * 16, 16)) == 1
    parts = []
    monkeypatch.setattr(modeling, "prior_row_parts", lambda rows, n: parts.append(rows) or
                        [slice(i, i + 1) for i in range(rows)])
    state.pseudo[:], state.pseudo_total[:] = 0.0, 0.0
    planner.refresh_prior(state)
    assert parts == [2 * 16] and (whole[0] > 0).any()
    np.testing.assert_allclose(state.pseudo, whole[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.pseudo_total, whole[1], rtol=1e-5)


def test_the_last_steps_of_an_episode_are_planned_for_the_steps_left():
    """Two states: at 0, action 1 pays 0.5 and stays, action 0 pays nothing but leads to 1, which pays 1 forever.
    After an episode truncated at 4 steps, the stationary plan leaves 0 by action 0; with ``planner_tail_steps = 2``
    and one step left the agent takes the 0.5 instead, and with more than 2 left it plans as before. Where the steps
    left value the actions alike (action 1 paying nothing), the stationary plan still chooses."""
    history = [(0, 1, 0.5, 0, False, False), (0, 0, 0.0, 1, False, False), (1, 0, 1.0, 1, False, False),
               (1, 1, 1.0, 1, False, True),  # truncated: the episode's length is 4
               (0, 1, 0.5, 0, False, False), (0, 1, 0.5, 0, False, False), (0, 1, 0.5, 0, False, False)]

    def best_actions(tail: int, steps: int, history=history) -> list[int]:
        model = model_based_agent(zero_prior(), planner_tail_steps=tail)
        state = model.initial_state(1, num_observations=2, num_actions=2)
        mask = torch.ones(1, 2, dtype=torch.bool)
        for s, a, r, s2, term, trunc in history[:steps]:
            _, state = model._begin_row(state, torch.tensor([s]), mask)
            state = model.observe(state, torch.tensor([a]), torch.tensor([r]), torch.tensor([s2]),
                                  torch.tensor([term]), torch.tensor([trunc]), action_mask=mask)
        logits, state = model._begin_row(state, torch.tensor([0]), mask)
        assert state.episode_cap.item() == (4.0 if steps >= 4 else 0.0)
        return torch.nonzero(logits[0] == 0)[:, 0].tolist()

    assert best_actions(0, 7) == [0]         # the stationary plan heads for state 1
    assert best_actions(2, 7) == [1]         # one step left: the 0.5 now beats a move that pays later
    assert best_actions(2, 5) == [0]         # three steps left, more than the tail: the stationary plan
    assert best_actions(2, 3) == [0]         # no episode truncated yet: no length known, the stationary plan
    unpaid = [(s, a, 0.0 if a == 1 and s == 0 else r, s2, term, trunc) for s, a, r, s2, term, trunc in history]
    assert best_actions(2, 7, unpaid) == [0]  # one step left, both worth 0 for it: the stationary plan's choice
    with pytest.raises(ValueError, match="planner_tail_steps"):
        AnyMDPAgentConfig(backbone="model_based", planner_tail_steps=-1)


def test_one_tie_tolerance_for_the_agent_the_planner_and_the_corpus_behaviours():
    """Values within ``TIE_TOLERANCE`` (relative) of the best are tied, one further away is not: in the harness'
    :func:`best_actions`, the corpus behaviours' compiled argmax, and the agent's greedy logits (its remote code keeps
    the number itself)."""
    from anymdp_agent.baselines.protocol import TIE_TOLERANCE, best_actions
    from anymdp_agent.data.behaviours import _argmax_random_ties

    top = 10.0
    q = np.array([top, top - 0.5 * TIE_TOLERANCE * (1 + top), top - 2 * TIE_TOLERANCE * (1 + top), top, 0.0])
    mask = np.array([True, True, True, True, False])
    tied = np.array([True, True, False, True, False])
    np.testing.assert_array_equal(best_actions(q[None], mask[None])[0], tied)
    rng = np.random.default_rng(0)
    picks = {int(_argmax_random_ties(q, mask, rng)) for _ in range(200)}
    assert picks == {0, 1, 3}
    model = model_based_agent(zero_prior())
    assert model.model_based.TIE == TIE_TOLERANCE
    np.testing.assert_array_equal(model.model_based.greedy_logits(torch.from_numpy(q[None, :4]))[0].numpy() == 0,
                                  tied[:4])


def test_agent_rule_writes_a_saved_agents_config_as_the_harness_planners_options(tmp_path):
    """Every planner setting of a ``model_based`` agent's config becomes the ``mbrl`` option of the same meaning (those
    at the planner's defaults left out); a config the harness cannot express, or another backbone, is refused."""
    cfg = dict(backbone="model_based", num_observations=24, num_actions=4, planning_gamma=0.98, planner_sweeps=5,
               prior_weight=2.5, planner_tail_steps=7, prior_refresh_fraction=0.25)
    AnyMDPAgentModel(AnyMDPAgentConfig(**cfg)).save_pretrained(tmp_path / "a")
    rule = agent_rule(str(tmp_path / "a"))
    assert rule == f"mbrl:prior={tmp_path / 'a'}:gamma=0.98:sweeps=5:prior_weight=2.5:tail=7:refresh_fraction=0.25"
    planner = make_learner(rule)  # prior_seen_only off: mass on every id, so no seen_only
    assert (planner.gamma, planner.sweeps, planner.prior_weight, planner.tail, planner.seen_only) == (0.98, 5, 2.5, 7, 0)
    AnyMDPAgentModel(AnyMDPAgentConfig(**cfg, prior_seen_only=True)).save_pretrained(tmp_path / "b")
    assert agent_rule(str(tmp_path / "b")).endswith(":seen_only=24:refresh_fraction=0.25")
    AnyMDPAgentModel(AnyMDPAgentConfig(**cfg, prior_refresh=8)).save_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match="prior_refresh=8; the harness planner refreshes every pair every 16 steps"):
        agent_rule(str(tmp_path / "c"))
    AnyMDPAgentModel(AnyMDPAgentConfig(backbone="planning", num_observations=8, num_actions=3, planning_steps=2,
                                       chunk_size=4)).save_pretrained(tmp_path / "d")
    with pytest.raises(ValueError, match="not a saved model_based agent .*backbone 'planning'"):
        agent_rule(str(tmp_path / "d"))


def test_with_off_terminal_the_harness_planner_is_the_agent_with_prior_off_terminal():
    """``mbrl:...:off_terminal=1`` is the agent with ``prior_off_terminal``, decision for decision: neither puts prior
    mass on an id an episode has ended in, and elsewhere the pseudo-counts are the rule's without the option."""
    import copy

    rule = agent_rule().removesuffix(":arrival=1")  # the bundled rule, evidence=1:off_terminal=1 (arrival: below)
    assert rule.endswith(":evidence=1:off_terminal=1")
    suite, planner, rec, prior = bundled_rule_run(rule)
    model = bundled_rule_agent(prior, prior_evidence=True, prior_off_terminal=True)
    best, state, q = replay(model, rec, suite.tasks.n_states, rec._mask, q=True)
    assert_same_decisions(rec, best, state, q)
    s = rec._state
    np.testing.assert_array_equal(state.prior_scale.numpy(), s.prior_scale)
    planner.refresh_prior(s)
    at_terminal = np.broadcast_to(s.terminal[:, None, None, :], s.pseudo.shape)
    assert s.terminal.any(-1).all()  # every environment has ended an episode in a terminal
    assert not s.pseudo[at_terminal].any() and not state.pseudo.numpy()[at_terminal].any()
    both = copy.deepcopy(s)  # the same history without the option: mass at the terminal ids, the rest equal
    make_learner(rule.removesuffix(":off_terminal=1")).refresh_prior(both)
    assert both.pseudo[at_terminal].any()
    np.testing.assert_allclose(s.pseudo[~at_terminal], both.pseudo[~at_terminal], rtol=1e-6)
    with pytest.raises(ValueError, match="off_terminal 0 or 1"):
        make_learner("mbrl:prior=bundled:off_terminal=2")


def test_with_arrival_the_harness_planner_is_the_agent_with_prior_arrival_reward():
    """``mbrl:...:arrival=1`` is the agent with ``prior_arrival_reward``, decision for decision: each pseudo-transition
    to ``t`` carries the pair's mean reward moved by ``t``'s mean arrival reward minus that of the pair's own
    transitions (by hand below), and the decisions are not those of the rule without it."""
    rule = agent_rule()  # the bundled agent's rule
    assert rule.endswith(":evidence=1:off_terminal=1:arrival=1")
    suite, planner, rec, prior = bundled_rule_run(rule)
    assert planner.arrival == 1
    settings = dict(prior_evidence=True, prior_off_terminal=True)
    model = bundled_rule_agent(prior, prior_arrival_reward=True, **settings)
    best, state, q = replay(model, rec, suite.tasks.n_states, rec._mask, q=True)
    assert_same_decisions(rec, best, state, q)
    s = rec._state
    arrived = s.arrival_n > 0
    mean = np.where(arrived, s.arrival_sum / np.maximum(s.arrival_n, 1.0), 0.0)[:, None, None, :]
    own = (s.counts * mean).sum(-1) / np.maximum(s.n_sa, 1.0)
    by_hand = (s.pseudo * arrived[:, None, None, :] * (mean - own[..., None])).sum(-1)
    np.testing.assert_allclose(s.pseudo_reward, by_hand, rtol=1e-6, atol=1e-9)
    tried = s.n_sa > 0  # the agent computes no pseudo-counts for untried pairs (they are worth the optimism)
    np.testing.assert_allclose(state.pseudo_reward.numpy()[tried], s.pseudo_reward[tried], rtol=1e-4, atol=1e-6)
    assert np.abs(s.pseudo_reward[tried]).max() > 0.1  # it moves the rewards the prior's mass carries
    without, _ = replay(bundled_rule_agent(prior, **settings), rec, suite.tasks.n_states, rec._mask)
    assert (without != best).any()  # and with them some decisions
    assert not bundled_rule_agent(prior, **settings).config.prior_arrival_reward
    with pytest.raises(ValueError, match="arrival 0 or 1"):
        make_learner("mbrl:prior=bundled:arrival=2")
    with pytest.raises(ValueError, match="prior_arrival_reward must be True or False"):
        AnyMDPAgentConfig(backbone="model_based", prior_arrival_reward=1)
