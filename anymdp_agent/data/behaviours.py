"""Behaviour policies of the corpus (``shared/spec/corpus.md`` section 3), batched over many tasks at once.

Every environment of a batch runs one behaviour at a time, drawn from a weighted mixture and
re-drawn at episode ends (for switching sequences). All learning behaviours keep learning from
every transition, also while another behaviour acts: one empirical model (the model-based
planner's state), one Q-table and one drifting random policy per environment are updated at every
step, whoever acted.

Behaviours (weights default to the paper's 0.1 each):

============  ==========================================================================  ==============
name          what acts                                                                   tag
============  ==========================================================================  ==============
random        a fixed random stochastic policy per state, ``softmax(N(0, Exp(2)))``,       random
              drifting slowly at every visit
explore       empirical model + randomised optimism ``argmax Q + b U(0,1)``,               explore
              ``b = c / (1 - gamma) std(R) / sqrt(n_sa)``, epsilon-random
qlearn        tabular Q-learning (optimistic init), epsilon-greedy                         qlearn
mixed_a..d    the explorer, handing steps to the oracle with a probability growing over    whoever acted
              time and to random actions with one shrinking (4 schedules)
distill_a/b   epsilon-greedy around the oracle, epsilon 1 -> 0 linearly at a random rate   whoever acted
              (a: uniform random actions; b: the drifting random policy's)
oracle        value iteration on the true model                                            opt
============  ==========================================================================  ==============

Epsilons decay per step by ``U(0, 0.1 / (n na))`` (explorers, Q-learner) or ``U(0, 1 / (n na))``
(noise distillation). Random actions draw from *all* of a task's actions (the reference never
draws the last one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..baselines.model_based import ModelBasedPlanner, PlannerState
from ..baselines.protocol import EnvSpec, Transition, argmax_random_ties, sample_categorical, softmax_sample

BEHAVIOURS = ("random", "explore", "qlearn", "mixed_a", "mixed_b", "mixed_c", "mixed_d", "distill_a", "distill_b",
              "oracle")
DEFAULT_WEIGHTS = {name: 0.1 for name in BEHAVIOURS}
TAGS = ("opt", "explore", "qlearn", "random", "unknown")
TAG = {name: i for i, name in enumerate(TAGS)}
# Oracle hand-off schedules of the mixed explorers: (steps until the oracle always acts, steps until
# random actions stop, initial random share), as fractions of the sequence length.
_MIXED = {"mixed_a": (0.25, 0.25, 0.5), "mixed_b": (0.25, 1.0, 0.5), "mixed_c": (1.0, 0.25, 0.3), "mixed_d": (1.0, 1.0, 0.3)}


@dataclass
class MixtureConfig:
    """How behaviours are drawn and tags masked (spec defaults)."""

    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    switching_share: float = 0.85   # sequences whose behaviour may change at episode ends
    switch_prob: float = 0.2        # per episode end, in a switching sequence
    unknown_sequence_prob: float = 0.15
    unknown_episode_prob: float = 0.15
    gamma: float = 0.99             # the learners' discount

    def __post_init__(self):
        unknown = set(self.weights) - set(BEHAVIOURS)
        if unknown:
            raise ValueError(f"unknown behaviours {sorted(unknown)} in the mixture; choose from {list(BEHAVIOURS)}")
        w = np.array([self.weights.get(name, 0.0) for name in BEHAVIOURS], dtype=np.float64)
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError("behaviour weights must be >= 0 and not all zero")
        for name in ("switching_share", "switch_prob", "unknown_sequence_prob", "unknown_episode_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    @property
    def probabilities(self) -> np.ndarray:
        w = np.array([self.weights.get(name, 0.0) for name in BEHAVIOURS], dtype=np.float64)
        return w / w.sum()


class BehaviourMixture:
    """The acting side of corpus generation for ``B`` environments (one task each).

    ``act(obs, chain_state, new_episode)`` returns behaviour actions and tags; ``learn(transition)``
    updates every learner. ``oracle_actions [B, n]`` (chain space) is the oracle all oracle-driven
    behaviours follow; ``n_actions [B]`` the tasks' action counts.
    """

    def __init__(self, spec: EnvSpec, oracle_actions: np.ndarray, n_states: np.ndarray, seq_len: int,
                 config: MixtureConfig, rng: np.random.Generator, planner: ModelBasedPlanner,
                 planner_state: PlannerState):
        b, na = spec.num_envs, spec.n_actions
        self.spec, self.config, self.rng = spec, config, rng
        self.mask = spec.action_mask
        self.n_actions = self.mask.sum(-1)
        self.oracle_actions = oracle_actions
        self.planner, self.model = planner, planner_state
        n_obs = spec.n_observations
        size = n_states * self.n_actions
        # Per-environment draws, fixed for the sequence.
        self.kind = rng.choice(len(BEHAVIOURS), size=b, p=config.probabilities)
        self.switching = rng.random(b) < config.switching_share
        self.all_unknown = rng.random(b) < config.unknown_sequence_prob
        self.episode_unknown = np.zeros(b, dtype=bool)
        self.drift_logits = rng.normal(size=(b, n_obs, na)) * rng.exponential(2.0, size=(b, 1, 1))
        self.explore_eps_rate = rng.uniform(0, 0.1 / size)
        self.distill_eps_rate = rng.uniform(0, 1.0 / size)
        self.bonus_c = rng.uniform(0.02, 0.2, size=b)
        self.q = np.full((b, n_obs, na), 1.0 / (1.0 - config.gamma))
        self.q_visits = np.ones((b, n_obs, na))
        self.mixed = np.array([_MIXED.get(name, (1.0, 1.0, 0.0)) for name in BEHAVIOURS])  # [K, 3]
        self.seq_len = seq_len
        self.steps = np.zeros(b, dtype=np.int64)
        self.reward_sum = np.zeros(b)
        self.reward_sq = np.zeros(b)

    # ------------------------------------------------------------------ acting
    def _uniform(self) -> np.ndarray:
        return sample_categorical(self.mask.astype(np.float64), self.rng)

    def act(self, obs: np.ndarray, chain: np.ndarray, new_episode: np.ndarray):
        """Actions ``[B]`` and tag ids ``[B]`` at the current observations (``chain``: true states)."""
        b = np.arange(len(obs))
        rng = self.rng
        self._episode_start(new_episode)
        kind = self.kind
        names = np.asarray(BEHAVIOURS)[kind]
        t = self.steps.astype(np.float64)
        oracle = self.oracle_actions[b, chain]
        uniform = self._uniform()
        drift = softmax_sample(self.drift_logits[b, obs], self.mask, rng)
        # Noisy model-based explorer: optimism scaled by the reward spread and visit counts.
        q_mb = self.planner.q_values(self.model, obs)
        n_sa = self.model.n_sa[b, obs]
        r_std = np.sqrt(np.maximum(self.reward_sq / np.maximum(self.steps, 1) - (self.reward_sum / np.maximum(self.steps, 1)) ** 2, 1e-4))
        bonus = (self.bonus_c / (1.0 - self.config.gamma) * r_std)[:, None] / np.sqrt(np.maximum(n_sa, 1.0))
        explore = argmax_random_ties(q_mb + bonus * rng.random(q_mb.shape), self.mask, rng)
        eps_explore = np.maximum(0.0, 1.0 - self.explore_eps_rate * t)
        explore = np.where(rng.random(len(obs)) < eps_explore, uniform, explore)
        qlearn = argmax_random_ties(self.q[b, obs], self.mask, rng)
        qlearn = np.where(rng.random(len(obs)) < eps_explore, uniform, qlearn)

        action = np.empty(len(obs), dtype=np.int64)
        tag = np.empty(len(obs), dtype=np.int64)
        sel = names == "random"
        action[sel], tag[sel] = drift[sel], TAG["random"]
        sel = names == "explore"
        action[sel], tag[sel] = explore[sel], TAG["explore"]
        sel = names == "qlearn"
        action[sel], tag[sel] = qlearn[sel], TAG["qlearn"]
        sel = names == "oracle"
        action[sel], tag[sel] = oracle[sel], TAG["opt"]
        sel = np.char.startswith(names, "mixed")
        if sel.any():
            t_opt, t_rand, r0 = self.mixed[kind].T * np.array([self.seq_len, self.seq_len, 1.0])[:, None]
            p_opt = np.minimum(1.0, t / t_opt)
            p_rand = r0 * np.maximum(0.0, 1.0 - t / t_rand)
            u = rng.random(len(obs))
            who_opt = u < p_opt
            who_rand = ~who_opt & (u < p_opt + (1.0 - p_opt) * p_rand)
            mixed = np.where(who_opt, oracle, np.where(who_rand, uniform, explore))
            mtag = np.where(who_opt, TAG["opt"], np.where(who_rand, TAG["random"], TAG["explore"]))
            action[sel], tag[sel] = mixed[sel], mtag[sel]
        sel = np.char.startswith(names, "distill")
        if sel.any():
            eps = np.maximum(0.0, 1.0 - self.distill_eps_rate * t)
            noisy = rng.random(len(obs)) < eps
            rand = np.where(names == "distill_b", drift, uniform)
            action[sel] = np.where(noisy, rand, oracle)[sel]
            tag[sel] = np.where(noisy, TAG["random"], TAG["opt"])[sel]
        hidden = self.all_unknown | self.episode_unknown
        tag[hidden] = TAG["unknown"]
        return action, tag

    def _episode_start(self, new_episode: np.ndarray) -> None:
        """At an episode start: maybe re-draw the behaviour (switching sequences) and the episode's tag mask."""
        if not new_episode.any():
            return
        rng = self.rng
        first = new_episode & (self.steps == 0)
        later = new_episode & ~first
        redraw = later & self.switching & (rng.random(len(new_episode)) < self.config.switch_prob)
        if redraw.any():
            self.kind[redraw] = rng.choice(len(BEHAVIOURS), size=int(redraw.sum()), p=self.config.probabilities)
        self.episode_unknown[new_episode] = rng.random(int(new_episode.sum())) < self.config.unknown_episode_prob

    # ------------------------------------------------------------------ learning
    def learn(self, t: Transition, envs: np.ndarray) -> None:
        """Every learner of environments ``envs`` learns from their step, whoever acted (the planner's
        model is updated by the caller)."""
        b = np.asarray(envs)
        s, a, s2, r = t.obs, t.actions, t.next_obs, t.rewards
        # Q-learning with the reference's step-size schedule (horizon 4000, alpha 0.5).
        lr = 0.5 * np.sqrt(np.maximum(4001.0 / (4000.0 + self.q_visits[b, s, a]), 1e-3))
        term = t.terminated.astype(bool)
        if term.any():
            self.q[b[term], s2[term]] = 0.0
        v_next = np.where(self.mask[b], self.q[b, s2], -np.inf).max(-1)
        target = r + np.where(term, 0.0, self.config.gamma * v_next)
        self.q[b, s, a] += lr * (target - self.q[b, s, a])
        self.q_visits[b, s, a] += 1
        # The random policy drifts where it was.
        self.drift_logits[b, s] += 0.05 * self.rng.normal(size=(len(s), self.drift_logits.shape[-1]))
        self.steps[b] += 1
        self.reward_sum[b] += r
        self.reward_sq[b] += r * r
