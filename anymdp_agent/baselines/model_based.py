"""The count-based model-based planner: empirical model + incremental value iteration + optimism.

This is the strongest classic learner here and the ``planner`` label of the corpus: its action is a
function of the history alone. Batched over environments; the backup of one ``(environment,
observation, action)``, :func:`q_value`, is compiled with numba and is the one place its formula lives
(the corpus' model-based explorer calls it too, from its own compiled loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from .protocol import EnvSpec, InContextLearner, Transition, argmax_random_ties, best_actions


#: Floating-point reassociation (vectorised reductions) but no assumption that values are finite: untried
#: and masked actions are compared as -inf.
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@numba.njit(cache=True, fastmath=_FAST, inline="always")
def q_value(counts, n_sa, r_sum, optimistic, values, gamma, b, s, a):
    """Q of ``(s, a)`` in environment ``b``: the empirical mean reward plus the discounted empirical
    backup of ``values`` if the pair was tried, else ``optimistic`` (``k * max(r_max, 0) / (1 - gamma)``)."""
    acc = 0.0
    for s2 in range(counts.shape[3]):  # all zero for an untried pair: computed anyway, branch-free
        acc += counts[b, s, a, s2] * values[b, s2]
    c = n_sa[b, s, a]
    q = (r_sum[b, s, a] + gamma * acc) / max(c, 1.0)
    return q if c > 0 else optimistic


@numba.njit(cache=True, fastmath=_FAST, inline="always")
def backed_up(counts, n_sa, r_sum, optimistic, values, gamma, pseudo, pseudo_total, pseudo_reward, use_prior, b, s, a):
    """:func:`q_value`, or with a learned transition prior (``use_prior``) the larger of it and the same backup
    on the posterior-mean model ``(counts + pseudo) / (n + pseudo_total)`` of a tried pair: a pair whose few
    visits happened to land badly keeps the value its prior says it may have, until visits settle it. Each
    pseudo-transition carries the pair's mean reward, plus what ``pseudo_reward`` adds (0 unless ``arrival``)."""
    q = q_value(counts, n_sa, r_sum, optimistic, values, gamma, b, s, a)
    c = n_sa[b, s, a]
    if use_prior and c > 0:
        acc = 0.0
        for s2 in range(counts.shape[3]):
            acc += (counts[b, s, a, s2] + pseudo[b, s, a, s2]) * values[b, s2]
        q = max(q, r_sum[b, s, a] / c + (pseudo_reward[b, s, a] + gamma * acc) / (c + pseudo_total[b, s, a]))
    return q


@numba.njit(cache=True, inline="always")
def optimism(r_max, gamma, k, b):
    return k * max(r_max[b], 0.0) / (1.0 - gamma)


@numba.njit(cache=True)
def _q_at(counts, n_sa, r_sum, r_max, values, gamma, k, pseudo, pseudo_total, pseudo_reward, use_prior, obs, out):
    for b in range(len(obs)):
        opt = optimism(r_max, gamma, k, b)
        for a in range(out.shape[1]):
            out[b, a] = backed_up(counts, n_sa, r_sum, opt, values, gamma, pseudo, pseudo_total, pseudo_reward,
                                  use_prior, b, obs[b], a)


@numba.njit(cache=True)
def _q_all(counts, n_sa, r_sum, r_max, values, gamma, k, pseudo, pseudo_total, pseudo_reward, use_prior, out):
    for b in range(out.shape[0]):
        opt = optimism(r_max, gamma, k, b)
        for s in range(out.shape[1]):
            for a in range(out.shape[2]):
                out[b, s, a] = backed_up(counts, n_sa, r_sum, opt, values, gamma, pseudo, pseudo_total, pseudo_reward,
                                         use_prior, b, s, a)


@numba.njit(cache=True, fastmath=_FAST)
def _sweeps(counts, n_sa, r_sum, r_max, mask, terminal, values, gamma, k, pseudo, pseudo_total, pseudo_reward,
            use_prior, sweeps):
    """``sweeps`` synchronous value-iteration sweeps per environment, in place (terminal observations 0)."""
    n, na = counts.shape[1], counts.shape[2]
    new = np.empty(n)
    for b in range(counts.shape[0]):
        opt = optimism(r_max, gamma, k, b)
        for _ in range(sweeps):
            for s in range(n):
                best = -np.inf
                for a in range(na):
                    q = backed_up(counts, n_sa, r_sum, opt, values, gamma, pseudo, pseudo_total, pseudo_reward,
                                  use_prior, b, s, a)
                    best = max(best, q if mask[b, a] else -np.inf)
                new[s] = 0.0 if terminal[b, s] else best
            values[b, :] = new


