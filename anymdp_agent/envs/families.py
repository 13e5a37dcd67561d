"""The package's sampled task families by name, with the sizes a sized suite (``<family>-N``) of each may take.

One table for the evaluation harness (which builds ``anymdp-N``, ``bandit-N``, ... from it) and for the command
line's help, which must not import the harness to name them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .anymdp import MIN_ACTIONS, MIN_STATES, sample_anymdp_task
from .classic import RIVERSWIM_MIN_STATES, sample_dirichlet_task, sample_riverswim_task
from .garnet import sample_bandit_task, sample_garnet_task


@dataclass(frozen=True)
class SampledFamily:
    """A family of a sized suite (``<family>-N``): its sampler (``sampler(N, n_actions, seed=...)``), the smallest
    N, its number of actions, and what N counts: ``states``, or ``arms`` for bandits, whose actions are their N
    arms (so they take no separate number of actions)."""

    sampler: Callable
    min_size: int
    n_actions: int | None
    description: str
    unit: str = "states"

    def sizes(self, n: int, n_actions: int | None = None) -> tuple[int, int]:
        """``(states, actions)`` of the tasks of ``<family>-n`` (``n_actions``: None for the family's own)."""
        if self.unit == "arms":
            if n_actions not in (None, n):
                raise ValueError(f"a bandit suite's actions are its arms: bandit-{n} has {n}, "
                                 f"not n_actions={n_actions}")
            return 2, n
        return n, self.n_actions if n_actions is None else n_actions


def _sample_bandit(n_arms: int, n_actions: int, *, seed: int, **options):
    """A ``bandit-N`` task: :func:`sample_bandit_task` with N arms (``n_actions`` is N, see SampledFamily.sizes)."""
    return sample_bandit_task(n_arms, seed=seed, **options)


def _sample_sparse(n_states: int, n_actions: int, *, seed: int, **options):
    """A ``sparse-N`` task: the AnyMDP task of that seed with its calibrated goal and pitfall rewards only
    (``reward_parts=()``: no potential, position, per-pair or per-step terms), so most steps pay exactly 0."""
    if "reward_parts" in options:
        raise ValueError("a sparse-N task has no reward parts by definition; use anymdp-N with reward_parts instead")
    return sample_anymdp_task(n_states, n_actions, seed=seed, reward_parts=(), **options)


#: Actions of every task of a sized suite (``anymdp-N``, ``sparse-N``, ``garnet-N``, ``dirichlet-N``).
SUITE_ACTIONS = 5

#: The sampled families, by the name a sized suite starts with.
SAMPLED_FAMILIES = {
    "anymdp": SampledFamily(sample_anymdp_task, MIN_STATES, SUITE_ACTIONS, "anymdp tasks"),
    "sparse": SampledFamily(_sample_sparse, MIN_STATES, SUITE_ACTIONS,
                            "sparse-reward anymdp tasks (goal and pitfall rewards only)"),
    "garnet": SampledFamily(sample_garnet_task, MIN_STATES, SUITE_ACTIONS, "garnet tasks"),
    "dirichlet": SampledFamily(sample_dirichlet_task, MIN_STATES, SUITE_ACTIONS, "dense random MDPs (Dirichlet rows)"),
    "riverswim": SampledFamily(sample_riverswim_task, RIVERSWIM_MIN_STATES, 2, "RiverSwim tasks"),
    "bandit": SampledFamily(_sample_bandit, MIN_ACTIONS, None, "multi-armed bandits (one pull per episode)", "arms"),
}
#: How the sized suites are named, for messages: "anymdp-N (N >= 8 states), ..., bandit-N (N >= 2 arms)".
SIZED_NAMES = ", ".join(f"{k}-N (N >= {f.min_size} {f.unit})" for k, f in SAMPLED_FAMILIES.items())

__all__ = ["SAMPLED_FAMILIES", "SIZED_NAMES", "SUITE_ACTIONS", "SampledFamily"]
