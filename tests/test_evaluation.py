"""The evaluation harness: statistics, windows, normalisation, degenerate tasks, suites, result files."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from anymdp_agent import evaluation
from anymdp_agent.baselines import make_learner
from anymdp_agent.envs import BatchedAnyMDPEnv, oracle_return, random_return, sample_anymdp_task, stack_tasks
from anymdp_agent.envs.seeds import TEST, TRAIN, VALIDATION
from anymdp_agent.evaluation import (
    MIN_GAP,
    EvalConfig,
    Run,
    Suite,
    SuiteReference,
    analyse,
    bootstrap_ci,
    bootstrap_cis,
    check_config,
    check_suite_name,
    evaluate,
    format_table,
    iqm,
    load_suite,
    paired_difference,
    parse_pairs,
    per_episode_index,
    run_learner,
    summarise,
    suite_names,
    window_scores,
    write_results,
)
from helpers import make_task

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hand_run(env, start, length, ret, steps, num_envs) -> Run:
    return Run(learner="hand", env_index=np.array(env, dtype=np.int64), start=np.array(start, dtype=np.int64),
               length=np.array(length, dtype=np.int64), ret=np.array(ret, dtype=float), steps=steps,
               num_envs=num_envs, seconds=1.0)


def flat_task(n=3, max_steps=10, reward=0.5) -> "Task":  # noqa: F821
    """No terminals and the same reward everywhere: every policy's return is reward * max_steps (gap 0)."""
    t = np.full((n, 2, n), 1.0 / n)
    return make_task(t, reward, start=np.eye(n)[0], terminal=np.zeros(n, bool), max_steps=max_steps)


def custom_suite(tasks, name="custom") -> Suite:
    batch = stack_tasks(tasks)
    return Suite(name=name, num_envs=len(batch), tasks=batch,
                 make_env=lambda: BatchedAnyMDPEnv(batch, autoreset_mode="SameStep"), seeds=[-1] * len(batch),
                 description="hand-made")


# ---------------------------------------------------------------------- statistics


def test_iqm_known_values():
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)  # order does not matter
    assert iqm([1, 2, 3, 4, 100]) == pytest.approx(3.0)  # middle three; the outlier is cut
    assert iqm([5.0]) == 5.0
    assert iqm([1.0, 3.0]) == 2.0
    x = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [1, 1, 0, 1, 0, 1, 9, 1]], dtype=float)  # sorted 0 0 [1 1 1 1] 1 9
    np.testing.assert_allclose(iqm(x, axis=-1), [4.5, 1.0])
    np.testing.assert_allclose(iqm(x.T, axis=0), [4.5, 1.0])


def test_iqm_equals_a_25_percent_trimmed_mean():
    rng = np.random.default_rng(0)
    for n in range(4, 40):
        x = rng.normal(size=n)
        cut = int(0.25 * n)
        assert iqm(x) == pytest.approx(np.sort(x)[cut:n - cut].mean(), rel=1e-12), n


def test_bootstrap_ci_brackets_the_mean_and_is_deterministic():
    x = np.random.default_rng(3).normal(0.4, 1.0, size=64)
    lo, hi = bootstrap_ci(x, np.random.default_rng(7))
    assert lo < x.mean() < hi
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert bootstrap_ci(x, np.random.default_rng(7)) == (lo, hi)
    assert bootstrap_ci(x, np.random.default_rng(8)) != (lo, hi)
    lo90, hi90 = bootstrap_ci(x, np.random.default_rng(7), level=0.9)
    assert lo < lo90 < hi90 < hi


def test_bootstrap_ci_edge_cases():
    rng = np.random.default_rng(0)
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([]), rng))
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([np.nan, np.nan]), rng))
    assert bootstrap_ci(np.array([2.5]), rng) == (2.5, 2.5)
    assert bootstrap_ci(np.array([np.nan, 2.5, np.inf]), rng) == (2.5, 2.5)  # non-finite entries dropped
    assert bootstrap_ci(np.full(10, 3.0), rng) == (3.0, 3.0)


def test_summarise_drops_nan():
    s = summarise(np.array([1.0, np.nan, 3.0, 2.0, np.nan]), np.random.default_rng(0))
    assert s["n"] == 3 and s["mean"] == pytest.approx(2.0) and s["iqm"] == pytest.approx(2.0)
    assert s["ci_low"] <= 2.0 <= s["ci_high"]
    empty = summarise(np.array([np.nan]), np.random.default_rng(0))
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["ci_low"])


