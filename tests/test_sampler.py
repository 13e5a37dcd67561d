"""The AnyMDP sampler (docs/anymdp.md sections 1-5): structure, calibration, quality filter, determinism, errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anymdp_agent.envs import (
    GENERATOR_VERSION,
    REWARD_PARTS,
    optimal_q,
    policy_evaluation,
    sample_anymdp_task,
    uniform_policy,
)
from anymdp_agent.envs import anymdp

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CAL_GAMMA = 0.99


# ---------------------------------------------------------------------- invariant checks


def calibration_values(task) -> np.ndarray:
    """``V = max_a Q*`` at the calibration discount 0.99, recomputed from the task's own arrays."""
    return optimal_q(task.transition[None], task.reward[None], CAL_GAMMA)[0].max(-1)


def last_chain_state(task) -> int:
    return task.n_active - 2 if task.terminal[-1] else task.n_active - 1


def check_structure(task, n_actions: int, forward_reach: int | None = None, backward_reach: int | None = None):
    """Every structural fact of docs/anymdp.md sections 1-3 that an accepted task must satisfy."""
    n, na, ns = task.n_active, task.n_actions, task.n_states
    T = task.transition
    assert T.shape == (n, n_actions, n) and task.reward.shape == T.shape and task.reward_std.shape == T.shape
    assert na == n_actions
    assert task.kind == "anymdp" and task.version == GENERATOR_VERSION
    # Arrays are immutable.
    for arr in (T, task.reward, task.reward_std, task.start, task.terminal, task.state_mapping):
        assert not arr.flags.writeable

    # Stochastic rows for live states, all-zero rows for terminals (terminals absorb: the episode ends).
    live = ~task.terminal
    assert np.all(T >= 0)
    np.testing.assert_allclose(T[live].sum(-1), 1.0, rtol=0, atol=1e-12)
    assert np.all(T[task.terminal] == 0)
    assert np.all(task.reward_std >= 0) and np.all(np.isfinite(task.reward))

    # Terminals: pitfalls (never the start states, never n-1) plus an optional goal n-1.
    assert task.meta["goal_terminal"] == bool(task.terminal[-1])
    pitfalls = np.flatnonzero(task.terminal[:-1])
    assert task.meta["pitfalls"] == len(pitfalls)
    assert len(pitfalls) < 0.4 * n + 1  # p_pit <= 0.4 and the count is redrawn until below n p_pit + 1

    # Start states: a distribution over chain states 0..2, never terminal.
    assert abs(task.start.sum() - 1.0) < 1e-12 and np.all(task.start >= 0)
    starts = np.flatnonzero(task.start > 0)
    assert len(starts) >= 1 and starts.max() <= 2
    assert not task.terminal[starts].any()

    # Observation ids: distinct ids in [0, n_states).
    m = task.state_mapping
    assert m.shape == (n,) and len(set(m.tolist())) == n
    assert m.min() >= 0 and m.max() < ns
    inv = task.observation_to_state
    np.testing.assert_array_equal(inv[m], np.arange(n))

    # Episode cap: an integer in [max(4n, 100), max(min(8n, 500), lower + 1)).
    lower = max(4 * n, 100)
    upper = max(min(8 * n, 500), lower + 1)
    assert isinstance(task.max_steps, int) and lower <= task.max_steps < upper

    # Banded transitions: back at most max(2, bm); forward at most max(2, bp) - 2 unless the band had to
    # grow to hold two live states strictly ahead, and then only up to the second such state.
    bp = n // 4 + 1 if forward_reach is None else forward_reach
    bm = n // 2 + 1 if backward_reach is None else backward_reach
    assert task.meta["forward_reach"] == bp and task.meta["backward_reach"] == bm
    max_leap, max_back = max(2, bp), max(2, bm)
    live_idx = np.flatnonzero(live)
    for s in live_idx:
        targets = np.flatnonzero(T[s].sum(0) > 0)
        assert targets.min() >= s - max_back, (s, targets)
        ahead = live_idx[live_idx > s]
        grown_end = ahead[1] + 1 if len(ahead) >= 2 else n  # exclusive end of the smallest grown band
        assert targets.max() < max(s + max_leap - 1, grown_end), (s, targets, grown_end)
        # The looser statement of the band: beyond s + max_leap - 1 only when fewer than two live states
        # lie in (s, s + max_leap).
        if targets.max() > s + max_leap - 1:
            assert live[s + 1:s + max_leap].sum() < 2
        # Every live state can move forward (the band holds live states ahead), except the chain end.
        if len(ahead) >= 1:
            assert targets.max() > s
        # The non-terminal chain end has no self-loop (kept from the reference).
        if s == n - 1:
            assert np.all(T[s, :, s] == 0)


