"""anymdp-agent: in-context reinforcement learning on procedurally generated AnyMDP tasks.

The task generator, exact solvers and environments live in :mod:`anymdp_agent.envs`.
"""

from .envs import (
    AnyMDPEnv,
    BatchedAnyMDPEnv,
    Task,
    load_task,
    load_tasks,
    oracle_return,
    random_return,
    sample_anymdp_task,
    sample_bandit_task,
    sample_garnet_task,
    save_task,
    save_tasks,
)

from transformers import AutoConfig, AutoModel

from .configuration_anymdp_agent import AnyMDPAgentConfig
from .modeling_anymdp_agent import AnyMDPAgentModel

__version__ = "0.1.0"

AutoConfig.register(AnyMDPAgentConfig.model_type, AnyMDPAgentConfig, exist_ok=True)
AutoModel.register(AnyMDPAgentConfig, AnyMDPAgentModel, exist_ok=True)

__all__ = [
    "AnyMDPAgentConfig", "AnyMDPAgentModel", "AnyMDPEnv", "BatchedAnyMDPEnv", "Task", "__version__", "load_task", "load_tasks", "oracle_return",
    "random_return", "sample_anymdp_task", "sample_bandit_task", "sample_garnet_task", "save_task", "save_tasks",
]