def test_window_scores_place_episodes_where_they_end():
    # steps 10, window 4 -> windows [0, 4), [4, 8), [8, 10)
    run = hand_run(env=[0, 0, 0, 1, 2, 2], start=[0, 3, 6, 0, 0, 5], length=[3, 3, 2, 9, 4, 5],
                   ret=[0, 0, 0, 0, 0, 0], steps=10, num_envs=4)
    score = np.array([1.0, 2.0, 4.0, -1.0, 7.0, 9.0])
    w = window_scores(run, score, 4)
    assert w.shape == (4, 3)
    expected = np.array([
        [1.0, 3.0, np.nan],      # ends at 2 -> w0; ends at 5 and 7 -> w1 (mean 3)
        [np.nan, np.nan, -1.0],  # ends at 8 -> w2
        [7.0, np.nan, 9.0],      # ends at 3 (last step of w0); ends at 9 -> w2
        [np.nan, np.nan, np.nan],  # env 3 finished nothing
    ])
    np.testing.assert_array_equal(w, expected)
    # a window that does not divide the budget still covers every step
    assert window_scores(run, score, 3).shape == (4, 4)
    assert window_scores(run, score, 100).shape == (4, 1)
    np.testing.assert_allclose(window_scores(run, score, 100)[:3, 0], [7 / 3, -1.0, 8.0])


def test_window_scores_with_no_episodes():
    run = hand_run([], [], [], [], steps=5, num_envs=2)
    w = window_scores(run, np.zeros(0), 2)
    assert w.shape == (2, 3) and np.isnan(w).all()


def test_per_episode_index_orders_by_start_within_each_env():
    run = hand_run(env=[1, 0, 1, 0, 1], start=[5, 0, 0, 4, 9], length=[4, 4, 5, 3, 1], ret=[0] * 5,
                   steps=10, num_envs=3)
    vals = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    out = per_episode_index(run, vals)
    np.testing.assert_array_equal(out, [[20, 40, np.nan], [30, 10, 50], [np.nan] * 3])
    np.testing.assert_array_equal(per_episode_index(run, vals, max_episodes=1), [[20], [30], [np.nan]])


def test_normalise_and_analyse_on_a_hand_run():
    ref = SuiteReference(oracle=np.array([2.0, 5.0]), random=np.array([0.0, 1.0]), scored=np.array([True, True]))
    run = hand_run(env=[0, 0, 1, 1], start=[0, 4, 0, 6], length=[4, 6, 6, 4], ret=[1.0, 2.0, 1.0, 5.0],
                   steps=10, num_envs=2)
    np.testing.assert_allclose(ref.normalise(run), [0.5, 1.0, 0.0, 1.0])
    out = analyse(run, ref, window=5, rng=np.random.default_rng(0))
    assert out["score_kind"] == "normalised"
    assert out["window_starts"] == [0, 5]
    # env 0: 0.5 in w0, 1.0 in w1; env 1: nothing in w0 (ends at 5), 0.0 and 1.0 in w1 -> 0.5
    assert out["per_task_window_scores"][0] == [0.5, 1.0]
    assert math.isnan(out["per_task_window_scores"][1][0]) and out["per_task_window_scores"][1][1] == 0.5
    assert out["windows"][0]["mean"] == 0.5 and out["windows"][0]["n"] == 1
    assert out["windows"][1]["mean"] == 0.75 and out["windows"][1]["n"] == 2
    assert out["per_task_auc"] == [0.75, 0.5]
    assert out["auc"]["mean"] == pytest.approx(0.625)
    assert out["episodes_per_task"]["mean"] == 2.0
    assert out["learner_steps_per_second"] == pytest.approx(2 * 10 / 1.0)
    assert "success_windows" not in out


def test_analyse_success_rate_per_episode_window():
    run = hand_run(env=[0] * 4 + [1] * 4, start=[0, 2, 4, 6] * 2, length=[2] * 8,
                   ret=[0, 1, 1, 1, 0, 0, 0, 1], steps=8, num_envs=2)
    out = analyse(run, None, window=8, rng=np.random.default_rng(0), success=True, episode_window=2)
    assert out["score_kind"] == "return"
    assert out["success_window_starts"] == [0, 2]
    assert [w["mean"] for w in out["success_windows"]] == [pytest.approx(0.25), pytest.approx(0.75)]


