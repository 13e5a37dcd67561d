"""Shared helpers of the agent benchmarks (``agent_training``, ``agent_rollout``): the models, an AnyMDP history,
cache building, the torch line of the machine description, peak memory.

Import it only *after* :func:`benchmarks._common.pin_one_core` (it imports numpy and torch).
"""

from __future__ import annotations

import resource

import numpy as np
import torch
import torch.nn as nn

from anymdp_agent.configuration_anymdp_agent import AnyMDPAgentConfig
from anymdp_agent.envs import AnyMDPEnv, sample_anymdp_task
from anymdp_agent.modeling_anymdp_agent import END_TERMINATED, END_TRUNCATED, IGNORE_INDEX, AnyMDPAgentModel

MODELS = ("planning", "sequence", "llama")
RANDOM_TAG = 3                      # "random" in anymdp_agent.data.behaviours.TAGS
SEGMENT = 4096                      # rows per no-grad forward when building caches


def torch_line() -> str:
    from importlib.metadata import version
    return (f"torch {torch.__version__} ({torch.get_num_threads()} intra-op thread), "
            f"transformers {version('transformers')}")


def code_line() -> str:
    """The code measured: git commit, and whether the model package has uncommitted changes."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "anymdp_agent"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "code: not a git checkout"
    return f"code: git {sha}" + (" + uncommitted changes in anymdp_agent/" if dirty else " (anymdp_agent/ clean)")


def train_call(model, inputs: dict, cache=None):
    model.zero_grad(set_to_none=True)

    def run():
        out = model(**inputs, cache=cache)
        out.loss.backward()
    return run


# ---------------------------------------------------------------------- data


def anymdp_rows(rows: int, n_states: int = 16, n_actions: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """One AnyMDP history of ``rows`` rows under uniform random actions, as ``[1, rows]`` model inputs."""
    env = AnyMDPEnv(sample_anymdp_task(n_states, n_actions, seed=seed))
    rng = np.random.default_rng(seed)
    o, _ = env.reset(seed=seed)
    obs, act, rew = [], [], []
    while len(obs) < rows:
        a = int(rng.integers(n_actions))
        nxt, r, term, trunc, _ = env.step(a)
        obs.append(o), act.append(a), rew.append(r)
        if term or trunc:  # the extra row that closes the episode: its observation is the final one
            obs.append(nxt), act.append(END_TERMINATED if term else END_TRUNCATED), rew.append(0.0)
            o, _ = env.reset()
        else:
            o = nxt
    obs_t = torch.tensor(obs[:rows])[None]
    act_t = torch.tensor(act[:rows])[None]
    return {"observations": obs_t, "actions": act_t, "rewards": torch.tensor(rew[:rows], dtype=torch.float32)[None],
            "tags": torch.full_like(obs_t, RANDOM_TAG),
            "labels": torch.where(act_t >= 0, act_t, torch.full_like(act_t, IGNORE_INDEX))}


def rows_slice(rows: dict, lo: int, hi: int) -> dict:
    return {k: v[:, lo:hi] for k, v in rows.items()}


# ---------------------------------------------------------------------- models


class LlamaStack(nn.Module):
    """A ``LlamaModel`` standing in for the sequence backbone's layer stack (``inputs_embeds`` in, hidden out)."""

    def __init__(self, cfg: AnyMDPAgentConfig, max_tokens: int):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        lcfg = LlamaConfig(vocab_size=2, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                           num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_heads,
                           num_key_value_heads=cfg.num_heads, max_position_embeddings=max_tokens,
                           rms_norm_eps=cfg.rms_norm_eps, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                           attn_implementation="sdpa", use_cache=False)
        self.llama = LlamaModel(lcfg)

    def forward(self, x, state, recurrent: bool = False):
        if recurrent:
            raise ValueError("the attention peer has no recurrent form")
        return self.llama(inputs_embeds=x, use_cache=False).last_hidden_state, state


def make_model(name: str, max_rows: int = 65536) -> nn.Module:
    """The model ``name`` with fixed seeds (so a child process builds the same weights)."""
    torch.manual_seed({"planning": 0, "sequence": 1, "llama": 2}[name])
    if name == "planning":
        return AnyMDPAgentModel(AnyMDPAgentConfig(backbone="planning")).train()
    model = AnyMDPAgentModel(AnyMDPAgentConfig(backbone="sequence"))
    if name == "llama":
        # The same embeddings, token layout, heads and loss; SequenceBackbone iterates its .layers, so one
        # LlamaStack in their place (with one dummy recurrent state) replaces the whole GLA stack.
        model.backbone.layers = nn.ModuleList([LlamaStack(model.config, 2 * max_rows)])
    return model.train()


def n_params(model: nn.Module) -> int:
    """Parameters, leaving out the LlamaModel's token embedding (unused: it is called with inputs_embeds)."""
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)


@torch.no_grad()
def build_caches(model, rows: dict, depths, start=None) -> dict:
    """The cache after the first ``d`` rows for each ``d`` in ``depths`` (forward in ``SEGMENT``-row pieces,
    from ``start``, default the model's own initial state)."""
    caches, cache, pos = {}, start, 0
    for d in sorted(set(depths)):
        while pos < d:
            n = min(SEGMENT, d - pos)
            cache = model(**{k: v for k, v in rows_slice(rows, pos, pos + n).items() if k != "labels"},
                          cache=cache).cache
            pos += n
        caches[d] = cache
    return caches


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def eng(x: float, unit: str = "") -> str:
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}{unit}"
    return f"{x:.3g}{unit}"