def check_calibration(task):
    """Spec 4.5 / 5 recomputed: the chain end beats the start by >= 2, and the quality filter passes."""
    v = calibration_values(task)
    starts = task.start > 0
    assert v[last_chain_state(task)] - v[starts].max() >= 2.0 - 1e-9
    # term.min() <= 0 always, so every live state is worth at least 1 + min(0, pitfall reward) > -inf;
    # without pitfalls (and whatever the goal), every live state is worth at least 1.
    if task.meta["pitfalls"] == 0:
        assert v[~task.terminal].min() >= 1.0 - 1e-9
    check_quality(task)


def check_quality(task):
    n = task.n_active
    t, r = task.transition[None], task.reward[None]
    gamma = anymdp.quality_gamma(n)
    assert gamma == pytest.approx(2.0 ** (-1.0 / n), abs=0)
    q_opt = optimal_q(t, r, gamma)[0]
    q_rnd = policy_evaluation(t, r, uniform_policy(t), gamma)[0]
    starts = np.flatnonzero(task.start > 0)
    gap = (q_opt[starts].max(-1) - q_rnd[starts].max(-1)) * (1 - gamma) * task.max_steps
    assert gap.min() >= 2.0
    gini, entropy = anymdp.visit_spread(task.transition, q_opt.argmax(-1), task.start, task.terminal, task.max_steps)
    assert gini > 0.70 and entropy > 0.35
    assert task.meta["gap"] == pytest.approx(gap.min(), rel=1e-9)
    assert task.meta["gini"] == pytest.approx(gini, rel=1e-9)
    assert task.meta["entropy"] == pytest.approx(entropy, rel=1e-9)


# ---------------------------------------------------------------------- property tests


@PROPERTY
@given(n=st.integers(8, 64), seed=st.integers(0, 2**32), n_actions=st.sampled_from([2, 3, 5]))
def test_accepted_tasks_satisfy_spec(n, seed, n_actions):
    task = sample_anymdp_task(n, n_actions, seed=seed)
    assert task.n_states == task.n_active == n and task.seed == seed
    assert task.meta["draws"] >= 1
    check_structure(task, n_actions)
    check_calibration(task)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accepted_tasks_at_128_states(seed):
    task = sample_anymdp_task(128, seed=seed)
    check_structure(task, 5)
    check_calibration(task)


@PROPERTY
@given(data=st.data())
def test_min_states_draws_active_count_in_range(data):
    n_states = data.draw(st.integers(8, 64), label="n_states")
    min_states = data.draw(st.integers(8, n_states), label="min_states")
    seed = data.draw(st.integers(0, 10**6), label="seed")
    task = sample_anymdp_task(n_states, 3, seed=seed, min_states=min_states)
    assert min_states <= task.n_active <= n_states
    assert task.n_states == n_states
    check_structure(task, 3)
    check_calibration(task)


def test_min_states_uses_the_whole_range():
    sizes = {sample_anymdp_task(12, 2, seed=s, min_states=8).n_active for s in range(40)}
    assert sizes == set(range(8, 13))


@PROPERTY
@given(n=st.integers(12, 40), seed=st.integers(0, 10**6), bp=st.integers(1, 6), bm=st.integers(1, 6))
def test_custom_band_reach_is_respected(n, seed, bp, bm):
    task = sample_anymdp_task(n, 3, seed=seed, forward_reach=bp, backward_reach=bm)
    check_structure(task, 3, forward_reach=bp, backward_reach=bm)
    check_calibration(task)


def _spy_calibration(monkeypatch):
    calls = []
    original = anymdp._calibrate_terminal_rewards

    def spy(rng, structure, raw_reward):  # the calibration is a generator of solve requests
        out = yield from original(rng, structure, raw_reward)
        calls.append((raw_reward.copy(), None if out is None else out.copy()))
        return out

    monkeypatch.setattr(anymdp, "_calibrate_terminal_rewards", spy)
    return calls


