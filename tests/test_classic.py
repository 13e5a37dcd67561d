"""The classic families (docs/anymdp.md section 7): RiverSwim and dense Dirichlet MDPs, and their suites."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anymdp_agent.envs import oracle_return, random_return
from anymdp_agent.envs.classic import sample_dirichlet_task, sample_riverswim_task
from anymdp_agent.envs.seeds import VALIDATION
from anymdp_agent.evaluation import SuiteReference, analyse, build_learner, load_suite, run_learner


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 12), na=st.integers(2, 4), seed=st.integers(0, 2**32))
def test_riverswim_structure(n, na, seed):
    task = sample_riverswim_task(n, na, seed=seed)
    assert task.kind == "riverswim" and task.n_states == n and task.max_steps == 40
    up = np.array(task.meta["upstream"])
    chain = np.arange(n)
    p = task.transition
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
    # Upstream: on with 0.6 at the bank, 0.35 in between; stays 0.6 at the far end.
    assert p[0, up[0], 1] == 0.6 and p[0, up[0], 0] == 0.4
    for s in range(1, n - 1):
        assert (p[s, up[s], s + 1], p[s, up[s], s], p[s, up[s], s - 1]) == (0.35, 0.6, 0.05)
    assert p[n - 1, up[n - 1], n - 1] == 0.6 and p[n - 1, up[n - 1], n - 2] == 0.4
    # Downstream: every other action goes one state back, surely.
    for s in chain:
        for a in range(na):
            if a != up[s]:
                assert p[s, a, max(s - 1, 0)] == 1.0
    # The two rewards: the bank's small one and the far end's large one, nothing else.
    r = task.reward
    assert r[n - 1, up[n - 1], n - 1] == 1.0 and np.all(r[0, np.arange(na) != up[0], 0] == 0.005)
    assert np.count_nonzero(r) == 1 + (na - 1)
    np.testing.assert_array_equal(task.start[:2], [0.5, 0.5])
    assert sorted(task.state_mapping.tolist()) == list(range(n))


def test_riverswim_is_a_deep_exploration_test():
    """The oracle swims to the far end; staying at the bank is what random play and a myopic learner get."""
    task = sample_riverswim_task(seed=0)
    hi, lo = oracle_return([task])[0], random_return([task])[0]
    assert hi > 5.0 and 0 <= lo < 0.2  # far end: about 0.6 a step once there; bank: 0.005 a step
    assert task == sample_riverswim_task(seed=0) and task != sample_riverswim_task(seed=1)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(8, 40), na=st.integers(2, 6), alpha=st.sampled_from([0.01, 0.1, 1.0, 5.0]),
       seed=st.integers(0, 2**32))
def test_dirichlet_structure(n, na, alpha, seed):
    task = sample_dirichlet_task(n, na, seed=seed, alpha=alpha)
    assert task.kind == "dirichlet" and task.transition.shape == (n, na, n)
    np.testing.assert_allclose(task.transition.sum(-1), 1.0, atol=1e-12)
    # The reward depends on (s, a) only; the start is uniform; no terminals.
    np.testing.assert_array_equal(task.reward, task.reward[..., :1].repeat(n, -1))
    np.testing.assert_allclose(task.start, 1.0 / n)
    assert not task.terminal.any() and np.all(task.reward_std == 0.3)
    assert task == sample_dirichlet_task(n, na, seed=seed, alpha=alpha)


def test_dirichlet_alpha_sets_how_many_successors_are_likely():
    likely = {a: (sample_dirichlet_task(32, 5, seed=7, alpha=a).transition > 0.01).sum(-1).mean()
              for a in (0.05, 1.0)}
    assert likely[0.05] < 8 and likely[1.0] > 20  # of 32; Beta(1, 31) exceeds 0.01 with probability 0.73


@pytest.mark.parametrize("call, message", [
    (lambda: sample_riverswim_task(2, seed=0), "n_states=2 is too small"),
    (lambda: sample_riverswim_task(6, 1, seed=0), "n_actions=1 is too small"),
    (lambda: sample_riverswim_task(seed=0, max_steps=0), "max_steps must be a positive integer"),
    (lambda: sample_riverswim_task(seed=0, far_reward=-1.0), "far_reward must be a finite number > 0"),
    (lambda: sample_riverswim_task(seed=-1), "seed must be a non-negative integer"),
    (lambda: sample_dirichlet_task(16, seed=0, alpha=0.0), "alpha must be a finite number > 0"),
    (lambda: sample_dirichlet_task(16, seed=0, reward_std=-0.1), "reward_std must be a number >= 0"),
    (lambda: sample_dirichlet_task(4, seed=0), "n_states=4 is too small"),
])
def test_bad_arguments_are_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_suites_of_the_classic_families():
    river = load_suite("riverswim-6", 3, split="validation")
    assert river.seeds == list(VALIDATION.seeds(3, 0)) and river.tasks.action_mask.shape == (3, 2)
    assert river.tasks.tasks[2] == sample_riverswim_task(6, 2, seed=river.seeds[2])
    dense = load_suite("dirichlet-16", 2, task_options={"alpha": 0.1})
    assert dense.tasks.tasks[0] == sample_dirichlet_task(16, 5, seed=dense.seeds[0], alpha=0.1)
    assert "alpha=0.1" in dense.description and dense.tasks.action_mask.shape == (2, 5)
    for name in ("riverswim-2", "dirichlet-7"):
        with pytest.raises(ValueError, match="too small"):
            load_suite(name, 2)


def test_riverswim_separates_a_learner_that_explores_deeply_from_one_that_does_not():
    """On the same tasks and environment seeds the oracle scores about 1, random about 0, and the count-based
    planner, which trusts its first upstream moves, stays near the bank."""
    suite = load_suite("riverswim-6", 8, split="validation")
    ref = SuiteReference.of(suite)
    auc = {}
    for spec in ("oracle", "random", "mbrl"):
        run = run_learner(build_learner(spec), suite, 600)
        auc[spec] = analyse(run, ref, 100, np.random.default_rng(0))["auc"]["mean"]
    assert auc["oracle"] > 0.8 and abs(auc["random"]) < 0.05 and auc["mbrl"] < 0.3
