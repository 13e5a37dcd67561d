"""The in-context learner protocol: what every learner (baselines and the pretrained agent) implements.

A learner is batched over ``B`` environments and keeps *all* per-environment knowledge in an explicit
state object, never on itself, so one learner object can drive many independent rollouts and a state
can be copied, reset per environment, saved and restored. One interaction step is::

    actions, state = learner.act(state, observations)
    next_obs, rewards, terminated, truncated, info = envs.step(actions)
    state = learner.observe(state, Transition(observations, actions, rewards, final_obs, terminated, truncated))

``final_obs`` is the observation the action led to (before any autoreset). Every learner starts
knowing nothing about its task except the sizes in :class:`EnvSpec`; only the oracle and the planner's
known-model ablation (``mbrl:known=...``, a measuring tool, not a learner) read ``spec.tasks`` (the true model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..envs.task import TaskBatch


@dataclass(frozen=True)
class EnvSpec:
    """What a learner may know about the ``B`` environments it is dropped into.

    ``action_mask [B, n_actions]`` marks the actions each environment has. ``tasks`` is the true
    model (for the oracle only; ``None`` where it is unknown).
    """

    num_envs: int
    n_observations: int
    n_actions: int
    action_mask: np.ndarray
    tasks: TaskBatch | None = None

    @classmethod
    def from_tasks(cls, tasks: TaskBatch) -> "EnvSpec":
        return cls(num_envs=len(tasks), n_observations=tasks.n_states, n_actions=tasks.action_mask.shape[1],
                   action_mask=tasks.action_mask, tasks=tasks)

    @classmethod
    def uniform(cls, num_envs: int, n_observations: int, n_actions: int, tasks: TaskBatch | None = None) -> "EnvSpec":
        return cls(num_envs=num_envs, n_observations=n_observations, n_actions=n_actions,
                   action_mask=np.ones((num_envs, n_actions), dtype=bool), tasks=tasks)


@dataclass
class Transition:
    """One step of ``B`` environments, as a learner observes it (arrays ``[B]``)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


class InContextLearner:
    """Base class of the protocol. Subclasses set ``name`` and implement the three methods."""

    name: str = "learner"

    def check_spec(self, spec: EnvSpec) -> None:
        """A clear ``ValueError`` if the learner cannot run in environments described by ``spec`` (an agent
        whose vocabulary is too small, an oracle without a true model); called before any learner runs."""

    def initial_state(self, spec: EnvSpec, seed: int) -> Any:
        """Fresh per-environment state: nothing known about any task. Same seed, same behaviour."""
        raise NotImplementedError

    def act(self, state: Any, obs: np.ndarray) -> tuple[np.ndarray, Any]:
        """Actions ``[B]`` for the current observations."""
        raise NotImplementedError

    def observe(self, state: Any, transition: Transition) -> Any:
        """Learn from one step of every environment; returns the (possibly same) state."""
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        """The learner's settings, for result files."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------- shared batched helpers


#: Values this close (relative: ``atol * (1 + |best|)``) to the best count as tied, in every learner of the package
#: (the corpus' compiled behaviours read it too); the agent's remote code keeps the same number (a test checks it).
TIE_TOLERANCE = 1e-9


def best_actions(values: np.ndarray, mask: np.ndarray, atol: float = TIE_TOLERANCE) -> np.ndarray:
    """``[B, na]`` (bool): the allowed entries within ``atol`` (relative) of their row's best allowed value."""
    v = np.where(mask, values, -np.inf)
    best = v.max(-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        near = np.where(np.isinf(best), v == best, v >= best - atol * (1.0 + np.abs(best)))
    return mask & near


def argmax_random_ties(values: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                       atol: float = TIE_TOLERANCE) -> np.ndarray:
    """Row-wise argmax over allowed entries ``[B, na]``, ties (:func:`best_actions`) broken uniformly at random."""
    return sample_categorical(best_actions(values, mask, atol).astype(np.float64), rng)


def sample_categorical(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row from unnormalised non-negative weights ``[B, na]`` (inverse CDF, vectorised)."""
    cdf = np.cumsum(weights, axis=-1)
    u = rng.random(len(weights)) * cdf[:, -1]
    return np.minimum((cdf <= u[:, None]).sum(-1), weights.shape[-1] - 1)


def softmax_sample(logits: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sample from ``softmax(logits)`` restricted to allowed actions ``[B, na]``."""
    z = np.where(mask, logits, -np.inf)
    z = z - z.max(-1, keepdims=True)
    return sample_categorical(np.exp(z), rng)
