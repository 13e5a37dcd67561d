"""``AnyMDPEnv``: the Gymnasium 1.x face of one task (docs/anymdp.md section 6)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from helpers import make_task, three_action_task

import anymdp_agent  # noqa: F401  (registers the environments)
from anymdp_agent.envs import AnyMDPEnv, sample_anymdp_task, sample_bandit_task, sample_garnet_task


def run_episode_log(env, actions, seed=None, resets_without_seed=True):
    """Step through ``actions``; reset (without a seed) whenever an episode ends. Returns the log."""
    log = []
    obs, info = env.reset(seed=seed)
    log.append(("reset", obs, info["state"]))
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(int(a))
        log.append((obs, reward, terminated, truncated, info["reward_mean"], info["state"]))
        if terminated or truncated:
            obs, info = env.reset()
            log.append(("reset", obs, info["state"]))
    return log


# ---------------------------------------------------------------------- Gymnasium conformance


@pytest.mark.parametrize("make", [
    lambda: sample_anymdp_task(16, seed=3),
    lambda: sample_anymdp_task(20, 3, seed=4, min_states=9),
    lambda: sample_garnet_task(12, 4, seed=1),
    lambda: sample_bandit_task(4, seed=0),
    three_action_task,
], ids=["anymdp", "anymdp-min-states", "garnet", "bandit", "hand-built"])
@pytest.mark.filterwarnings("ignore:.*Not able to test alternative render modes")
@pytest.mark.filterwarnings("ignore:.*No render fps was declared")
def test_check_env_passes(make):
    task = make()
    env = AnyMDPEnv(task)
    assert env.observation_space == gym.spaces.Discrete(task.n_states)
    assert env.action_space == gym.spaces.Discrete(task.n_actions)
    check_env(env)
    check_env(AnyMDPEnv(task, render_mode="ansi"), skip_render_check=False)


def test_bandit_episode_ends_after_one_pull():
    """A bandit pull ends the episode by nature: ``terminated`` (nothing to bootstrap), not a time-limit
    truncation -- which is also what ``check_env`` demands of any environment (no truncation at step 1)."""
    task = sample_bandit_task(3, seed=2)
    env = AnyMDPEnv(task)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(1)
    assert obs == 1  # the terminal observation that marks the end of the pull
    assert terminated and not truncated
    assert info["reward_mean"] == pytest.approx(task.reward[0, 1, 1], rel=1e-6)


def test_gym_make_gives_the_seeded_task():
    env = gym.make("anymdp_agent/AnyMDP-v0", n_states=16, seed=3)
    assert env.unwrapped.task == sample_anymdp_task(16, seed=3)
    assert env.observation_space == gym.spaces.Discrete(16) and env.action_space == gym.spaces.Discrete(5)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    env.step(env.action_space.sample())
    other = gym.make("anymdp_agent/AnyMDP-v0", n_states=24, n_actions=3, seed=8, min_states=10)
    assert other.unwrapped.task == sample_anymdp_task(24, 3, seed=8, min_states=10)
    garnet = gym.make("anymdp_agent/Garnet-v0", n_states=10, seed=2)
    assert garnet.unwrapped.task == sample_garnet_task(10, seed=2)
    vec = gym.make_vec("anymdp_agent/AnyMDP-v0", num_envs=3, vectorization_mode="vector_entry_point",
                       n_states=16, seed=3)
    assert vec.num_envs == 3
    assert list(vec.unwrapped.tasks) == [sample_anymdp_task(16, seed=s) for s in (3, 4, 5)]


def test_constructor_errors():
    with pytest.raises(TypeError, match=r"AnyMDPEnv takes a Task"):
        AnyMDPEnv({"n_states": 16})
    with pytest.raises(ValueError, match=r"render_mode must be one of \['ansi'\] or None, got 'human'"):
        AnyMDPEnv(sample_garnet_task(8, seed=0), render_mode="human")


def test_render_ansi():
    task = sample_anymdp_task(16, seed=3)
    env = AnyMDPEnv(task, render_mode="ansi")
    obs, info = env.reset(seed=1)
    text = env.render()
    assert f"step 0/{task.max_steps}" in text and f"observation {obs}" in text
    env.step(2)
    assert "after action 2" in env.render()
    assert AnyMDPEnv(task).render() is None


# ---------------------------------------------------------------------- seeding


def test_reset_seed_makes_episodes_reproducible():
    task = sample_anymdp_task(16, seed=1)
    actions = np.random.default_rng(0).integers(0, task.n_actions, 1500)
    a = run_episode_log(AnyMDPEnv(task), actions, seed=42)
    env = AnyMDPEnv(task)
    env.reset(seed=7)
    env.step(0)
    b = run_episode_log(env, actions, seed=42)  # reseeding restarts the stream, whatever came before
    assert a == b
    assert sum(1 for x in a if x[0] == "reset") > 2  # the check spans several episodes
    c = run_episode_log(AnyMDPEnv(task), actions, seed=43)
    assert a != c


def test_unseeded_resets_differ():
    task = sample_garnet_task(12, 3, seed=0, reward_std=1.0)
    actions = np.zeros(50, dtype=int)
    logs = [run_episode_log(AnyMDPEnv(task), actions) for _ in range(3)]
    assert logs[0] != logs[1] or logs[1] != logs[2]


# ---------------------------------------------------------------------- step semantics


def test_info_and_flags_follow_the_task():
    """Observation = mapping of the new state; reward_mean = R(s, a, s'); terminated exactly on entering a
    terminal; truncated exactly at max_steps; the noise has the task's std."""
    tasks = [sample_anymdp_task(16, seed=s) for s in range(4)] + [three_action_task(12)]
    assert any(t.terminal.any() for t in tasks) and any(not t.terminal.any() for t in tasks)
    rng = np.random.default_rng(3)
    z_scores, saw_term, saw_trunc = [], 0, 0
    for task in tasks:
        env = AnyMDPEnv(task)
        obs, info = env.reset(seed=11)
        s = info["state"]
        assert obs == task.state_mapping[s] and task.start[s] > 0
        length = 0
        for _ in range(2500):
            a = int(rng.integers(task.n_actions))
            obs, reward, terminated, truncated, info = env.step(a)
            length += 1
            s2 = info["state"]
            assert isinstance(obs, int) and isinstance(reward, float)
            assert obs == task.state_mapping[s2] and env.observation_space.contains(obs)
            assert task.transition[s, a, s2] > 0
            assert info["reward_mean"] == pytest.approx(task.reward[s, a, s2], rel=1e-6, abs=1e-6)
            std = task.reward_std[s, a, s2]
            if std == 0:
                assert reward == info["reward_mean"]
            else:
                z_scores.append((reward - info["reward_mean"]) / std)
            assert terminated == bool(task.terminal[s2])
            assert truncated == (length == task.max_steps and not task.terminal[s2])
            assert length <= task.max_steps
            assert env.elapsed_steps == length
            if terminated or truncated:
                saw_term += terminated
                saw_trunc += truncated
                with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
                    env.step(0)
                obs, info = env.reset()
                s, length = info["state"], 0
                assert task.start[s] > 0
            else:
                s = s2
    assert saw_term > 0 and saw_trunc > 0
    z = np.array(z_scores)
    assert len(z) > 1000
    assert abs(z.mean()) < 4 / np.sqrt(len(z))
    assert z.std() == pytest.approx(1.0, abs=0.04)


def test_transition_and_start_frequencies():
    task = three_action_task(max_steps=25)
    env = AnyMDPEnv(task)
    rng = np.random.default_rng(5)
    counts = np.zeros(task.transition.shape)
    starts = np.zeros(task.n_active)
    _, info = env.reset(seed=0)
    s = info["state"]
    starts[s] += 1
    for _ in range(30_000):
        a = int(rng.integers(3))
        _, _, terminated, truncated, info = env.step(a)
        counts[s, a, info["state"]] += 1
        s = info["state"]
        if terminated or truncated:
            _, info = env.reset()
            s = info["state"]
            starts[s] += 1
    for freq, n_obs, p in [(starts / starts.sum(), starts.sum(), task.start)] + [
        (counts[s, a] / counts[s, a].sum(), counts[s, a].sum(), task.transition[s, a])
        for s in range(3) for a in range(3)
    ]:
        assert n_obs > 500
        assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / n_obs) + 1e-12), (freq, p)


