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
from pathlib import Path

import numpy as np
import torch

from ..fileio import dumps_json, staged_dir
from ..modeling_anymdp_agent import (PRIOR_FEATURES, TransitionPriorNetwork, history_graph, prior_feature_count,
                                     transition_prior_features)

#: Per ``(s, a, t)`` inputs of the prior network without the chain inputs (see :func:`prior_features`);
#: ``prior_feature_count(True)`` with them.
NUM_FEATURES = PRIOR_FEATURES
#: The prior trained by ``python -m anymdp_agent.training.transition_prior`` and shipped with the package.
BUNDLED = Path(__file__).resolve().parent.parent / "priors" / "anymdp-transition-prior"
CONFIG_NAME, WEIGHTS_NAME, COMPLETE_NAME = "config.json", "model.safetensors", "COMPLETE"


def prior_features(counts: np.ndarray, n_sa: np.ndarray, terminal: np.ndarray, visits: np.ndarray,
                   arrival: np.ndarray, envs: np.ndarray | None = None, states: np.ndarray | None = None,
                   graph: tuple | None = None, chain: bool = False) -> np.ndarray:
    """:func:`~anymdp_agent.modeling_anymdp_agent.transition_prior_features` on numpy arrays (float32 out): the
    network's inputs, ``[B, nO, na, nO, NUM_FEATURES]`` for every pair, or ``[R, na, nO, NUM_FEATURES]`` for the
    pairs of the ``R`` rows ``(envs[i], states[i])`` only (``graph``: :func:`prior_graph` of the same histories,
    if already computed; ``chain``: with the chain inputs). One definition serves the planner here and the agent."""
    with torch.no_grad():
        return transition_prior_features(*map(_tensor, (counts, n_sa, terminal, visits, arrival, envs, states)),
                                         graph, chain).numpy()


def prior_graph(counts: np.ndarray, n_sa: np.ndarray, visits: np.ndarray, envs: np.ndarray | None = None,
                states: np.ndarray | None = None, chain: bool = False, known: tuple | None = None) -> tuple:
    """:func:`~anymdp_agent.modeling_anymdp_agent.history_graph` on numpy arrays: what the features of the rows
    ``(envs[i], states[i])`` (``None``: any row) read of each whole history, computed once for a refresh in parts
    (``chain``, ``known``: as there)."""
    with torch.no_grad():
        return history_graph(*map(_tensor, (counts, n_sa, visits, envs, states)), chain=chain, known=known)


def _tensor(x: np.ndarray | None) -> torch.Tensor | None:
    """A numpy array as a tensor sharing its memory (``None`` stays ``None``)."""
    return None if x is None else torch.from_numpy(np.ascontiguousarray(x))


class TransitionPrior(TransitionPriorNetwork):
    """The prior network as a file of its own (``mbrl:prior=PATH``): save, load and numpy pseudo-counts."""

    @torch.no_grad()
    def pseudo_counts(self, features: np.ndarray) -> np.ndarray:
        """``g`` for numpy features ``[..., self.num_features]`` (float32 out)."""
        return self(torch.from_numpy(features)).numpy()

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``path`` atomically: into a temporary folder beside
        it, marked complete, then put in place of ``path`` (:func:`~anymdp_agent.fileio.staged_dir`)."""
        from safetensors.torch import save_file

        path = Path(path)
        with staged_dir(path) as tmp:
            save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(tmp / WEIGHTS_NAME))
            (tmp / CONFIG_NAME).write_text(dumps_json({"kind": "anymdp-transition-prior", "hidden": self.hidden,
                                                       "num_features": self.num_features,
                                                       **(metadata or {})}, indent=2))
            (tmp / COMPLETE_NAME).write_text("")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TransitionPrior":
        """Load a saved prior (``"bundled"`` names the shipped one), or the prior inside a saved ``model_based``
        agent (its folder: ``config.json`` and ``model.safetensors``; ``"agent"`` names the bundled default agent);
        a clear error for anything else."""
        from safetensors.torch import load_file

        path, config = saved_config(path)
        if config.get("model_type") == "anymdp_agent":
            if config.get("backbone") != "model_based" or not (path / WEIGHTS_NAME).is_file():
                raise ValueError(f"{path} is an agent with the {config.get('backbone')!r} backbone (or no weights); "
                                 "only a model_based agent holds a transition prior")
            prior = cls(hidden=int(config.get("prior_hidden", 32)), chain=bool(config.get("prior_chain_features")))
            key = "model_based.prior."
            prior.load_state_dict({k[len(key):]: v for k, v in load_file(str(path / WEIGHTS_NAME)).items()
                                   if k.startswith(key)})
            prior.eval()
            return prior
        if not (path / COMPLETE_NAME).exists() or not config:
            raise ValueError(f"{path} is not a saved transition prior (no {CONFIG_NAME} and {COMPLETE_NAME}); "
                             "train one with python -m anymdp_agent.training.transition_prior or use prior=bundled")
        readable = {prior_feature_count(False): False, prior_feature_count(True): True}
        if config.get("kind") != "anymdp-transition-prior" or config.get("num_features") not in readable:
            raise ValueError(f"{path} holds {config.get('kind')!r} with {config.get('num_features')} features; "
                             f"this version reads anymdp-transition-prior with {' or '.join(map(str, readable))} "
                             "(retrain it)")
        prior = cls(hidden=int(config["hidden"]), chain=readable[config["num_features"]])
        prior.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
        prior.eval()
        return prior


def saved_config(path: str | os.PathLike) -> tuple[Path, dict]:
    """The folder ``path`` names (``"bundled"``: the shipped prior; ``"agent"``: the bundled default agent) and its
    ``config.json`` (``{}`` if it has none): a saved prior's, or a saved agent's."""
    if str(path) == "agent":
        from ..rollout import bundled_agent_path

        path = bundled_agent_path()
    path = BUNDLED if str(path) == "bundled" else Path(path)
    return path, (json.loads((path / CONFIG_NAME).read_text()) if (path / CONFIG_NAME).is_file() else {})


def prior_cross_entropy(g: torch.Tensor, counts: torch.Tensor, n_sa: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the true next-observation rows ``true [N, nO]`` under the posterior-mean estimate
    ``(counts + g) / (n_sa + sum g)`` of ``N`` tried pairs (the prior's training loss and validation score)."""
    p = (counts + g) / (n_sa[:, None] + g.sum(-1, keepdim=True))
    return -(true * torch.log(p.clamp(min=1e-12))).sum(-1).mean()
