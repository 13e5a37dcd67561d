"""``BatchedAnyMDPEnv``: equal to the single env step for step, in every autoreset mode; its VectorEnv face."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from helpers import three_action_task

from anymdp_agent.envs import AnyMDPEnv, BatchedAnyMDPEnv, sample_anymdp_task, sample_garnet_task


def random_actions(rng, tasks):
    n_actions = np.array([t.n_actions for t in tasks])
    return (rng.random(len(tasks)) * n_actions).astype(np.int64)


def check_next_step_equivalence(tasks, steps, seed=100, action_seed=0):
    """NEXT_STEP: the batched env's step after an end is a reset step (reset obs, reward 0, both flags
    False, action ignored); the single env gets ``reset()`` without a seed at that point."""
    benv = BatchedAnyMDPEnv(tasks)
    assert benv.autoreset_mode == AutoresetMode.NEXT_STEP
    singles = [AnyMDPEnv(t) for t in tasks]
    obs, info = benv.reset(seed=seed)
    for i, env in enumerate(singles):
        o, inf = env.reset(seed=seed + i)
        assert (obs[i], info["state"][i]) == (o, inf["state"])
    rng = np.random.default_rng(action_seed)
    resetting = np.zeros(len(tasks), dtype=bool)
    ends = 0
    for _ in range(steps):
        actions = random_actions(rng, tasks)
        obs, reward, terminated, truncated, info = benv.step(actions)
        assert obs.dtype.kind == "i" and reward.dtype == np.float64
        assert benv.observation_space.contains(obs)
        for i, env in enumerate(singles):
            if resetting[i]:
                o, inf = env.reset()
                expected = (o, 0.0, False, False, 0.0)
            else:
                o, r, te, tr, inf = env.step(int(actions[i]))
                expected = (o, r, te, tr, inf["reward_mean"])
            got = (int(obs[i]), float(reward[i]), bool(terminated[i]), bool(truncated[i]), float(info["reward_mean"][i]))
            assert got == expected
            assert info["state"][i] == inf["state"]
            assert benv.elapsed_steps[i] == env.elapsed_steps
        resetting = terminated | truncated
        ends += int(resetting.sum())
    return ends


def test_batched_equals_single_same_size(small_tasks):
    tasks = list(small_tasks[:3])
    ends = check_next_step_equivalence(tasks, 3000)
    assert ends >= 3 * 5  # many episode ends were crossed


def test_batched_equals_single_mixed_sizes(mixed_tasks):
    tasks = list(mixed_tasks[:3]) + [three_action_task(max_steps=17), sample_garnet_task(9, 2, seed=3, reward_std=0.5)]
    assert sorted({t.n_active for t in tasks}) == [4, 8, 9, 16, 24]
    assert {t.n_actions for t in tasks} == {2, 3, 5}
    ends = check_next_step_equivalence(tasks, 2500, seed=5, action_seed=1)
    assert ends >= 100


def test_same_step_mode(mixed_tasks):
    tasks = list(mixed_tasks[:3]) + [three_action_task(max_steps=11)]
    benv = BatchedAnyMDPEnv(tasks, autoreset_mode=AutoresetMode.SAME_STEP)
    assert benv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    singles = [AnyMDPEnv(t) for t in tasks]
    obs, _ = benv.reset(seed=[10, 20, 30, 40])  # one seed per env
    assert obs.tolist() == [env.reset(seed=s)[0] for env, s in zip(singles, (10, 20, 30, 40))]
    rng = np.random.default_rng(2)
    ends = 0
    for _ in range(2000):
        actions = random_actions(rng, tasks)
        obs, reward, terminated, truncated, info = benv.step(actions)
        for i, env in enumerate(singles):
            o, r, te, tr, inf = env.step(int(actions[i]))
            assert (float(reward[i]), bool(terminated[i]), bool(truncated[i])) == (r, te, tr)
            assert info["reward_mean"][i] == inf["reward_mean"]
            if te or tr:
                ends += 1
                assert info["_final_obs"][i] and info["final_obs"][i] == o
                o, inf = env.reset()  # the batched env has already reset: the reset obs comes at once
                assert benv.elapsed_steps[i] == 0
            elif "_final_obs" in info:
                assert not info["_final_obs"][i]
            assert obs[i] == o and info["state"][i] == inf["state"]
    assert ends >= 100


def test_disabled_mode_requires_masked_resets(mixed_tasks):
    tasks = [three_action_task(max_steps=6), mixed_tasks[0], mixed_tasks[1]]
    benv = BatchedAnyMDPEnv(tasks, autoreset_mode="Disabled")
    assert benv.autoreset_mode == AutoresetMode.DISABLED
    singles = [AnyMDPEnv(t) for t in tasks]
    obs, _ = benv.reset(seed=0)
    assert obs.tolist() == [env.reset(seed=i)[0] for i, env in enumerate(singles)]
    rng = np.random.default_rng(4)
    partial_resets = 0
    for _ in range(600):
        actions = random_actions(rng, tasks)
        obs, reward, terminated, truncated, info = benv.step(actions)
        for i, env in enumerate(singles):
            o, r, te, tr, _ = env.step(int(actions[i]))
            assert (int(obs[i]), float(reward[i]), bool(terminated[i]), bool(truncated[i])) == (o, r, te, tr)
        ended = terminated | truncated
        if ended.any():
            with pytest.raises(RuntimeError, match=r"have ended: reset them with reset\(options=\{'reset_mask'"):
                benv.step(actions)
            before = obs.copy()
            obs, info = benv.reset(options={"reset_mask": ended})
            for i, env in enumerate(singles):
                if ended[i]:
                    o, inf = env.reset()
                    assert obs[i] == o and info["state"][i] == inf["state"]
                else:
                    assert obs[i] == before[i]  # untouched
            partial_resets += int(not ended.all())
    assert partial_resets >= 10


def test_masked_reset_with_seed_reseeds_only_the_masked_envs():
    tasks = [sample_garnet_task(10, 5, seed=s, reward_std=1.0) for s in range(3)]  # no terminals
    benv = BatchedAnyMDPEnv(tasks, autoreset_mode=AutoresetMode.DISABLED)
    benv.reset(seed=50)
    keep = AnyMDPEnv(tasks[1])
    keep.reset(seed=51)
    for _ in range(3):
        a = np.array([0, 1, 2])
        _, _, te, tr, _ = benv.step(a)
        keep.step(1)
        assert not (te | tr).any()
    obs, info = benv.reset(seed=200, options={"reset_mask": np.array([True, False, True])})
    fresh0, fresh2 = AnyMDPEnv(tasks[0]), AnyMDPEnv(tasks[2])
    assert obs[0] == fresh0.reset(seed=200)[0] and obs[2] == fresh2.reset(seed=202)[0]
    assert info["state"][1] == keep.state
    a = np.array([3, 4, 0])
    obs, reward, *_ = benv.step(a)
    assert obs[0] == fresh0.step(3)[0] and obs[2] == fresh2.step(0)[0]
    assert (obs[1], reward[1]) == keep.step(4)[:2]


# ---------------------------------------------------------------------- the VectorEnv face


def test_vector_env_spaces(mixed_tasks):
    tasks = list(mixed_tasks[:3]) + [three_action_task()]
    benv = BatchedAnyMDPEnv(tasks)
    assert isinstance(benv, VectorEnv)
    assert benv.num_envs == 4 and len(benv.tasks) == 4
    ns = max(t.n_states for t in tasks)
    assert benv.single_observation_space == spaces.Discrete(ns)
    assert benv.single_action_space == spaces.Discrete(5)
    assert benv.observation_space == spaces.MultiDiscrete([ns] * 4)
    assert benv.action_space == spaces.MultiDiscrete([5] * 4)
    obs, info = benv.reset(seed=0)
    assert obs.shape == (4,) and benv.observation_space.contains(obs)
    np.testing.assert_array_equal(obs, [t.state_mapping[s] for t, s in zip(tasks, info["state"])])
    single = BatchedAnyMDPEnv(tasks[0])
    assert single.num_envs == 1 and single.observation_space == spaces.MultiDiscrete([tasks[0].n_states])


def test_reset_is_reproducible_and_seeds_differ(small_tasks):
    tasks = list(small_tasks[:4])

    def trajectory(seed):
        benv = BatchedAnyMDPEnv(tasks)
        out = [benv.reset(seed=seed)[0]]
        rng = np.random.default_rng(0)
        for _ in range(300):
            out.append(benv.step(random_actions(rng, tasks))[0])
        return np.array(out)

    np.testing.assert_array_equal(trajectory(3), trajectory(3))
    assert not np.array_equal(trajectory(3), trajectory(4))


@pytest.mark.parametrize("actions,match", [
    (np.array([0, 0, 0, 3]), r"action 3 is out of range for environment 3, which has 3 actions \(valid: 0..2\)"),
    (np.array([5, 0, 0, 0]), r"action 5 is out of range for environment 0, which has 5 actions"),
    (np.array([0, -1, 0, 0]), r"action -1 is out of range for environment 1"),
    (np.array([0.5, 0, 0, 0]), r"actions must be integers, got dtype float64"),
    (np.array([0, 0, 0]), r"expected one action per environment, shape \(4,\), got \(3,\)"),
])
def test_bad_batched_actions_raise(mixed_tasks, actions, match):
    benv = BatchedAnyMDPEnv(list(mixed_tasks[:3]) + [three_action_task()])
    benv.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        benv.step(actions)


def test_bad_reset_arguments_raise(small_tasks):
    benv = BatchedAnyMDPEnv(list(small_tasks[:3]))
    with pytest.raises(ValueError, match=r"options\['reset_mask'\] must be a bool array of shape \(3,\)"):
        benv.reset(options={"reset_mask": [True, False]})
    with pytest.raises(ValueError, match=r"seed must be an int or a list of 3 ints, got 2"):
        benv.reset(seed=[1, 2])
    with pytest.raises(ValueError, match=r"seed\[1\] must be in 0..2\*\*63 - 1, got -2"):
        benv.reset(seed=[1, -2, 3])
    with pytest.raises(ValueError, match=r"autoreset_mode must be a gymnasium AutoresetMode"):
        BatchedAnyMDPEnv(list(small_tasks[:3]), autoreset_mode=3)


def test_many_envs_step_fast_and_stay_in_bounds():
    tasks = [sample_anymdp_task(16, seed=s) for s in range(8)]
    benv = BatchedAnyMDPEnv([tasks[i % 8] for i in range(4096)])
    obs, info = benv.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        obs, reward, terminated, truncated, info = benv.step(rng.integers(0, 5, 4096))
        assert benv.observation_space.contains(obs)
        assert np.all(np.isfinite(reward))
        assert not (terminated & truncated).any()
    assert np.all(benv.elapsed_steps <= np.array([t.max_steps for t in benv.tasks]))


@pytest.mark.parametrize("seed, match", [
    (1.5, r"seed must be an integer, got float 1.5"),  # was silently seed 1, as 1.9 was
    (1.0, r"seed must be an integer, got float 1.0"),
    ("3", r"seed must be an integer, got str '3'"),
    (True, r"seed must be an integer, got bool True"),
    (-1, r"seed must be in 0..2\*\*63 - 3 \(with 3 environments"),
    (2**63, r"seed must be in 0..2\*\*63 - 3"),  # was an OverflowError
    (2**63 - 2, r"seed must be in 0..2\*\*63 - 3"),  # env 2 would get 2**63
    ([0, 1.5, 2], r"seed\[1\] must be an integer, got float 1.5"),
    ([0, 2**64, 2], r"seed\[1\] must be in 0..2\*\*63 - 1"),  # was a wrapped array
])
def test_bad_seeds_are_refused_like_the_single_env(small_tasks, seed, match):
    benv = BatchedAnyMDPEnv(list(small_tasks[:3]))
    with pytest.raises(ValueError, match=match):
        benv.reset(seed=seed)
    single = AnyMDPEnv(small_tasks[0])
    if seed == 2**63 - 2:  # fine for one env
        single.reset(seed=seed)
        return
    with pytest.raises(ValueError, match=r"seed"):
        single.reset(seed=seed if np.ndim(seed) == 0 else seed[1])


def test_largest_seeds_match_the_single_env(small_tasks):
    top = 2**63 - 3
    benv = BatchedAnyMDPEnv(list(small_tasks[:3]))
    obs, _ = benv.reset(seed=top)
    assert obs.tolist() == [AnyMDPEnv(t).reset(seed=top + i)[0] for i, t in enumerate(small_tasks[:3])]
    assert benv.reset(seed=np.int64(5))[0].tolist() == benv.reset(seed=5)[0].tolist()  # numpy integers are integers


@pytest.mark.parametrize("mode", ["NextStep", "SameStep", "Disabled"])
def test_step_before_reset_is_refused(small_tasks, mode):
    benv = BatchedAnyMDPEnv(list(small_tasks[:3]), autoreset_mode=mode)
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\): environments \[0, 1, 2\] were never reset"):
        benv.step(np.zeros(3, dtype=np.int64))
    benv.reset(seed=0, options={"reset_mask": np.array([True, False, True])})
    with pytest.raises(RuntimeError, match=r"environments \[1\] were never reset"):
        benv.step(np.zeros(3, dtype=np.int64))
    benv.reset(seed=0)
    benv.step(np.zeros(3, dtype=np.int64))
