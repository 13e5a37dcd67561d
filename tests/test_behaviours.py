"""The corpus' rows: oracle and planner labels, behaviour policies, tag masking and episode ends.

Sequences are rolled with :func:`anymdp_agent.data.roll_sequences` while the environment class of
the corpus module is replaced by a subclass that records the hidden chain state of every row and the
``terminated`` / ``truncated`` flags of every step (the corpus does not store them), so the labels and
the closing rows can be checked against what really happened.
"""

from __future__ import annotations

import numpy as np
import pytest

import anymdp_agent.data.corpus as corpus_mod
from anymdp_agent.baselines import ModelBasedPlanner
from anymdp_agent.baselines.protocol import EnvSpec, Transition
from anymdp_agent.data import TAGS, CorpusConfig, MixtureConfig, roll_sequences
from anymdp_agent.envs import BatchedAnyMDPEnv, sample_anymdp_task, stack_tasks
from corpus_checks import END_TERMINATED, END_TRUNCATED, check_episode_structure, episodes, greedy_sets
from helpers import three_action_task

TAG = {name: i for i, name in enumerate(TAGS)}


# ---------------------------------------------------------------------- shared machinery


class RecordingEnv(BatchedAnyMDPEnv):
    """``BatchedAnyMDPEnv`` that keeps every hidden state and every step's end flags."""

    last: "RecordingEnv | None" = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.states, self.terms, self.truncs = [], [], []
        RecordingEnv.last = self

    def reset(self, **kwargs):
        obs, info = super().reset(**kwargs)
        self.states.append(info["state"].copy())
        return obs, info

    def step(self, actions):
        obs, reward, term, trunc, info = super().step(actions)
        self.states.append(info["state"].copy())
        self.terms.append(term.copy())
        self.truncs.append(trunc.copy())
        return obs, reward, term, trunc, info