@dataclass
class PlannerState:
    """Per-environment empirical model and value estimate (arrays ``[B, ...]``, observation ids)."""

    rng: np.random.Generator
    mask: np.ndarray        # [B, na]
    counts: np.ndarray      # [B, nO, na, nO] transition counts (float32)
    n_sa: np.ndarray        # [B, nO, na]
    reward_sum: np.ndarray  # [B, nO, na]
    terminal: np.ndarray    # [B, nO] observations an episode has ended in (terminated)
    r_max: np.ndarray       # [B] largest reward seen (0 before any)
    r_absmax: np.ndarray    # [B] largest reward magnitude seen (0 before any nonzero reward)
    values: np.ndarray      # [B, nO] warm-started V
    # Only with known transitions / rewards (``mbrl:known=...``): the true P(s' | s, a) [B, nO, na, nO] and mean
    # reward [B, nO, na], and their sums over every visit so far, which the backups read in place of counts and
    # reward_sum (kept up to date by record, so a step costs no more than the empirical model's).
    true_transition: np.ndarray | None = None
    true_reward: np.ndarray | None = None
    known_counts: np.ndarray | None = None
    known_r_sum: np.ndarray | None = None
    # Only with a learned transition prior (``mbrl:prior=...``): its pseudo-counts [B, nO, na, nO] and their sums
    # [B, nO, na] (refreshed as ModelBasedPlanner.PRIOR_REFRESH says), and the statistics its network reads besides
    # the counts.
    pseudo: np.ndarray | None = None
    pseudo_total: np.ndarray | None = None
    pseudo_reward: np.ndarray | None = None  # [B, nO, na] with ``arrival``: what the pseudo-transitions add (float64)
    visits: np.ndarray | None = None        # [B, nO] steps taken from each observation
    arrival_sum: np.ndarray | None = None   # [B, nO] reward sum and count of the steps arriving at each observation
    arrival_n: np.ndarray | None = None
    reward_sq: np.ndarray | None = None     # [B] sum of squared rewards
    prior_steps: int = 0                     # steps recorded since the last refresh of every pair's pseudo-counts
    # Only with ``seen_only``: [B] transitions so far when each history last showed a new id (the agent's
    # ``discovered_at``, read by still_discovering).
    discovered_at: np.ndarray | None = None
    # Only with ``evidence``: each weight's summed log-probability of the transitions so far [B, W], and the weight
    # the pseudo-counts carry (times prior_weight) [B] (the agent's ``prior_evidence``).
    evidence: np.ndarray | None = None
    prior_scale: np.ndarray | None = None
    # Only with a prior reading the chain inputs: each id's place along the graph [B, nO] and the edge count [B] it
    # was computed at (recomputed where an edge was added: history_graph's ``known``).
    place: object = None
    place_edges: object = None
    # Only with ``tail`` (``mbrl:tail=k``): transitions in the current episode, and the longest episode that ended
    # by truncation (0: none yet) [B].
    episode_steps: np.ndarray | None = None
    episode_cap: np.ndarray | None = None


#: What a known-model ablation of the planner may read from the true model (``mbrl:known=...``).
KNOWN_PARTS = ("none", "transitions", "rewards", "both")


def true_model(spec: EnvSpec) -> tuple[np.ndarray, np.ndarray]:
    """The true model in observation ids: ``P(s' | s, a)`` ``[B, nO, na, nO]`` and the mean reward of every
    ``(s, a)`` ``[B, nO, na]`` (zero for ids no state uses and for actions a task lacks)."""
    if spec.tasks is None:
        raise ValueError("a known-model planner needs the true model: this environment has no transition table "
                         "(use mbrl without known=...)")
    b, n, na = spec.num_envs, spec.n_observations, spec.n_actions
    p = np.zeros((b, n, na, n), dtype=np.float32)
    r = np.zeros((b, n, na))
    for i, task in enumerate(spec.tasks.tasks):  # tasks smaller than the batch fill the leading ids and actions
        m, k = task.n_states, task.n_actions
        p[i, :m, :k, :m] = task.in_observation_space(task.in_observation_space(task.transition, 0), 2)
        r[i, :m, :k] = task.in_observation_space((task.transition * task.reward).sum(-1), 0)
    return p, r