@pytest.mark.parametrize("n", [8, 16, 32, 48])
def test_pitfalls_are_worth_less_than_every_live_state(monkeypatch, n):
    """The exact inequality of the calibration: every pitfall's terminal reward r_term[p] satisfies
    ``r_term[p] <= min over live s of V(s) - 1`` (V at gamma 0.99), i.e. falling into a pitfall is worse
    than being in any live state by more than one reward unit; the goal's terminal reward is >= 1."""
    seeds = range(12)
    unpatched = [sample_anymdp_task(n, seed=s) for s in seeds]
    calls = _spy_calibration(monkeypatch)
    with_pitfalls = 0
    for seed, reference in zip(seeds, unpatched):
        calls.clear()
        task = sample_anymdp_task(n, seed=seed)
        assert task == reference  # the spy changes nothing
        assert len(calls) == task.meta["draws"]  # one calibration per raw draw
        raw, calibrated = calls[-1]
        np.testing.assert_array_equal(calibrated, task.reward)
        term_full = calibrated - raw
        term = term_full[0, 0]
        np.testing.assert_allclose(term_full, np.broadcast_to(term, term_full.shape), atol=1e-9)
        pit = task.terminal.copy()
        pit[-1] = False
        assert np.all(term[:-1][~task.terminal[:-1]] == 0)
        assert term[-1] >= 1.0 - 1e-9  # starts at 1 and is only ever raised
        v = calibration_values(task)
        live_min = v[~task.terminal].min()
        assert min(term.min(), 0.0) <= live_min - 1.0 + 1e-9
        if pit.any():
            with_pitfalls += 1
            assert np.all(term[pit] <= live_min - 1.0 + 1e-9)
            assert np.all(term[pit] <= 0)  # lowered from 0 only when needed
    assert with_pitfalls >= 3  # the seeds above do exercise pitfalls


@pytest.mark.parametrize("seed", range(15))
def test_pitfall_rewards_visible_with_position_reward_only(seed):
    """With only the position reward (0 on terminals), R[s, a, p] is the pitfall's calibrated terminal
    reward itself, so the calibration inequality can be checked on the task arrays alone."""
    task = sample_anymdp_task(24, seed=seed, reward_parts=("position",))
    check_structure(task, 5)
    check_calibration(task)
    v = calibration_values(task)
    live_min = v[~task.terminal].min()
    for p in np.flatnonzero(task.terminal[:-1]):
        assert task.reward[:, :, p].max() <= live_min - 1.0 + 1e-9


# ---------------------------------------------------------------------- reward parts


def test_reward_parts_shape_the_reward():
    for seed in range(5):
        # Position only: R(s, a, s') depends on s' alone (position + calibrated terminal reward).
        task = sample_anymdp_task(16, seed=seed, reward_parts=("position",))
        assert task.meta["reward_parts"] == ["position"]
        np.testing.assert_array_equal(task.reward, np.broadcast_to(task.reward[0, 0], task.reward.shape))
        np.testing.assert_array_equal(task.reward_std, np.broadcast_to(task.reward_std[0, 0], task.reward.shape))
        assert np.all(task.reward_std[:, :, task.terminal] == 0)
        # No parts at all: only terminal rewards, no noise; live targets are worth 0.
        bare = sample_anymdp_task(16, seed=seed, reward_parts=())
        assert np.all(bare.reward_std == 0)
        inner_live = ~bare.terminal[:-1]
        assert np.all(bare.reward[:, :, :-1][:, :, inner_live] == 0)
        assert bare.reward[0, 0, -1] >= 1.0
        check_calibration(bare)
        # State-action only: R(s, a, s') = r_sa(s, a) + r_term(s').
        sa = sample_anymdp_task(16, seed=seed, reward_parts=("state_action",))
        diff = sa.reward - sa.reward[:, :, :1]
        np.testing.assert_allclose(diff, np.broadcast_to(diff[:1, :1], diff.shape), atol=1e-12)
    # The default (all parts) reward is not of the position-only form for some seed: it depends on s or a.
    full = [sample_anymdp_task(16, seed=s) for s in range(5)]
    assert any(not np.allclose(t.reward, np.broadcast_to(t.reward[0, 0], t.reward.shape)) for t in full)
    assert any(np.any(t.reward_std > 0) for t in full)
    # And the same seed with different parts gives a different reward.
    assert not np.array_equal(full[0].reward, sample_anymdp_task(16, seed=0, reward_parts=("position",)).reward)
    assert sample_anymdp_task(16, seed=0, reward_parts=REWARD_PARTS) == full[0]
    assert sample_anymdp_task(16, seed=0, reward_parts=list(reversed(REWARD_PARTS))) == full[0]


