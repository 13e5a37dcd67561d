"""Counter-based random numbers, vectorised over environments.

Each environment owns a 64-bit key and a counter; draw ``i`` is ``splitmix64(key + (counter + i) *
golden)``. Because a draw is a pure function of ``(key, counter)``, a batch of ``B`` environments
draws its numbers in one compiled loop (:func:`uniform_at`), and a single environment stepping alone
draws exactly the same numbers: this is what makes :class:`~anymdp_agent.envs.AnyMDPEnv` and
:class:`~anymdp_agent.envs.BatchedAnyMDPEnv` agree step for step under the same seeds.
"""

from __future__ import annotations

import numba
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SALT = np.uint64(0x5851F42D4C957F2D)
_TO_UNIT = 2.0 ** -53


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic, in place on a copy)."""
    x = x ^ (x >> np.uint64(30))
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def keys_from_seeds(seeds) -> np.ndarray:
    """64-bit stream keys ``[B]`` from non-negative integer seeds (nearby seeds give unrelated keys)."""
    s = np.atleast_1d(np.asarray(seeds))
    if s.dtype.kind not in "iu" or np.any(s < 0):
        raise ValueError(f"seeds must be non-negative integers, got {seeds!r}")
    return _mix(_mix(s.astype(np.uint64) * _GOLDEN + _SALT) ^ _SALT)


def standard_normal(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """Box-Muller: a standard normal from two uniforms in ``[0, 1)``."""
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


@numba.njit(cache=True, inline="always")
def uniform_at(key, counter):
    """Draw ``counter`` (1-based) of the stream ``key``: a uniform in ``[0, 1)`` with 53 random bits."""
    x = key + counter * _GOLDEN
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    x = x ^ (x >> np.uint64(31))
    return float(x >> np.uint64(11)) * _TO_UNIT
