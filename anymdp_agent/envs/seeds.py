"""Disjoint task-seed ranges: a task used to test the agent can never appear in its training data.

Seeds are task seeds for the samplers (``sample_anymdp_task(n, seed=s)``). The corpus draws training
sequences from :data:`TRAIN`, checkpoint selection uses :data:`VALIDATION`, and every reported
number (suites, the demo, the model card) uses :data:`TEST`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

#: Environment and learner seeds lie in ``[0, MAX_SEED)``: they become 64-bit stream keys through int64 arrays.
MAX_SEED = 2**63


def check_seed(seed, name: str = "seed", count: int = 1) -> int:
    """``seed`` as a Python int, or a clear ``ValueError``: an integer (not a bool, float or string) with
    ``0 <= seed`` and ``seed + count - 1 < 2**63`` (``count`` environments take ``seed, seed + 1, ...``)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if seed < 0 or seed + count - 1 >= MAX_SEED:
        span = f" (with {count} environments seeded {name}, {name} + 1, ...)" if count > 1 else ""
        raise ValueError(f"{name} must be in 0..2**63 - {count}{span}, got {seed}")
    return seed


@dataclass(frozen=True)
class SeedRange:
    """Half-open range ``[start, stop)`` of task seeds with a name."""

    name: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def __contains__(self, seed: int) -> bool:
        return self.start <= seed < self.stop

    def seeds(self, count: int, offset: int = 0) -> range:
        """``count`` consecutive seeds starting ``offset`` into the range (an error past its end)."""
        if count < 0 or offset < 0:
            raise ValueError(f"count and offset must be >= 0, got count={count}, offset={offset}")
        if offset + count > len(self):
            raise ValueError(f"the {self.name} seed range holds {len(self)} seeds; "
                             f"offset {offset} + count {count} runs past its end")
        return range(self.start + offset, self.start + offset + count)


TRAIN = SeedRange("train", 0, 1_000_000_000)
VALIDATION = SeedRange("validation", 1_000_000_000, 1_100_000_000)
TEST = SeedRange("test", 1_100_000_000, 1_200_000_000)
SEED_RANGES = {r.name: r for r in (TRAIN, VALIDATION, TEST)}
