"""Is AnyMDP harder than Garnet for tabular Q-learning? The paper's (Wang et al., arXiv 2502.02869 v4) claim, rerun.

    python -m benchmarks.anymdp_vs_garnet               # the full run (about 5.5 minutes on 2 cores)
    python -m benchmarks.anymdp_vs_garnet --quick       # smoke run (16 tasks, 1000 steps; seconds)
    python -m benchmarks.anymdp_vs_garnet --out DIR     # where the JSON + PNG results go
    python -m benchmarks.anymdp_vs_garnet --reanalyse   # only rebuild the tables from the JSON in --out

Runs the evaluation harness (:func:`anymdp_agent.evaluation.evaluate`: exact normalisation, test-seed
tasks, 95% bootstrap CIs over tasks) with the reference's tabular Q-learning (``tql``, its default
settings), the model-based planner (``mbrl``) and the two anchors (``random``, ``oracle``; the oracle
is a check that the normalisation gives 1) on ``anymdp-16``, ``garnet-16``, ``anymdp-64`` and
``garnet-64`` (5 actions; 256 tasks, 10,000 steps), then TQL alone for ``--long-steps`` (100,000) on
``--long-tasks`` (128) tasks per suite, and prints

1. per suite and learner: the normalised score in the last step window and the AUC (mean of the
   window curve), each with its 95% CI, the IQM and median, and the share of tasks below random;
2. for TQL, the score after the same number of steps on AnyMDP and on Garnet of the same size, and
   the difference Garnet - AnyMDP with a 95% two-sample bootstrap CI (the claim holds at a
   checkpoint when that CI lies above 0);
3. the same comparison with episode-weighted estimates (the harness's window curve weights windows,
   not episodes, equally, which biases it when episode lengths vary, as on AnyMDP) and with medians.

Every run's full record is saved with :func:`anymdp_agent.evaluation.write_results` as
``<out>/<suite>.json|png`` (``<suite>-tql-long.json|png`` for the long run), and the tables as
``<out>/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from anymdp_agent.evaluation import (MIN_GAP, EvalConfig, bootstrap_ci, check_output_dir, evaluate, format_table,
                                     write_results)
from benchmarks._common import table

SIZES = (16, 64)
LEARNERS = ("tql", "mbrl", "random", "oracle")
FOCUS = "tql"
CHECKPOINTS = (500, 1000, 2500, 5000, 10000)
#: Starts s of the "first episode starting at or after step s" estimator (episodes are capped below 500
#: steps, so one that starts by s <= steps - 1000 always finishes within the budget).
EPISODE_STARTS = (0, 1000, 2500, 5000, 9000)


def _ci(d: dict) -> str:
    return f"{d['mean']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def diff_ci(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, resamples: int = 4000,
            level: float = 0.95, stat=np.mean) -> tuple[float, float, float]:
    """``stat`` of ``b`` minus ``stat`` of ``a`` (independent task sets) and its percentile-bootstrap CI."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return (float("nan"),) * 3
    ma = stat(a[rng.integers(0, len(a), size=(resamples, len(a)))], axis=-1)
    mb = stat(b[rng.integers(0, len(b), size=(resamples, len(b)))], axis=-1)
    q = (1.0 - level) / 2.0
    d = mb - ma
    return float(stat(b) - stat(a)), float(np.quantile(d, q)), float(np.quantile(d, 1.0 - q))


def median_rows(results: dict, sizes, rng: np.random.Generator) -> list[list[str]]:
    """TQL's per-task median (robust to the few tasks whose tiny oracle-random gap blows the normalised
    score up), last window and AUC, AnyMDP vs Garnet, with bootstrap CIs."""
    rows = []
    for n in sizes:
        a_res, g_res = results.get(f"anymdp-{n}"), results.get(f"garnet-{n}")
        if a_res is None or g_res is None or FOCUS not in a_res["learners"] or FOCUS not in g_res["learners"]:
            continue
        ea, eg = a_res["learners"][FOCUS], g_res["learners"][FOCUS]
        steps, window = a_res["config"]["steps"], a_res["config"]["window"]
        pairs = [(f"{steps - window}-{steps}", np.array(ea["per_task_window_scores"], float)[:, -1],
                  np.array(eg["per_task_window_scores"], float)[:, -1]),
                 (f"AUC 0-{steps}", np.array(ea["per_task_auc"], float), np.array(eg["per_task_auc"], float))]
        for label, a, g in pairs:
            d, lo, hi = diff_ci(a, g, rng, stat=np.median)
            ca = bootstrap_ci(a, rng, stat=np.median)
            cg = bootstrap_ci(g, rng, stat=np.median)
            rows.append([n, label, f"{np.nanmedian(a):.3f} [{ca[0]:.3f}, {ca[1]:.3f}]",
                         f"{np.nanmedian(g):.3f} [{cg[0]:.3f}, {cg[1]:.3f}]", f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                         _verdict(lo, hi)])
    return rows


