"""Shared benchmark plumbing: one-core pinning, the machine line, alternating timed repeats, tables.

Call :func:`pin_one_core` *before* numpy is imported (it sets the BLAS/OpenMP thread variables,
which numpy reads once at import); that is why this module imports numpy only inside functions.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS")


def _idlest_core(cores: Sequence[int], window: float = 0.25) -> int:
    """The core with the most idle time over ``window`` seconds (from /proc/stat); ties go to the lowest id.

    Benchmarks are often run while something else (another benchmark, the tests) is busy on one core;
    sharing a core with it would halve whichever side of a comparison it overlaps.
    """
    def idle() -> dict[int, int]:
        out = {}
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("cpu") and line[3].isdigit():
                        parts = line.split()
                        out[int(parts[0][3:])] = int(parts[4]) + int(parts[5])  # idle + iowait
        except (OSError, ValueError, IndexError):
            pass
        return out
    before = idle()
    time.sleep(window)
    after = idle()
    gains = {c: after.get(c, 0) - before.get(c, 0) for c in cores}
    return max(sorted(cores), key=lambda c: gains[c])


def pin_one_core() -> int:
    """Pin this process to one CPU core and every math library to one thread; returns the core id.

    The core is ``$BENCH_CORE`` if set, else the idlest allowed core right now (see :func:`_idlest_core`).
    """
    if "numpy" in sys.modules:
        raise RuntimeError("pin_one_core() must run before numpy is imported (thread counts are read at import)")
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    allowed = sorted(os.sched_getaffinity(0))
    if os.environ.get("BENCH_CORE"):
        core = int(os.environ["BENCH_CORE"])
        if core not in allowed:
            raise ValueError(f"BENCH_CORE={core} is not one of this process's cores {allowed}")
    else:
        core = _idlest_core(allowed) if len(allowed) > 1 else allowed[0]
    os.sched_setaffinity(0, {core})
    return core


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(module: str) -> str:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
        return "not installed"


def machine_line() -> str:
    """One line naming the machine: cores, CPU model, pinning, library versions."""
    import numpy as np
    pinned = sorted(os.sched_getaffinity(0))
    return (f"machine: {os.cpu_count()} cores ({cpu_model()}), pinned to core(s) {pinned}, "
            f"1 BLAS/OpenMP/numba thread; python {platform.python_version()}, numpy {np.__version__}, "
            f"gymnasium {_version('gymnasium')}, xenoverse {_version('xenoverse')}, numba {_version('numba')}; "
            f"load average at start {os.getloadavg()[0]:.2f}")


@dataclass
class Contender:
    """One side of a comparison.

    ``prepare(rep)`` does the untimed setup of repeat ``rep`` (0 is the warm-up) and returns the
    zero-argument callable to time; ``work`` is how many units (tasks, steps) one call does.
    """

    name: str
    prepare: Callable[[int], Callable[[], object]]
    work: float
    times: list[float] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [self.work / t for t in self.times]

    @property
    def per_unit(self) -> list[float]:
        return [t / self.work for t in self.times]


def run_alternating(contenders: Sequence[Contender], repeats: int, warmup: int = 1,
                    log: Callable[[str], None] | None = None) -> None:
    """Time the contenders round-robin (A B A B ...): ``warmup`` untimed rounds, then ``repeats`` timed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for rep in range(warmup + repeats):
        for c in contenders:
            fn = c.prepare(rep)
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if rep >= warmup:
                c.times.append(dt)
            if log is not None:
                log(f"  {'warm-up' if rep < warmup else f'repeat {rep - warmup + 1}'}: {c.name}: {dt:.4f} s")


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def fmt_rate(xs: Sequence[float], unit: str = "") -> str:
    """``median [min, max]`` of throughputs, with an engineering suffix."""
    return f"{_eng(med(xs))} [{_eng(min(xs))}, {_eng(max(xs))}]{unit}"


def fmt_time(xs: Sequence[float]) -> str:
    """``median [min, max]`` of durations in seconds, auto-scaled to s / ms / us."""
    m = med(xs)
    scale, unit = (1.0, "s") if m >= 1 else (1e3, "ms") if m >= 1e-3 else (1e6, "us")
    return f"{m * scale:.3g} [{min(xs) * scale:.3g}, {max(xs) * scale:.3g}] {unit}"


def _eng(x: float) -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table (so the output pastes into README.md as is)."""
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
