"""``anymdp-agent``: the command line.

Subcommands:

- ``eval``: run in-context learners on a suite and write the JSON, the PNG and a table;
- ``demo``: the main job on the bundled defaults (a short ``eval`` of every learner on fresh test tasks).
"""

from __future__ import annotations

import argparse
import sys

from .baselines import LEARNERS


def _add_eval_arguments(p: argparse.ArgumentParser, defaults: dict) -> None:
    p.add_argument("--suite", default=defaults["suite"],
                   help="task suite: anymdp-N or garnet-N (N states, test seeds), frozenlake, frozenlake8x8, "
                        "cliffwalking, or gym:<EnvId> for any Gymnasium env with Discrete spaces "
                        f"(default: {defaults['suite']})")
    p.add_argument("--learners", default=defaults["learners"],
                   help=f"comma-separated learners, each NAME or NAME:key=value:key=value, NAME from {', '.join(LEARNERS)}, "
                        "or agent:PATH[:temperature_end=0.1:decay_steps=10000] for a pretrained agent checkpoint "
                        f"(default: {defaults['learners']})")
    p.add_argument("--tasks", type=int, default=defaults["tasks"],
                   help=f"number of tasks (independent runs for Gymnasium suites) (default: {defaults['tasks']})")
    p.add_argument("--steps", type=int, default=defaults["steps"],
                   help=f"environment steps each learner spends on each task (default: {defaults['steps']})")
    p.add_argument("--window", type=int, default=500, help="step window of the curve (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of environments and learners (default: 0)")
    p.add_argument("--seed-offset", type=int, default=0,
                   help="first task seed, counted into the test seed range (default: 0)")
    p.add_argument("--out", default=defaults["out"], help=f"output folder (default: {defaults['out']})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_eval(args: argparse.Namespace) -> int:
    from .evaluation import EvalConfig, check_config, check_output_dir, evaluate, format_table, write_results

    learners = [x.strip() for x in args.learners.split(",") if x.strip()]
    cfg = EvalConfig(suite=args.suite, learners=learners, tasks=args.tasks, steps=args.steps, seed=args.seed,
                     window=args.window, seed_offset=args.seed_offset)
    check_config(cfg)
    check_output_dir(args.out)
    result = evaluate(cfg, progress=not args.no_progress)
    paths = write_results(result, args.out)
    print(format_table(result))
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anymdp-agent", description="In-context RL on AnyMDP tasks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("eval", help="compare in-context learners on a task suite",
                       description="Run learners from scratch on every task of a suite for a step budget; write "
                                   "<out>/eval-<suite>.json (every number), .png (curves with 95% CIs) and print "
                                   "a table of normalised scores.")
    _add_eval_arguments(p, {"suite": "anymdp-16", "learners": "oracle,random,tql,ucbq,mbrl", "tasks": 64,
                            "steps": 4000, "out": "results"})
    p.set_defaults(func=_run_eval)
    d = sub.add_parser("demo", help="the main job on the bundled defaults (a quick comparison on fresh test tasks)",
                       description="A quick, complete comparison of every learner on fresh AnyMDP test tasks.")
    _add_eval_arguments(d, {"suite": "anymdp-16", "learners": "oracle,random,tql,ucbq,mbrl", "tasks": 128,
                            "steps": 4000, "out": "results/demo"})
    d.set_defaults(func=_run_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        parser.exit(2, f"anymdp-agent {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