class ModelBasedPlanner(InContextLearner):
    """Optimistic model-based RL on the empirical model (R-MAX style), planning incrementally.

    The model is the empirical transition distribution and mean reward of every tried ``(s, a)``;
    an untried pair is worth the optimistic ``optimism * max(r_max, 0) / (1 - gamma)`` (``r_max``: the largest
    reward seen in that environment; ``optimism`` 1 by default), and observations where an episode terminated are worth 0.
    After every step, ``sweeps`` value-iteration sweeps warm-started from the previous values update
    the plan (the model changes by one transition, so a few sweeps keep it near convergence); the
    action is greedy in the current observation, ties spread uniformly.

    ``lookahead = k > 0`` instead plans ``k`` steps ahead from scratch at every step (``k - 1`` sweeps
    from V = 0, then the greedy one-step backup of :meth:`q_values`): ``mbrl:lookahead=1`` is the
    one-step-lookahead planner the quality bar compares with.

    ``known`` (``"transitions"``, ``"rewards"`` or ``"both"``) is an ablation, not a learner: it plans with the
    task's true transition probabilities and/or mean rewards for every *tried* pair in place of the empirical
    ones, and is otherwise the same planner (optimism for untried pairs, observed terminals, ``r_max`` from the
    rewards seen). Its score minus ``mbrl``'s is what estimating that part of the model costs the planner.
    Like the oracle, it reads the true model (``spec.tasks``), so it runs only on suites that have one.

    ``prior`` (``"bundled"`` or the folder of a trained :class:`~.transition_prior.TransitionPrior`) is the planner
    with a *learned* prior over next observations, meta-trained on the package's own task samplers: every tried
    pair is worth the larger of its empirical backup and its backup on the prior's posterior-mean model, with the
    prior's pseudo-counts times ``prior_weight`` (1: the calibrated posterior mean; more: more weight on the prior,
    so a pair whose few visits landed badly keeps more of its prior value). It reads nothing but the history; with
    a zero prior it is exactly ``mbrl``. Two options make it the agent's rule (the ``model_based`` backbone's
    ``prior_seen_only`` and ``prior_refresh_fraction``): ``seen_only = V > 0`` puts no prior mass on ids the history
    has not shown, except while it is still finding new ones (the agent's
    :func:`~anymdp_agent.modeling_anymdp_agent.still_discovering`) in an environment of at most ``V`` ids (the
    agent's ``num_observations``; 0, the default: mass on every id, always); ``refresh_fraction = f > 0``
    recomputes every pair's pseudo-counts after ``max(16, f * steps)`` steps instead of every 16. The bundled
    agent's rule is
    ``mbrl:prior=agent:prior_weight=4:novelty=0.001:tail=10:seen_only=64:refresh_fraction=0.125:evidence=1:off_terminal=1:arrival=1``
    (``prior=agent`` loads the bundled agent's prior; ``prior=PATH`` that of the ``model_based`` agent saved there;
    :func:`agent_rule` writes this spec for any saved ``model_based`` agent from its config).
    ``evidence = 1`` is the agent's ``prior_evidence`` (off by default, on in the bundled agent): each history weighs
    the prior by the sequential likelihood of its own transitions under the network's pseudo-counts times each of
    :data:`~anymdp_agent.modeling_anymdp_agent.EVIDENCE_WEIGHTS`, and plans with ``prior_weight`` times the best at
    the ids it has shown (``prior_weight`` alone at ids not shown yet).
    ``off_terminal = 1`` is the agent's ``prior_off_terminal`` (off by default, on in the bundled agent): no prior mass
    on ids where an episode has ended (a terminal id is worth 0, and what arriving there pays sits in the mean reward of
    the pairs that did).
    ``arrival = 1`` is the agent's ``prior_arrival_reward`` (off by default, on in the bundled agent): a pair's
    pseudo-transitions carry the reward of arriving at their ids, not only the pair's mean reward
    (:func:`~anymdp_agent.modeling_anymdp_agent.pseudo_reward`).

    ``tail = k > 0`` plans, in the last ``k`` steps of an episode, for the steps left (the agent's
    ``planner_tail_steps``; :meth:`tail_q`): the episode's length is the longest one that ended by truncation.
    """

    name = "mbrl"

    def __init__(self, gamma: float = 0.99, sweeps: int = 3, lookahead: int = 0, optimism: float = 1.0,
                 known: str = "none", prior: str = "", prior_weight: float = 1.0, novelty: float = 0.0,
                 tail: int = 0, seen_only: int = 0, refresh_fraction: float = 0.0, evidence: int = 0,
                 off_terminal: int = 0, arrival: int = 0):
        if not 0 <= gamma < 1 or sweeps < 1 or lookahead < 0 or not optimism >= 0 or tail < 0 or seen_only < 0 \
                or not (prior_weight >= 0 and math.isfinite(prior_weight)) or not (novelty >= 0 and math.isfinite(novelty)) \
                or not (refresh_fraction >= 0 and math.isfinite(refresh_fraction)) or evidence not in (0, 1) \
                or off_terminal not in (0, 1) or arrival not in (0, 1):
            raise ValueError(f"ModelBasedPlanner needs 0 <= gamma < 1, sweeps >= 1, lookahead >= 0, optimism >= 0, "
                             f"finite prior_weight >= 0, novelty >= 0, tail >= 0, seen_only >= 0, finite "
                             f"refresh_fraction >= 0, evidence 0 or 1, off_terminal 0 or 1 and arrival 0 or 1, got "
                             f"gamma={gamma}, "
                             f"sweeps={sweeps}, lookahead={lookahead}, optimism={optimism}, "
                             f"prior_weight={prior_weight}, novelty={novelty}, tail={tail}, seen_only={seen_only}, "
                             f"refresh_fraction={refresh_fraction}, evidence={evidence}, off_terminal={off_terminal}, "
                             f"arrival={arrival}")
        if (seen_only or refresh_fraction or evidence or off_terminal or arrival) and not prior:
            raise ValueError("ModelBasedPlanner: seen_only, refresh_fraction, evidence, off_terminal and arrival shape "
                             "a learned prior's pseudo-counts; give the prior too (prior=agent, prior=bundled or "
                             "prior=PATH)")
        if evidence and not prior_weight:
            raise ValueError("ModelBasedPlanner: evidence weighs the prior by its evidence, but prior_weight is 0 (no "
                             "prior): set prior_weight > 0 or leave evidence out")
        if known not in KNOWN_PARTS:
            raise ValueError(f"ModelBasedPlanner: known must be one of {', '.join(KNOWN_PARTS)}, got {known!r}")
        self.gamma, self.sweeps, self.lookahead, self.optimism = gamma, sweeps, lookahead, float(optimism)
        self.novelty = float(novelty)
        self.tail = int(tail)
        self.known = known
        self.prior, self.prior_weight = prior, float(prior_weight)
        self.seen_only, self.refresh_fraction = int(seen_only), float(refresh_fraction)
        self.evidence = int(evidence)
        self.off_terminal = int(off_terminal)
        self.arrival = int(arrival)
        self._prior = None
        if prior:
            from .transition_prior import TransitionPrior

            self._prior = TransitionPrior.load(prior)

    def check_spec(self, spec: EnvSpec) -> None:
        if self.known != "none" and spec.tasks is None:
            true_model(spec)  # raises the clear error

    def initial_state(self, spec: EnvSpec, seed: int) -> PlannerState:
        b, n, na = spec.num_envs, spec.n_observations, spec.n_actions
        state = PlannerState(rng=np.random.default_rng(seed), mask=spec.action_mask.copy(),
                             counts=np.zeros((b, n, na, n), dtype=np.float32), n_sa=np.zeros((b, n, na)),
                             reward_sum=np.zeros((b, n, na)), terminal=np.zeros((b, n), dtype=bool),
                             r_max=np.zeros(b), r_absmax=np.zeros(b), values=np.zeros((b, n)))
        if self._prior is not None or self.tracks_prior_statistics:
            state.pseudo, state.pseudo_total = np.zeros_like(state.counts), np.zeros_like(state.n_sa)
            state.pseudo_reward = np.zeros_like(state.n_sa)
            state.visits, state.arrival_sum, state.arrival_n = (np.zeros((b, n)) for _ in range(3))
            state.reward_sq = np.zeros(b)
        if self.seen_only:
            state.discovered_at = np.zeros(b)
        if self.evidence:
            from ..modeling_anymdp_agent import EVIDENCE_WEIGHTS

            state.evidence, state.prior_scale = np.zeros((b, len(EVIDENCE_WEIGHTS))), np.ones(b)
        if self.tail:
            state.episode_steps, state.episode_cap = np.zeros(b), np.zeros(b)
        if self.known != "none":
            p, r = true_model(spec)
            if self.known in ("transitions", "both"):
                state.true_transition, state.known_counts = p, np.zeros_like(state.counts)
            if self.known in ("rewards", "both"):
                state.true_reward, state.known_r_sum = r, np.zeros_like(state.reward_sum)
        return state

    @staticmethod
    def model(state: PlannerState) -> tuple[np.ndarray, np.ndarray]:
        """The ``(counts, reward_sum)`` the backups read: the empirical ones, or with a known part the true
        probabilities and mean rewards summed over each pair's visits (so the same backup divides them back)."""
        return (state.counts if state.known_counts is None else state.known_counts,
                state.reward_sum if state.known_r_sum is None else state.known_r_sum)

    def q_values(self, state: PlannerState, obs: np.ndarray | None = None) -> np.ndarray:
        """Q of the current plan: ``[B, nO, na]``, or ``[B, na]`` at ``obs``."""
        b, n, na, _ = state.counts.shape
        counts, r_sum = self.model(state)
        args = (counts, state.n_sa, r_sum, self.level(state), state.values, float(self.gamma), self.optimism,
                *self._prior_args(state))
        if obs is None:
            out = np.empty((b, n, na))
            _q_all(*args, out)
        else:
            out = np.empty((b, na))
            _q_at(*args, np.asarray(obs, dtype=np.int64), out)
        return out

    def plan(self, state: PlannerState, sweeps: int) -> None:
        """``sweeps`` value-iteration sweeps over the empirical model, in place."""
        if self.arrival:  # the arrivals changed with the last transition (the agent's step)
            import torch

            from ..modeling_anymdp_agent import pseudo_reward

            state.pseudo_reward = pseudo_reward(*(torch.from_numpy(x) for x in (
                state.counts, state.n_sa, state.pseudo, state.arrival_sum, state.arrival_n))).numpy()
        if sweeps > 0:
            counts, r_sum = self.model(state)
            _sweeps(counts, state.n_sa, r_sum, self.level(state), state.mask, state.terminal,
                    state.values, float(self.gamma), self.optimism, *self._prior_args(state), int(sweeps))

    def level(self, state: PlannerState) -> np.ndarray:
        """The optimism level ``[B]`` (an untried pair is worth ``optimism * level / (1 - gamma)``): ``max(r_max, 0)``,
        with ``novelty`` never 0 (the agent's :func:`~anymdp_agent.modeling_anymdp_agent.optimism_level`)."""
        if not self.novelty:
            return state.r_max
        from ..modeling_anymdp_agent import optimism_level

        return optimism_level(state.r_max, state.r_absmax, self.novelty)

    #: Keep the prior's statistics even without a prior (the prior's training collects them from plain ``mbrl``).
    tracks_prior_statistics = False
    _NO_PRIOR = (np.zeros((1, 1, 1, 1), dtype=np.float32), np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), False)

    def _prior_args(self, state: PlannerState) -> tuple:
        return self._NO_PRIOR if self._prior is None else (state.pseudo, state.pseudo_total, state.pseudo_reward, True)

    def act(self, state: PlannerState, obs: np.ndarray):
        q = self.q_values(state, obs)
        if self.tail:
            q = self.tail_q(state, obs, q)
        return argmax_random_ties(q, state.mask, state.rng), state

    def tail_q(self, state: PlannerState, obs: np.ndarray, q: np.ndarray) -> np.ndarray:
        """``q [B, na]`` with the environments in the last ``tail`` steps of an episode of known length (``h`` steps
        left) restricted to the actions best for those steps (``h - 1`` backups from values of 0, then one at
        ``obs``): among actions those value alike, the stationary plan chooses (the agent's ``tail_q``)."""
        left = state.episode_cap - state.episode_steps
        rows = np.nonzero((state.episode_cap > 0) & (left >= 1) & (left <= self.tail))[0]
        if not len(rows):
            return q
        counts, r_sum = self.model(state)
        pseudo, pseudo_total, pseudo_reward, use_prior = self._prior_args(state)
        if use_prior:
            pseudo, pseudo_total, pseudo_reward = pseudo[rows], pseudo_total[rows], pseudo_reward[rows]
        args = (counts[rows], state.n_sa[rows], r_sum[rows], self.level(state)[rows])
        rest = (float(self.gamma), self.optimism, pseudo, pseudo_total, pseudo_reward, use_prior)
        mask, terminal, h = state.mask[rows], state.terminal[rows], left[rows]
        v = np.zeros((len(rows), state.values.shape[1]))
        for j in range(1, int(h.max())):  # v: the best return of j steps, for the environments with more than j left
            swept = v.copy()
            _sweeps(*args, mask, terminal, swept, *rest, 1)
            v = np.where((j < h)[:, None], swept, v)
        q_tail = np.empty((len(rows), q.shape[1]))
        _q_at(*args, v, *rest, np.asarray(obs, dtype=np.int64)[rows], q_tail)
        q = q.copy()  # among the actions best for the steps left, the stationary plan's preference
        q[rows] = np.where(best_actions(q_tail, mask), q[rows], -np.inf)
        return q

    def observe(self, state: PlannerState, t: Transition) -> PlannerState:
        self.record(state, t)
        if self.tail:
            state.episode_steps += 1.0
            cut = np.asarray(t.truncated, dtype=bool)
            state.episode_cap = np.where(cut, np.maximum(state.episode_cap, state.episode_steps), state.episode_cap)
            state.episode_steps[cut | np.asarray(t.terminated, dtype=bool)] = 0.0
        if self.lookahead:
            state.values = np.zeros_like(state.values)
            self.plan(state, self.lookahead - 1)
        else:
            self.plan(state, self.sweeps)
        return state

    def record(self, state: PlannerState, t: Transition, envs: np.ndarray | None = None) -> None:
        """Add one step to the empirical model (no planning): of every environment, or of ``envs`` only
        (then the transition's arrays hold those environments' steps)."""
        pair = (np.asarray(np.arange(len(t.obs)) if envs is None else envs, dtype=np.int64),
                np.asarray(t.obs, dtype=np.int64), np.asarray(t.actions, dtype=np.int64))
        next_obs, shown_before = np.asarray(t.next_obs, dtype=np.int64), None
        if state.evidence is not None:
            shown_before = self._shown(state, pair[0])
            self._add_evidence(state, pair, next_obs, shown_before)
        _record(state.counts, state.n_sa, state.reward_sum, state.r_max, state.r_absmax, state.terminal, *pair,
                next_obs, np.asarray(t.rewards, dtype=np.float64), np.asarray(t.terminated, dtype=bool))
        if state.known_counts is not None:  # one entry per environment, so no index repeats
            state.known_counts[pair] += state.true_transition[pair]
        if state.known_r_sum is not None:
            state.known_r_sum[pair] += state.true_reward[pair]
        if state.pseudo is not None:
            self._update_prior(state, pair, next_obs, np.asarray(t.rewards, dtype=np.float64), shown_before)

    @staticmethod
    def _shown(state: PlannerState, envs: np.ndarray | slice) -> np.ndarray:
        """``[R, nO]`` (bool): the ids the histories ``envs`` have shown, left or arrived at (the agent's ``shown``)."""
        return (state.visits[envs] + state.arrival_n[envs]) > 0

    def _evidence_units(self, state: PlannerState, envs: np.ndarray, shown: np.ndarray | None = None) -> np.ndarray:
        """``[R, nO]``: what the network's pseudo-counts are multiplied by under ``evidence``: ``prior_weight`` times
        the history's weight at ids it has shown, ``prior_weight`` alone elsewhere (the agent's ``evidence_units``)."""
        shown = self._shown(state, envs) if shown is None else shown
        return self.prior_weight * np.where(shown, state.prior_scale[envs][:, None], 1.0)

    def _add_evidence(self, state: PlannerState, pair: tuple, next_obs: np.ndarray, shown: np.ndarray) -> None:
        """``evidence``: each weight's log-probability of the step of ``pair``'s environments, from pairs already
        tried, before it is counted (``shown``: the ids they have shown so far; the agent's ``add_evidence``)."""
        import torch

        from ..modeling_anymdp_agent import evidence_terms

        n = state.n_sa[pair]
        tried = n > 0
        if tried.any():
            e, s, a, s2 = pair[0][tried], pair[1][tried], pair[2][tried], next_obs[tried]
            net = state.pseudo[e, s, a] / self._evidence_units(state, e, shown[tried])  # the network's own
            terms = evidence_terms(*(torch.from_numpy(np.asarray(x, dtype=np.float64)) for x in (
                net[np.arange(len(e)), s2], net.sum(-1), state.counts[e, s, a, s2], n[tried])))
            state.evidence[e] += terms.numpy()

    def _reweigh(self, state: PlannerState, envs: np.ndarray, shown_before: np.ndarray) -> None:
        """``evidence``: the pseudo-counts of ``envs`` rescaled where the best weight changed or an id was shown for
        the first time (the agent's ``reweigh``)."""
        import torch

        from ..modeling_anymdp_agent import evidence_weight

        old = self._evidence_units(state, envs, shown_before)
        state.prior_scale[envs] = evidence_weight(torch.from_numpy(state.evidence[envs])).numpy()
        ratio = self._evidence_units(state, envs) / old
        moved = (ratio != 1.0).any(-1)
        if moved.any():
            e = envs[moved]
            state.pseudo[e] *= ratio[moved][:, None, None, :].astype(np.float32)
            state.pseudo_total[e] = state.pseudo[e].sum(-1, dtype=np.float64)

    def _update_prior(self, state: PlannerState, pair: tuple, next_obs: np.ndarray, rewards: np.ndarray,
                      shown_before: np.ndarray | None = None) -> None:
        """The prior's statistics after one step of ``pair``'s environments (with ``evidence``, the weights after
        it: ``shown_before``, the ids shown before it), then :meth:`refresh_prior`."""
        envs, obs = pair[0], pair[1]
        if state.discovered_at is not None:  # either end shown for the first time
            new = envs[(state.visits[envs, obs] + state.arrival_n[envs, obs] == 0)
                       | (state.visits[envs, next_obs] + state.arrival_n[envs, next_obs] == 0)]
        state.visits[envs, obs] += 1.0
        state.arrival_sum[envs, next_obs] += rewards
        state.arrival_n[envs, next_obs] += 1.0
        state.reward_sq[envs] += rewards ** 2
        if state.discovered_at is not None:
            state.discovered_at[new] = state.visits[new].sum(-1)
        if shown_before is not None:
            self._reweigh(state, envs, shown_before)
        state.prior_steps += 1
        due = self.PRIOR_REFRESH
        if self.refresh_fraction:
            due = max(due, self.refresh_fraction * state.visits.sum(-1).max())
        if state.prior_steps >= due:
            state.prior_steps = 0
            self.refresh_prior(state)
        else:
            self.refresh_prior(state, envs, obs)

    #: Every pair's pseudo-counts are recomputed every this many steps (or ``refresh_fraction`` of the steps so far,
    #: if more); in between, after each step, those of the observation just left (whose counts changed). The network
    #: also reads what other steps revealed about the ids around a pair, which changes slowly; recomputing every
    #: pair every step costs about 10x more.
    PRIOR_REFRESH = 16

    @staticmethod
    def prior_inputs(state: PlannerState, envs: np.ndarray | None = None, states: np.ndarray | None = None,
                     graph: tuple | None = None, chain: bool = False) -> np.ndarray:
        """The prior network's features of the history so far: ``[B, nO, na, nO, NUM_FEATURES]``, or of the rows
        ``(envs[i], states[i])`` only (``graph``: the histories' :func:`~.transition_prior.prior_graph`, if already
        computed; ``chain``: with the chain inputs)."""
        import torch

        from ..modeling_anymdp_agent import relative_arrival
        from .transition_prior import prior_features

        arrival = relative_arrival(*(torch.from_numpy(x) for x in (state.arrival_sum, state.arrival_n, state.reward_sq,
                                                                    state.visits.sum(-1)))).numpy()
        return prior_features(state.counts, state.n_sa, state.terminal, state.visits, arrival, envs, states, graph,
                              chain)

    def refresh_prior(self, state: PlannerState, envs: np.ndarray | None = None, states: np.ndarray | None = None) -> None:
        """Recompute the pseudo-counts of every pair, or of the pairs at the observations ``states`` of ``envs``;
        a part of the rows at a time (:func:`~anymdp_agent.modeling_anymdp_agent.prior_row_parts`), so memory stays
        bounded at hundreds of ids. With ``seen_only``, no mass on ids the history has not shown unless it is still
        finding new ones."""
        from ..modeling_anymdp_agent import prior_row_parts
        from .transition_prior import prior_graph

        b, n = state.n_sa.shape[:2]
        if envs is None:
            envs, states = np.repeat(np.arange(b), n), np.tile(np.arange(n), b)
        chain = self._prior.chain
        known = None if state.place is None else (state.place, state.place_edges)
        graph = prior_graph(state.counts, state.n_sa, state.visits, envs, states, chain, known)
        if chain:
            state.place, state.place_edges = graph[4]
        open_ids = None if not self.seen_only else self.open_ids(state)
        for part in prior_row_parts(len(envs), n):
            rows = (envs[part], states[part])
            g = self._prior.pseudo_counts(self.prior_inputs(state, *rows, graph, chain)) * np.float32(self.prior_weight)
            if state.prior_scale is not None:
                g *= (self._evidence_units(state, rows[0]) / self.prior_weight)[:, None, :].astype(np.float32)
            if open_ids is not None:
                g *= open_ids[rows[0]][:, None, :]
            if self.off_terminal:
                g *= ~state.terminal[rows[0]][:, None, :]
            state.pseudo[rows] = g
            state.pseudo_total[rows] = g.sum(-1, dtype=np.float64)

    def open_ids(self, state: PlannerState) -> np.ndarray:
        """``[B, nO]`` (bool), with ``seen_only``: the ids each history's prior may put mass on: those it has
        shown, and every id while it is still finding new ones in an environment of at most ``seen_only`` ids
        (:func:`~anymdp_agent.modeling_anymdp_agent.still_discovering`, the agent's rule)."""
        import torch

        from ..modeling_anymdp_agent import still_discovering

        b, n = state.visits.shape
        sized = torch.full((b,), n <= self.seen_only)
        discovering = still_discovering(torch.from_numpy(state.visits.sum(-1)), torch.from_numpy(state.discovered_at),
                                        sized).numpy()
        return self._shown(state, slice(None)) | discovering[:, None]


