"""The planner's learned transition prior (``mbrl:prior=...``): its features, its file format, its backup, and
its training script on a tiny budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anymdp_agent.baselines import make_learner
from anymdp_agent.baselines.model_based import ModelBasedPlanner, agent_rule
from anymdp_agent.baselines.transition_prior import (BUNDLED, NUM_FEATURES, TransitionPrior, prior_cross_entropy,
                                                     prior_features)
from anymdp_agent.modeling_anymdp_agent import CHAIN_FEATURES, chain_coordinate
from anymdp_agent.envs import sample_anymdp_task
from anymdp_agent.evaluation import load_suite, run_learner
from anymdp_agent.training import transition_prior as recipe

from test_baselines import Recorder, task_suite


def random_statistics(rng, b=2, n=6, na=3, visits=12):
    counts = np.zeros((b, n, na, n))
    for _ in range(visits):
        counts[rng.integers(b), rng.integers(n), rng.integers(na), rng.integers(n)] += 1
    return (counts, counts.sum(-1), rng.random((b, n)) < 0.2, rng.integers(0, 5, (b, n)).astype(float),
            rng.normal(size=(b, n)))


def test_features_are_equivariant_under_relabelling_the_observation_ids():
    rng = np.random.default_rng(0)
    counts, n_sa, terminal, visits, arrival = random_statistics(rng)
    f = prior_features(counts, n_sa, terminal, visits, arrival)
    assert f.shape == (2, 6, 3, 6, NUM_FEATURES) and f.dtype == np.float32
    perm = rng.permutation(6)
    g = prior_features(counts[:, perm][..., perm], n_sa[:, perm], terminal[:, perm], visits[:, perm], arrival[:, perm])
    np.testing.assert_allclose(g, f[:, perm][:, :, :, perm], rtol=1e-6, atol=1e-6)
    # the first feature is the pair's empirical row, the second its log visit count
    np.testing.assert_allclose(f[..., 0], counts / np.maximum(n_sa, 1)[..., None], rtol=1e-6)
    np.testing.assert_allclose(f[..., 1], np.broadcast_to(np.log1p(n_sa)[..., None], f.shape[:-1]), rtol=1e-6)


@pytest.mark.parametrize("chain", [False, True])
def test_features_of_some_rows_are_those_rows_of_all_features(chain):
    """The planner refreshes the pairs at the observation just left with the row form; it must be the same
    function as the full one."""
    rng = np.random.default_rng(2)
    counts, n_sa, terminal, visits, arrival = random_statistics(rng, b=3, visits=30)
    full = prior_features(counts, n_sa, terminal, visits, arrival, chain=chain)
    assert full.shape[-1] == NUM_FEATURES + (CHAIN_FEATURES if chain else 0)
    envs, states = np.array([0, 2, 2, 1]), np.array([5, 0, 3, 3])
    rows = prior_features(counts, n_sa, terminal, visits, arrival, envs, states, chain=chain)
    np.testing.assert_array_equal(rows, full[envs, states])
    if chain:  # the first 20 inputs are the ones without the chain
        np.testing.assert_array_equal(full[..., :NUM_FEATURES], prior_features(counts, n_sa, terminal, visits, arrival))


def _walk_counts(order, n_obs, steps=400, seed=0, reach=1):
    """Counts ``[1, n_obs, 2, n_obs]`` of a random walk along a chain whose states are the ids ``order`` (a
    step of -1 to ``reach`` along it), and the visits of each id."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((1, n_obs, 2, n_obs))
    i = 0
    for _ in range(steps):
        j = int(np.clip(i + rng.integers(-1, reach + 1), 0, len(order) - 1))
        counts[0, order[i], rng.integers(2), order[j]] += 1
        i = j
    return counts, counts.sum((2, 3))


