"""anymdp-agent: in-context reinforcement learning on procedurally generated AnyMDP tasks.

The task generator, exact solvers and environments live in :mod:`anymdp_agent.envs`; the agent in
:mod:`anymdp_agent.modeling_anymdp_agent`. The names below are exported lazily (PEP 562): importing
``anymdp_agent.envs`` (or the package) loads numpy and gymnasium only, never torch or transformers;
the first use of ``AnyMDPAgentConfig`` / ``AnyMDPAgentModel`` imports them and registers both with
transformers' ``AutoConfig`` / ``AutoModel``. Documentation: ``docs/`` of the repository.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Exported name -> the submodule that defines it.
_EXPORTS = {
    **{name: ".envs" for name in (
        "AnyMDPEnv", "BatchedAnyMDPEnv", "Task", "load_task", "load_tasks", "oracle_return", "random_return",
        "sample_anymdp_task", "sample_bandit_task", "sample_dirichlet_task", "sample_garnet_task",
        "sample_riverswim_task", "save_task", "save_tasks")},
    "AnyMDPAgentConfig": ".configuration_anymdp_agent",
    "AnyMDPAgentModel": ".modeling_anymdp_agent",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def register_auto_classes() -> None:
    """Register the agent with ``AutoConfig`` / ``AutoModel``, so ``AutoModel.from_pretrained(folder)`` works
    without ``trust_remote_code`` once the package is in use (idempotent)."""
    from transformers import AutoConfig, AutoModel

    from .configuration_anymdp_agent import AnyMDPAgentConfig
    from .modeling_anymdp_agent import AnyMDPAgentModel

    AutoConfig.register(AnyMDPAgentConfig.model_type, AnyMDPAgentConfig, exist_ok=True)
    AutoModel.register(AnyMDPAgentConfig, AnyMDPAgentModel, exist_ok=True)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in ("AnyMDPAgentConfig", "AnyMDPAgentModel"):
        register_auto_classes()
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
