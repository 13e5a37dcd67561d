"""Make a trained checkpoint the package's bundled agent: copy, evaluate on held-out suites, render its card.

    python training/bundle.py --checkpoint runs/cpu-default/best --name anymdp-agent-planning-cpu

Writes ``anymdp_agent/pretrained/<name>/`` (config, safetensors, modeling code, ``train_config.json``,
``eval/*.json`` + ``eval/*.png`` from the evaluation harness on *test* seeds, and ``README.md``, the model
card rendered from those artifacts). The suites compare the agent with every classic learner on the same
tasks and seeds; nothing here is tuned to pass a bar.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from anymdp_agent.evaluation import EvalConfig, evaluate, format_table, write_results
from anymdp_agent.hub import write_model_card
from anymdp_agent.rollout import load_agent

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ["mbrl", "mbrl:lookahead=1", "ucbq", "tql", "random", "oracle"]
#: (suite, instances, steps, window): the quality bar's suite first, then the rest of the picture.
SUITES = [("anymdp-16", 128, 4000, 500), ("frozenlake", 32, 20000, 2000), ("cliffwalking", 16, 10000, 1000),
          ("anymdp-32", 64, 4000, 500), ("anymdp-64", 32, 4000, 500)]
#: The same 16-state tasks at a context of 16,000 steps: 16x the final training sequence length.
LONG = ("anymdp-16", 32, 16000, 2000)

LIMITATIONS = ("- Most of the planning backbone's ability is built in (exact statistics and value iteration); "
               "training tunes its discount, temperature, optimism and exploration bonus. It is a strong, "
               "cheap in-context learner, not evidence that a generic sequence model learns to plan.\n"
               "- On FrozenLake (sparse reward at the goal, slippery moves) it learns far more slowly than the "
               "count-based planner it imitates: what it tuned on AnyMDP's dense composite rewards does not transfer.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a pretrained_model/ folder (e.g. runs/cpu-default/best)")
    p.add_argument("--name", default="anymdp-agent-planning-cpu", help="folder name under anymdp_agent/pretrained/")
    p.add_argument("--quick", action="store_true", help="small suites (a smoke run)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    src = Path(args.checkpoint)
    load_agent(src)  # refuses an incomplete or inconsistent checkpoint before anything is copied
    dest = ROOT / "anymdp_agent" / "pretrained" / args.name
    tmp = dest.with_name(f".{args.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("eval", "README.md", ".*"))
    suites = SUITES + [LONG]
    if args.quick:
        suites = [(name, max(2, n // 16), max(200, steps // 20), max(50, window // 20)) for name, n, steps, window in suites]
    t0 = time.perf_counter()
    for name, n, steps, window in suites:
        cfg = EvalConfig(suite=name, learners=[f"agent:{tmp}", *BASELINES], tasks=n, steps=steps, seed=args.seed,
                         window=window)
        result = evaluate(cfg, progress=True)
        # Name the agent by its bundled name, not the temporary folder it was evaluated from.
        result["learners"] = {("agent" if k.startswith("agent:") else k): v for k, v in result["learners"].items()}
        result["config"]["learners"] = ["agent" if k.startswith("agent:") else k for k in cfg.learners]
        long_context = (name, n, steps, window) == LONG or (args.quick and suites.index((name, n, steps, window)) == len(SUITES))
        write_results(result, tmp / "eval", stem=f"eval-{name}" + ("-long-context" if long_context else ""),
                      compact=True)
        print(format_table(result), flush=True)
    write_model_card(tmp, extra_limitations=LIMITATIONS, name=args.name)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    print(f"bundled {src} as {dest} ({time.perf_counter() - t0:.0f} s of evaluation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