def summary_rows(results: dict) -> list[list[str]]:
    rows = []
    for suite, res in results.items():
        for name, e in res["learners"].items():
            last = e["windows"][-1]
            auc = np.array(e["per_task_auc"], dtype=np.float64)
            rows.append([suite, name, _ci(last), f"{last['iqm']:.3f}", _ci(e["auc"]), f"{e['auc']['iqm']:.3f}",
                         f"{np.nanmedian(auc):.3f}", f"{np.mean(auc < 0):.0%}",
                         f"{e['episodes_per_task']['mean']:.0f}", f"{last['n']}/{res['suite']['instances']}",
                         f"{e['seconds']:.0f}"])
    return rows


def _verdict(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a (no finished episode)"
    return "AnyMDP harder" if lo > 0 else "Garnet harder" if hi < 0 else "no significant difference"


def checkpoint_rows(results: dict, sizes, window: int, steps: int, rng: np.random.Generator,
                    checkpoints=CHECKPOINTS) -> list[list[str]]:
    """TQL's window score at each checkpoint and its AUC, AnyMDP vs Garnet, with the difference's CI."""
    rows = []
    for n in sizes:
        a_res, g_res = results.get(f"anymdp-{n}"), results.get(f"garnet-{n}")
        if a_res is None or g_res is None or FOCUS not in a_res["learners"] or FOCUS not in g_res["learners"]:
            continue
        a = np.array(a_res["learners"][FOCUS]["per_task_window_scores"], dtype=np.float64)
        g = np.array(g_res["learners"][FOCUS]["per_task_window_scores"], dtype=np.float64)
        marks = [k for k in checkpoints if window <= k <= steps and k % window == 0]
        for k in marks:
            j = k // window - 1
            wa, wg = a_res["learners"][FOCUS]["windows"][j], g_res["learners"][FOCUS]["windows"][j]
            d, lo, hi = diff_ci(a[:, j], g[:, j], rng)
            verdict = _verdict(lo, hi)
            rows.append([n, f"{k - window}-{k}", _ci(wa), _ci(wg), f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]", verdict])
        ad = np.array(a_res["learners"][FOCUS]["per_task_auc"], dtype=np.float64)
        gd = np.array(g_res["learners"][FOCUS]["per_task_auc"], dtype=np.float64)
        d, lo, hi = diff_ci(ad, gd, rng)
        verdict = _verdict(lo, hi)
        rows.append([n, f"AUC 0-{steps}", _ci(a_res["learners"][FOCUS]["auc"]), _ci(g_res["learners"][FOCUS]["auc"]),
                     f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]", verdict])
    return rows


def episode_scores(res: dict, learner: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every finished episode of ``learner`` on the scored tasks: (task, start, length, normalised score)."""
    hi, lo = np.array(res["suite"]["oracle_return"]), np.array(res["suite"]["random_return"])
    scored = (hi - lo) >= MIN_GAP
    e = res["learners"][learner]["episodes"]
    env, start, length = np.array(e["env"], int), np.array(e["start"], int), np.array(e["length"], int)
    score = (np.array(e["return"]) - lo[env]) / np.where(scored, hi - lo, 1.0)[env]
    keep = scored[env]
    return env[keep], start[keep], length[keep], score[keep]


def episode_estimates(res: dict, learner: str, starts) -> dict[str, np.ndarray]:
    """Per-task estimates that weight episodes, not windows, equally (NaN for a task without one).

    ``all``: mean over every finished episode of the budget; ``from s``: the score of the first
    episode that starts at or after step ``s`` (which episode that is depends on earlier episodes
    only, so it is a typical episode of the policy at that time, not a length-biased one).
    """
    b = res["suite"]["instances"]
    env, start, length, score = episode_scores(res, learner)
    hi, lo = np.array(res["suite"]["oracle_return"]), np.array(res["suite"]["random_return"])
    scored = (hi - lo) >= MIN_GAP
    count = np.bincount(env, minlength=b)
    out = {"all": np.where(count > 0, np.bincount(env, score, b) / np.maximum(count, 1), np.nan)[scored]}
    for s in starts:
        first = np.full(b, np.nan)
        after = start >= s
        order = np.lexsort((start[after], env[after]))
        e_after, sc_after = env[after][order], score[after][order]
        uniq, idx = np.unique(e_after, return_index=True)
        first[uniq] = sc_after[idx]
        out[f"from {s}"] = first[scored]
    return out


def episode_rows(results: dict, sizes, steps: int, rng: np.random.Generator,
                 episode_starts=EPISODE_STARTS) -> list[list[str]]:
    """Episode-weighted TQL estimates (and the oracle's, as a check), AnyMDP vs Garnet."""
    starts = [s for s in episode_starts if s <= steps - 1000]
    rows = []
    for n in sizes:
        a_res, g_res = results.get(f"anymdp-{n}"), results.get(f"garnet-{n}")
        if a_res is None or g_res is None:
            continue
        for name in (FOCUS, "oracle"):
            if name not in a_res["learners"] or name not in g_res["learners"]:
                continue
            a, g = episode_estimates(a_res, name, starts), episode_estimates(g_res, name, starts)
            for key in a:
                if name == "oracle" and key != "all":
                    continue
                d, lo, hi = diff_ci(a[key], g[key], rng)
                ca, cg = bootstrap_ci(a[key], rng), bootstrap_ci(g[key], rng)
                verdict = _verdict(lo, hi)
                label = "all episodes" if key == "all" else f"first episode starting >= step {key[5:]}"
                rows.append([n, name, label, f"{np.nanmean(a[key]):.3f} [{ca[0]:.3f}, {ca[1]:.3f}]",
                             f"{np.nanmean(g[key]):.3f} [{cg[0]:.3f}, {cg[1]:.3f}]",
                             f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]", verdict if name == FOCUS else "(sanity: both ~1)"])
    return rows


def run_or_load(suite: str, cfg: EvalConfig, out: str, stem: str, reanalyse: bool) -> dict:
    """Evaluate ``cfg`` and save it as ``<out>/<stem>.json|png``, or (``reanalyse``) load that file."""
    if reanalyse:
        with open(Path(out) / f"{stem}.json") as fh:
            return json.load(fh)
    t0 = time.perf_counter()
    res = evaluate(cfg)
    res["wall_seconds"] = time.perf_counter() - t0
    paths = write_results(res, out, stem=stem)
    print(f"{stem}: {res['wall_seconds']:.0f} s, saved {paths['json']}", flush=True)
    print(format_table(res), flush=True)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/anymdp_vs_garnet", help="folder for the JSON/PNG results "
                    "(default results/anymdp_vs_garnet)")
    ap.add_argument("--tasks", type=int, default=256, help="tasks per 16-state suite (default 256)")
    ap.add_argument("--tasks-64", type=int, default=256, help="tasks per 64-state suite (default 256)")
    ap.add_argument("--steps", type=int, default=10000, help="environment steps per task (default 10000)")
    ap.add_argument("--window", type=int, default=500, help="step window of the curve (default 500)")
    ap.add_argument("--learners", default=",".join(LEARNERS), help=f"comma-separated (default {','.join(LEARNERS)})")
    ap.add_argument("--long-steps", type=int, default=100000, help="steps of the long TQL-only run "
                    "(default 100000; 0 skips it)")
    ap.add_argument("--long-tasks", type=int, default=128, help="tasks per suite in the long run (default 128)")
    ap.add_argument("--seed", type=int, default=0, help="env/learner seed (default 0)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 tasks, 1000 steps (long run: 8 tasks, 4000)")
    ap.add_argument("--reanalyse", action="store_true", help="run nothing: rebuild the tables from the JSON "
                    "files already in --out (the sizes are read from them)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks, args.tasks_64, args.steps = 16, 16, 1000
        args.long_tasks, args.long_steps = min(args.long_tasks, 8), min(args.long_steps, 4000)
    learners = [s.strip() for s in args.learners.split(",") if s.strip()]
    check_output_dir(args.out)  # fail before any work if the folder is unwritable
    long_window = max(args.long_steps // 20, 1)

    t_all = time.perf_counter()
    results, long_results = {}, {}
    for n in SIZES:
        for kind in ("anymdp", "garnet"):
            suite = f"{kind}-{n}"
            cfg = EvalConfig(suite=suite, learners=learners, tasks=args.tasks if n == 16 else args.tasks_64,
                             steps=args.steps, seed=args.seed, window=args.window)
            results[suite] = run_or_load(suite, cfg, args.out, suite, args.reanalyse)
    if args.long_steps > 0:
        for n in SIZES:
            for kind in ("anymdp", "garnet"):
                suite = f"{kind}-{n}"
                cfg = EvalConfig(suite=suite, learners=[FOCUS], tasks=args.long_tasks, steps=args.long_steps,
                                 seed=args.seed, window=long_window)
                long_results[suite] = run_or_load(suite, cfg, args.out, f"{suite}-{FOCUS}-long", args.reanalyse)
    total = time.perf_counter() - t_all
    if args.reanalyse:  # the wall time of the runs that made the saved files, and their sizes
        total = sum(r.get("wall_seconds", float("nan")) for r in [*results.values(), *long_results.values()])
        c16, c64 = results["anymdp-16"]["config"], results["anymdp-64"]["config"]
        args.tasks, args.tasks_64, args.steps, args.window = c16["tasks"], c64["tasks"], c16["steps"], c16["window"]
        if long_results:
            cl = long_results["anymdp-16"]["config"]
            args.long_tasks, args.long_steps, long_window = cl["tasks"], cl["steps"], cl["window"]

    rng = lambda: np.random.default_rng(args.seed)  # noqa: E731  (a fresh stream per table: order-independent CIs)
    head = ["suite", "learner", "last window score [95% CI]", "IQM", "AUC [95% CI]", "AUC IQM", "AUC median",
            "tasks with AUC < 0", "episodes/task", "tasks scored", "loop s"]
    cmp_head = ["n", "steps", "AnyMDP [95% CI]", "Garnet [95% CI]", "Garnet - AnyMDP [95% CI]", "verdict"]
    ep_head = ["n", "learner", "estimate", "AnyMDP [95% CI]", "Garnet [95% CI]", "Garnet - AnyMDP [95% CI]", "verdict"]
    text = [f"command: python -m benchmarks.anymdp_vs_garnet {' '.join(argv)}".rstrip(),
            f"{args.steps} steps per task, {args.window}-step windows; tasks: {args.tasks} (16 states), "
            f"{args.tasks_64} (64 states), 5 actions, test seeds; normalised score (oracle 1, random 0, exact)",
            "", f"last window = steps {args.steps - args.window}-{args.steps}; AUC = mean of the window curve",
            table(head, summary_rows(results)), "",
            f"{FOCUS}: normalised score of the episodes ending in the step window, AnyMDP vs Garnet of the same "
            "size; difference = Garnet - AnyMDP, 95% two-sample bootstrap CI over tasks",
            table(cmp_head, checkpoint_rows(results, SIZES, args.window, args.steps, rng())),
            "", "Episode-weighted estimates (the window curve weights windows equally, so episodes in sparse "
            "windows count more: with variable-length episodes, as AnyMDP's, that biases it; these do not): "
            "per task, the mean over every finished episode, or the first episode starting at or after a step",
            table(ep_head, episode_rows(results, SIZES, args.steps, rng())), "",
            f"{FOCUS}: per-task medians instead of means (difference of medians, Garnet - AnyMDP, bootstrap CI)",
            table(cmp_head, median_rows(results, SIZES, rng()))]
    if long_results:
        marks = tuple(k * long_window for k in (1, 2, 5, 10, 20))
        starts = tuple(k * long_window for k in (0, 2, 5, 10)) + (args.long_steps - 1000,)
        text += ["", f"Long run, {FOCUS} only: {args.long_tasks} tasks per suite, {args.long_steps} steps, "
                 f"{long_window}-step windows",
                 table(head, summary_rows(long_results)), "",
                 table(cmp_head, checkpoint_rows(long_results, SIZES, long_window, args.long_steps, rng(), marks)), "",
                 table(ep_head, episode_rows(long_results, SIZES, args.long_steps, rng(), starts)), "",
                 table(cmp_head, median_rows(long_results, SIZES, rng()))]
    text += ["", f"total wall time {total:.0f} s (the evaluate() calls"
             + (", as saved in the JSON files; tables rebuilt with --reanalyse)" if args.reanalyse else ")")]
    print("\n" + "\n".join(text))
    out = Path(args.out)
    fd, tmp = tempfile.mkstemp(prefix=".summary.", suffix=".md.tmp", dir=out)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(text) + "\n")
    os.replace(tmp, out / "summary.md")


if __name__ == "__main__":
    main()
