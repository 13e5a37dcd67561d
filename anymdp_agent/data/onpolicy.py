"""On-policy sequences: any in-context learner (the agent being trained, typically) acts, labels stay step-wise.

Training on the model's own histories removes the mismatch between the histories seen in training
and at deployment (DAgger-style). The rows have the corpus' layout (closing rows at episode ends),
so they mix freely with corpus batches; tags are ``unknown``.
"""

from __future__ import annotations

import numpy as np

from ..baselines.model_based import ModelBasedPlanner
from ..baselines.protocol import EnvSpec, InContextLearner, Transition
from ..envs import BatchedAnyMDPEnv, stack_tasks
from ..envs.vector_env import final_observations
from ..envs.solvers import oracle_q
from .behaviours import TAG
from .corpus import END_TERMINATED, END_TRUNCATED, NO_LABEL


def roll_learner(tasks, learner: InContextLearner, seq_len: int, labels: tuple[str, ...], seed: int,
                 oracle_gamma: float = 0.994, planner_sweeps: int = 3) -> tuple[dict, dict]:
    """Let ``learner`` act on ``tasks`` (one sequence each) and label every step.

    Returns ``[B, seq_len]`` row arrays (observations, actions, rewards, tags, label_<kind>) and
    ``{"agreement": {kind: share of the learner's actions equal to the label}}`` -- the signal that
    tells whether imitation works on the model's *own* histories.
    """
    batch = stack_tasks(tasks)
    b = len(tasks)
    env = BatchedAnyMDPEnv(batch, autoreset_mode="SameStep")
    spec = EnvSpec(num_envs=b, n_observations=batch.n_states, n_actions=batch.action_mask.shape[1],
                   action_mask=batch.action_mask)
    # the exact solve only where the oracle's action is a label (return-driven training asks for no labels)
    oracle_actions = (np.where(batch.action_mask[:, None, :], oracle_q(batch, oracle_gamma), -np.inf).argmax(-1)
                      if "oracle" in labels else None)
    planner = ModelBasedPlanner(gamma=0.99, sweeps=planner_sweeps) if "planner" in labels else None
    pstate = planner.initial_state(spec, seed + 1) if planner else None
    lstate = learner.initial_state(spec, seed)
    obs, info = env.reset(seed=seed)
    chain = info["state"]
    rows = {k: np.zeros((b, seq_len), dtype=np.int64) for k in ("observations", "actions", "tags")}
    rows["rewards"] = np.zeros((b, seq_len))
    for kind in labels:
        rows[f"label_{kind}"] = np.full((b, seq_len), NO_LABEL, dtype=np.int64)
    rows["tags"][:] = TAG["unknown"]
    filled = np.zeros(b, dtype=np.int64)
    agree = {kind: [0, 0] for kind in labels}
    idx = np.arange(b)
    while filled.min() < seq_len:
        actions, lstate = learner.act(lstate, obs)
        step_labels = {}
        if "oracle" in labels:
            step_labels["oracle"] = oracle_actions[idx, chain]
        if planner is not None:
            step_labels["planner"], pstate = planner.act(pstate, obs)
        next_obs, reward, term, trunc, info = env.step(actions)
        done = term | trunc
        final = final_observations(next_obs, info, done)
        t = Transition(obs, actions, reward, final, term, trunc)
        lstate = learner.observe(lstate, t)
        if planner is not None:
            pstate = planner.observe(pstate, t)
        # The step's row, then a closing row where the episode ended (while there is room).
        room = filled < seq_len
        r = idx[room]
        rows["observations"][r, filled[r]] = obs[r]
        rows["actions"][r, filled[r]] = actions[r]
        rows["rewards"][r, filled[r]] = reward[r]
        for kind, lab in step_labels.items():
            rows[f"label_{kind}"][r, filled[r]] = lab[r]
            agree[kind][0] += int((actions[r] == lab[r]).sum())
            agree[kind][1] += len(r)
        filled[r] += 1
        close = idx[done & (filled < seq_len)]
        rows["observations"][close, filled[close]] = final[close]
        rows["actions"][close, filled[close]] = np.where(term[close], END_TERMINATED, END_TRUNCATED)
        filled[close] += 1
        obs, chain = next_obs, info["state"]
    stats = {"agreement": {kind: a / max(n, 1) for kind, (a, n) in agree.items()}}
    return rows, stats
