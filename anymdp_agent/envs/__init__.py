"""Task samplers (AnyMDP, Garnet, bandit, RiverSwim, Dirichlet MDPs), exact solvers, and the single and batched
environments."""

from .anymdp import GENERATOR_VERSION, REWARD_PARTS, sample_anymdp_task
from .classic import sample_dirichlet_task, sample_riverswim_task
from .env import AnyMDPEnv
from .garnet import sample_bandit_task, sample_garnet_task
from .registration import ANYMDP_ID, GARNET_ID, register_envs
from .solvers import (
    ORACLE_GAMMA,
    episode_return,
    greedy_policy,
    optimal_q,
    oracle_policy,
    oracle_q,
    oracle_return,
    policy_evaluation,
    policy_return,
    random_return,
    uniform_policy,
)
from .task import Task, TaskBatch, TaskFileError, load_task, load_tasks, save_task, save_tasks, stack_tasks
from .vector_env import BatchedAnyMDPEnv

register_envs()

__all__ = [
    "ANYMDP_ID", "GARNET_ID", "GENERATOR_VERSION", "ORACLE_GAMMA", "REWARD_PARTS",
    "AnyMDPEnv", "BatchedAnyMDPEnv", "Task", "TaskBatch", "TaskFileError",
    "episode_return", "greedy_policy", "load_task", "load_tasks", "optimal_q", "oracle_policy", "oracle_q",
    "oracle_return", "policy_evaluation", "policy_return", "random_return", "register_envs",
    "sample_anymdp_task", "sample_bandit_task", "sample_dirichlet_task", "sample_garnet_task",
    "sample_riverswim_task", "save_task", "save_tasks",
    "stack_tasks", "uniform_policy",
]
