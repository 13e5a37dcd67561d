"""The count-based model-based planner: empirical model + incremental value iteration + optimism.

This is the strongest classic learner here and the ``planner`` label of the corpus: its action is a
function of the history alone. Batched over environments in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .protocol import EnvSpec, InContextLearner, Transition, argmax_random_ties


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
    values: np.ndarray      # [B, nO] warm-started V


class ModelBasedPlanner(InContextLearner):
    """Optimistic model-based RL on the empirical model (R-MAX style), planning incrementally.

    The model is the empirical transition distribution and mean reward of every tried ``(s, a)``;
    an untried pair is worth the optimistic ``max(r_max, 0) / (1 - gamma)`` (``r_max``: the largest
    reward seen in that environment), and observations where an episode terminated are worth 0.
    After every step, ``sweeps`` value-iteration sweeps warm-started from the previous values update
    the plan (the model changes by one transition, so a few sweeps keep it near convergence); the
    action is greedy in the current observation, ties spread uniformly.

    ``lookahead = k > 0`` instead plans ``k`` steps ahead from scratch at every step (``k - 1`` sweeps
    from V = 0, then the greedy one-step backup of :meth:`q_values`): ``mbrl:lookahead=1`` is the
    one-step-lookahead planner the quality bar compares with.
    """

    name = "mbrl"

    def __init__(self, gamma: float = 0.99, sweeps: int = 3, lookahead: int = 0):
        if not 0 <= gamma < 1 or sweeps < 1 or lookahead < 0:
            raise ValueError(f"ModelBasedPlanner needs 0 <= gamma < 1, sweeps >= 1 and lookahead >= 0, got gamma={gamma}, "
                             f"sweeps={sweeps}, lookahead={lookahead}")
        self.gamma, self.sweeps, self.lookahead = gamma, sweeps, lookahead

    def initial_state(self, spec: EnvSpec, seed: int) -> PlannerState:
        b, n, na = spec.num_envs, spec.n_observations, spec.n_actions
        return PlannerState(rng=np.random.default_rng(seed), mask=spec.action_mask.copy(),
                            counts=np.zeros((b, n, na, n), dtype=np.float32), n_sa=np.zeros((b, n, na)),
                            reward_sum=np.zeros((b, n, na)), terminal=np.zeros((b, n), dtype=bool),
                            r_max=np.zeros(b), values=np.zeros((b, n)))

    def q_values(self, state: PlannerState, obs: np.ndarray | None = None) -> np.ndarray:
        """Q of the current plan: ``[B, nO, na]``, or ``[B, na]`` at ``obs``."""
        if obs is None:
            counts, n_sa, r_sum = state.counts, state.n_sa, state.reward_sum
            b, n, na, _ = counts.shape
            backup = (counts.reshape(b, n * na, n) @ state.values[..., None].astype(np.float32)).reshape(b, n, na)
        else:
            idx = np.arange(len(obs))
            counts, n_sa, r_sum = state.counts[idx, obs], state.n_sa[idx, obs], state.reward_sum[idx, obs]
            backup = (counts @ state.values[..., None].astype(np.float32))[..., 0]
        optimistic = np.maximum(state.r_max, 0.0) / (1.0 - self.gamma)
        optimistic = optimistic.reshape((-1,) + (1,) * (n_sa.ndim - 1))
        visited = n_sa > 0
        safe = np.maximum(n_sa, 1.0)
        return np.where(visited, (r_sum + self.gamma * backup) / safe, optimistic)

    def plan(self, state: PlannerState, sweeps: int) -> None:
        """``sweeps`` value-iteration sweeps over the empirical model, in place."""
        neg = ~state.mask[:, None, :]
        for _ in range(sweeps):
            q = self.q_values(state)
            q[np.broadcast_to(neg, q.shape)] = -np.inf
            v = q.max(-1)
            v[state.terminal] = 0.0
            state.values = v

    def act(self, state: PlannerState, obs: np.ndarray):
        return argmax_random_ties(self.q_values(state, obs), state.mask, state.rng), state

    def observe(self, state: PlannerState, t: Transition) -> PlannerState:
        self.record(state, t)
        if self.lookahead:
            state.values = np.zeros_like(state.values)
            self.plan(state, self.lookahead - 1)
        else:
            self.plan(state, self.sweeps)
        return state

    def record(self, state: PlannerState, t: Transition, envs: np.ndarray | None = None) -> None:
        """Add one step to the empirical model (no planning): of every environment, or of ``envs`` only
        (then the transition's arrays hold those environments' steps)."""
        b = np.arange(len(t.obs)) if envs is None else np.asarray(envs)
        s, a, s2 = t.obs, t.actions, t.next_obs
        state.counts[b, s, a, s2] += 1.0
        state.n_sa[b, s, a] += 1.0
        state.reward_sum[b, s, a] += t.rewards
        state.r_max[b] = np.maximum(state.r_max[b], t.rewards)
        term = t.terminated.astype(bool)
        state.terminal[b[term], s2[term]] = True