def test_truncation_with_a_sure_loop():
    """A task that can never terminate is truncated at exactly max_steps, every episode."""
    t = np.zeros((2, 2, 2))
    t[0, :, 1] = 1.0
    t[1, :, 0] = 1.0
    task = make_task(t, np.ones((2, 2, 2)), start=[1.0, 0.0], terminal=[False, False], max_steps=9)
    env = AnyMDPEnv(task)
    for episode in range(3):
        env.reset(seed=episode)
        for k in range(1, 10):
            obs, reward, terminated, truncated, info = env.step(k % 2)
            assert reward == 1.0 and not terminated
            assert truncated == (k == 9)
            assert obs == (k % 2)


def test_step_before_reset_raises():
    env = AnyMDPEnv(sample_anymdp_task(16, seed=0))
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
        env.step(0)


@pytest.mark.parametrize("action,match", [
    (5, r"action 5 is out of range for environment 0, which has 5 actions \(valid: 0..4\)"),
    (-1, r"action -1 is out of range"),
    (1.5, r"actions must be integers, got dtype float64"),
    ("2", r"actions must be integers"),
    ([1, 2], r"(?i)action"),  # a sequence is not one action: the message must say it is about the action
])
def test_bad_action_raises(action, match):
    env = AnyMDPEnv(sample_anymdp_task(16, seed=0))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_numpy_integer_actions_are_accepted():
    env = AnyMDPEnv(three_action_task())
    env.reset(seed=0)
    env.step(np.int64(2))
    env.step(np.array(1))
    with pytest.raises(ValueError, match=r"action 3 is out of range for environment 0, which has 3 actions"):
        env.step(np.int32(3))
