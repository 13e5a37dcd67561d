"""Checks of corpus rows shared by the corpus test modules: episodes, oracle greedy sets, episode structure."""

from __future__ import annotations

import numpy as np

from anymdp_agent.configuration_anymdp_agent import END_TERMINATED, END_TRUNCATED  # noqa: F401 (re-exported)
from anymdp_agent.envs.solvers import oracle_q


def greedy_sets(tasks, gamma: float) -> list[np.ndarray]:
    """Per task, ``[n_active, na]`` bool: the actions greedy w.r.t. ``oracle_q(task, gamma)`` (ties kept)."""
    sets = []
    for task in tasks:
        q = oracle_q(task, gamma)[0]
        best = q.max(-1, keepdims=True)
        sets.append(q >= best - 1e-9 * (1.0 + np.abs(best)))
    return sets


def episodes(actions_row: np.ndarray) -> list[tuple[int, int, int | None]]:
    """Episodes of one sequence as ``(first_row, end_row, closing_row)``: real rows ``first..end-1``, then
    the closing row ``end`` (``None`` for the unfinished last episode)."""
    out, start = [], 0
    for c in np.flatnonzero(actions_row < 0):
        out.append((start, int(c), int(c)))
        start = int(c) + 1
    if start < len(actions_row):
        out.append((start, len(actions_row), None))
    return out


def check_episode_structure(obs, actions, rewards, labels: dict, tasks) -> dict:
    """What the stored data alone must satisfy (no hidden state needed: observation ids map one-to-one to
    chain states). Returns counts of terminated / truncated ends."""
    counts = {"terminated": 0, "truncated": 0, "episodes": 0}
    for i, task in enumerate(tasks):
        o2s = task.observation_to_state
        a = actions[i]
        assert np.all((a >= 0) | (a == END_TERMINATED) | (a == END_TRUNCATED))
        assert np.all(a < task.n_actions)
        assert np.all((obs[i] >= 0) & (obs[i] < task.n_states)) and np.all(o2s[obs[i]] >= 0)
        closing = a < 0
        # No two closing rows in a row; closing rows carry no reward and no label.
        assert not np.any(closing[1:] & closing[:-1])
        assert np.all(rewards[i][closing] == 0.0)
        for kind, lab in labels.items():
            assert np.all(lab[i][closing] == -1), kind
            assert np.all((lab[i][~closing] >= 0) & (lab[i][~closing] < task.n_actions)), kind
        for first, end, close in episodes(a):
            counts["episodes"] += 1
            # Every episode starts in a start state, and no episode is longer than the cap.
            assert task.start[o2s[obs[i, first]]] > 0, (i, first)
            assert end - first <= task.max_steps
            # Real rows of an episode never sit on a terminal state.
            assert not np.any(task.terminal[o2s[obs[i, first:end]]]), (i, first, end)
            if close is None:
                continue
            final = o2s[obs[i, close]]
            if a[close] == END_TERMINATED:
                counts["terminated"] += 1
                assert task.terminal[final], (i, close)
            else:
                counts["truncated"] += 1
                assert end - first == task.max_steps, (i, close)
                assert not task.terminal[final], (i, close)
    return counts
