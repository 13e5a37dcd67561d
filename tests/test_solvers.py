"""Exact solvers: Bellman equations, closed forms, padding, and Monte-Carlo agreement with the env."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_task, three_action_task

from anymdp_agent.envs import (
    ORACLE_GAMMA,
    BatchedAnyMDPEnv,
    episode_return,
    greedy_policy,
    optimal_q,
    oracle_policy,
    oracle_q,
    oracle_return,
    policy_evaluation,
    policy_return,
    random_return,
    sample_anymdp_task,
    sample_garnet_task,
    stack_tasks,
    uniform_policy,
)

# ---------------------------------------------------------------------- independent reference solvers


def value_iteration(transition, reward, gamma, tol=1e-13, max_sweeps=100_000):
    """Plain value iteration on one task ``[n, na, n]`` (no policy iteration, no batching)."""
    n, na, _ = transition.shape
    q = np.zeros((n, na))
    for _ in range(max_sweeps):
        v = q.max(-1)
        new = np.einsum("sat,sat->sa", transition, reward + gamma * v[None, None, :])
        if np.abs(new - q).max() < tol:
            return new
        q = new
    raise AssertionError("value iteration did not converge")


def iterative_evaluation(transition, reward, policy, gamma, tol=1e-13):
    n, na, _ = transition.shape
    q = np.zeros((n, na))
    for _ in range(100_000):
        v = (policy * q).sum(-1)
        new = np.einsum("sat,sat->sa", transition, reward + gamma * v[None, None, :])
        if np.abs(new - q).max() < tol:
            return new
        q = new
    raise AssertionError("policy evaluation did not converge")


def solver_tasks():
    return [
        sample_anymdp_task(8, seed=1),
        sample_anymdp_task(16, 3, seed=2),
        sample_anymdp_task(24, seed=3, min_states=10),
        sample_garnet_task(12, 4, seed=5, reward_std=1.0),
        three_action_task(),
    ]


# ---------------------------------------------------------------------- discounted solvers


@pytest.mark.parametrize("k", range(5))
def test_optimal_q_matches_value_iteration(k):
    task = solver_tasks()[k]
    t, r = task.transition[None], task.reward[None]
    q = optimal_q(t, r, 0.9)[0]
    np.testing.assert_allclose(q, value_iteration(task.transition, task.reward, 0.9), rtol=0, atol=1e-8)
    # Bellman optimality residual.
    backup = np.einsum("sat,sat->sa", task.transition, task.reward + 0.9 * q.max(-1)[None, None, :])
    assert np.abs(q - backup).max() < 1e-8
    # Terminal states are worth nothing (zero rows, no reward).
    assert np.all(q[task.terminal] == 0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.99, ORACLE_GAMMA])
def test_optimal_q_bellman_residual_at_several_discounts(gamma):
    for task in solver_tasks():
        q = optimal_q(task.transition[None], task.reward[None], gamma)[0]
        backup = np.einsum("sat,sat->sa", task.transition, task.reward + gamma * q.max(-1)[None, None, :])
        scale = 1.0 + np.abs(q).max()
        assert np.abs(q - backup).max() < 1e-9 * scale
        if gamma == 0.0:
            np.testing.assert_allclose(q, np.einsum("sat,sat->sa", task.transition, task.reward), atol=1e-12)


def test_policy_evaluation_bellman_expectation():
    rng = np.random.default_rng(0)
    for task in solver_tasks():
        t, r = task.transition[None], task.reward[None]
        n, na = task.n_active, task.n_actions
        policies = [uniform_policy(t)[0], rng.dirichlet(np.ones(na), size=n), np.eye(na)[rng.integers(0, na, n)]]
        for pol in policies:
            for gamma in (0.0, 0.9, 0.99):
                q = policy_evaluation(t, r, pol[None], gamma)[0]
                v = (pol * q).sum(-1)
                backup = np.einsum("sat,sat->sa", task.transition, task.reward + gamma * v[None, None, :])
                assert np.abs(q - backup).max() < 1e-9 * (1 + np.abs(q).max())
            np.testing.assert_allclose(policy_evaluation(t, r, pol[None], 0.9)[0],
                                       iterative_evaluation(task.transition, task.reward, pol, 0.9), atol=1e-8)


def test_optimal_q_dominates_and_its_greedy_policy_attains_it():
    rng = np.random.default_rng(1)
    for task in solver_tasks():
        t, r = task.transition[None], task.reward[None]
        q = optimal_q(t, r, 0.95)
        greedy = greedy_policy(q)
        np.testing.assert_allclose(policy_evaluation(t, r, greedy, 0.95), q, atol=1e-8)
        for _ in range(3):
            pol = rng.dirichlet(np.ones(task.n_actions), size=task.n_active)[None]
            assert np.all((pol * policy_evaluation(t, r, pol, 0.95)).sum(-1) <= q.max(-1) + 1e-9)


def test_greedy_policy_ties_and_mask():
    q = np.array([[[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]])
    np.testing.assert_array_equal(greedy_policy(q), [[[0, 1, 0], [1, 0, 0]]])
    np.testing.assert_array_equal(greedy_policy(q, np.array([[True, False, True]])), [[[0, 0, 1], [1, 0, 0]]])


def test_bad_discount_raises():
    task = solver_tasks()[0]
    t, r = task.transition[None], task.reward[None]
    with pytest.raises(ValueError, match=r"optimal_q needs 0 <= gamma < 1, got 1.0"):
        optimal_q(t, r, 1.0)
    with pytest.raises(ValueError, match=r"policy_evaluation needs 0 <= gamma < 1, got -0.1"):
        policy_evaluation(t, r, uniform_policy(t), -0.1)


# ---------------------------------------------------------------------- closed forms


def two_state_task(p: float, r_stay: float, r_end: float, r_jump: float, max_steps: int):
    """State 0 (start); state 1 terminal. Action 0 stays with prob p (reward r_stay) or ends (r_end);
    action 1 ends at once with reward r_jump."""
    t = np.zeros((2, 2, 2))
    t[0, 0] = [p, 1 - p]
    t[0, 1] = [0.0, 1.0]
    r = np.zeros((2, 2, 2))
    r[0, 0] = [r_stay, r_end]
    r[0, 1, 1] = r_jump
    return make_task(t, r, start=[1.0, 0.0], terminal=[False, True], max_steps=max_steps)


@pytest.mark.parametrize("p,h", [(0.9, 7), (0.5, 1), (0.75, 40)])
def test_episode_return_closed_form_two_states(p, h):
    r_stay, r_end, r_jump = 1.0, -3.0, 0.25
    task = two_state_task(p, r_stay, r_end, r_jump, h)
    b = stack_tasks(task)
    per_step = p * r_stay + (1 - p) * r_end
    stay = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    jump = np.array([[[0.0, 1.0], [0.0, 1.0]]])
    # Alive at step k with probability p^(k-1): E[return] = per_step * (1 - p^h) / (1 - p).
    assert episode_return(b.transition, b.reward, b.start, b.max_steps, stay)[0] == pytest.approx(
        per_step * (1 - p**h) / (1 - p), rel=1e-12)
    assert policy_return(task, jump)[0] == pytest.approx(r_jump, rel=1e-12)
    mixed = 0.5 * (stay + jump)
    q = 0.5 * p  # probability of surviving one step under the mixed policy
    per_step_mixed = 0.5 * per_step + 0.5 * r_jump
    assert policy_return(task, mixed)[0] == pytest.approx(per_step_mixed * (1 - q**h) / (1 - q), rel=1e-12)
    assert random_return(task)[0] == pytest.approx(per_step_mixed * (1 - q**h) / (1 - q), rel=1e-12)
    # Discounted: V_stay(0) = per_step / (1 - gamma p); the optimum picks the better of the two.
    gamma = 0.9
    q_opt = optimal_q(b.transition, b.reward, gamma)[0]
    assert q_opt[0, 0] == pytest.approx(per_step + gamma * p * max(per_step / (1 - gamma * p), r_jump), rel=1e-12)
    assert q_opt[0, 1] == pytest.approx(r_jump, rel=1e-12)
    expected_oracle = per_step * (1 - p**h) / (1 - p) if per_step / (1 - gamma * p) > r_jump else r_jump
    assert oracle_return(task, gamma)[0] == pytest.approx(expected_oracle, rel=1e-12)


def test_episode_return_closed_form_cycle_without_terminals():
    """A deterministic 3-cycle 0 -> 1 -> 2 -> 0 with rewards 1, 2, 4 for entering 1, 2, 0: a horizon of 7
    collects 1+2+4 twice plus 1 = 15; starting from 1 half the time gives (15 + 2+4+1+2+4+1+2 = 16) / 2."""
    t = np.zeros((3, 2, 3))
    for s in range(3):
        t[s, :, (s + 1) % 3] = 1.0
    r = np.zeros((3, 2, 3))
    r[:, :, 1], r[:, :, 2], r[:, :, 0] = 1.0, 2.0, 4.0
    task = make_task(t, r, start=[0.5, 0.5, 0.0], terminal=[False, False, False], max_steps=7)
    assert random_return(task)[0] == pytest.approx((15 + 16) / 2, rel=1e-12)
    assert oracle_return(task)[0] == pytest.approx((15 + 16) / 2, rel=1e-12)
    # Discounted closed form from state 0: sum_k gamma^k r_k over the repeating (1, 2, 4).
    g = 0.9
    v0 = (1 + 2 * g + 4 * g**2) / (1 - g**3)
    assert optimal_q(t[None], r[None], g)[0, 0, 0] == pytest.approx(v0, rel=1e-12)


def test_episode_return_truncates_exactly_at_max_steps():
    task = two_state_task(1.0, 1.0, 0.0, 0.0, 13)  # never ends on its own: 13 rewards of 1
    stay = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    assert policy_return(task, stay)[0] == pytest.approx(13.0, abs=1e-12)
    b = stack_tasks([two_state_task(1.0, 1.0, 0.0, 0.0, h) for h in (1, 5, 13)])
    np.testing.assert_allclose(episode_return(b.transition, b.reward, b.start, b.max_steps, np.repeat(stay, 3, 0)),
                               [1.0, 5.0, 13.0], atol=1e-12)


# ---------------------------------------------------------------------- batched == per task


def test_batched_solvers_equal_per_task_solves_with_padding(mixed_tasks):
    tasks = list(mixed_tasks) + [three_action_task(), sample_garnet_task(10, 2, seed=1)]
    batch = stack_tasks(tasks)
    n, na = max(t.n_active for t in tasks), max(t.n_actions for t in tasks)
    assert batch.transition.shape == (len(tasks), n, na, n)
    np.testing.assert_array_equal(batch.n_actions, [t.n_actions for t in tasks])
    for gamma in (0.9, ORACLE_GAMMA):
        q_batch = optimal_q(batch.transition, batch.reward, gamma, batch.action_mask)
        pol_batch = oracle_policy(batch, gamma)
        for i, task in enumerate(tasks):
            k, ka = task.n_active, task.n_actions
            q_one = optimal_q(task.transition[None], task.reward[None], gamma)[0]
            np.testing.assert_allclose(q_batch[i, :k, :ka], q_one, rtol=1e-10, atol=1e-10)
            np.testing.assert_array_equal(pol_batch[i, :k, :ka], oracle_policy(task, gamma)[0])
            assert np.all(pol_batch[i, :, ka:] == 0)  # padded actions are never chosen
            np.testing.assert_allclose(oracle_q(task, gamma)[0], q_one, rtol=1e-12, atol=1e-12)
    uni = uniform_policy(batch.transition, batch.action_mask)
    np.testing.assert_allclose(uni.sum(-1), 1.0)
    assert np.all(uni[len(mixed_tasks), :, 3:] == 0)
    q_uni = policy_evaluation(batch.transition, batch.reward, uni, 0.95)
    for i, task in enumerate(tasks):
        k, ka = task.n_active, task.n_actions
        one = policy_evaluation(task.transition[None], task.reward[None], uniform_policy(task.transition[None]), 0.95)[0]
        np.testing.assert_allclose(q_uni[i, :k, :ka], one, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(oracle_return(batch), np.concatenate([oracle_return(t) for t in tasks]), rtol=1e-10)
    np.testing.assert_allclose(random_return(tasks), np.concatenate([random_return(t) for t in tasks]), rtol=1e-10)
    # Every task's oracle beats its uniform-random policy in expectation.
    assert np.all(oracle_return(batch) > random_return(batch))


def test_stack_tasks_errors():
    with pytest.raises(ValueError, match="at least one task"):
        stack_tasks([])
    with pytest.raises(TypeError, match="stack_tasks takes Task objects, got dict"):
        stack_tasks([{"transition": 0}])


# ---------------------------------------------------------------------- Monte Carlo agreement


def rollout_returns(tasks, policy, envs_per_task: int, episodes_per_env: int, seed: int):
    """Undiscounted returns of the first ``episodes_per_env`` episodes of every environment (no length
    bias: every environment runs until it has finished that many). ``policy`` is chain-space ``[B, n, na]``
    (one-hot or stochastic), indexed by the hidden state the env reports in ``info["state"]``."""
    env_tasks = [t for t in tasks for _ in range(envs_per_task)]
    env_policy = np.repeat(policy, envs_per_task, axis=0)
    env = BatchedAnyMDPEnv(env_tasks)
    b = env.num_envs
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    state = info["state"]
    cum_policy = np.cumsum(env_policy, -1)
    returns = np.zeros((b, episodes_per_env))
    done_count = np.zeros(b, dtype=np.int64)
    ret = np.zeros(b)
    resetting = np.zeros(b, dtype=bool)
    rows = np.arange(b)
    max_len = max(t.max_steps for t in tasks) + 1
    for _ in range(episodes_per_env * max_len + 1):
        u = rng.random(b)
        actions = (cum_policy[rows, state] <= u[:, None] * cum_policy[rows, state, -1:]).sum(-1)
        _, reward, terminated, truncated, info = env.step(actions)
        # NEXT_STEP autoreset: the step after an end is a reset step, reward 0, both flags False.
        assert np.all(reward[resetting] == 0) and not terminated[resetting].any() and not truncated[resetting].any()
        ret[~resetting] += reward[~resetting]
        ended = terminated | truncated
        record = ended & (done_count < episodes_per_env)
        returns[record, done_count[record]] = ret[record]
        done_count += ended
        ret[ended] = 0.0
        resetting = ended
        state = info["state"]
        if np.all(done_count >= episodes_per_env):
            break
    assert np.all(done_count >= episodes_per_env)
    return returns.reshape(len(tasks), -1)


@pytest.mark.parametrize("which", ["oracle", "uniform"])
def test_episode_return_agrees_with_monte_carlo(which):
    tasks = [sample_anymdp_task(16, seed=0), sample_anymdp_task(16, seed=1), sample_anymdp_task(24, seed=2),
             sample_garnet_task(8, 3, seed=4, reward_std=1.0), three_action_task(max_steps=15)]
    batch = stack_tasks(tasks)
    policy = oracle_policy(batch) if which == "oracle" else uniform_policy(batch.transition, batch.action_mask)
    exact = policy_return(batch, policy)
    returns = rollout_returns(tasks, policy, envs_per_task=1000, episodes_per_env=2, seed=7)
    mean = returns.mean(1)
    se = returns.std(1, ddof=1) / np.sqrt(returns.shape[1])
    assert np.all(se > 0)
    for i, task in enumerate(tasks):
        assert abs(mean[i] - exact[i]) <= 4 * se[i] + 1e-6, (task, mean[i], exact[i], se[i])
