"""Behaviour policies of the corpus (``docs/corpus.md``), batched over many tasks at once.

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

Speed: the per-environment work of a step (the drawn behaviour's action, tags, every learner's
update) runs in two numba-compiled loops over the batch, :func:`_act` and :func:`_learn`; each
environment computes only the behaviour it runs (a Q-learner's greedy action is not computed for an
environment acting randomly). The explorer's model values come from the planner's own compiled
backup, :func:`anymdp_agent.baselines.model_based.q_value`.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field

import numba
import numpy as np

from ..baselines.model_based import ModelBasedPlanner, PlannerState, optimism, q_value
from ..baselines.protocol import TIE_TOLERANCE, EnvSpec, Transition
from ..configuration_anymdp_agent import TAGS

BEHAVIOURS = ("random", "explore", "qlearn", "mixed_a", "mixed_b", "mixed_c", "mixed_d", "distill_a", "distill_b",
              "oracle")
DEFAULT_WEIGHTS = {name: 0.1 for name in BEHAVIOURS}
TAG = {name: i for i, name in enumerate(TAGS)}
# Oracle hand-off schedules of the mixed explorers: (steps until the oracle always acts, steps until
# random actions stop, initial random share), as fractions of the sequence length.
_MIXED = {"mixed_a": (0.25, 0.25, 0.5), "mixed_b": (0.25, 1.0, 0.5), "mixed_c": (1.0, 0.25, 0.3), "mixed_d": (1.0, 1.0, 0.3)}
# Behaviour and tag ids inside the compiled loops.
_RANDOM, _EXPLORE, _QLEARN, _MIXED_A, _MIXED_D, _DISTILL_A, _DISTILL_B, _ORACLE = (
    BEHAVIOURS.index(k) for k in ("random", "explore", "qlearn", "mixed_a", "mixed_d", "distill_a", "distill_b", "oracle"))
_T_OPT, _T_EXPLORE, _T_QLEARN, _T_RANDOM, _T_UNKNOWN = (TAG[k] for k in TAGS)


@dataclass
class MixtureConfig:
    """How behaviours are drawn and tags masked (defaults as in ``docs/corpus.md``)."""

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
        for name, value in self.weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"the weight of behaviour {name!r} must be a finite number >= 0, got {value!r}")
        w = np.array([self.weights.get(name, 0.0) for name in BEHAVIOURS], dtype=np.float64)
        if w.sum() <= 0:
            raise ValueError("behaviour weights must be >= 0 and not all zero")
        for name in ("switching_share", "switch_prob", "unknown_sequence_prob", "unknown_episode_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must lie in [0, 1), got {self.gamma!r}")

    @property
    def probabilities(self) -> np.ndarray:
        w = np.array([self.weights.get(name, 0.0) for name in BEHAVIOURS], dtype=np.float64)
        return w / w.sum()


class BehaviourMixture:
    """The acting side of corpus generation for ``B`` environments (one task each).

    ``act(obs, chain_state, new_episode, closing)`` returns behaviour actions and tags;
    ``learn(transition, envs)`` updates every learner. ``oracle_actions [B, n]`` (chain space) is the
    oracle all oracle-driven behaviours follow. ``kinds_drawn [K]`` counts the rows each behaviour acted.
    """

    def __init__(self, spec: EnvSpec, oracle_actions: np.ndarray, n_states: np.ndarray, seq_len: int,
                 config: MixtureConfig, rng: np.random.Generator, planner: ModelBasedPlanner,
                 planner_state: PlannerState):
        b, na = spec.num_envs, spec.n_actions
        self.config, self.rng = config, rng
        self.mask = np.ascontiguousarray(spec.action_mask, dtype=bool)
        self.oracle_actions = np.ascontiguousarray(oracle_actions, dtype=np.int64)
        self.planner, self.model = planner, planner_state
        n_obs = spec.n_observations
        size = n_states * self.mask.sum(-1)
        # Per-environment draws, fixed for the sequence.
        self.kind = rng.choice(len(BEHAVIOURS), size=b, p=config.probabilities)
        self.cum_probs = np.cumsum(config.probabilities)
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
        self.mixed[:, :2] *= seq_len
        self.steps = np.zeros(b, dtype=np.int64)
        self.reward_sum = np.zeros(b)
        self.reward_sq = np.zeros(b)
        self.last_tag = np.zeros(b, dtype=np.int64)
        self.kinds_drawn = np.zeros(len(BEHAVIOURS), dtype=np.int64)

    def act(self, obs: np.ndarray, chain: np.ndarray, new_episode: np.ndarray, closing: np.ndarray):
        """Actions ``[B]`` and tag ids ``[B]`` at the current observations (``chain``: true states).

        Rows that close an episode (``closing``) take no action (0 is returned) and repeat the tag of
        the step they close; ``new_episode`` marks the first row of an episode (behaviour switching and
        the episode's tag mask are drawn there)."""
        c, m = self.config, self.model
        action = np.empty(len(obs), dtype=np.int64)
        tag = np.empty(len(obs), dtype=np.int64)
        _act(np.asarray(obs, dtype=np.int64), np.asarray(chain, dtype=np.int64), new_episode, closing,
             self.kind, self.switching, self.all_unknown, self.episode_unknown, self.last_tag, self.steps,
             self.cum_probs, float(c.switch_prob), float(c.unknown_episode_prob), self.mask, self.oracle_actions,
             self.drift_logits, self.q, self.explore_eps_rate, self.distill_eps_rate, self.bonus_c,
             self.reward_sum, self.reward_sq, self.mixed, float(c.gamma),
             m.counts, m.n_sa, m.reward_sum, m.r_max, m.values, float(self.planner.gamma),
             self.kinds_drawn, self.rng, action, tag)
        return action, tag

    def learn(self, t: Transition, envs: np.ndarray) -> None:
        """Every learner of environments ``envs`` learns from their step, whoever acted (the planner's
        model is updated by the caller)."""
        drift = self.rng.standard_normal((len(envs), self.mask.shape[1]))
        _learn(np.asarray(envs, dtype=np.int64), np.asarray(t.obs, dtype=np.int64),
               np.asarray(t.actions, dtype=np.int64), np.asarray(t.next_obs, dtype=np.int64),
               np.asarray(t.rewards, dtype=np.float64), np.asarray(t.terminated, dtype=bool),
               self.q, self.q_visits, self.mask, self.drift_logits, drift, self.steps, self.reward_sum, self.reward_sq,
               float(self.config.gamma))


# ---------------------------------------------------------------------- compiled per-environment work


@numba.njit(cache=True)
def _pick(allowed, count, rng):
    """A uniform draw among the ``count`` entries of ``allowed [na]`` that are true."""
    k = min(int(rng.random() * count), count - 1)
    for a in range(len(allowed)):
        if allowed[a]:
            if k == 0:
                return a
            k -= 1
    return len(allowed) - 1


@numba.njit(cache=True)
def _uniform_action(mask, rng):
    return _pick(mask, mask.sum(), rng)


@numba.njit(cache=True)
def _allowed_max(values, mask):
    best = -np.inf
    for a in range(len(values)):
        if mask[a] and values[a] > best:
            best = values[a]
    return best


@numba.njit(cache=True)
def _argmax_random_ties(values, mask, rng):
    """Argmax over allowed actions, ties (:data:`~anymdp_agent.baselines.protocol.TIE_TOLERANCE`, relative) broken
    uniformly: :func:`~anymdp_agent.baselines.protocol.argmax_random_ties` for one row inside a compiled loop."""
    best = _allowed_max(values, mask)
    near = best - TIE_TOLERANCE * (1.0 + abs(best))
    tied = np.zeros(len(values), dtype=np.bool_)
    for a in range(len(values)):
        tied[a] = mask[a] and values[a] >= near
    return _pick(tied, tied.sum(), rng)


@numba.njit(cache=True)
def _softmax_action(logits, mask, rng):
    top = _allowed_max(logits, mask)
    total = 0.0
    for a in range(len(logits)):
        if mask[a]:
            total += np.exp(logits[a] - top)
    u = rng.random() * total
    last = 0
    for a in range(len(logits)):
        if mask[a]:
            u -= np.exp(logits[a] - top)
            last = a
            if u < 0.0:
                return a
    return last


@numba.njit(cache=True)
def _act(obs, chain, new_episode, closing, kind, switching, all_unknown, episode_unknown, last_tag, steps,
         cum_probs, switch_prob, unknown_episode_prob, mask, oracle_actions, drift_logits, q, explore_eps_rate,
         distill_eps_rate, bonus_c, reward_sum, reward_sq, mixed, gamma, counts, n_sa, r_sum, r_max, values,
         planner_gamma, kinds_drawn, rng, action, tag):
    na = mask.shape[1]
    q_mb = np.empty(na)
    for i in range(len(obs)):
        if closing[i]:
            action[i], tag[i] = 0, last_tag[i]
            continue
        if new_episode[i]:
            if steps[i] > 0 and switching[i] and rng.random() < switch_prob:
                kind[i] = min(np.searchsorted(cum_probs, rng.random() * cum_probs[-1], side="right"), len(cum_probs) - 1)
            episode_unknown[i] = rng.random() < unknown_episode_prob
        k, s, t = kind[i], obs[i], float(steps[i])
        kinds_drawn[k] += 1
        oracle = oracle_actions[i, chain[i]]
        if k == _ORACLE:
            a, g = oracle, _T_OPT
        elif k == _RANDOM:
            a, g = _softmax_action(drift_logits[i, s], mask[i], rng), _T_RANDOM
        elif k == _QLEARN:
            if rng.random() < 1.0 - explore_eps_rate[i] * t:
                a = _uniform_action(mask[i], rng)
            else:
                a = _argmax_random_ties(q[i, s], mask[i], rng)
            g = _T_QLEARN
        elif k >= _DISTILL_A:  # distill_a / distill_b: epsilon-greedy around the oracle
            if rng.random() < 1.0 - distill_eps_rate[i] * t:
                a = _uniform_action(mask[i], rng) if k == _DISTILL_A else _softmax_action(drift_logits[i, s], mask[i], rng)
                g = _T_RANDOM
            else:
                a, g = oracle, _T_OPT
        else:  # the explorer, alone or (mixed_*) handing steps to the oracle and to random actions
            g = _T_EXPLORE
            a = -1
            if k >= _MIXED_A:
                p_opt = min(1.0, t / mixed[k, 0])
                p_rand = mixed[k, 2] * max(0.0, 1.0 - t / mixed[k, 1])
                u = rng.random()
                if u < p_opt:
                    a, g = oracle, _T_OPT
                elif u < p_opt + (1.0 - p_opt) * p_rand:
                    a, g = _uniform_action(mask[i], rng), _T_RANDOM
            if a < 0:
                if rng.random() < 1.0 - explore_eps_rate[i] * t:
                    a = _uniform_action(mask[i], rng)
                else:
                    # Randomised optimism on the empirical model: argmax Q + b U(0, 1),
                    # b = c / (1 - gamma) std(R) / sqrt(n_sa).
                    opt = optimism(r_max, planner_gamma, 1.0, i)
                    n = max(t, 1.0)
                    r_std = np.sqrt(max(reward_sq[i] / n - (reward_sum[i] / n) ** 2, 1e-4))
                    scale = bonus_c[i] / (1.0 - gamma) * r_std
                    for b in range(na):
                        q_mb[b] = (q_value(counts, n_sa, r_sum, opt, values, planner_gamma, i, s, b)
                                   + scale / np.sqrt(max(n_sa[i, s, b], 1.0)) * rng.random())
                    a = _argmax_random_ties(q_mb, mask[i], rng)
        if all_unknown[i] or episode_unknown[i]:
            g = _T_UNKNOWN
        action[i], tag[i], last_tag[i] = a, g, g


@numba.njit(cache=True)
def _learn(envs, s, a, s2, r, term, q, q_visits, mask, drift_logits, drift, steps, reward_sum, reward_sq, gamma):
    na = mask.shape[1]
    for j in range(len(envs)):
        i = envs[j]
        # Q-learning with the reference's step-size schedule (horizon 4000, alpha 0.5).
        lr = 0.5 * np.sqrt(max(4001.0 / (4000.0 + q_visits[i, s[j], a[j]]), 1e-3))
        target = r[j]
        if term[j]:
            q[i, s2[j], :] = 0.0
        else:
            v_next = -np.inf
            for b in range(na):
                if mask[i, b] and q[i, s2[j], b] > v_next:
                    v_next = q[i, s2[j], b]
            target += gamma * v_next
        q[i, s[j], a[j]] += lr * (target - q[i, s[j], a[j]])
        q_visits[i, s[j], a[j]] += 1.0
        # The random policy drifts where it was.
        for b in range(na):
            drift_logits[i, s[j], b] += 0.05 * drift[j, b]
        steps[i] += 1
        reward_sum[i] += r[j]
        reward_sq[i] += r[j] * r[j]