def test_degenerate_tasks_are_skipped_and_counted():
    normal = sample_anymdp_task(16, seed=TEST.start + 5)
    flat = flat_task()
    assert oracle_return(flat)[0] == pytest.approx(5.0) and random_return(flat)[0] == pytest.approx(5.0)
    suite = custom_suite([flat, normal, flat])
    ref = SuiteReference.of(suite)
    assert ref.scored.tolist() == [False, True, False]
    np.testing.assert_allclose(ref.oracle - ref.random, [0.0, oracle_return(normal)[0] - random_return(normal)[0], 0.0],
                               atol=1e-12)
    run = run_learner(make_learner("oracle"), suite, 200, seed=0)
    out = analyse(run, ref, 100, np.random.default_rng(0))
    assert len(out["per_task_auc"]) == 1  # only the scored task
    assert out["auc"]["n"] == 1
    assert np.isfinite(ref.normalise(run)).all()  # unscored tasks are divided by 1, not by 0
    assert MIN_GAP == 0.01


def test_evaluate_counts_degenerate_tasks(monkeypatch):
    suite = custom_suite([flat_task(max_steps=20), sample_anymdp_task(16, seed=TEST.start + 5)])
    monkeypatch.setattr(evaluation, "load_suite", lambda name, num_tasks, seed_offset=0: suite)
    result = evaluate(EvalConfig(suite="anymdp-16", learners=["random", "oracle"], tasks=2, steps=200, window=100))
    assert result["suite"]["skipped_degenerate"] == 1
    assert result["suite"]["oracle_return"][0] == pytest.approx(10.0)
    assert result["suite"]["random_return"][0] == pytest.approx(10.0)
    for entry in result["learners"].values():
        assert len(entry["per_task_auc"]) == 1
    assert "(1 degenerate tasks skipped)" in format_table(result)


# ---------------------------------------------------------------------- suites and the harness


def test_load_suite_uses_the_test_seed_range():
    suite = load_suite("anymdp-16", 3, seed_offset=10)
    assert suite.seeds == [TEST.start + 10, TEST.start + 11, TEST.start + 12]
    assert all(s in TEST and s not in TRAIN and s not in VALIDATION for s in suite.seeds)
    assert suite.tasks.tasks[0] == sample_anymdp_task(16, seed=TEST.start + 10)
    assert suite.num_envs == 3 and suite.tasks.n_states == 16 and suite.tasks.action_mask.shape == (3, 5)
    g = load_suite("garnet-24", 2, n_actions=3)
    assert g.tasks.n_states == 24 and g.tasks.action_mask.shape == (2, 3) and g.tasks.tasks[0].kind == "garnet"
    env = suite.make_env()
    assert env.num_envs == 3
    env.close()


def test_task_options_go_to_the_sampler_of_a_sampled_suite_only():
    from anymdp_agent.envs import sample_garnet_task

    det = load_suite("garnet-12", 2, n_actions=3, split="validation", task_options={"branching": 1})
    assert det.seeds == load_suite("garnet-12", 2, n_actions=3, split="validation").seeds
    assert det.tasks.tasks[1] == sample_garnet_task(12, 3, seed=det.seeds[1], branching=1)
    assert ((det.tasks.transition == 0) | (det.tasks.transition == 1)).all() and "branching=1" in det.description
    with pytest.raises(ValueError, match="task_options apply to the sampled suites"):
        load_suite("frozenlake", 1, task_options={"branching": 1})


def test_bandit_suites_are_sized_by_their_arms():
    from anymdp_agent.envs import sample_bandit_task

    suite = load_suite("bandit-7", 3, split="validation")
    assert suite.seeds == list(VALIDATION.seeds(3, 0)) and suite.tasks.action_mask.shape == (3, 7)
    assert suite.tasks.n_states == 2 and suite.tasks.tasks[2] == sample_bandit_task(7, seed=suite.seeds[2])
    assert "7 arms" in suite.description and "actions" not in suite.description
    assert load_suite("bandit-7", 1, n_actions=7).tasks.tasks[0] == load_suite("bandit-7", 1).tasks.tasks[0]
    with pytest.raises(ValueError, match="a bandit suite's actions are its arms: bandit-7 has 7, not n_actions=3"):
        load_suite("bandit-7", 1, n_actions=3)
    with pytest.raises(ValueError, match="'bandit-1' is too small: bandit-N needs N >= 2 arms"):
        load_suite("bandit-1", 1)
    # one pull per episode: every episode of a run is one step long
    run = run_learner(make_learner("mbrl"), suite, 60, seed=1)
    assert (run.length == 1).all() and len(run.length) == 3 * 60