def test_the_chain_coordinate_lays_a_chain_out_in_order_whatever_the_ids():
    """The spectral place of each id along a walk's graph follows the hidden chain (either way round), whatever
    ids the chain's states have: exactly where the walk moves one state at a time, closely where it also jumps
    ahead; ids the walk never showed have no place (-1)."""
    order = np.random.default_rng(3).permutation(12)[:10]  # 10 chain states on 12 ids: two never shown

    def place_of(counts, visits):
        sym = torch.as_tensor(((counts.sum(2) + counts.sum(2).transpose(0, 2, 1)) > 0).astype(np.float32))
        return chain_coordinate(sym, torch.as_tensor(visits), torch.as_tensor(counts))[0].numpy()

    jumpy = place_of(*_walk_counts(order, 12, reach=2))[order]
    assert np.corrcoef(jumpy, np.arange(10))[0, 1] ** 2 > 0.9
    counts, visits = _walk_counts(order, 12)
    place = place_of(counts, visits)
    along = place[order]
    assert (np.diff(along) > 0).all() or (np.diff(along) < 0).all()
    assert along.min() == 0.0 and along.max() == 1.0
    unseen = np.setdiff1d(np.arange(12), order)
    assert (place[unseen] == -1).all()
    # the chain inputs of a pair: its outcome's place is 0 away; the place of an id never shown reads as far
    f = prior_features(counts, counts.sum(-1), np.zeros((1, 12), bool), visits, np.zeros((1, 12)), chain=True)
    s, a = order[4], 0
    t = int(np.argmax(counts[0, s, a]))
    assert counts[0, s, a].sum() > 0 and f[0, s, a, t, NUM_FEATURES] == pytest.approx(
        abs(place[t] - (counts[0, s, a] / counts[0, s, a].sum()) @ np.clip(place, 0, None)), abs=1e-6)
    assert (f[0, s, a, unseen, NUM_FEATURES] == 1.0).all() and (f[0, s, a, unseen, -1] == 0).all()
    # relabelling the ids relabels the inputs (no two ids share a place here)
    perm = np.random.default_rng(4).permutation(12)
    g = prior_features(counts[:, perm][..., perm], counts.sum(-1)[:, perm], np.zeros((1, 12), bool), visits[:, perm],
                       np.zeros((1, 12)), chain=True)
    np.testing.assert_allclose(g, f[:, perm][:, :, :, perm], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chain", [False, True])
def test_save_and_load_round_trip_with_or_without_the_chain_inputs(tmp_path, chain):
    torch.manual_seed(0)
    prior = TransitionPrior(hidden=8, chain=chain)
    torch.nn.init.normal_(prior.net[-1].weight)
    back = TransitionPrior.load(prior.save(tmp_path / "p"))
    assert back.chain == chain and back.num_features == NUM_FEATURES + (CHAIN_FEATURES if chain else 0)
    x = np.random.default_rng(1).normal(size=(5, back.num_features)).astype(np.float32)
    np.testing.assert_array_equal(back.pseudo_counts(x), prior.pseudo_counts(x))
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    (tmp_path / "p" / "config.json").write_text(json.dumps({**config, "num_features": 17}))
    with pytest.raises(ValueError, match="with 17 features; this version reads anymdp-transition-prior with 20 or 24"):
        TransitionPrior.load(tmp_path / "p")


def test_save_and_load_round_trip_and_clear_errors(tmp_path):
    torch.manual_seed(0)
    prior = TransitionPrior(hidden=8)
    torch.nn.init.normal_(prior.net[-1].weight)
    path = prior.save(tmp_path / "p", {"note": "test"})
    assert sorted(p.name for p in path.iterdir()) == ["COMPLETE", "config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    config = json.loads((path / "config.json").read_text())
    assert config["hidden"] == 8 and config["note"] == "test" and config["num_features"] == NUM_FEATURES
    x = np.random.default_rng(1).normal(size=(5, NUM_FEATURES)).astype(np.float32)
    back = TransitionPrior.load(path)
    np.testing.assert_array_equal(back.pseudo_counts(x), prior.pseudo_counts(x))
    assert (back.pseudo_counts(x) >= 0).all()
    (path / "COMPLETE").unlink()
    with pytest.raises(ValueError, match="not a saved transition prior.*prior=bundled"):
        TransitionPrior.load(path)
    with pytest.raises(ValueError, match="not a saved transition prior"):
        make_learner(f"mbrl:prior={tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="hidden >= 1"):
        TransitionPrior(hidden=0)


def test_the_prior_inside_a_saved_model_based_agent_loads_and_other_agents_are_refused(tmp_path):
    """``mbrl:prior=AGENT_FOLDER`` plans with the prior of a saved ``model_based`` agent: the same weights."""
    from anymdp_agent.configuration_anymdp_agent import AnyMDPAgentConfig
    from anymdp_agent.modeling_anymdp_agent import AnyMDPAgentModel

    torch.manual_seed(0)
    agent = AnyMDPAgentModel(AnyMDPAgentConfig(backbone="model_based", num_observations=8, num_actions=3,
                                               prior_hidden=6, prior_chain_features=True))
    torch.nn.init.normal_(agent.model_based.prior.net[-1].weight)
    agent.save_pretrained(tmp_path / "agent")
    prior = make_learner(f"mbrl:prior={tmp_path / 'agent'}")._prior
    assert prior.hidden == 6 and prior.chain
    for (k, v), (k2, v2) in zip(prior.state_dict().items(), agent.model_based.prior.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    AnyMDPAgentModel(AnyMDPAgentConfig(backbone="planning", num_observations=8, num_actions=3, planning_steps=2,
                                       chunk_size=4)).save_pretrained(tmp_path / "planning")
    with pytest.raises(ValueError, match="'planning' backbone.*only a model_based agent holds a transition prior"):
        TransitionPrior.load(tmp_path / "planning")


def test_an_untrained_prior_is_about_zero_and_the_bundled_one_loads():
    x = np.zeros((3, NUM_FEATURES), dtype=np.float32)
    assert (TransitionPrior().pseudo_counts(x) < 1e-3).all()
    learner = make_learner("mbrl:prior=bundled")
    assert learner.prior == "bundled" and learner.hyperparameters()["prior"] == "bundled"
    assert json.loads((BUNDLED / "config.json").read_text())["validation_cross_entropy"] < \
        json.loads((BUNDLED / "config.json").read_text())["validation_cross_entropy_untrained"]


class _ZeroPrior(torch.nn.Module):
    chain = False  # reads the inputs without the chain ones

    def pseudo_counts(self, features):
        return np.zeros(features.shape[:-1], dtype=np.float32)


class _ConstantPrior(torch.nn.Module):
    chain = False

    def __init__(self, value):
        super().__init__()
        self.value = value

    def pseudo_counts(self, features):
        return np.full(features.shape[:-1], self.value, dtype=np.float32)


def _with_prior(prior, **kwargs):
    planner = ModelBasedPlanner(**kwargs)
    planner._prior = prior
    return planner


def test_a_zero_prior_is_exactly_mbrl():
    tasks = [sample_anymdp_task(12, 4, seed=s) for s in (5, 6, 7)]
    plain, zero = Recorder(ModelBasedPlanner()), Recorder(_with_prior(_ZeroPrior()))
    run_learner(plain, task_suite(tasks), 600, seed=3)
    run_learner(zero, task_suite(tasks), 600, seed=3)
    np.testing.assert_array_equal(plain.actions, zero.actions)
    np.testing.assert_allclose(plain._state.values, zero._state.values)


def test_tried_pairs_are_worth_the_larger_of_the_empirical_and_the_posterior_mean_backup():
    """By hand: with pseudo-counts g, a tried pair's Q is max(empirical backup, backup on (c + g) / (n + sum g))."""
    gamma, g = 0.9, 0.5
    tasks = [sample_anymdp_task(12, 3, seed=s) for s in (11, 12)]
    rec = Recorder(_with_prior(_ConstantPrior(g), gamma=gamma, sweeps=2))
    run_learner(rec, task_suite(tasks), 200, seed=4)
    planner, st = rec._inner, rec._state
    assert st.visits.sum() == 2 * 200 and np.allclose(st.pseudo, g)
    n, v = st.n_sa, st.values
    r_hat = st.reward_sum / np.maximum(n, 1)
    empirical = r_hat + gamma * np.einsum("bsat,bt->bsa", st.counts / np.maximum(n, 1)[..., None], v)
    posterior = r_hat + gamma * np.einsum("bsat,bt->bsa", (st.counts + g) / (n + g * 12)[..., None], v)
    expected = np.where(n > 0, np.maximum(empirical, posterior), (np.maximum(st.r_max, 0) / (1 - gamma))[:, None, None])
    np.testing.assert_allclose(planner.q_values(st), expected, rtol=1e-4, atol=1e-4)
    assert (posterior > empirical + 1e-6)[n > 0].any() and (posterior < empirical - 1e-6)[n > 0].any()


def test_cross_entropy_is_lowest_at_the_true_row():
    true = torch.tensor([[0.7, 0.3, 0.0]])
    counts, n = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([1.0])
    at_truth = prior_cross_entropy(torch.tensor([[0.0, 1.0 / 0.7 * 0.3, 0.0]]), counts, n, true)
    smoothed = prior_cross_entropy(torch.full((1, 3), 0.3), counts, n, true)
    assert at_truth < smoothed
    assert torch.isclose(at_truth, -(true * torch.log(true.clamp(min=1e-12))).sum())


@pytest.mark.slow
def test_training_script_learns_a_prior_better_than_none_and_is_reproducible(tmp_path):
    args = ["--scale", "0.05", "--steps", "300", "--iters", "20", "--eval_every", "10"]
    assert recipe.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert recipe.main(args + ["--out", str(tmp_path / "b")]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["validation_cross_entropy"] < config["validation_cross_entropy_untrained"] - 0.1
    assert config["command"].startswith("python -m anymdp_agent.training.transition_prior --out")
    a, b = TransitionPrior.load(tmp_path / "a"), TransitionPrior.load(tmp_path / "b")
    assert a.chain and config["num_features"] == NUM_FEATURES + CHAIN_FEATURES  # the recipe reads the chain inputs
    x = np.random.default_rng(0).normal(size=(4, a.num_features)).astype(np.float32)
    np.testing.assert_array_equal(a.pseudo_counts(x), b.pseudo_counts(x))
    # the learned prior runs in the planner on a suite it has not seen
    suite = load_suite("anymdp-8", 2, split="test")
    run_learner(make_learner(f"mbrl:prior={tmp_path / 'a'}"), suite, 50, seed=0)
    with pytest.raises(SystemExit):
        recipe.main(["--iters", "0"])
    with pytest.raises(ValueError, match="reads the chain inputs: pass --chain_features True"):
        recipe.main(args + ["--init_from", str(tmp_path / "a"), "--chain_features", "false", "--out", str(tmp_path / "c")])


def test_an_earlier_stage_that_does_not_fit_is_named_before_any_examples_are_collected(tmp_path, monkeypatch):
    """``--init_from`` with another width or without the chain inputs fails at once, not after minutes of
    collecting examples."""
    TransitionPrior(8, chain=True).save(tmp_path / "stage1")
    monkeypatch.setattr(recipe, "collect", lambda *a, **k: pytest.fail("examples were collected"))
    start = ["--init_from", str(tmp_path / "stage1"), "--out", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="is 8 wide, --hidden is 32: pass --hidden 8"):
        recipe.main(start)
    with pytest.raises(ValueError, match="reads the chain inputs: pass --chain_features True"):
        recipe.main(start + ["--hidden", "8", "--chain_features", "false"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", ["garnet", "anymdp"])
def test_the_training_families_include_deterministic_tasks_on_the_splits_seeds(family):
    """``garnet-det-N`` (one successor per pair) and ``anymdp-det-N`` (every action's most likely move made sure):
    on the split's own seeds (train and validation are different tasks, and neither is a test task)."""
    assert any(name.startswith(f"{family}-det-") for name, _, _ in recipe.FAMILIES)
    train, val = (recipe.family_suite(f"{family}-det-12", 3, 4, split) for split in ("train", "validation"))
    for suite in (train, val):
        p = suite.tasks.transition
        live = p.sum(-1) > 0
        assert suite.num_envs == 3 and ((p == 0) | (p == 1)).all() and live.any() and np.allclose(p[live].sum(-1), 1.0)
    assert not set(train.seeds) & set(val.seeds)
    assert not set(train.seeds) & set(load_suite(f"{family}-12", 3).seeds)
    stochastic = recipe.family_suite(f"{family}-12", 3, 4, "train")
    assert stochastic.seeds == train.seeds and ((stochastic.tasks.transition > 0).sum(-1) > 1).any()


def test_the_bundled_prior_planner_is_deterministic_given_the_seed_and_differs_from_mbrl():
    tasks = [sample_anymdp_task(10, 4, seed=s) for s in (21, 22)]
    runs = []
    for spec in ("mbrl:prior=bundled", "mbrl:prior=bundled", "mbrl"):
        rec = Recorder(make_learner(spec))
        run_learner(rec, task_suite(tasks), 400, seed=5)
        runs.append(rec.actions)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])  # the trained prior changes what the planner does


@pytest.mark.slow
def test_the_corpus_recipe_replays_the_corpus_and_writes_a_loadable_agent(tmp_path):
    """``--corpus``: examples from a corpus written by the generator (true rows from each row's task seed), a
    better prior than none on validation histories, and ``--agent_out`` writes the model_based agent with it."""
    from transformers import AutoModel

    from anymdp_agent.data import CorpusConfig, generate_corpus

    corpus = tmp_path / "corpus"
    generate_corpus(corpus, CorpusConfig(tasks=8, seq_len=400, n_states=(8, 10), n_actions=(2, 4), tasks_per_shard=4),
                    command="anymdp-agent generate --out corpus --tasks 8")
    parts = recipe.corpus_parts(str(corpus), 8, snapshots=(60, 150, 300))
    assert len(parts) == 3 and all(len(p[0]) > 0 for p in parts)
    features, counts, n_sa, true = parts[-1]
    np.testing.assert_allclose(true.sum(-1), 1.0, atol=1e-5)               # true rows are distributions
    assert (counts.sum(-1) == n_sa).all() and (n_sa >= 1).all()            # tried pairs only
    assert ((counts > 0) <= (true > 0)).all()                               # every observed move is possible
    args = ["--corpus", str(corpus), "--corpus_sequences", "8", "--scale", "0.05", "--steps", "400", "--iters", "30",
            "--eval_every", "10", "--hidden", "8"]
    assert recipe.main(args + ["--out", str(tmp_path / "prior"), "--agent_out", str(tmp_path / "agent")]) == 0
    config = json.loads((tmp_path / "prior" / "config.json").read_text())
    assert config["validation_cross_entropy"] < config["validation_cross_entropy_untrained"]
    assert config["corpus_command"] == "anymdp-agent generate --out corpus --tasks 8"
    agent = AutoModel.from_pretrained(tmp_path / "agent", trust_remote_code=True)
    assert agent.config.backbone == "model_based" and agent.config.prior_weight == 4.0
    assert agent.config.planner_novelty == recipe.PriorArgs.novelty == 0.001
    assert agent.config.planner_tail_steps == recipe.PriorArgs.tail_steps == 10
    assert agent_rule(str(tmp_path / "agent")).endswith(
        ":prior_weight=4:novelty=0.001:tail=10:seen_only=64:refresh_fraction=0.125:evidence=1:off_terminal=1:arrival=1")
    prior = TransitionPrior.load(tmp_path / "prior")
    for a, b in zip(agent.model_based.prior.parameters(), prior.parameters()):
        torch.testing.assert_close(a, b)
    card = (tmp_path / "agent" / "README.md").read_text()
    assert "datasets:\n- corpus" in card and "anymdp-agent generate --out corpus --tasks 8" in card
    assert not list(tmp_path.glob(".agent.*"))  # nothing half-written left beside it
    for missing in (str(tmp_path / "nope"), "nope"):  # a missing folder, or a name that is no folder (Hub offline)
        with pytest.raises(SystemExit):
            recipe.main(["--corpus", missing])
