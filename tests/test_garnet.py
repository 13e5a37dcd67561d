"""Contrast samplers (docs/anymdp.md section 7): Garnet MDPs and one-state bandits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anymdp_agent.envs import AnyMDPEnv, sample_bandit_task, sample_garnet_task


@settings(max_examples=30, deadline=None)
@given(n=st.integers(8, 64), na=st.integers(2, 6), branching=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_garnet_structure(n, na, branching, seed):
    task = sample_garnet_task(n, na, seed=seed, branching=branching)
    assert task.kind == "garnet" and task.seed == seed
    assert task.transition.shape == (n, na, n) and task.n_states == n
    # Exactly `branching` successors per (s, a), with positive probabilities summing to 1.
    np.testing.assert_array_equal((task.transition > 0).sum(-1), np.full((n, na), branching))
    np.testing.assert_allclose(task.transition.sum(-1), 1.0, rtol=0, atol=1e-12)
    # Start in chain state 0, no terminals, noise-free rewards.
    np.testing.assert_array_equal(task.start, np.eye(n)[0])
    assert not task.terminal.any()
    assert np.all(task.reward_std == 0)
    assert len(set(task.state_mapping.tolist())) == n
    lower = max(4 * n, 100)
    assert lower <= task.max_steps < max(min(8 * n, 500), lower + 1)
    assert task.meta == {"branching": branching, "reward_std": 0.1}


def test_garnet_reward_scale_and_determinism():
    task = sample_garnet_task(16, 5, seed=3, reward_std=0.5)
    # 1280 independent N(0, 0.5) draws: sample std within 10%, mean within 4 standard errors.
    assert task.reward.std() == pytest.approx(0.5, rel=0.1)
    assert abs(task.reward.mean()) < 4 * 0.5 / np.sqrt(task.reward.size)
    assert task == sample_garnet_task(16, 5, seed=3, reward_std=0.5)
    assert task != sample_garnet_task(16, 5, seed=4, reward_std=0.5)
    assert np.all(sample_garnet_task(16, 5, seed=3, reward_std=0.0).reward == 0)
    sized = sample_garnet_task(20, 3, seed=1, min_states=8)
    assert 8 <= sized.n_active <= 20 and sized.n_states == 20


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(n_states=16, seed=0, branching=0), ValueError, r"branching must be a positive integer"),
        (dict(n_states=8, seed=0, branching=9), ValueError, r"branching=9 exceeds the 8 states"),
        (dict(n_states=16, seed=0, reward_std=-1.0), ValueError, r"reward_std must be >= 0"),
        (dict(n_states=4, seed=0), ValueError, r"n_states=4 is too small"),
        (dict(n_states=16, n_actions=1, seed=0), ValueError, r"n_actions=1 is too small"),
        (dict(n_states=16, seed=-3), ValueError, r"seed must be a non-negative integer"),
    ],
)
def test_garnet_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sample_garnet_task(**kwargs)


@pytest.mark.parametrize("seed", range(10))
def test_bandit_structure(seed):
    task = sample_bandit_task(4, seed=seed)
    assert task.kind == "bandit"
    # One start state (observation 0) whose every pull enters the terminal state (observation 1).
    assert task.n_active == 2 and task.n_states == 2 and task.n_actions == 4
    assert task.max_steps == 1
    np.testing.assert_array_equal(task.start, [1.0, 0.0])
    np.testing.assert_array_equal(task.terminal, [False, True])
    np.testing.assert_array_equal(task.transition[0], np.tile([0.0, 1.0], (4, 1)))
    np.testing.assert_array_equal(task.transition[1], 0.0)
    means = task.reward[0, :, 1]
    base = task.meta["base"]
    assert 0.05 <= base <= 2.0
    assert np.all(means >= 0.5 * base) and np.all(means <= base)
    assert means.std() > 0.01  # the arms differ
    assert len(np.unique(means)) == 4
    # Noise std is one fraction (<= 0.3) of each arm's mean.
    ratio = task.reward_std[0, :, 1] / means
    assert np.all(ratio >= 0) and np.all(ratio <= 0.3)
    np.testing.assert_allclose(ratio, ratio[0])
    assert task == sample_bandit_task(4, seed=seed)


def test_bandit_episode_is_one_step():
    task = sample_bandit_task(3, seed=2)
    env = AnyMDPEnv(task)
    obs, info = env.reset(seed=0)
    assert obs == 0 and info["state"] == 0
    for a in range(3):
        obs, reward, terminated, truncated, info = env.step(a)
        assert obs == 1 and terminated and not truncated  # one pull per episode
        assert info["reward_mean"] == pytest.approx(task.reward[0, a, 1], rel=1e-6)
        with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
            env.step(a)
        env.reset()


def test_bandit_bad_input():
    with pytest.raises(ValueError, match=r"n_actions=1 is too small"):
        sample_bandit_task(1, seed=0)
    with pytest.raises(TypeError, match=r"seed must be a non-negative integer"):
        sample_bandit_task(3, seed=0.5)