def test_sparse_suites_are_the_anymdp_tasks_with_goal_and_pitfall_rewards_only():
    from anymdp_agent.envs import sample_anymdp_task

    suite, dense = load_suite("sparse-16", 4, split="validation"), load_suite("anymdp-16", 4, split="validation")
    assert suite.seeds == dense.seeds and "sparse-reward anymdp tasks" in suite.description
    for task, seed in zip(suite.tasks.tasks, suite.seeds):
        assert task == sample_anymdp_task(16, 5, seed=seed, reward_parts=())
    # most steps pay exactly 0: only arrivals at terminal states (and a non-terminal chain end) are rewarded
    assert (suite.tasks.reward == 0).mean() > 0.8 > (dense.tasks.reward == 0).mean()
    with pytest.raises(ValueError, match="no reward parts by definition"):
        load_suite("sparse-16", 1, task_options={"reward_parts": ("step",)})


@pytest.mark.parametrize("name", ["anymdp", "garnet-x", "nope", "gym:NoSuchEnv-v0", "frozenlake4x4", "riverswim"])
def test_unknown_suite_names(name):
    with pytest.raises(ValueError, match="unknown"):
        check_suite_name(name)
    with pytest.raises(ValueError, match="unknown"):
        load_suite(name, 2)


def test_suite_names_are_understood():
    for name in suite_names():
        if name != "gym:<EnvId>":
            check_suite_name(name)
    check_suite_name("anymdp-24")
    check_suite_name("riverswim-3")
    check_suite_name("gym:FrozenLake-v1")
    with pytest.raises(ValueError, match="'anymdp-4' is too small: anymdp-N needs N >= 8"):
        check_suite_name("anymdp-4")
    with pytest.raises(ValueError, match="at least one task"):
        load_suite("anymdp-16", 0)


def test_run_learner_records_back_to_back_episodes():
    suite = load_suite("anymdp-16", 3)
    run = run_learner(make_learner("random"), suite, 500, seed=4)
    assert run.steps == 500 and run.num_envs == 3 and run.learner == "random" and run.seconds > 0
    assert len(run.env_index) == len(run.start) == len(run.length) == len(run.ret) > 3
    for e in range(3):
        sel = run.env_index == e
        start, length = run.start[sel], run.length[sel]
        assert start[0] == 0
        np.testing.assert_array_equal(start[1:], start[:-1] + length[:-1])
        assert start[-1] + length[-1] <= 500
        assert np.all(length >= 1) and np.all(length <= suite.tasks.max_steps[e])
    again = run_learner(make_learner("random"), suite, 500, seed=4)
    np.testing.assert_array_equal(run.ret, again.ret)
    other = run_learner(make_learner("random"), suite, 500, seed=5)
    assert len(other.ret) != len(run.ret) or not np.array_equal(other.ret, run.ret)


def test_random_returns_match_the_exact_random_return():
    """Monte-Carlo check of the normalisation's 0 on real runs (~500 short episodes per task)."""
    suite = load_suite("anymdp-16", 4)
    ref = SuiteReference.of(suite)
    run = run_learner(make_learner("random"), suite, 6000, seed=1)
    for e in range(4):
        r = run.ret[run.env_index == e]
        se = r.std(ddof=1) / math.sqrt(len(r))
        assert abs(r.mean() - ref.random[e]) < 4.5 * se + 1e-9, (e, r.mean(), ref.random[e], se)


# ---------------------------------------------------------------------- the whole comparison and its files


def test_check_config_rejects_bad_settings():
    good = dict(suite="anymdp-16", learners=["random"], tasks=2, steps=10)
    check_config(EvalConfig(**good))
    for change, message in [({"suite": "nope"}, "unknown suite"), ({"learners": []}, "at least one learner"),
                            ({"learners": ["random", "bogus"]}, "unknown learner 'bogus'"),
                            ({"learners": ["mbrl:x=1"]}, "unknown option 'x'"),
                            ({"tasks": 0}, "tasks must be a positive integer"),
                            ({"steps": -5}, "steps must be a positive integer"),
                            ({"steps": 2.5}, "steps must be a positive integer"),
                            ({"window": 0}, "window must be a positive integer"),
                            ({"seed": -1}, "seed"), ({"seed_offset": -1}, "seed"),
                            ({"seed": 2**63}, r"seed must be in 0..2\*\*63 - 2"),  # was an OverflowError
                            ({"seed": 2.0}, "seed must be an integer"),
                            ({"suite": "anymdp-999999999"}, "needs about .* of memory"),  # was a hang
                            ({"suite": "garnet-30000", "tasks": 64}, "choose fewer states or fewer --tasks")]:
        with pytest.raises(ValueError, match=message):
            check_config(EvalConfig(**{**good, **change}))