def agent_rule(path: str = "agent") -> str:
    """The ``mbrl`` spec that is the saved ``model_based`` agent at ``path``'s own rule (``"agent"``: the bundled
    default): its prior, and its config's planner settings as :class:`ModelBasedPlanner` options, those equal to the
    planner's defaults left out. A clear error for a config the harness planner cannot express."""
    import inspect

    from .transition_prior import saved_config

    folder, c = saved_config(path)
    if c.get("model_type") != "anymdp_agent" or c.get("backbone") != "model_based":
        raise ValueError(f"{folder} is not a saved model_based agent (model_type {c.get('model_type')!r}, backbone "
                         f"{c.get('backbone')!r}): only its rule is the harness planner's")
    if c.get("prior_refresh", 16) != ModelBasedPlanner.PRIOR_REFRESH:
        raise ValueError(f"{folder}: prior_refresh={c['prior_refresh']}; the harness planner refreshes every pair every "
                         f"{ModelBasedPlanner.PRIOR_REFRESH} steps (refresh_fraction can lengthen it, not shorten it)")
    options = {"gamma": c.get("planning_gamma", 0.99), "sweeps": c.get("planner_sweeps", 3),
               "optimism": c.get("planner_optimism", 1.0), "prior_weight": c.get("prior_weight", 1.0),
               "novelty": c.get("planner_novelty", 0.0), "tail": c.get("planner_tail_steps", 0),
               "seen_only": c.get("num_observations", 0) if c.get("prior_seen_only") else 0,
               "refresh_fraction": c.get("prior_refresh_fraction", 0.0), "evidence": int(c.get("prior_evidence", False)),
               "off_terminal": int(c.get("prior_off_terminal", False)),
               "arrival": int(c.get("prior_arrival_reward", False))}
    defaults = inspect.signature(ModelBasedPlanner).parameters
    return f"mbrl:prior={path}" + "".join(f":{k}={str(v).removesuffix('.0')}" for k, v in options.items()
                                         if v != defaults[k].default)


@numba.njit(cache=True)
def _record(counts, n_sa, r_sum, r_max, r_absmax, terminal, envs, s, a, s2, r, term):
    for j in range(len(envs)):
        b = envs[j]
        counts[b, s[j], a[j], s2[j]] += 1.0
        n_sa[b, s[j], a[j]] += 1.0
        r_sum[b, s[j], a[j]] += r[j]
        r_max[b] = max(r_max[b], r[j])
        r_absmax[b] = max(r_absmax[b], abs(r[j]))
        if term[j]:
            terminal[b, s2[j]] = True
