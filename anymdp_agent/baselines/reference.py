"""The two ends of the normalised score: the oracle (1) and uniform random actions (0)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..envs.solvers import ORACLE_GAMMA, oracle_q
from .protocol import EnvSpec, InContextLearner, Transition, sample_categorical


@dataclass
class _RandomState:
    rng: np.random.Generator
    mask: np.ndarray


class RandomLearner(InContextLearner):
    """Uniform random actions over each environment's actions; learns nothing."""

    name = "random"

    def initial_state(self, spec: EnvSpec, seed: int) -> _RandomState:
        return _RandomState(np.random.default_rng(seed), spec.action_mask.astype(np.float64))

    def act(self, state: _RandomState, obs: np.ndarray):
        return sample_categorical(state.mask, state.rng), state

    def observe(self, state: _RandomState, transition: Transition) -> _RandomState:
        return state


@dataclass
class _OracleState:
    actions: np.ndarray  # [B, n_observations] greedy action per observation id


class OracleLearner(InContextLearner):
    """Value iteration on the *true* model (it reads ``spec.tasks``, as only ``mbrl``'s known-model ablation also does).

    Acts greedily with the optimal Q at discount ``gamma`` (the corpus' oracle discount by
    default), so it scores 1 in expectation by construction.
    """

    name = "oracle"

    def __init__(self, gamma: float = ORACLE_GAMMA):
        if not 0 <= gamma < 1:
            raise ValueError(f"OracleLearner needs 0 <= gamma < 1, got gamma={gamma}")
        self.gamma = gamma

    def check_spec(self, spec: EnvSpec) -> None:
        if spec.tasks is None:
            raise ValueError("the oracle needs the true model: this environment has no transition table "
                             "(drop 'oracle' from the learners)")

    def initial_state(self, spec: EnvSpec, seed: int) -> _OracleState:
        self.check_spec(spec)
        tasks = spec.tasks
        q = oracle_q(tasks, self.gamma)
        best = np.where(tasks.action_mask[:, None, :], q, -np.inf).argmax(-1)  # [B, n] chain space
        table = np.zeros((len(tasks), spec.n_observations), dtype=np.int64)
        b, i = np.nonzero(tasks.state_mask)
        table[b, tasks.state_mapping[b, i]] = best[b, i]
        return _OracleState(table)

    def act(self, state: _OracleState, obs: np.ndarray):
        return state.actions[np.arange(len(obs)), obs], state

    def observe(self, state: _OracleState, transition: Transition) -> _OracleState:
        return state
