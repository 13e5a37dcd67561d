"""The in-context baselines: the protocol, per-environment state, the update rules, and what the names promise.

Behaviour tests run every learner through the real harness (``run_learner`` + ``SuiteReference`` +
``analyse``) on 32 held-out AnyMDP tasks of 16 states for 4000 steps; the numbers they assert were
read off those runs (fixed seeds, so the tests are deterministic) with margins well inside them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from anymdp_agent.baselines import (
    LEARNERS,
    EnvSpec,
    InContextLearner,
    ModelBasedPlanner,
    OracleLearner,
    RandomLearner,
    TabularQLearner,
    Transition,
    UCBQLearner,
    make_learner,
)
from anymdp_agent.envs import BatchedAnyMDPEnv, sample_anymdp_task, stack_tasks
from anymdp_agent.evaluation import Suite, SuiteReference, analyse, bootstrap_ci, load_suite, run_learner

STOCHASTIC = ("random", "tql", "ucbq", "mbrl")


# ---------------------------------------------------------------------- helpers


class Recorder(InContextLearner):
    """Wraps a learner; records every observation, action and transition the harness hands it."""

    def __init__(self, inner: InContextLearner):
        self._inner = inner
        self.name = inner.name
        self._obs, self._actions, self._transitions = [], [], []
        self._mask = None
        self._state = None

    def initial_state(self, spec, seed):
        self._mask = spec.action_mask.copy()
        return self._inner.initial_state(spec, seed)

    def act(self, state, obs):
        actions, state = self._inner.act(state, obs)
        self._obs.append(np.array(obs, copy=True))
        self._actions.append(np.array(actions, copy=True))
        return actions, state

    def observe(self, state, transition):
        self._transitions.append(Transition(*(np.array(getattr(transition, f), copy=True) for f in
                                              ("obs", "actions", "rewards", "next_obs", "terminated", "truncated"))))
        state = self._inner.observe(state, transition)
        self._state = state
        return state

    @property
    def actions(self) -> np.ndarray:
        return np.stack(self._actions)  # [T, B]

    @property
    def obs(self) -> np.ndarray:
        return np.stack(self._obs)

    def hyperparameters(self):
        return self._inner.hyperparameters()


def task_suite(tasks, name="custom") -> Suite:
    batch = stack_tasks(tasks)
    return Suite(name=name, num_envs=len(batch), tasks=batch,
                 make_env=lambda: BatchedAnyMDPEnv(batch, autoreset_mode="SameStep"))


@pytest.fixture(scope="module")
def mixed_action_tasks():
    """Four 16-state tasks, two with 3 actions and two with 5 (so the padded action 3, 4 is masked for two)."""
    return [sample_anymdp_task(16, 3, seed=101), sample_anymdp_task(16, 5, seed=102),
            sample_anymdp_task(16, 3, seed=103), sample_anymdp_task(16, 5, seed=104)]


def record(name: str, tasks, steps: int, seed: int, env_seed: int | None = None) -> Recorder:
    rec = Recorder(make_learner(name))
    suite = task_suite(tasks)
    if env_seed is None:
        env_seed = seed
    # run_learner seeds environments and learner with the same seed; to vary only the learner's seed,
    # seed the learner through a wrapper of initial_state.
    inner_init = rec.initial_state
    rec.initial_state = lambda spec, _seed: inner_init(spec, seed)  # type: ignore[method-assign]
    run_learner(rec, suite, steps, seed=env_seed)
    return rec


# ---------------------------------------------------------------------- the protocol


def test_registry_names_match_classes():
    assert set(LEARNERS) == {"oracle", "random", "tql", "ucbq", "mbrl"}
    for name, cls in LEARNERS.items():
        assert cls.name == name
        assert issubclass(cls, InContextLearner)
        for method in ("initial_state", "act", "observe"):
            assert getattr(cls, method) is not getattr(InContextLearner, method), (name, method)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_actions_respect_each_environments_action_mask(name, mixed_action_tasks):
    rec = record(name, mixed_action_tasks, steps=400, seed=3)
    actions, mask = rec.actions, rec._mask
    assert mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5, [True] * 3 + [False] * 2, [True] * 5]
    assert actions.shape == (400, 4)
    assert np.issubdtype(actions.dtype, np.integer)
    assert np.all(mask[np.arange(4)[None, :], actions]), f"{name} took a masked action"
    # The 5-action environments do use actions 3 and 4 (the mask does not shrink every env's set) --
    # for the learners that explore; the oracle may never need them.
    if name != "oracle":
        assert np.isin(actions[:, [1, 3]], [3, 4]).any()
        for b in range(4):
            assert len(np.unique(actions[:, b])) == mask[b].sum()


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_same_seed_same_actions(name, mixed_action_tasks):
    a = record(name, mixed_action_tasks, steps=300, seed=11).actions
    b = record(name, mixed_action_tasks, steps=300, seed=11).actions
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_different_learner_seeds_differ(name, mixed_action_tasks):
    a = record(name, mixed_action_tasks, steps=300, seed=11, env_seed=5).actions
    b = record(name, mixed_action_tasks, steps=300, seed=12, env_seed=5).actions
    assert (a != b).mean() > 0.05


def test_oracle_ignores_the_learner_seed(mixed_action_tasks):
    a = record("oracle", mixed_action_tasks, steps=300, seed=11, env_seed=5).actions
    b = record("oracle", mixed_action_tasks, steps=300, seed=12, env_seed=5).actions
    np.testing.assert_array_equal(a, b)


def test_oracle_on_a_batch_equals_oracle_on_each_env_alone(mixed_action_tasks):
    """Per-environment state: env ``i`` of a batch (seed s + i) behaves as that task run alone with seed s + i."""
    seed, steps = 40, 250
    batch = record("oracle", mixed_action_tasks, steps=steps, seed=seed)
    for i, task in enumerate(mixed_action_tasks):
        alone = record("oracle", [task], steps=steps, seed=seed + i)
        np.testing.assert_array_equal(alone.actions[:, 0], batch.actions[:, i])
        np.testing.assert_array_equal(alone.obs[:, 0], batch.obs[:, i])


def test_oracle_needs_the_true_model():
    spec = EnvSpec.uniform(2, 16, 5)
    with pytest.raises(ValueError, match="oracle needs the true model"):
        OracleLearner().initial_state(spec, 0)


def test_oracle_table_is_the_greedy_action_in_observation_space(mixed_action_tasks):
    from anymdp_agent.envs import oracle_q

    batch = stack_tasks(mixed_action_tasks)
    state = OracleLearner().initial_state(EnvSpec.from_tasks(batch), 0)
    q = oracle_q(batch)
    for b, task in enumerate(mixed_action_tasks):
        for i in range(task.n_active):
            obs = task.state_mapping[i]
            a = state.actions[b, obs]
            assert a < task.n_actions
            assert q[b, i, a] == pytest.approx(q[b, i, :task.n_actions].max(), abs=1e-9)


def _random_transitions(rng, steps, num_envs, n_obs, mask):
    out = []
    for _ in range(steps):
        obs = rng.integers(0, n_obs, size=num_envs)
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in mask])
        out.append(Transition(obs=obs, actions=actions, rewards=rng.normal(size=num_envs),
                              next_obs=rng.integers(0, n_obs, size=num_envs),
                              terminated=rng.random(num_envs) < 0.1, truncated=np.zeros(num_envs, dtype=bool)))
    return out


@pytest.mark.parametrize("name", ["tql", "ucbq", "mbrl"])
def test_learning_state_is_per_environment(name):
    """What env 1 learned depends on env 1's transitions only: the batch of 2 equals env 1 fed alone."""
    rng = np.random.default_rng(0)
    n_obs, na = 6, 4
    mask = np.array([[True, True, True, True], [True, True, False, False]])
    pairs = _random_transitions(rng, 150, 2, n_obs, mask)
    learner = make_learner(name)
    both = learner.initial_state(EnvSpec(2, n_obs, na, mask), seed=0)
    alone = learner.initial_state(EnvSpec(1, n_obs, na, mask[1:]), seed=0)
    for t in pairs:
        both = learner.observe(both, t)
        alone = learner.observe(alone, Transition(*(getattr(t, f)[1:] for f in
                                                    ("obs", "actions", "rewards", "next_obs", "terminated", "truncated"))))
    if name == "mbrl":
        np.testing.assert_array_equal(both.counts[1], alone.counts[0])
        np.testing.assert_allclose(both.values[1], alone.values[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(learner.q_values(both)[1], learner.q_values(alone)[0], rtol=1e-6, atol=1e-6)
        # env 1 never takes actions 2, 3 so their counts stay 0; env 0's counts hold env 0's transitions only
        assert both.counts[1][:, 2:].sum() == 0
        assert both.counts[0].sum() == len(pairs)
    else:
        np.testing.assert_allclose(both.q[1], alone.q[0], rtol=1e-12)
        np.testing.assert_array_equal(both.n_sa[1], alone.n_sa[0])
        assert not np.allclose(both.q[0], both.q[1])


def test_mbrl_counts_of_an_env_with_no_data_stay_zero():
    """Env 1 sees only self-loops at observation 0 with action 0: no other count of env 1 moves."""
    learner = ModelBasedPlanner()
    state = learner.initial_state(EnvSpec.uniform(2, 5, 3), seed=0)
    for s, a, s2 in [(0, 1, 2), (2, 2, 4), (4, 0, 1), (1, 1, 1)]:
        state = learner.observe(state, Transition(obs=np.array([s, 0]), actions=np.array([a, 0]),
                                                  rewards=np.array([0.5, 0.0]), next_obs=np.array([s2, 0]),
                                                  terminated=np.zeros(2, bool), truncated=np.zeros(2, bool)))
    assert state.counts[1].sum() == 4 and state.counts[1, 0, 0, 0] == 4
    assert state.n_sa[1].sum() == 4 and state.reward_sum[1].sum() == 0
    assert state.counts[0].sum() == 4 and state.counts[0, 0, 1, 2] == 1 and state.counts[0, 2, 2, 4] == 1
    assert state.r_max.tolist() == [0.5, 0.0]


# ---------------------------------------------------------------------- update rules by hand


def _one(s, a, r, s2, terminated=False):
    return Transition(obs=np.array([s]), actions=np.array([a]), rewards=np.array([float(r)]),
                      next_obs=np.array([s2]), terminated=np.array([terminated]), truncated=np.array([False]))


def test_tql_update_rule_by_hand():
    gamma, alpha, m = 0.99, 0.5, 4000
    learner = TabularQLearner(gamma=gamma, alpha=alpha, horizon=m)
    spec = EnvSpec(1, 4, 3, np.array([[True, True, False]]))
    st = learner.initial_state(spec, seed=0)
    np.testing.assert_allclose(st.q, 100.0, rtol=1e-12)  # 1 / (1 - 0.99)
    assert np.all(st.n_sa == 1) and np.all(st.n_s == 1)

    # first visit of (0, 1): lr = sqrt((M+1)/(M+1)) = 1; target = -2 + 0.99 * 100 = 97
    st = learner.observe(st, _one(0, 1, -2.0, 2))
    assert st.q[0, 0, 1] == pytest.approx(100 + 0.5 * (97 - 100), rel=1e-12)  # 98.5
    assert st.n_sa[0, 0, 1] == 2 and st.n_s[0, 0] == 2
    np.testing.assert_allclose(np.delete(st.q[0].ravel(), 1), 100.0, rtol=1e-12)

    # second visit: lr = sqrt(4001 / 4002); the max at s' runs over the env's actions only (action 2 masked)
    st.q[0, 3] = [10.0, 20.0, 1000.0]
    st = learner.observe(st, _one(0, 1, 1.0, 3))
    lr = math.sqrt(4001 / 4002)
    expected = 98.5 + alpha * lr * (1.0 + gamma * 20.0 - 98.5)
    assert st.q[0, 0, 1] == pytest.approx(expected, rel=1e-12)
    assert st.n_sa[0, 0, 1] == 3 and st.n_s[0, 0] == 3

    # entering a terminal state: target is the reward alone and that state's row is zeroed
    st = learner.observe(st, _one(1, 0, 1.0, 2, terminated=True))
    assert st.q[0, 1, 0] == pytest.approx(100 + 0.5 * (1.0 - 100), rel=1e-12)  # 50.5
    assert np.all(st.q[0, 2] == 0.0)


def test_tql_lr_decays_with_visits():
    learner = TabularQLearner(gamma=0.0, alpha=1.0, horizon=1)
    st = learner.initial_state(EnvSpec.uniform(1, 2, 1), seed=0)  # Q init 1
    # gamma 0: target = r; lr = sqrt(max(2 / (1 + n), 1e-3)) with n = 1, 2, 3
    st = learner.observe(st, _one(0, 0, 0.0, 1))
    assert st.q[0, 0, 0] == pytest.approx(1 - 1.0 * 1.0)  # lr 1 -> 0
    st = learner.observe(st, _one(0, 0, 3.0, 1))
    assert st.q[0, 0, 0] == pytest.approx(0 + math.sqrt(2 / 3) * 3.0)


def test_tql_invalid_settings():
    for kwargs in ({"gamma": 1.0}, {"alpha": 0.0}, {"horizon": 0}):
        with pytest.raises(ValueError, match="TabularQLearner needs"):
            TabularQLearner(**kwargs)


def test_ucbq_update_rule_by_hand():
    learner = UCBQLearner(gamma=0.99, c=0.03)
    st = learner.initial_state(EnvSpec.uniform(1, 3, 2), seed=0)
    # first reward: std floor sqrt(1e-4) = 0.01; n = 1, H = 100, alpha = 101/101 = 1; nothing tried at s' -> 0
    st = learner.observe(st, _one(0, 0, 2.0, 1))
    assert st.q[0, 0, 0] == pytest.approx(2.0 + 0.03 * 0.01 * math.sqrt(100))
    # second step from 1 to 0, where action 0 was tried: v_next = Q(0, 0); rewards 2, 4 -> std 1
    q00 = st.q[0, 0, 0]
    st = learner.observe(st, _one(1, 1, 4.0, 0))
    assert st.q[0, 1, 1] == pytest.approx(4.0 + 0.03 * 1.0 * 10.0 + 0.99 * q00)
    # a terminal next state is worth 0
    st = learner.observe(st, _one(2, 0, 0.0, 0, terminated=True))
    sigma = np.std([2.0, 4.0, 0.0])
    assert st.q[0, 2, 0] == pytest.approx(0.03 * sigma * 10.0)


def test_ucbq_tries_untried_actions_first():
    learner = UCBQLearner()
    st = learner.initial_state(EnvSpec.uniform(1, 1, 4), seed=0)
    seen = []
    for _ in range(4):
        a, st = learner.act(st, np.array([0]))
        seen.append(int(a[0]))
        st = learner.observe(st, _one(0, int(a[0]), 0.0, 0))
    assert sorted(seen) == [0, 1, 2, 3]


@pytest.mark.parametrize("optimism", [1.0, 4.0, 0.0])
def test_mbrl_q_is_empirical_reward_plus_discounted_empirical_backup(mixed_action_tasks, optimism):
    gamma = 0.95
    rec = Recorder(ModelBasedPlanner(gamma=gamma, sweeps=2, optimism=optimism))
    run_learner(rec, task_suite(mixed_action_tasks), 300, seed=9)
    planner, state = rec._inner, rec._state
    b, n_obs, na = 4, 16, 5
    counts = np.zeros((b, n_obs, na, n_obs))
    rsum = np.zeros((b, n_obs, na))
    rmax = np.zeros(b)
    for t in rec._transitions:
        for e in range(b):
            counts[e, t.obs[e], t.actions[e], t.next_obs[e]] += 1
            rsum[e, t.obs[e], t.actions[e]] += t.rewards[e]
            rmax[e] = max(rmax[e], t.rewards[e])
    np.testing.assert_array_equal(state.counts, counts)
    n = counts.sum(-1)
    visited = n > 0
    assert visited.sum() > 50
    p_hat = counts / np.maximum(n, 1)[..., None]
    expected = np.where(visited, rsum / np.maximum(n, 1) + gamma * np.einsum("bsat,bt->bsa", p_hat, state.values),
                        (optimism * np.maximum(rmax, 0) / (1 - gamma))[:, None, None])
    np.testing.assert_allclose(planner.q_values(state), expected, rtol=1e-5, atol=1e-4)
    obs = np.array([0, 3, 7, 15])
    np.testing.assert_allclose(planner.q_values(state, obs), expected[np.arange(4), obs], rtol=1e-5, atol=1e-4)


def test_mbrl_planning_converges_to_the_empirical_bellman_fixed_point():
    gamma = 0.9
    planner = ModelBasedPlanner(gamma=gamma, sweeps=1)
    mask = np.array([[True, True, True], [True, True, False]])
    state = planner.initial_state(EnvSpec(2, 5, 3, mask), seed=0)
    rng = np.random.default_rng(1)
    for t in _random_transitions(rng, 200, 2, 5, mask):
        state = planner.observe(state, t)
    planner.plan(state, 400)
    q = np.where(mask[:, None, :], planner.q_values(state), -np.inf)
    v = q.max(-1)
    v[state.terminal] = 0.0
    np.testing.assert_allclose(state.values, v, atol=1e-4)
    assert state.terminal.any()


@pytest.mark.parametrize("known", ["transitions", "rewards", "both"])
def test_mbrl_known_model_plans_with_the_true_parts_for_tried_pairs(mixed_action_tasks, known):
    """``mbrl:known=...`` backs up tried pairs with the task's true probabilities and/or mean rewards (in
    observation ids); untried pairs keep the planner's optimism and the rest of the plan is the same."""
    gamma, tasks = 0.95, mixed_action_tasks
    rec = Recorder(make_learner(f"mbrl:gamma={gamma}:sweeps=2:known={known}"))
    run_learner(rec, task_suite(tasks), 300, seed=9)
    planner, state = rec._inner, rec._state
    b, n_obs, na = 4, 16, 5
    p_true, r_true = np.zeros((b, n_obs, na, n_obs)), np.zeros((b, n_obs, na))
    for e, task in enumerate(tasks):
        ids = task.state_mapping
        for s in range(task.n_active):
            for a in range(task.n_actions):
                p_true[e, ids[s], a, ids] = task.transition[s, a]
                r_true[e, ids[s], a] = task.transition[s, a] @ task.reward[s, a]
    n = state.n_sa
    visited = n > 0
    p_hat = state.counts / np.maximum(n, 1)[..., None]
    r_hat = state.reward_sum / np.maximum(n, 1)
    p_used = p_true if known in ("transitions", "both") else p_hat
    r_used = r_true if known in ("rewards", "both") else r_hat
    expected = np.where(visited, r_used + gamma * np.einsum("bsat,bt->bsa", p_used, state.values),
                        (np.maximum(state.r_max, 0) / (1 - gamma))[:, None, None])
    np.testing.assert_allclose(planner.q_values(state), expected, rtol=1e-5, atol=1e-4)
    assert not np.allclose(p_used, p_hat) or not np.allclose(r_used, r_hat)  # the true parts were really read
    assert np.array_equal(state.counts.sum(-1), n)  # the empirical model is still recorded


def test_mbrl_known_model_of_tasks_of_different_sizes():
    """A batch of a 10-state, 3-action task and a 16-state, 5-action one: each true model fills its own ids."""
    from anymdp_agent.baselines.model_based import true_model
    tasks = [sample_anymdp_task(10, 3, seed=5), sample_anymdp_task(16, 5, seed=6)]
    p, r = true_model(EnvSpec.from_tasks(stack_tasks(tasks)))
    assert p.shape == (2, 16, 5, 16) and r.shape == (2, 16, 5)
    for e, task in enumerate(tasks):
        ids = task.state_mapping
        np.testing.assert_allclose(p[e][np.ix_(ids, range(task.n_actions), ids)], task.transition, atol=1e-6)
        np.testing.assert_allclose(r[e][np.ix_(ids, range(task.n_actions))], (task.transition * task.reward).sum(-1))
        assert p[e].sum() == pytest.approx((~task.terminal).sum() * task.n_actions, rel=1e-5)
    assert not p[0, 10:].any() and not p[0, :, 3:].any()


def test_mbrl_known_model_needs_a_true_model_and_a_known_part():
    with pytest.raises(ValueError, match="known must be one of none, transitions, rewards, both, got 'dynamics'"):
        make_learner("mbrl:known=dynamics")
    with pytest.raises(ValueError, match="needs the true model.*use mbrl without known"):
        make_learner("mbrl:known=both").check_spec(EnvSpec.uniform(2, 4, 3))
    make_learner("mbrl").check_spec(EnvSpec.uniform(2, 4, 3))  # the learner itself needs no model
    assert make_learner("mbrl:known=rewards").known == "rewards"


def test_mbrl_invalid_settings():
    with pytest.raises(ValueError, match="ModelBasedPlanner needs"):
        ModelBasedPlanner(sweeps=0)
    with pytest.raises(ValueError, match="ModelBasedPlanner needs"):
        ModelBasedPlanner(gamma=1)
    with pytest.raises(ValueError, match="optimism >= 0"):
        ModelBasedPlanner(optimism=-1.0)
    with pytest.raises(ValueError, match="novelty >= 0"):
        ModelBasedPlanner(novelty=-0.1)
    with pytest.raises(ValueError, match="novelty >= 0"):
        ModelBasedPlanner(novelty=float("nan"))


def test_the_optimism_level_with_novelty_by_hand():
    """``max(r_max, 0)``; with novelty ``d`` at least ``d`` times the largest reward magnitude seen, or ``d`` while
    every reward seen is 0; a largest reward above that floor is the level unchanged."""
    import torch

    from anymdp_agent.modeling_anymdp_agent import optimism_level

    r_max = torch.tensor([0.0, 0.0, 0.5, 2.0, 0.001])      # the largest reward seen (0 before any)
    r_absmax = torch.tensor([0.0, 3.0, 0.5, 5.0, 1.0])     # the largest magnitude seen
    torch.testing.assert_close(optimism_level(r_max, r_absmax, 0.0), r_max)
    torch.testing.assert_close(optimism_level(r_max, r_absmax, 0.01), torch.tensor([0.01, 0.03, 0.5, 2.0, 0.01]))
    # the harness planner's numpy arrays: the same numbers, as an array
    level = optimism_level(r_max.double().numpy(), r_absmax.double().numpy(), 0.01)
    assert isinstance(level, np.ndarray)
    np.testing.assert_allclose(level, [0.01, 0.03, 0.5, 2.0, 0.01], rtol=1e-6)


def test_novelty_sends_the_planner_to_untried_pairs_while_no_reward_is_positive():
    """On sparse-reward tasks (goal and pitfall rewards only) every Q is 0 until a reward: the classic planner
    breaks the ties at random, so it walks at random; with novelty it heads for untried pairs, tries more of them
    in the same steps. Once a positive reward is seen it changes nothing (dense AnyMDP tasks: no decision)."""
    sparse = [sample_anymdp_task(16, 5, seed=s, reward_parts=()) for s in range(60, 68)]
    suite = task_suite(sparse)
    runs = {}
    for spec in ("mbrl", "mbrl:novelty=0.001"):
        rec = Recorder(make_learner(spec))
        runs[spec] = (rec, run_learner(rec, suite, 150, seed=4))
    tried = {k: (rec._state.n_sa > 0).sum() for k, (rec, _) in runs.items()}
    assert tried["mbrl:novelty=0.001"] > 1.2 * tried["mbrl"], tried
    dense = task_suite([sample_anymdp_task(16, 5, seed=s) for s in range(60, 64)])
    acts = [Recorder(make_learner(spec)) for spec in ("mbrl", "mbrl:novelty=0.001")]
    for rec in acts:
        run_learner(rec, dense, 300, seed=4)
    np.testing.assert_array_equal(acts[0].actions, acts[1].actions)  # on these four: not one decision changed


def test_random_learner_is_uniform_over_the_mask():
    mask = np.array([[True, True, True, False, False]] * 2000 + [[True] * 5] * 2000)
    learner = RandomLearner()
    st = learner.initial_state(EnvSpec(4000, 4, 5, mask), seed=0)
    a, _ = learner.act(st, np.zeros(4000, dtype=np.int64))
    f3 = np.bincount(a[:2000], minlength=5) / 2000
    f5 = np.bincount(a[2000:], minlength=5) / 2000
    assert f3[3:].sum() == 0
    np.testing.assert_allclose(f3[:3], 1 / 3, atol=0.04)
    np.testing.assert_allclose(f5, 1 / 5, atol=0.035)


# ---------------------------------------------------------------------- make_learner


def test_make_learner_parses_options():
    learner = make_learner("mbrl:sweeps=5:gamma=0.9")
    assert isinstance(learner, ModelBasedPlanner)
    assert learner.sweeps == 5 and isinstance(learner.sweeps, int)
    assert learner.gamma == 0.9
    assert learner.hyperparameters() == {"gamma": 0.9, "sweeps": 5, "lookahead": 0, "optimism": 1.0, "known": "none", "prior": "",
                                        "prior_weight": 1.0, "novelty": 0.0, "tail": 0, "seen_only": 0,
                                        "refresh_fraction": 0.0, "evidence": 0, "off_terminal": 0, "arrival": 0}
    assert make_learner("mbrl:optimism=4").optimism == 4.0
    assert make_learner("mbrl:novelty=0.001").novelty == 0.001
    assert make_learner("mbrl:tail=10").tail == 10
    with pytest.raises(ValueError, match="tail >= 0"):
        make_learner("mbrl:tail=-1")
    # they shape a prior's pseudo-counts: none here
    for option in ("seen_only=64", "refresh_fraction=0.125", "evidence=1", "off_terminal=1", "arrival=1"):
        with pytest.raises(ValueError, match=r"give the prior too \(prior=agent, prior=bundled or prior=PATH\)"):
            make_learner(f"mbrl:{option}")
    with pytest.raises(ValueError, match="seen_only >= 0"):
        make_learner("mbrl:prior=bundled:seen_only=-1")
    assert "sweeps=5" in repr(learner)
    t = make_learner("tql: alpha = 0.25 ")
    assert isinstance(t, TabularQLearner) and t.alpha == 0.25 and t.gamma == 0.99
    assert make_learner("random", dry_run=True) is None
    for name, cls in LEARNERS.items():
        assert type(make_learner(name)) is cls


@pytest.mark.parametrize("spec, message", [
    ("nope", r"unknown learner 'nope'; choose from oracle, random, tql, ucbq, mbrl"),
    ("", r"unknown learner ''"),
    ("mbrl:bogus=1", r"learner 'mbrl:bogus=1': unknown option 'bogus'; mbrl takes gamma, sweeps, lookahead"),
    ("mbrl:sweeps", r"learner option 'sweeps' in 'mbrl:sweeps' is not of the form key=value"),
    ("tql:gamma=abc", r"learner 'tql:gamma=abc': gamma must be a number, got 'abc'"),
    ("tql:alpha=abc", r"learner 'tql:alpha=abc': alpha must be a number, got 'abc'"),  # was "'<' not supported"
    ("tql:horizon=2.5", r"horizon must be an integer, got '2.5'"),
    ("ucbq:c=inf", r"c must be a finite number, got 'inf'"),
    ("oracle:gamma=nan", r"gamma must be a finite number"),
    ("oracle:gamma=1.5", r"OracleLearner needs 0 <= gamma < 1"),
    ("random:x=1", r"unknown option 'x'; random takes no options"),
    ("mbrl:sweeps=0", r"ModelBasedPlanner needs .*sweeps=0"),
    ("ucbq:c=-1", r"UCBQLearner needs"),
])
def test_make_learner_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        make_learner(spec)
    with pytest.raises(ValueError, match=message):
        make_learner(spec, dry_run=True)


# ---------------------------------------------------------------------- what the names promise


STEPS, WINDOW, NUM_TASKS = 4000, 500, 32


@pytest.fixture(scope="module")
def anymdp16():
    suite = load_suite("anymdp-16", NUM_TASKS)
    return suite, SuiteReference.of(suite)


@pytest.fixture(scope="module")
def behaviour(anymdp16):
    suite, ref = anymdp16
    cache = {}

    def get(name):
        if name not in cache:
            run = run_learner(make_learner(name), suite, STEPS, seed=0)
            cache[name] = analyse(run, ref, WINDOW, np.random.default_rng(0))
        return cache[name]

    return get


def _window_means(result):
    return np.array([w["mean"] for w in result["windows"]])


def _paired_improvement(result):
    win = np.array(result["per_task_window_scores"], dtype=float)
    assert not np.isnan(win).any()
    return np.nanmean(win[:, 1:], axis=1) - win[:, 0]


def test_suite_has_no_degenerate_tasks(anymdp16):
    suite, ref = anymdp16
    assert ref.scored.all()
    assert np.all(ref.oracle - ref.random > 0.01)


def test_oracle_scores_one(behaviour):
    r = behaviour("oracle")
    auc = r["auc"]
    assert r["score_kind"] == "normalised" and auc["n"] == NUM_TASKS
    assert abs(auc["mean"] - 1.0) < 0.05
    assert auc["ci_low"] - 0.02 <= 1.0 <= auc["ci_high"] + 0.02
    assert np.all(np.abs(_window_means(r) - 1.0) < 0.1)


def test_random_scores_zero(behaviour):
    r = behaviour("random")
    auc = r["auc"]
    assert abs(auc["mean"]) < 0.05
    assert auc["ci_low"] - 0.02 <= 0.0 <= auc["ci_high"] + 0.02
    assert np.all(np.abs(_window_means(r)) < 0.1)


def test_mbrl_learns_in_context(behaviour):
    r = behaviour("mbrl")
    w = _window_means(r)
    assert w[-1] > w[0] + 0.2
    assert r["auc"]["mean"] > 0.6
    assert r["auc"]["ci_low"] > 0.5


def test_ucbq_improves(behaviour):
    r = behaviour("ucbq")
    d = _paired_improvement(r)
    assert d.mean() > 0.05
    assert bootstrap_ci(d, np.random.default_rng(0))[0] > 0
    assert 0.2 < r["auc"]["mean"] < 0.6


def test_tql_beats_random_but_improves_only_a_little(behaviour):
    """The reference's Q-learning learns slowly: ~0.07 in the first 500 steps, ~0.13 afterwards, a plateau."""
    r = behaviour("tql")
    d = _paired_improvement(r)
    assert d.mean() > 0.02
    w = _window_means(r)
    assert w[1:].mean() > w[0]
    assert 0.05 < r["auc"]["mean"] < 0.3
    assert r["auc"]["iqm"] > 0.05


def test_known_transitions_are_worth_more_to_mbrl_than_known_rewards(behaviour):
    """The known-model ablation on the held-out tasks: estimating the transitions is what costs the planner
    (about +0.1 AUC when they are given), the noisy rewards cost it little."""
    auc = {k: np.array(behaviour(k)["per_task_auc"]) for k in ("mbrl", "mbrl:known=transitions", "mbrl:known=rewards")}
    d_t = auc["mbrl:known=transitions"] - auc["mbrl"]
    d_r = auc["mbrl:known=rewards"] - auc["mbrl"]
    assert bootstrap_ci(d_t, np.random.default_rng(0))[0] > 0.02
    assert d_t.mean() > d_r.mean() + 0.03
    assert behaviour("mbrl:known=transitions")["auc"]["mean"] < behaviour("oracle")["auc"]["mean"]


def test_learners_rank_as_documented(behaviour):
    auc = {name: behaviour(name)["auc"]["mean"] for name in ("random", "tql", "ucbq", "mbrl", "oracle")}
    assert auc["random"] < auc["tql"] < auc["ucbq"] < auc["mbrl"] < auc["oracle"]