@pytest.fixture(scope="module")
def small_result():
    cfg = EvalConfig(suite="anymdp-16", learners=["random", "oracle", "mbrl:sweeps=2"], tasks=4, steps=600, window=200,
                     seed=3)
    return cfg, evaluate(cfg)


def test_evaluate_result_record(small_result):
    cfg, result = small_result
    assert result["config"] == {"suite": "anymdp-16", "learners": ["random", "oracle", "mbrl:sweeps=2"], "tasks": 4,
                                "steps": 600, "seed": 3, "window": 200, "seed_offset": 0, "paired": None}
    assert result["versions"]["numpy"] == np.__version__
    assert {"python", "platform", "gymnasium", "anymdp-agent"} <= set(result["versions"])
    s = result["suite"]
    assert s["name"] == "anymdp-16" and s["instances"] == 4 and s["skipped_degenerate"] == 0
    assert s["task_seeds"] == list(TEST.seeds(4))
    tasks = stack_tasks([sample_anymdp_task(16, seed=x) for x in s["task_seeds"]])
    np.testing.assert_allclose(s["oracle_return"], oracle_return(tasks), atol=1e-6)
    np.testing.assert_allclose(s["random_return"], random_return(tasks), atol=1e-6)
    assert list(result["learners"]) == ["random", "oracle", "mbrl:sweeps=2"]
    for name, e in result["learners"].items():
        assert e["window_starts"] == [0, 200, 400] and len(e["windows"]) == 3
        assert set(e["auc"]) == {"mean", "iqm", "ci_low", "ci_high", "iqm_ci_low", "iqm_ci_high", "n"}
        ep = e["episodes"]
        assert len(ep["env"]) == len(ep["start"]) == len(ep["length"]) == len(ep["return"]) > 0
        assert max(st + ln for st, ln in zip(ep["start"], ep["length"])) <= 600
        assert e["seconds"] > 0
    assert result["learners"]["mbrl:sweeps=2"]["hyperparameters"] == {"gamma": 0.99, "sweeps": 2, "lookahead": 0,
                                                                           "optimism": 1.0, "known": "none", "prior": "",
                                                                           "prior_weight": 1.0, "novelty": 0.0, "tail": 0,
                                                                           "seen_only": 0, "refresh_fraction": 0.0, "evidence": 0,
                                                                           "off_terminal": 0, "arrival": 0}
    assert result["learners"]["oracle"]["hyperparameters"] == {"gamma": 0.994}
    assert result["learners"]["random"]["hyperparameters"] == {}


def test_evaluate_is_reproducible(small_result):
    cfg, result = small_result
    again = evaluate(EvalConfig(suite="anymdp-16", learners=["random"], tasks=4, steps=600, window=200, seed=3))
    assert again["learners"]["random"]["episodes"] == result["learners"]["random"]["episodes"]
    assert again["learners"]["random"]["windows"] == result["learners"]["random"]["windows"]


def test_evaluate_oracle_needs_a_table(monkeypatch):
    suite = custom_suite([sample_anymdp_task(16, seed=1)])
    suite.tasks = None
    monkeypatch.setattr(evaluation, "load_suite", lambda name, num_tasks, seed_offset=0: suite)
    with pytest.raises(ValueError, match="learner 'oracle' cannot run on suite custom: the oracle needs the true model"):
        evaluate(EvalConfig(suite="anymdp-16", learners=["oracle"], tasks=1, steps=10, window=5))
    result = evaluate(EvalConfig(suite="anymdp-16", learners=["random"], tasks=1, steps=300, window=100))
    assert result["suite"]["oracle_return"] is None and result["suite"]["skipped_degenerate"] == 0
    assert result["learners"]["random"]["score_kind"] == "return"


