"""A learned prior over next observations for the count-based planner (``mbrl:prior=...``).

After one or two visits a pair's empirical next-observation distribution is a point mass on what happened,
far from its true row. The prior is a small network that reads the history's count statistics and returns,
for every tried pair ``(s, a)`` and every observation id ``t``, a non-negative pseudo-count ``g[s, a, t]``; the
posterior-mean estimate is then

    P_hat(t | s, a) = (c[s, a, t] + g[s, a, t]) / (n[s, a] + sum_t g[s, a, t]).

The network is the same for every id (it is permutation-equivariant over observation ids and sizes), so one
prior serves any number of states and actions. Its inputs (:func:`prior_features`, ``NUM_FEATURES`` per
``(s, a, t)``) are the pair's own empirical row and visit count, the other actions' rows at ``s``, whether ``t``
was seen to lead back to ``s``, where the pair's observed targets were seen to lead next (one and two steps),
what leads into them, whether ``t`` ended an episode, how often ``t`` was visited, and the mean reward of arriving
at ``t`` relative to arriving at the pair's targets (in units of the history's RMS reward).

It is trained by cross-entropy against the true transition rows of tasks drawn from the package's own samplers
(train seeds; ``anymdp_agent.training.transition_prior``); a zero prior (``g = 0``) is the empirical model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..fileio import dumps_json, replace_dir

#: Per ``(s, a, t)`` inputs of the prior network (see :func:`prior_features`).
NUM_FEATURES = 17
#: The prior trained by ``python -m anymdp_agent.training.transition_prior`` and shipped with the package.
BUNDLED = Path(__file__).resolve().parent.parent / "priors" / "anymdp-transition-prior"
CONFIG_NAME, WEIGHTS_NAME, COMPLETE_NAME = "config.json", "model.safetensors", "COMPLETE"


def prior_features(counts: np.ndarray, n_sa: np.ndarray, terminal: np.ndarray, visits: np.ndarray,
                   arrival: np.ndarray, envs: np.ndarray | None = None, states: np.ndarray | None = None) -> np.ndarray:
    """The network's inputs (float32) from the history's statistics: ``[B, nO, na, nO, NUM_FEATURES]`` for every
    pair, or ``[R, na, nO, NUM_FEATURES]`` for the pairs of the ``R`` rows ``(envs[i], states[i])`` only.

    ``counts [B, nO, na, nO]`` transition counts, ``n_sa [B, nO, na]`` their sums, ``terminal [B, nO]`` ids an
    episode ended in, ``visits [B, nO]`` how often each id was the current observation, ``arrival [B, nO]`` the
    mean reward of arriving at each id divided by the history's RMS reward (0 where never arrived at).
    """
    b, n, na, _ = counts.shape
    if envs is None:
        envs, states = np.repeat(np.arange(b), n), np.tile(np.arange(n), b)
        return prior_features(counts, n_sa, terminal, visits, arrival, envs, states).reshape(b, n, na, n, NUM_FEATURES)
    c = counts[envs, states].astype(np.float32)               # [R, na, t]
    m = n_sa[envs, states].astype(np.float32)                 # [R, na]
    p = c / np.maximum(m, 1.0)[..., None]
    total = c.sum(1, keepdims=True)                           # [R, 1, t]: from s under any action
    other = total - c                                         # the other actions' counts to t
    m_other = m.sum(1, keepdims=True) - m
    p_other = other / np.maximum(m_other, 1.0)[..., None]
    seen_from_s = (total > 0).sum(-1, keepdims=True)          # how many ids s was seen to lead to
    edges = (counts.sum(2) > 0).astype(np.float32)            # [B, x, y]: x -> y observed
    two = np.minimum(edges @ edges, 1.0)
    sym = np.minimum(edges + edges.transpose(0, 2, 1), 1.0)
    near = np.minimum(sym @ sym, 1.0)
    back = edges[envs, :, states][:, None, :]                 # t -> s observed, [R, 1, t]
    then = p @ edges[envs]                                    # where the pair's targets were seen to lead
    into = p @ edges[envs].transpose(0, 2, 1)                 # what was seen to lead into them
    then2 = p @ two[envs]
    around = p @ near[envs]
    arr = arrival[envs].astype(np.float32)[:, None, :]        # [R, 1, t]
    rise = arr - (p * arr).sum(-1, keepdims=True)
    self_loop = (np.arange(n)[None, :] == states[:, None])[:, None, :]
    out = np.empty((len(envs), na, n, NUM_FEATURES), dtype=np.float32)
    for k, x in enumerate((
            p, np.log1p(m)[..., None], c > 0, p_other, other > 0, np.log1p(m_other)[..., None], back, self_loop,
            terminal[envs][:, None, :], np.log1p(visits[envs]).astype(np.float32)[:, None, :], np.log1p(seen_from_s),
            1.0 / np.maximum(m, 1.0)[..., None], then, into, then2, around, np.tanh(rise))):
        out[..., k] = x
    return out


class TransitionPrior(nn.Module):
    """``features [..., NUM_FEATURES] -> pseudo-counts [...] >= 0``: a per-``(s, a, t)`` MLP. Initialised to a
    prior of about zero (the empirical model)."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"TransitionPrior needs hidden >= 1, got {hidden}")
        self.hidden = hidden
        self.net = nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, -8.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.net(features)[..., 0])

    @torch.no_grad()
    def pseudo_counts(self, features: np.ndarray) -> np.ndarray:
        """``g`` for numpy features ``[..., NUM_FEATURES]`` (float32 out)."""
        return self(torch.from_numpy(features)).numpy()

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``path`` atomically: into a temporary folder beside
        it, marked complete, then put in place of ``path`` (:func:`~anymdp_agent.fileio.replace_dir`)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(tmp / WEIGHTS_NAME))
            (tmp / CONFIG_NAME).write_text(dumps_json({"kind": "anymdp-transition-prior", "hidden": self.hidden,
                                                       "num_features": NUM_FEATURES, **(metadata or {})}, indent=2))
            (tmp / COMPLETE_NAME).write_text("")
            replace_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TransitionPrior":
        """Load a saved prior (``"bundled"`` names the shipped one); a clear error for anything else."""
        from safetensors.torch import load_file

        path = BUNDLED if str(path) == "bundled" else Path(path)
        if not (path / COMPLETE_NAME).exists() or not (path / CONFIG_NAME).exists():
            raise ValueError(f"{path} is not a saved transition prior (no {CONFIG_NAME} and {COMPLETE_NAME}); "
                             "train one with python -m anymdp_agent.training.transition_prior or use prior=bundled")
        config = json.loads((path / CONFIG_NAME).read_text())
        if config.get("kind") != "anymdp-transition-prior" or config.get("num_features") != NUM_FEATURES:
            raise ValueError(f"{path} holds {config.get('kind')!r} with {config.get('num_features')} features; "
                             f"this version reads anymdp-transition-prior with {NUM_FEATURES} (retrain it)")
        prior = cls(hidden=int(config["hidden"]))
        prior.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
        prior.eval()
        return prior


def prior_cross_entropy(g: torch.Tensor, counts: torch.Tensor, n_sa: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the true next-observation rows ``true [N, nO]`` under the posterior-mean estimate
    ``(counts + g) / (n_sa + sum g)`` of ``N`` tried pairs (the prior's training loss and validation score)."""
    p = (counts + g) / (n_sa[:, None] + g.sum(-1, keepdim=True))
    return -(true * torch.log(p.clamp(min=1e-12))).sum(-1).mean()