def recorded_roll(tasks, cfg: CorpusConfig, seed: int = 0) -> dict:
    """Roll ``tasks`` under ``cfg``; the output arrays plus ``state [B, T]`` (chain state of each row) and
    ``term`` / ``trunc [B, T]`` (flags of the env step taken at each row)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus_mod, "BatchedAnyMDPEnv", RecordingEnv)
        out, stats = roll_sequences(tasks, cfg, np.random.default_rng(seed))
    env = RecordingEnv.last
    t = cfg.seq_len
    assert len(env.states) == t + 1 and len(env.terms) == t  # one reset, then one step per row
    out = dict(out)
    out["state"] = np.stack(env.states[:t], axis=1)
    out["term"] = np.stack(env.terms, axis=1)
    out["trunc"] = np.stack(env.truncs, axis=1)
    out["stats"] = stats
    return out


# ---------------------------------------------------------------------- shared rolls


@pytest.fixture(scope="module")
def tasks():
    """Mixed sizes: four 16-state 5-action AnyMDP tasks, one 10-state 3-action one, and the hand-built
    4-state 3-action task (6 observation ids, two unused; episodes capped at 7 steps so some truncate)."""
    return [sample_anymdp_task(16, 5, seed=s) for s in range(4)] + [sample_anymdp_task(10, 3, seed=4),
                                                                    three_action_task(max_steps=7)]


@pytest.fixture(scope="module")
def default_roll(tasks):
    cfg = CorpusConfig(tasks=len(tasks), seq_len=500, labels=("oracle", "planner"), tasks_per_shard=len(tasks))
    return recorded_roll(tasks, cfg, seed=3)


def _roll(tasks, weights, seq_len, seed=0, labels=("oracle",), **mixture):
    mixture.setdefault("unknown_sequence_prob", 0.0)
    mixture.setdefault("unknown_episode_prob", 0.0)
    cfg = CorpusConfig(tasks=len(tasks), seq_len=seq_len, labels=labels, tasks_per_shard=len(tasks),
                       mixture=MixtureConfig(weights=weights, **mixture))
    out, _ = roll_sequences(tasks, cfg, np.random.default_rng(seed))
    return out


@pytest.fixture(scope="module")
def many_tasks():
    return [sample_anymdp_task(16, 5, seed=100 + s) for s in range(16)]


# ---------------------------------------------------------------------- shapes and the hidden state


def test_roll_shapes_and_the_observation_map(default_roll, tasks):
    b, t = len(tasks), 500
    for name in ("observations", "actions", "rewards", "tags", "label_oracle", "label_planner"):
        assert default_roll[name].shape == (b, t), name
    # The hidden state of every row is the one its observation id names (a 1:1 map in every task).
    for i, task in enumerate(tasks):
        np.testing.assert_array_equal(task.observation_to_state[default_roll["observations"][i]], default_roll["state"][i])
    # The hand-built task's observation ids are its mapping's, not chain indices.
    assert set(np.unique(default_roll["observations"][5])) <= {5, 0, 3, 2}
    assert np.all(np.isin(default_roll["tags"], np.arange(len(TAGS))))


# ---------------------------------------------------------------------- oracle labels


def test_oracle_labels_are_the_greedy_action_in_the_true_state(default_roll, tasks):
    greedy = greedy_sets(tasks, 0.994)
    real = default_roll["actions"] >= 0
    for i, task in enumerate(tasks):
        lab = default_roll["label_oracle"][i]
        state = default_roll["state"][i]
        r = real[i]
        assert np.all(greedy[i][state[r], lab[r]]), f"task {i}: a label is not greedy in the true state"
        # The same through the observation (what a reader of the corpus can do with the task seed).
        via_obs = task.observation_to_state[default_roll["observations"][i]]
        assert np.all(greedy[i][via_obs[r], lab[r]])
        assert np.all(lab[~r] == -1)
    # Not vacuous: labels vary with the state.
    assert len(np.unique(default_roll["label_oracle"][0][real[0]])) > 1


def test_oracle_labels_follow_the_configured_discount(tasks):
    sub = tasks[:4]
    cfg = CorpusConfig(tasks=4, seq_len=200, labels=("oracle",), oracle_gamma=0.5, tasks_per_shard=4)
    out = recorded_roll(sub, cfg, seed=1)
    real = out["actions"] >= 0
    g05, g994 = greedy_sets(sub, 0.5), greedy_sets(sub, 0.994)
    differs = 0
    for i in range(4):
        s, lab = out["state"][i][real[i]], out["label_oracle"][i][real[i]]
        assert np.all(g05[i][s, lab])
        differs += int(np.sum(~g994[i][s, lab]))
    assert differs > 0, "gamma 0.5 and 0.994 oracles agree everywhere on these rows: the check is vacuous"


# ---------------------------------------------------------------------- planner labels


def test_planner_labels_are_the_planners_action_on_the_same_history(default_roll, tasks):
    """Replay the stored history (observations, actions, rewards; closing rows end episodes, terminated iff
    action -1) through the baselines' planner; each label must be greedy in the planner's Q before the step."""
    obs, actions, rewards = default_roll["observations"], default_roll["actions"], default_roll["rewards"]
    labels = default_roll["label_planner"]
    b, t_len = obs.shape
    batch = stack_tasks(tasks)
    spec = EnvSpec(num_envs=b, n_observations=batch.n_states, n_actions=batch.action_mask.shape[1],
                   action_mask=batch.action_mask)
    planner = ModelBasedPlanner(gamma=0.99, sweeps=3)
    state = planner.initial_state(spec, 0)
    checked = unique = 0
    for t in range(t_len):
        q = planner.q_values(state, obs[:, t])
        q = np.where(batch.action_mask, q, -np.inf)
        best = q.max(-1, keepdims=True)
        tied = q >= best - 1e-6 * (1.0 + np.abs(best))
        real = actions[:, t] >= 0
        for i in np.flatnonzero(real):
            assert tied[i, labels[i, t]], (f"row {t} of sequence {i}: planner label {labels[i, t]} is not among the "
                                           f"planner's best actions {np.flatnonzero(tied[i]).tolist()} (Q {q[i]})")
            checked += 1
            unique += int(tied[i].sum() == 1)
        assert np.all(labels[~real, t] == -1)
        if t == t_len - 1:
            break
        live = np.flatnonzero(real)
        nxt = actions[:, t + 1]
        step = Transition(obs[live, t], actions[live, t], rewards[live, t], obs[live, t + 1],
                          nxt[live] == END_TERMINATED, nxt[live] == END_TRUNCATED)
        planner.record(state, step, live)
        planner.plan(state, 3)
    assert checked == int((actions >= 0).sum())
    # Not vacuous: many labels are the planner's unique best action, not a tie any action would pass (untried
    # actions share the optimistic value, so early rows are ties).
    assert unique > 0.4 * checked, (unique, checked)


def test_planner_replay_rejects_a_shifted_history(default_roll, tasks):
    """The replay above is sharp: labels of one sequence checked against a planner that saw the history one
    step late fail somewhere."""
    i = 0
    obs, actions, rewards = (default_roll[k][i:i + 1] for k in ("observations", "actions", "rewards"))
    labels = default_roll["label_planner"][i]
    spec = EnvSpec.uniform(1, tasks[i].n_states, tasks[i].n_actions)
    planner = ModelBasedPlanner(gamma=0.99, sweeps=3)
    state = planner.initial_state(spec, 0)
    mismatches = 0
    pending = None
    for t in range(obs.shape[1] - 1):
        q = planner.q_values(state, obs[:, t])[0]
        if actions[0, t] >= 0:
            mismatches += int(q[labels[t]] < q.max() - 1e-6 * (1 + abs(q.max())))
        if pending is not None:  # the previous step is learned only now: one step late
            planner.record(state, pending[0], pending[1])
            planner.plan(state, 3)
            pending = None
        if actions[0, t] >= 0:
            pending = (Transition(obs[:, t], actions[:, t], rewards[:, t], obs[:, t + 1],
                                  actions[:, t + 1] == END_TERMINATED, actions[:, t + 1] == END_TRUNCATED), np.array([0]))
    assert mismatches > 0


# ---------------------------------------------------------------------- episode ends


def test_closing_rows_exactly_where_episodes_end(default_roll, tasks):
    actions = default_roll["actions"]
    closing = actions < 0
    real = ~closing
    ended = real & (default_roll["term"] | default_roll["trunc"])
    # A closing row follows exactly the steps that ended an episode (and nothing else).
    np.testing.assert_array_equal(closing[:, 1:], ended[:, :-1])
    assert not closing[:, 0].any()
    # -1 iff the step terminated (terminated wins over a simultaneous truncation), else -2.
    after = actions[:, 1:]
    np.testing.assert_array_equal(after[ended[:, :-1]] == END_TERMINATED, default_roll["term"][:, :-1][ended[:, :-1]])
    # The closing row shows the final state of its episode; the row after it a fresh start.
    for i, task in enumerate(tasks):
        for first, end, close in episodes(actions[i]):
            assert task.start[default_roll["state"][i, first]] > 0
            if close is not None:
                assert task.terminal[default_roll["state"][i, close]] == (actions[i, close] == END_TERMINATED)
    counts = check_episode_structure(default_roll["observations"], actions, default_roll["rewards"],
                                     {k: default_roll[f"label_{k}"] for k in ("oracle", "planner")}, tasks)
    assert counts["terminated"] > 0 and counts["truncated"] > 0, counts


def test_statistics_count_what_the_rows_hold(default_roll):
    stats = default_roll["stats"]
    actions, tags = default_roll["actions"], default_roll["tags"]
    real = actions >= 0
    assert stats["rows"] == actions.size and stats["steps"] == int(real.sum())
    assert stats["episodes"] == int((~real).sum())  # complete episodes = closing rows
    assert stats["episode_length_sum"] == sum(end - first for row in actions for first, end, c in episodes(row)
                                              if c is not None)
    assert sum(stats["behaviour_rows"].values()) == int(real.sum())
    for tag, i in zip(TAGS, range(len(TAGS))):
        assert stats["tag_rows"][tag] == int((real & (tags == i)).sum())
        for kind in ("oracle", "planner"):
            sel = real & (tags == i)
            agree = stats["label_agreement"][kind][tag]
            assert agree == {"rows": int(sel.sum()), "agree": int((actions[sel] == default_roll[f"label_{kind}"][sel]).sum())}


# ---------------------------------------------------------------------- behaviours vs labels


def test_opt_tag_always_agrees_with_the_oracle_label(default_roll):
    real = default_roll["actions"] >= 0
    opt = real & (default_roll["tags"] == TAG["opt"])
    assert opt.sum() > 50
    np.testing.assert_array_equal(default_roll["actions"][opt], default_roll["label_oracle"][opt])


def test_pure_oracle_always_acts_as_labelled(many_tasks):
    out = _roll(many_tasks[:6], {"oracle": 1.0}, 300)
    real = out["actions"] >= 0
    np.testing.assert_array_equal(out["actions"][real], out["label_oracle"][real])
    assert np.all(out["tags"][real] == TAG["opt"])


def test_random_behaviour_agrees_with_the_oracle_near_chance(many_tasks):
    out = _roll(many_tasks, {"random": 1.0}, 600)
    real = out["actions"] >= 0
    assert np.all(out["tags"][real] == TAG["random"])
    agree = (out["actions"] == out["label_oracle"])[real].mean()
    assert 0.1 < agree < 0.3, agree  # chance is 1/5
    # Random actions draw from all actions, the last one included (the reference never draws it).
    counts = np.bincount(out["actions"][real], minlength=5)
    assert counts.min() > 0.1 * real.sum(), counts


def test_explorer_is_far_from_the_oracle_early(many_tasks):
    out = _roll(many_tasks, {"explore": 1.0}, 100)
    real = out["actions"] >= 0
    early = real.copy()
    early[:, 50:] = False
    assert np.all(out["tags"][real] == TAG["explore"])
    agree = (out["actions"] == out["label_oracle"])[early].mean()
    assert agree < 0.35, agree


def test_qlearner_tags(many_tasks):
    out = _roll(many_tasks[:4], {"qlearn": 1.0}, 200)
    real = out["actions"] >= 0
    assert np.all(out["tags"][real] == TAG["qlearn"])


@pytest.mark.parametrize("name", ["distill_a", "distill_b"])
def test_noise_distilled_oracle_converges_to_the_label(many_tasks, name):
    out = _roll(many_tasks, {name: 1.0}, 1500)
    real = out["actions"] >= 0
    agree = out["actions"] == out["label_oracle"]
    early = real.copy()
    early[:, 30:] = False
    late = real.copy()
    late[:, :1000] = False
    assert agree[early].mean() < 0.5, agree[early].mean()          # epsilon starts at 1
    assert agree[late].mean() > 0.85, agree[late].mean()           # and decays to 0 at a random rate
    per_seq = np.array([agree[i][late[i]].mean() for i in range(len(many_tasks))])
    assert np.median(per_seq) == 1.0, per_seq
    # Tags say who acted: the oracle's steps are 'opt' (and match), the noise is 'random'.
    opt = real & (out["tags"] == TAG["opt"])
    assert np.all(agree[opt])
    assert set(np.unique(out["tags"][real])) == {TAG["opt"], TAG["random"]}


def test_mixed_explorer_hands_over_to_the_oracle(many_tasks):
    """mixed_a: the oracle acts with probability t / (0.25 T), so from step 0.25 T on only the oracle acts."""
    t_len = 400
    out = _roll(many_tasks[:8], {"mixed_a": 1.0}, t_len)
    real = out["actions"] >= 0
    steps_before = np.cumsum(real, axis=1) - real  # real steps before each row (the behaviour's clock)
    late = real & (steps_before >= 0.25 * t_len)
    assert late.sum() > 0
    assert np.all(out["tags"][late] == TAG["opt"])
    np.testing.assert_array_equal(out["actions"][late], out["label_oracle"][late])
    early = real & (steps_before < 0.05 * t_len)
    assert set(np.unique(out["tags"][early])) <= {TAG["opt"], TAG["random"], TAG["explore"]}
    assert (out["tags"][early] != TAG["opt"]).mean() > 0.5


def test_non_switching_sequences_keep_one_behaviour(many_tasks):
    out = _roll(many_tasks[:8], {"random": 1.0, "oracle": 1.0}, 400, seed=2, switching_share=0.0)
    real = out["actions"] >= 0
    kinds = [set(np.unique(out["tags"][i][real[i]])) for i in range(8)]
    assert all(len(k) == 1 for k in kinds), kinds
    assert {next(iter(k)) for k in kinds} == {TAG["opt"], TAG["random"]}  # both drawn across sequences
    # Always switching at every episode end: some sequence shows both behaviours.
    out = _roll(many_tasks[:8], {"random": 1.0, "oracle": 1.0}, 400, seed=2, switching_share=1.0, switch_prob=1.0)
    real = out["actions"] >= 0
    assert any(len(set(np.unique(out["tags"][i][real[i]]))) == 2 for i in range(8))


# ---------------------------------------------------------------------- tag masking


def test_episode_masking_rate(many_tasks):
    p = 0.5
    out = _roll(many_tasks, {"oracle": 1.0}, 600, seed=5, unknown_episode_prob=p)
    unknown = total = 0
    for i in range(len(many_tasks)):
        for first, end, close in episodes(out["actions"][i]):
            tags = set(np.unique(out["tags"][i, first:end]))
            assert tags in ({TAG["opt"]}, {TAG["unknown"]}), tags  # masking is per whole episode
            unknown += TAG["unknown"] in tags
            total += 1
    sd = np.sqrt(total * p * (1 - p))
    assert total > 100
    assert abs(unknown - p * total) < 4 * sd, (unknown, total)


def test_sequence_masking_rate(many_tasks):
    p = 0.5
    tasks = many_tasks * 4  # 64 sequences; the masking draw is per sequence
    out = _roll(tasks, {"oracle": 1.0}, 60, seed=7, unknown_sequence_prob=p)
    real = out["actions"] >= 0
    hidden = 0
    for i in range(len(tasks)):
        tags = set(np.unique(out["tags"][i][real[i]]))
        assert tags in ({TAG["opt"]}, {TAG["unknown"]}), tags
        hidden += TAG["unknown"] in tags
    sd = np.sqrt(len(tasks) * p * (1 - p))
    assert abs(hidden - p * len(tasks)) < 4 * sd, hidden


def test_default_masking_rates(many_tasks):
    """Spec defaults 0.15 / 0.15: a share of unknown episodes near 1 - 0.85 * 0.85 = 0.28 (by episode)."""
    out = _roll(many_tasks, {"oracle": 1.0}, 400, seed=9, unknown_sequence_prob=0.15, unknown_episode_prob=0.15)
    unknown = total = 0
    for i in range(len(many_tasks)):
        for first, end, close in episodes(out["actions"][i]):
            unknown += bool(np.all(out["tags"][i, first:end] == TAG["unknown"]))
            total += 1
    # Sequence-level masking makes episodes of one sequence correlated: compare only loosely.
    assert 0.05 < unknown / total < 0.6, (unknown, total)


def test_mixture_config_validation():
    with pytest.raises(ValueError, match="unknown behaviours"):
        MixtureConfig(weights={"nope": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        MixtureConfig(weights={"random": 0.0})
    with pytest.raises(ValueError, match="unknown_episode_prob"):
        MixtureConfig(unknown_episode_prob=1.5)


def test_closing_rows_carry_the_tag_of_the_step_they_close(default_roll):
    actions, tags = default_roll["actions"], default_roll["tags"]
    closing = actions < 0
    assert closing.sum() > 10
    rows, cols = np.nonzero(closing)
    np.testing.assert_array_equal(tags[rows, cols], tags[rows, cols - 1])