def test_every_learner_is_checked_against_the_suite_before_any_runs():
    ran = []

    class Counting(evaluation.InContextLearner):
        name = "counting"

        def initial_state(self, spec, seed):
            ran.append(self.name)
            raise AssertionError("no learner may run before every learner is checked")

    class TooSmall(evaluation.InContextLearner):
        name = "small"

        def check_spec(self, spec):
            raise ValueError(f"knows 4 actions, the suite has {spec.n_actions}")

    cfg = EvalConfig(suite="anymdp-16", learners=["random", "oracle"], tasks=2, steps=50, window=10)
    with pytest.raises(ValueError, match=r"learner 'small' cannot run on suite anymdp-16: knows 4 actions, the suite has 5"):
        evaluate(cfg, learners={"first": Counting(), "small": TooSmall()})
    assert ran == []


def test_write_results_files(small_result, tmp_path):
    cfg, result = small_result
    out = tmp_path / "nested" / "out"
    paths = write_results(result, out)
    assert paths == {"json": out / "eval-anymdp-16.json", "png": out / "eval-anymdp-16.png"}
    assert sorted(os.listdir(out)) == ["eval-anymdp-16.json", "eval-anymdp-16.png"]  # no temporary files left
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC
    assert paths["png"].stat().st_size > 5000
    loaded = json.loads(paths["json"].read_text())
    assert loaded["config"] == result["config"]
    assert set(loaded) == {"config", "versions", "suite", "learners", "paired"}
    assert loaded["suite"]["oracle_return"] == result["suite"]["oracle_return"]
    assert loaded["learners"]["oracle"]["episodes"] == result["learners"]["oracle"]["episodes"]
    assert loaded["learners"]["mbrl:sweeps=2"]["auc"]["mean"] == pytest.approx(
        result["learners"]["mbrl:sweeps=2"]["auc"]["mean"])
    # writing again replaces the files in place
    write_results(result, out, stem="again")
    write_results(result, out)
    assert sorted(os.listdir(out)) == ["again.json", "again.png", "eval-anymdp-16.json", "eval-anymdp-16.png"]


def test_write_results_names_gym_suites_safely(small_result, tmp_path):
    cfg, result = small_result
    gym_result = {**result, "suite": {**result["suite"], "name": "gym:a/b-v1"}}
    paths = write_results(gym_result, tmp_path)
    assert paths["json"].name == "eval-gym_a_b-v1.json" and paths["json"].parent == tmp_path


def test_write_results_to_an_unwritable_folder(small_result, tmp_path):
    cfg, result = small_result
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot write to output folder"):
        write_results(result, blocker / "sub")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_format_table(small_result):
    cfg, result = small_result
    table = format_table(result)
    lines = table.splitlines()
    assert lines[0].startswith("suite anymdp-16:") and "4 instances" in lines[0] and "600 steps" in lines[0]
    assert "0 degenerate tasks skipped" in lines[0]
    assert lines[1] == "mean score per window [95% bootstrap CI over tasks]:"
    assert lines[2].split() == ["steps", "random", "oracle", "mbrl:sweeps=2"]
    for j, span in enumerate(["0-200", "200-400", "400-600"]):  # every window mean with its CI, per learner
        row = lines[3 + j]
        assert row.startswith(span)
        for e in result["learners"].values():
            w = e["windows"][j]
            assert f"{w['mean']:.2f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}]" in row
    assert "AUC mean [95% CI]" in lines[6] and "AUC IQM [95% CI]" in lines[6]
    for name, e in result["learners"].items():
        row = next(line for line in lines[7:] if line.startswith(name))
        a = e["auc"]
        assert f"{a['mean']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]" in row
        assert f"{a['iqm']:.3f} [{a['iqm_ci_low']:.3f}, {a['iqm_ci_high']:.3f}]" in row
    assert "paired" not in table  # no agent among the learners and none asked for
    assert "success rate" not in table


def test_frozenlake_suite_reports_success_rates():
    cfg = EvalConfig(suite="frozenlake", learners=["oracle", "random"], tasks=8, steps=800, window=400)
    result = evaluate(cfg)
    assert result["suite"]["skipped_degenerate"] == 0
    assert result["suite"]["oracle_return"] == [pytest.approx(0.740165, abs=1e-6)] * 8
    for e in result["learners"].values():
        assert e["success_episode_window"] == 50 and e["success_window_starts"][0] == 0
    assert result["learners"]["random"]["success_windows"][0]["mean"] < 0.1
    assert result["learners"]["oracle"]["success_windows"][0]["mean"] > 0.4
    table = format_table(result)
    assert "success rate per episode window [95% CI]:" in table
    s = result["learners"]["oracle"]["success_windows"][0]
    assert f"0-50: {s['mean']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]" in table


