"""Meta-train the planner's learned transition prior (``mbrl:prior=...``) on the package's own task samplers.

    python -m anymdp_agent.training.transition_prior --out runs/transition-prior

The count-based planner (``mbrl``) acts on tasks from the *train* seed range (AnyMDP at several sizes and
action counts, and Garnet); at fixed steps of each run the history's statistics are taken, and every tried pair
becomes one example: the prior network's features in, the task's *true* next-observation row as the target.
The network is fitted by the cross-entropy of the true rows under the posterior-mean estimate
``(counts + g) / (n + sum g)`` (:func:`~anymdp_agent.baselines.transition_prior.prior_cross_entropy`); the same
score on histories from *validation* seeds picks the best of the evaluated iterations. No Gymnasium env, map or
grid is used. About 11 minutes on one CPU core with the defaults; the result is written atomically to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from anymdp_agent.baselines.model_based import ModelBasedPlanner, PlannerState, true_model
from anymdp_agent.baselines.transition_prior import TransitionPrior, prior_cross_entropy
from anymdp_agent.evaluation import load_suite, run_learner

#: (suite, tasks, actions) of the training histories; the validation histories use the same families.
FAMILIES = (("anymdp-8", 48, 5), ("anymdp-16", 96, 5), ("anymdp-16", 48, 3), ("anymdp-24", 32, 4),
            ("anymdp-32", 32, 5), ("anymdp-16", 32, 2), ("garnet-16", 32, 5))
#: Steps of each run at which the history's statistics become examples.
SNAPSHOTS = (20, 60, 150, 400, 1000, 2000, 4000)


class _Collector(ModelBasedPlanner):
    """Plain ``mbrl`` that keeps the prior's statistics and keeps the features of every tried pair at the
    snapshot steps, with the true next-observation rows as targets."""

    tracks_prior_statistics = True

    def __init__(self, snapshots):
        super().__init__()
        self._snapshots, self._step, self._examples = set(snapshots), 0, []

    def initial_state(self, spec, seed):
        self._true = true_model(spec)[0]
        self._step = 0
        return super().initial_state(spec, seed)

    def refresh_prior(self, state: PlannerState, envs=None, states=None) -> None:
        self._step += 1  # called once per step (for every pair, or for the observation just left)
        if self._step in self._snapshots:
            tried = state.n_sa >= 1
            self._examples.append((self.prior_inputs(state)[tried], state.counts[tried].astype(np.float32),
                                  state.n_sa[tried].astype(np.float32), self._true[tried]))


def collect(split: str, steps: int, scale: float = 1.0, seed: int = 0) -> list[torch.Tensor]:
    """Examples of every family: features ``[N, W, F]``, counts ``[N, W]``, visits ``[N]``, true rows ``[N, W]``
    and the mask of real ids ``[N, W]``, padded to the largest id count ``W``."""
    parts = []
    for name, tasks, actions in FAMILIES:
        suite = load_suite(name, max(int(tasks * scale), 2), n_actions=actions, split=split)
        collector = _Collector(s for s in SNAPSHOTS if s <= steps)
        run_learner(collector, suite, steps, seed=seed)
        parts.extend(collector._examples)
    width = max(p[1].shape[-1] for p in parts)
    def pad(x, axis):
        return np.pad(x, [(0, width - x.shape[axis]) if i == axis else (0, 0) for i in range(x.ndim)])
    columns = [[pad(f, 1), pad(c, 1), n, pad(t, 1), pad(np.ones_like(c), 1)] for f, c, n, t in parts]
    return [torch.from_numpy(np.concatenate([col[k] for col in columns]).astype(np.float32)) for k in range(5)]


def _pseudo(prior: TransitionPrior, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return prior(features) * mask  # no pseudo-counts on the padding


def _cross_entropy(prior: TransitionPrior, data, chunk: int = 8192) -> float:
    features, counts, n_sa, true, mask = data
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(counts), chunk):
            j = slice(i, i + chunk)
            total += float(prior_cross_entropy(_pseudo(prior, features[j], mask[j]), counts[j], n_sa[j], true[j])) * len(counts[j])
    return total / len(counts)


@dataclass
class PriorArgs:
    out: str = "runs/transition-prior"
    steps: int = 4000          # length of each collected run
    iters: int = 3000          # Adam steps
    batch: int = 4096          # examples per step
    lr: float = 3e-3
    hidden: int = 32
    eval_every: int = 500
    scale: float = 1.0         # multiplies every family's task count (tests use a small one)
    seed: int = 0


def train(args: PriorArgs) -> dict:
    torch.manual_seed(args.seed)
    t0 = time.time()
    data, val = collect("train", args.steps, args.scale), collect("validation", args.steps, args.scale / 2)
    print(f"{len(data[1])} training and {len(val[1])} validation pairs in {time.time() - t0:.0f} s", flush=True)
    prior = TransitionPrior(args.hidden)
    opt = torch.optim.Adam(prior.parameters(), lr=args.lr)
    rng = torch.Generator().manual_seed(args.seed)
    best = (_cross_entropy(prior, val), 0, {k: v.clone() for k, v in prior.state_dict().items()})
    empirical = best[0]
    for it in range(1, args.iters + 1):
        idx = torch.randint(0, len(data[1]), (args.batch,), generator=rng)
        loss = prior_cross_entropy(_pseudo(prior, data[0][idx], data[4][idx]), data[1][idx], data[2][idx], data[3][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % args.eval_every == 0 or it == args.iters:
            score = _cross_entropy(prior, val)
            print(f"iter {it}: train CE {loss.item():.4f}, validation CE {score:.4f}", flush=True)
            if score < best[0]:
                best = (score, it, {k: v.clone() for k, v in prior.state_dict().items()})
    prior.load_state_dict(best[2])
    summary = {"validation_cross_entropy": round(best[0], 4), "validation_cross_entropy_untrained": round(empirical, 4),
               "iteration": best[1], "training_pairs": len(data[1]), "validation_pairs": len(val[1]),
               "families": [list(f) for f in FAMILIES], "snapshots": list(SNAPSHOTS), "steps": args.steps,
               "iters": args.iters, "lr": args.lr, "batch": args.batch, "seed": args.seed, "scale": args.scale,
               "command": "python -m anymdp_agent.training.transition_prior" + "".join(
                   f" --{k} {v}" for k, v in vars(args).items() if v != getattr(PriorArgs, k))}
    prior.save(args.out, summary)
    print(f"kept iteration {best[1]} (validation CE {best[0]:.4f}, untrained {empirical:.4f}) -> {args.out}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    for name, default in vars(PriorArgs()).items():
        parser.add_argument(f"--{name}", type=type(default), default=default)
    args = PriorArgs(**vars(parser.parse_args(argv)))
    if args.steps < 1 or args.iters < 1 or args.batch < 1 or args.eval_every < 1 or not args.lr > 0 or not args.scale > 0:
        parser.error("steps, iters, batch and eval_every must be >= 1, lr and scale > 0")
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