# ---------------------------------------------------------------------- determinism


def task_digest(task) -> str:
    h = hashlib.sha256()
    for arr in (task.transition, task.reward, task.reward_std, task.start, task.terminal, task.state_mapping):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(f"{task.n_states}/{task.max_steps}/{task.seed}".encode())
    return h.hexdigest()


def test_same_seed_same_task_in_process():
    for n, seed in [(8, 0), (16, 5), (33, 7), (64, 2)]:
        a, b = sample_anymdp_task(n, seed=seed), sample_anymdp_task(n, seed=seed)
        assert a == b and a is not b
        assert task_digest(a) == task_digest(b)
    a = sample_anymdp_task(20, 3, seed=11, min_states=9)
    assert a == sample_anymdp_task(20, 3, seed=11, min_states=9)
    # numpy integer seeds name the same task as Python ints
    assert sample_anymdp_task(16, seed=np.int64(5)) == sample_anymdp_task(16, seed=5)


def test_sampling_does_not_touch_global_random_state():
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    sample_anymdp_task(16, seed=4)
    np.testing.assert_array_equal(np.random.random(3), expected)


def test_same_seed_same_task_in_subprocess():
    cases = [(16, 5), (32, 9), (24, 1)]
    code = (
        "import hashlib, numpy as np\n"
        "from anymdp_agent.envs import sample_anymdp_task\n"
        f"for n, seed in {cases!r}:\n"
        "    t = sample_anymdp_task(n, seed=seed)\n"
        "    h = hashlib.sha256()\n"
        "    for a in (t.transition, t.reward, t.reward_std, t.start, t.terminal, t.state_mapping):\n"
        "        h.update(np.ascontiguousarray(a).tobytes())\n"
        "    h.update(f'{t.n_states}/{t.max_steps}/{t.seed}'.encode())\n"
        "    print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == [task_digest(sample_anymdp_task(n, seed=s)) for n, s in cases]


def test_different_seeds_different_tasks():
    tasks = [sample_anymdp_task(16, seed=s) for s in range(12)]
    digests = {task_digest(t) for t in tasks}
    assert len(digests) == len(tasks)
    for a, b in zip(tasks, tasks[1:]):
        assert a != b
        assert not np.array_equal(a.reward, b.reward)


# ---------------------------------------------------------------------- acceptance rates (docs/anymdp.md section 5)

SPEC_ACCEPTANCE = {16: 0.25, 32: 0.50, 64: 0.53, 128: 0.75}


@pytest.mark.parametrize("n,seeds", [(16, 100), (32, 100), (64, 100)])
def test_acceptance_rate_close_to_spec(n, seeds):
    draws = sum(sample_anymdp_task(n, seed=s).meta["draws"] for s in range(seeds))
    rate = seeds / draws
    assert abs(rate - SPEC_ACCEPTANCE[n]) <= 0.10, f"acceptance {rate:.3f} at n={n}, spec {SPEC_ACCEPTANCE[n]}"


@pytest.mark.slow
def test_acceptance_rate_close_to_spec_128():
    seeds = 300
    draws = sum(sample_anymdp_task(128, seed=s).meta["draws"] for s in range(seeds))
    rate = seeds / draws
    assert abs(rate - SPEC_ACCEPTANCE[128]) <= 0.10, f"acceptance {rate:.3f} at n=128, spec 0.75"


def test_max_draws_exhausted_raises():
    # n=8 accepts about 2% of draws; seed 0 needs more than one draw.
    assert sample_anymdp_task(8, seed=0).meta["draws"] > 1
    with pytest.raises(RuntimeError, match="no acceptable AnyMDP task after 1 draws for seed 0"):
        sample_anymdp_task(8, seed=0, max_draws=1)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(n_states=7, seed=0), ValueError, r"n_states=7 is too small.*at least 8"),
        (dict(n_states=0, seed=0), ValueError, r"n_states=0 is too small"),
        (dict(n_states=16, n_actions=1, seed=0), ValueError, r"n_actions=1 is too small.*at least 2"),
        (dict(n_states=16.0, seed=0), TypeError, r"n_states must be an integer"),
        (dict(n_states=16, seed=-1), ValueError, r"seed must be a non-negative integer, got -1"),
        (dict(n_states=16, seed=1.5), TypeError, r"seed must be a non-negative integer, got 1\.5"),
        (dict(n_states=16, seed="3"), TypeError, r"seed must be a non-negative integer"),
        (dict(n_states=16, seed=True), TypeError, r"seed must be a non-negative integer"),
        (dict(n_states=16, seed=0, min_states=7), ValueError, r"min_states=7 must lie in \[8, n_states=16\]"),
        (dict(n_states=16, seed=0, min_states=17), ValueError, r"min_states=17 must lie in \[8, n_states=16\]"),
        (dict(n_states=16, seed=0, min_states=9.5), TypeError, r"min_states must be an integer"),
        (dict(n_states=16, seed=0, reward_parts=("position", "bonus")), ValueError,
         r"unknown reward parts \['bonus'\]"),
        (dict(n_states=16, seed=0, forward_reach=0), ValueError, r"forward_reach must be a positive integer"),
        (dict(n_states=16, seed=0, backward_reach=-2), ValueError, r"backward_reach must be a positive integer"),
        (dict(n_states=16, seed=0, deterministic="yes"), ValueError, r"deterministic must be True or False"),
    ],
)
def test_bad_sampler_input_raises_clear_error(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sample_anymdp_task(**kwargs)


def test_seed_is_keyword_only():
    with pytest.raises(TypeError):
        sample_anymdp_task(16, 5, 3)


def test_lockstep_sampling_equals_one_seed_at_a_time():
    """``sample_anymdp_tasks`` batches the exact solves of many seeds; every task is still bit for bit the
    one its seed names, also with per-seed sizes (the solves of different sizes are batched apart)."""
    seeds = [3, 17, 17, 40, 41, 90]
    n_states = [16, 16, 32, 8, 16, 12]
    n_actions = [5, 3, 5, 2, 4, 5]
    together = anymdp.sample_anymdp_tasks(seeds, n_states, n_actions, min_states=8)
    for task, seed, n, na in zip(together, seeds, n_states, n_actions):
        assert task == sample_anymdp_task(n, na, seed=seed, min_states=8)
    assert together[1] != together[2]
    with pytest.raises(ValueError, match="one per seed"):
        anymdp.sample_anymdp_tasks([1, 2], [16], 5)


def test_deterministic_tasks_move_surely_to_each_rows_most_likely_target(monkeypatch):
    """``deterministic=True``: the same structure, calibration and filter, every live pair moving to one target
    inside its band, the most likely target of the banded row its accepted draw had; without the option the
    tasks keep their stochastic rows."""
    drawn = []
    sample_structure = anymdp._sample_structure
    def record(*args):  # the stochastic rows of every draw, before the option replaces them
        structure = sample_structure(*args)
        drawn.append(structure["transition"].copy())
        return structure

    monkeypatch.setattr(anymdp, "_sample_structure", record)
    for seed in (5, 6):
        task = sample_anymdp_task(12, 3, seed=seed, deterministic=True)
        assert task.meta["deterministic"] is True and len(drawn) == task.meta["draws"]
        check_structure(task, 3)
        check_calibration(task)
        live = ~task.terminal
        assert set(np.unique(task.transition[live])) == {0.0, 1.0}
        np.testing.assert_array_equal(task.transition.argmax(-1)[live], drawn[-1].argmax(-1)[live])
        assert ((drawn[-1] > 0).sum(-1)[live] > 1).any()
        drawn.clear()
    plain = sample_anymdp_task(12, 3, seed=5)
    assert "deterministic" not in plain.meta and plain == sample_anymdp_task(12, 3, seed=5, deterministic=False)
    assert ((plain.transition > 0).sum(-1)[~plain.terminal] > 1).any()


def test_most_likely_moves_keeps_zero_rows_and_breaks_ties_by_the_first_target():
    rows = np.array([[[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    np.testing.assert_array_equal(anymdp.most_likely_moves(rows),
                                  [[[0, 1, 0], [1, 0, 0]], [[0, 0, 0], [0, 0, 0]]])