# ---------------------------------------------------------------------- CIs on every statistic, paired differences


def test_bootstrap_cis_share_one_resample_and_cover_mean_and_iqm():
    x = np.random.default_rng(1).standard_t(2, size=80)  # heavy tails: the mean and the IQM differ
    cis = bootstrap_cis(x, np.random.default_rng(5), {"mean": np.mean, "iqm": iqm})
    assert cis["mean"][0] < x.mean() < cis["mean"][1]
    assert cis["iqm"][0] < iqm(x) < cis["iqm"][1]
    assert cis["iqm"] != cis["mean"]
    # one draw for both: the mean's CI alone from the same rng state is the same interval
    assert bootstrap_ci(x, np.random.default_rng(5)) == cis["mean"]
    assert bootstrap_cis(x, np.random.default_rng(5), {"mean": np.mean, "iqm": iqm}) == cis


def test_summarise_reports_a_ci_on_the_iqm():
    x = np.concatenate([np.linspace(0.0, 1.0, 30), [50.0, -40.0]])  # two outliers the IQM ignores
    s = summarise(x, np.random.default_rng(0))
    assert s["iqm_ci_low"] < s["iqm"] < s["iqm_ci_high"]
    assert s["iqm_ci_high"] - s["iqm_ci_low"] < (s["ci_high"] - s["ci_low"]) / 3  # robust to the outliers
    assert summarise(x, np.random.default_rng(0)) == s
    one = summarise(np.array([0.25]), np.random.default_rng(0))
    assert (one["iqm"], one["iqm_ci_low"], one["iqm_ci_high"]) == (0.25, 0.25, 0.25)
    empty = summarise(np.array([]), np.random.default_rng(0))
    assert empty["n"] == 0 and math.isnan(empty["iqm_ci_low"]) and math.isnan(empty["iqm_ci_high"])


def fake_result(per_task: dict, seed=0) -> dict:
    return {"config": {"seed": seed}, "learners": {k: {"per_task_auc": v} for k, v in per_task.items()}}


def test_paired_difference_known_numbers():
    r = fake_result({"a": [0.5, 0.7, 0.9, None], "b": [0.4, 0.7, 0.6, 0.2]})  # None: no finished episode (JSON)
    p = paired_difference(r, "a", "b")
    assert p["learner"] == "a" and p["baseline"] == "b" and p["n"] == 3
    assert p["mean"] == pytest.approx((0.1 + 0.0 + 0.3) / 3)
    assert (p["ahead"], p["level"], p["behind"]) == (2, 1, 0)
    assert p["per_task_difference"][:3] == pytest.approx([0.1, 0.0, 0.3]) and math.isnan(p["per_task_difference"][3])
    assert 0.0 <= p["ci_low"] < p["mean"] < p["ci_high"] <= 0.3 + 1e-12
    again = paired_difference(r, "a", "b")  # the result's seed: the same interval every time
    assert (again["ci_low"], again["ci_high"], again["iqm_ci_low"]) == (p["ci_low"], p["ci_high"], p["iqm_ci_low"])
    other = paired_difference(fake_result({"a": [0.5, 0.7, 0.9, 0.1] * 8, "b": [0.4, 0.7, 0.6, 0.2] * 8}), "a", "b")
    again = paired_difference(fake_result({"a": [0.5, 0.7, 0.9, 0.1] * 8, "b": [0.4, 0.7, 0.6, 0.2] * 8}), "a", "b",
                              seed=1)
    assert (other["ci_low"], other["ci_high"]) != (again["ci_low"], again["ci_high"])
    flipped = paired_difference(r, "b", "a")
    assert flipped["mean"] == pytest.approx(-p["mean"]) and (flipped["ahead"], flipped["behind"]) == (0, 2)
    with pytest.raises(ValueError, match="no learner 'c'"):
        paired_difference(r, "a", "c")
    with pytest.raises(ValueError, match="different task sets"):
        paired_difference(fake_result({"a": [1.0, 2.0], "b": [1.0]}), "a", "b")


