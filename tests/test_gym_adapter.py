"""Gymnasium toy-text environments as Tasks: their tables, and exact returns checked against the real envs."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

from anymdp_agent.baselines import EnvSpec, OracleLearner
from anymdp_agent.envs import oracle_return, random_return, stack_tasks
from anymdp_agent.envs.gym_adapter import (
    DEFAULT_MAX_STEPS,
    check_discrete,
    episode_limit,
    make_gym_vector_env,
    task_from_gym,
)
from anymdp_agent.evaluation import load_suite

FL = {"map_name": "4x4", "is_slippery": True}


@pytest.fixture(scope="module")
def frozenlake():
    return task_from_gym("FrozenLake-v1", **FL)


@pytest.fixture(scope="module")
def cliff():
    return task_from_gym("CliffWalking-v1")


def test_frozenlake_table(frozenlake):
    t = frozenlake
    assert t.n_states == 16 and t.n_active == 16 and t.n_actions == 4
    assert t.max_steps == 100  # the registered spec's limit
    assert t.kind == "gym" and t.version == "gym:FrozenLake-v1"
    assert t.meta == {"env_id": "FrozenLake-v1", **FL}
    # SFFF / FHFH / FFFH / HFFG: holes 5, 7, 11, 12 and the goal 15 end the episode
    assert np.flatnonzero(t.terminal).tolist() == [5, 7, 11, 12, 15]
    np.testing.assert_array_equal(t.start, np.eye(16)[0])
    np.testing.assert_array_equal(t.state_mapping, np.arange(16))
    assert np.all(t.transition[t.terminal] == 0)
    np.testing.assert_allclose(t.transition[~t.terminal].sum(-1), 1.0)
    # slippery: LEFT (0) from the corner moves left (stays), down (to 4) or up (stays), 1/3 each
    np.testing.assert_allclose(t.transition[0, 0], np.eye(16)[0] * 2 / 3 + np.eye(16)[4] / 3)
    # reward 1 only for entering the goal
    assert t.reward[14, 2, 15] == 1.0 and t.reward[11 - 1, 1, 14] == 0.0
    assert np.all(t.reward[:, :, :15] == 0)


def test_frozenlake_exact_returns(frozenlake):
    assert oracle_return(frozenlake)[0] == pytest.approx(0.7402, abs=5e-4)
    assert random_return(frozenlake)[0] == pytest.approx(0.0139, abs=5e-4)


def _first_episodes(env_id, num_envs, k, policy, seed, **kwargs):
    """Returns of the first ``k`` episodes of each of ``num_envs`` real Gymnasium envs (no length bias)."""
    envs = make_gym_vector_env(env_id, num_envs, **kwargs)
    obs, _ = envs.reset(seed=seed)
    count = np.zeros(num_envs, dtype=int)
    ret = np.zeros(num_envs)
    length = np.zeros(num_envs, dtype=int)
    returns, lengths = [], []
    while count.min() < k:
        obs, r, term, trunc, _ = envs.step(policy(obs))
        ret += r
        length += 1
        done = term | trunc
        for i in np.flatnonzero(done):
            if count[i] < k:
                returns.append(ret[i])
                lengths.append(length[i])
            count[i] += 1
        ret[done] = 0.0
        length[done] = 0
    envs.close()
    return np.array(returns), np.array(lengths)


def test_frozenlake_exact_returns_match_the_real_environment(frozenlake):
    n = 100
    table = OracleLearner().initial_state(EnvSpec.from_tasks(stack_tasks([frozenlake] * n)), 0).actions[0]
    ret, _ = _first_episodes("FrozenLake-v1", n, 12, lambda obs: table[obs], seed=0, **FL)
    se = ret.std(ddof=1) / math.sqrt(len(ret))
    assert len(ret) == 1200
    assert abs(ret.mean() - oracle_return(frozenlake)[0]) < 4 * se
    assert 0.68 < ret.mean() < 0.80  # the paper's oracle success rate, about 0.75

    rng = np.random.default_rng(0)
    ret, lengths = _first_episodes("FrozenLake-v1", n, 40, lambda obs: rng.integers(0, 4, size=n), seed=1, **FL)
    se = ret.std(ddof=1) / math.sqrt(len(ret))
    assert abs(ret.mean() - random_return(frozenlake)[0]) < 4 * se
    assert lengths.max() <= 100


def test_cliffwalking_table(cliff):
    assert gym.spec("CliffWalking-v1").max_episode_steps is None
    assert cliff.max_steps == DEFAULT_MAX_STEPS == 200
    assert cliff.n_states == 48 and cliff.n_actions == 4
    assert np.flatnonzero(cliff.terminal).tolist() == [47]
    np.testing.assert_array_equal(cliff.start, np.eye(48)[36])
    # stepping into the cliff costs 100 and returns to the start, without ending the episode
    assert cliff.transition[36, 1, 36] == 1.0 and cliff.reward[36, 1, 36] == -100.0
    assert oracle_return(cliff)[0] == pytest.approx(-13.0)
    assert random_return(cliff)[0] < -1000


def test_cliffwalking_real_environment_matches(cliff):
    table = OracleLearner().initial_state(EnvSpec.from_tasks(stack_tasks([cliff] * 2)), 0).actions[0]
    ret, lengths = _first_episodes("CliffWalking-v1", 2, 2, lambda obs: table[obs], seed=0)
    assert ret.tolist() == [-13.0] * 4 and lengths.tolist() == [13] * 4
    # random actions: capped at 200 steps by the adapter's default limit
    rng = np.random.default_rng(0)
    ret, lengths = _first_episodes("CliffWalking-v1", 4, 2, lambda obs: rng.integers(0, 4, size=4), seed=0)
    assert lengths.max() == 200 and np.all(lengths <= 200)


def test_episode_limit():
    assert episode_limit("FrozenLake-v1") == 100
    assert episode_limit("CliffWalking-v1") == 200
    assert episode_limit("CliffWalking-v1", 50) == 50
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        episode_limit("FrozenLake-v1", 0)
    assert task_from_gym("FrozenLake-v1", max_steps=30, **FL).max_steps == 30


def test_max_steps_changes_the_exact_return():
    short = task_from_gym("FrozenLake-v1", max_steps=10, **FL)
    long = task_from_gym("FrozenLake-v1", **FL)
    assert oracle_return(short)[0] < oracle_return(long)[0]


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Blackjack-v1"])
def test_non_discrete_envs_are_refused(env_id):
    with pytest.raises(ValueError, match="only environments with Discrete observations and actions"):
        task_from_gym(env_id)
    with pytest.raises(ValueError, match="only environments with Discrete observations and actions"):
        make_gym_vector_env(env_id, 2)
    with pytest.raises(ValueError, match="only environments with Discrete observations and actions"):
        load_suite(f"gym:{env_id}", 2)


def test_check_discrete_counts():
    env = gym.make("FrozenLake-v1", **FL)
    assert check_discrete(env, "FrozenLake-v1") == (16, 4)
    env.close()


def test_named_gym_suites():
    fl = load_suite("frozenlake", 3)
    assert fl.success and fl.num_envs == 3 and fl.tasks.n_states == 16 and len(fl.tasks) == 3
    envs = fl.make_env()
    assert envs.num_envs == 3 and envs.single_observation_space.n == 16
    envs.close()
    cw = load_suite("cliffwalking", 2)
    assert not cw.success and cw.tasks.max_steps.tolist() == [200, 200]
    big = load_suite("frozenlake8x8", 1)
    assert big.tasks.n_states == 64


def test_generic_gym_suite_frozenlake8x8():
    suite = load_suite("gym:FrozenLake8x8-v1", 2)
    assert suite.tasks.n_states == 64 and suite.success
    assert suite.tasks.max_steps.tolist() == [200, 200]
    assert oracle_return(suite.tasks)[0] > 0.8


def test_generic_gym_suite_taxi():
    """Taxi publishes its table too; its start distribution never puts the passenger at the destination."""
    env_id = "Taxi-v4" if "Taxi-v4" in gym.registry else "Taxi-v3"
    suite = load_suite(f"gym:{env_id}", 2)
    t = suite.tasks.tasks[0]
    assert t.n_states == 500 and t.n_actions == 6 and t.max_steps == 200
    assert not suite.success
    hi, lo = oracle_return(t)[0], random_return(t)[0]
    assert 6.0 < hi < 10.0  # the optimal Taxi return is about 8
    assert lo < -100
