"""Up-front memory checks: a job that cannot fit is refused with a clear error before it starts, instead of
ending in a ``MemoryError`` traceback (or the kernel's OOM killer) after work and half-written files."""

from __future__ import annotations

import os


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), or ``None`` where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_memory(needed: float, what: str, fix: str) -> None:
    """A ``ValueError`` naming ``what`` and ``fix`` if ``needed`` bytes exceed the memory available now."""
    have = available_memory()
    if have is not None and needed > have:
        raise ValueError(f"{what} needs about {_gib(needed)} of memory and {_gib(have)} is available: {fix}")


def task_table_bytes(num_tasks: int, n_states: int, n_actions: int) -> int:
    """Bytes of ``num_tasks`` tasks' float64 ``[n, na, n]`` tables (transition and reward), stacked once
    more into a batch and read by the solvers: four copies."""
    return 4 * 8 * int(num_tasks) * int(n_states) ** 2 * int(n_actions)
