"""Shared test setup: an offline, throw-away Hugging Face environment and a few small cached tasks.

The Hugging Face libraries read ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` / ``HF_HOME`` when they
are first imported, so the variables are set here at import time (before any test module imports
them) and the session fixture below re-asserts them and removes the temporary home afterwards.

BLAS is kept to one thread unless the caller says otherwise: the solvers' matrices are tiny, and on a
small shared machine a multi-threaded BLAS competing with other processes makes a 128-state solve
more than ten times slower. The variables must be set before numpy is first imported.
"""

from __future__ import annotations

import os
import shutil
import tempfile

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402

_HF_HOME = tempfile.mkdtemp(prefix="anymdp-test-hf-home-")
_HF_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": _HF_HOME}
os.environ.update(_HF_ENV)


@pytest.fixture(scope="session", autouse=True)
def offline_hf_home():
    """Whole session: no network for the Hugging Face libraries and a temporary ``HF_HOME``."""
    saved = {k: os.environ.get(k) for k in _HF_ENV}
    os.environ.update(_HF_ENV)
    yield _HF_HOME
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(_HF_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def small_tasks():
    """Accepted AnyMDP tasks of 16 states (seeds 0..5), drawn once per session."""
    from anymdp_agent.envs import sample_anymdp_task

    return [sample_anymdp_task(16, seed=s) for s in range(6)]


@pytest.fixture(scope="session")
def mixed_tasks():
    """Tasks of different sizes (8, 16 and 24 states) for padding tests."""
    from anymdp_agent.envs import sample_anymdp_task

    return [sample_anymdp_task(n, seed=s) for s, n in enumerate((8, 16, 24, 16, 8, 24))]
