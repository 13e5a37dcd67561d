"""The in-context learners on AnyMDP tasks from the authors' own generator (``xenoverse``): tasks this package
never generated, from the generator it re-implements.

    pip install -e ".[bench]"                                      # xenoverse, once
    python -m benchmarks.peer_tasks                                # 128 tasks, peer seeds 2000..2127 (about 2 minutes)
    python -m benchmarks.peer_tasks --seed-start 1000 --tasks 256 --learners mbrl,mbrl:optimism=4   # a tuning set
    python -m benchmarks.peer_tasks --quick                        # smoke run (4 tasks, 300 steps)

Draws ``--tasks`` AnyMDP tasks with ``xenoverse.anymdp.AnyMDPTaskSampler(state_space=--states,
action_space=5, seed=s)`` for ``s = --seed-start ...`` (about 0.2 s per task), converts them to this package's
``Task`` (:func:`benchmarks._peer.peer_to_task`) and runs every learner of ``--learners`` on them through the
evaluation harness (:func:`~anymdp_agent.evaluation.run_learner` and :func:`~anymdp_agent.evaluation.analyse`:
exact oracle and random returns, the same normalisation and windows as ``anymdp-agent eval``). Prints each
learner's AUC with its 95% bootstrap CI and every learner paired with the first (the per-task AUC difference on the
same tasks, :func:`~anymdp_agent.evaluation.paired_difference`), and writes them to ``<out>/peer-tasks.json``.

The peer has no train / validation / test split of its seeds: pick a setting on one seed block (``--seed-start
1000``, say) and measure it on another (the default, 2000).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from anymdp_agent.evaluation import (Suite, SuiteReference, analyse, build_learner, check_output_dir,
                                     paired_difference, run_learner, summarise)
from anymdp_agent.fileio import atomic_write

N_ACTIONS = 5


def peer_suite(n_tasks: int, seed_start: int, n_states: int) -> Suite:
    """``n_tasks`` of the peer's AnyMDP tasks (seeds ``seed_start ...``) as one batched suite."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # the peer's env module imports pygame
    try:
        from xenoverse.anymdp import AnyMDPTaskSampler
    except ImportError:
        raise SystemExit("benchmarks.peer_tasks needs the authors' generator: pip install -e '.[bench]'") from None

    from benchmarks._peer import peer_to_task

    seeds = list(range(seed_start, seed_start + n_tasks))
    tasks = [peer_to_task(AnyMDPTaskSampler(state_space=n_states, action_space=N_ACTIONS, seed=s), s) for s in seeds]
    return Suite.of_tasks(f"peer-anymdp-{n_states}", tasks, seeds,
                          f"xenoverse AnyMDP tasks, {n_states} states, {N_ACTIONS} actions, peer seeds "
                          f"{seeds[0]}..{seeds[-1]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peer_tasks", description=__doc__.split("\n\n")[0])
    p.add_argument("--learners", default="agent,mbrl,ucbq",
                   help="learner specs as for anymdp-agent eval; the first is paired with each other "
                        "(default: agent,mbrl,ucbq)")
    p.add_argument("--tasks", type=int, default=128, help="peer tasks (default: 128)")
    p.add_argument("--seed-start", type=int, default=2000, help="first peer seed (default: 2000)")
    p.add_argument("--states", type=int, default=16, help="states per task (default: 16)")
    p.add_argument("--steps", type=int, default=4000, help="steps per task (default: 4000)")
    p.add_argument("--window", type=int, default=500, help="score window in steps (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the environments and learners (default: 0)")
    p.add_argument("--out", default="results/peer-tasks", help="output folder (default: results/peer-tasks)")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 tasks, 300 steps, window 50")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.steps, args.window = 4, 300, 50
    specs = [s for s in args.learners.split(",") if s]
    if not specs or args.tasks < 1 or args.steps < 1 or args.window < 1:
        p.error("need at least one learner, one task, one step and a window of at least one step")
    for spec in specs:  # bad specs are refused before any work
        try:
            build_learner(spec, dry_run=True)
        except ValueError as e:
            p.error(str(e))
    out = check_output_dir(args.out, create=True)
    learners = {spec: build_learner(spec) for spec in specs}

    t0 = time.time()
    suite = peer_suite(args.tasks, args.seed_start, args.states)
    ref = SuiteReference.of(suite)
    print(f"{suite.description}: sampled in {time.time() - t0:.0f} s", flush=True)
    result = {"suite": suite.description, "steps": args.steps, "window": args.window, "seed": args.seed,
              "learners": {}, "paired": []}
    for spec, learner in learners.items():
        t0 = time.time()
        a = analyse(run_learner(learner, suite, args.steps, args.seed), ref, args.window,
                    np.random.default_rng(args.seed))
        per_task = np.array(a["per_task_auc"], dtype=float)
        result["learners"][spec] = {**summarise(per_task, np.random.default_rng(args.seed)),
                                    "per_task_auc": [round(float(x), 6) if np.isfinite(x) else None for x in per_task]}
        s = result["learners"][spec]
        print(f"{spec:40s} AUC {s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]  ({time.time() - t0:.0f} s)",
              flush=True)
    first = specs[0]
    for spec in specs[1:]:
        d = paired_difference({"learners": result["learners"], "config": {"seed": args.seed}}, first, spec)
        d.pop("per_task_difference")
        result["paired"].append(d)
        print(f"{first} - {spec}: {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]  ahead on {d['ahead']}, "
              f"level on {d['level']}, behind on {d['behind']}", flush=True)
    path = Path(out) / "peer-tasks.json"
    atomic_write(path, lambda f: f.write(json.dumps(result, indent=1, allow_nan=False).encode()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