def test_paired_difference_on_real_runs(small_result):
    cfg, result = small_result
    same = paired_difference(result, "mbrl:sweeps=2", "mbrl:sweeps=2")
    assert (same["mean"], same["ci_low"], same["ci_high"], same["iqm"]) == (0.0, 0.0, 0.0, 0.0)
    assert same["level"] == same["n"] == 4
    better = paired_difference(result, "oracle", "random")
    assert better["ci_low"] > 0.5 and better["ahead"] == 4
    a, b = (np.array(result["learners"][k]["per_task_auc"]) for k in ("oracle", "random"))
    assert better["mean"] == pytest.approx((a - b).mean())
    # the same numbers from the written JSON
    loaded = json.loads(json.dumps(evaluation._json_safe(result), allow_nan=False))
    assert paired_difference(loaded, "oracle", "random") == better


def test_parse_pairs_splits_at_the_colon_between_two_learners():
    names = ["agent:/ckpt/x:temperature_end=0.1", "mbrl:sweeps=10", "random", "tql"]
    assert parse_pairs("agent:mbrl, tql:random", names) == [(names[0], names[1]), ("tql", "random")]
    assert parse_pairs(f"{names[0]}:{names[1]}", names) == [(names[0], names[1])]
    assert parse_pairs([["tql", "random"]], names) == [("tql", "random")]
    assert parse_pairs("", names) == []
    with pytest.raises(ValueError, match="does not name two of its learners"):
        parse_pairs("tql:oracle", names)
    with pytest.raises(ValueError, match="does not name two of its learners"):
        parse_pairs("tql", names)
    with pytest.raises(ValueError, match="is ambiguous"):
        parse_pairs("a:b:c", ["a", "b", "c", "a:b", "b:c"])


def test_evaluate_reports_the_pairs_asked_for():
    cfg = EvalConfig(suite="anymdp-16", learners=["random", "oracle"], tasks=3, steps=300, window=100,
                     paired=["oracle:random", "random:random"])
    result = evaluate(cfg)
    assert [(p["learner"], p["baseline"]) for p in result["paired"]] == [("oracle", "random"), ("random", "random")]
    assert result["paired"][0] == paired_difference(result, "oracle", "random")
    table = format_table(result)
    assert "paired AUC difference" in table
    row = next(line for line in table.splitlines() if line.startswith("oracle - random"))
    p = result["paired"][0]
    assert f"{p['mean']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}]" in row and "ahead on 3" in row
    with pytest.raises(ValueError, match="--paired 'oracle:mbrl'"):
        check_config(EvalConfig(suite="anymdp-16", learners=["random", "oracle"], tasks=3, steps=300,
                                paired=["oracle:mbrl"]))


def test_default_pairs_put_each_agent_against_every_other_learner():
    class Named:
        def __init__(self, name):
            self.name = name

    learners = {"agent": Named("agent"), "agent:/b": Named("agent"), "mbrl": Named("mbrl"), "random": Named("random")}
    assert evaluation.default_pairs(learners) == [("agent", "mbrl"), ("agent", "random"), ("agent:/b", "mbrl"),
                                                  ("agent:/b", "random")]
    assert evaluation.default_pairs({"tql": Named("tql"), "random": Named("random")}) == []


def test_improvement_is_the_last_two_windows_against_the_first_per_task():
    """``late_minus_early`` is computed per task from the window scores the result holds, with a CI."""
    from anymdp_agent.evaluation import analyse

    suite = load_suite("anymdp-16", 6)
    run = run_learner(make_learner("mbrl"), suite, 600)
    ref = SuiteReference.of(suite)
    out = analyse(run, ref, 100, np.random.default_rng(3))
    w = np.asarray(out["per_task_window_scores"])
    diff = np.nanmean(w[:, -2:], 1) - w[:, 0]
    assert out["late_minus_early"]["mean"] == pytest.approx(np.nanmean(diff), abs=1e-5)
    assert out["late_minus_early"]["ci_low"] <= out["late_minus_early"]["mean"] <= out["late_minus_early"]["ci_high"]
    assert out["early"]["mean"] == pytest.approx(np.nanmean(w[:, 0]), abs=1e-5)
    assert out["late"]["mean"] == pytest.approx(np.nanmean(np.nanmean(w[:, -2:], 1)), abs=1e-5)
    two = analyse(run, ref, 300, np.random.default_rng(3))  # two windows: no improvement statistic
    assert "late_minus_early" not in two
