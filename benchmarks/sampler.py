"""Accepted AnyMDP tasks per second, ours vs the peer (``xenoverse``), at n = 16, 32, 64, 128 states.

    python -m benchmarks.sampler            # the full run (about 3-4 minutes on one core)
    python -m benchmarks.sampler --quick    # smoke run (n = 16, 32; under a minute)

Three parts, all in one process pinned to one core:

1. **Speed.** Per size, the contenders are timed round-robin (peer, ours on the peer's seeds, ours on
   a longer seed block), one warm-up round (it JIT-compiles the peer's numba kernels) then
   ``--repeats`` timed rounds. Repeat ``r`` uses the seed block ``10000 + 1000 r, ...``: the peer
   samples its first ``k_peer`` seeds, "ours (same seeds)" exactly those seeds, "ours" the first
   ``k_ours`` (a superset, so its per-task time is less noisy). Reported: seconds per accepted task,
   median [min, max], and the ratio of medians peer / ours (the speed-up).
2. **Acceptance rate** = accepted tasks / raw draws, over seeds ``0..N-1`` (more for ours, which is
   cheap). The peer does not report its draws, so its ``sample_mdp`` / ``check_valuefunction`` /
   ``get_opt_trajectory_dist`` are wrapped to count calls; ours' private stages are wrapped the same
   way, so both sides get a breakdown of why draws were rejected (calibration failed in 5 rounds,
   oracle-random gap < 2, visit spread too narrow).
3. **Task statistics** of the accepted tasks of part 2, computed by the same code for both sides (the
   peer's dicts are converted to our ``Task``): pitfalls, terminal goals, ``max_steps``, transition
   row support, band reach, and exact (linear-solve) value statistics.
"""

from __future__ import annotations

from benchmarks._common import pin_one_core

CORE = pin_one_core()

import argparse  # noqa: E402  (numpy and friends must come after the pinning)
import contextlib  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # the peer's env module imports pygame

import numpy as np  # noqa: E402

import anymdp_agent.envs.anymdp as ours_mod  # noqa: E402
from anymdp_agent.envs import Task, sample_anymdp_task  # noqa: E402
from anymdp_agent.envs.anymdp import quality_gamma, visit_spread  # noqa: E402
from anymdp_agent.envs.solvers import (  # noqa: E402
    optimal_q, oracle_return, policy_evaluation, random_return, uniform_policy)
from anymdp_agent.envs.task import stack_tasks  # noqa: E402
from benchmarks._common import Contender, fmt_time, machine_line, med, run_alternating, table  # noqa: E402
from benchmarks._peer import peer_to_task  # noqa: E402

import xenoverse.anymdp.solver as peer_solver  # noqa: E402
import xenoverse.anymdp.task_sampler as peer_ts  # noqa: E402
from xenoverse.anymdp import AnyMDPTaskSampler  # noqa: E402

N_ACTIONS = 5
SIZES = (16, 32, 64, 128)
#: Tasks per timed repeat: the peer costs ~0.15-0.4 s per task at n<=32, ~1.5 s at 64, ~3-4 s at 128.
PEER_TASKS = {16: 4, 32: 3, 64: 2, 128: 2}
OURS_TASKS = {16: 50, 32: 50, 64: 50, 128: 25}
#: Seeds for the acceptance rate and the task statistics.
OURS_ACCEPT_SEEDS = 200
PEER_ACCEPT_SEEDS = {16: 40, 32: 40, 64: 20, 128: 10}
#: Acceptance rates measured on the reference generator (docs/anymdp.md, section 5).
SPEC_ACCEPT = {16: 0.25, 32: 0.50, 64: 0.53, 128: 0.75}
TIMING_SEED_BASE = 10_000


def timing_seeds(rep: int, k: int) -> range:
    start = TIMING_SEED_BASE + 1000 * rep
    return range(start, start + k)


# ---------------------------------------------------------------------- speed


def time_size(n: int, repeats: int, k_peer: int, k_ours: int, verbose: bool) -> dict:
    def peer(rep):
        seeds = timing_seeds(rep, k_peer)
        return lambda: [AnyMDPTaskSampler(state_space=n, action_space=N_ACTIONS, seed=s) for s in seeds]

    def ours_same(rep):
        seeds = timing_seeds(rep, k_peer)
        return lambda: [sample_anymdp_task(n, N_ACTIONS, seed=s) for s in seeds]

    def ours(rep):
        seeds = timing_seeds(rep, k_ours)
        return lambda: [sample_anymdp_task(n, N_ACTIONS, seed=s) for s in seeds]

    cs = [Contender("peer", peer, k_peer), Contender("ours (same seeds)", ours_same, k_peer),
          Contender("ours", ours, k_ours)]
    run_alternating(cs, repeats, warmup=1, log=print if verbose else None)
    p, same, o = cs
    return {
        "n": n, "k_peer": k_peer, "k_ours": k_ours,
        "peer": p.per_unit, "ours_same": same.per_unit, "ours": o.per_unit,
        "ratio": med(p.per_unit) / med(o.per_unit),
        "ratio_same": med(p.times) / med(same.times),
    }


# ---------------------------------------------------------------------- acceptance (counting wrappers)


class Counts:
    def __init__(self):
        self.draws = self.calib_fail = self.gap_fail = self.spread_fail = self.other_fail = self.accepted = 0

    def rate(self) -> float:
        return self.accepted / self.draws if self.draws else float("nan")

    def breakdown(self) -> str:
        d = max(self.draws, 1)
        return (f"calib {self.calib_fail / d:.0%}, gap {self.gap_fail / d:.0%}, "
                f"spread {self.spread_fail / d:.0%}" + (f", other {self.other_fail / d:.0%}" if self.other_fail else ""))


@contextlib.contextmanager
def count_peer(counts: Counts):
    """Count the peer's raw draws and rejections by wrapping the functions its sampler calls by name."""
    orig_mdp, orig_check, orig_dist = peer_ts.sample_mdp, peer_ts.check_valuefunction, peer_solver.get_opt_trajectory_dist
    spread = {}

    def sample_mdp(*a, **kw):
        counts.draws += 1
        res = orig_mdp(*a, **kw)
        if res is None:
            counts.calib_fail += 1
        return res

    def get_opt_trajectory_dist(*a, **kw):
        out = orig_dist(*a, **kw)
        spread["ok"] = out[0] > 0.70 and out[1] > 0.35
        return out

    def check_valuefunction(*a, **kw):
        spread.clear()
        ok = orig_check(*a, **kw)
        if ok:
            counts.accepted += 1
        elif "ok" not in spread:
            counts.gap_fail += 1
        elif not spread["ok"]:
            counts.spread_fail += 1
        else:
            counts.other_fail += 1  # the transition-sum check
        return ok

    peer_ts.sample_mdp, peer_ts.check_valuefunction = sample_mdp, check_valuefunction
    peer_solver.get_opt_trajectory_dist = get_opt_trajectory_dist
    try:
        yield counts
    finally:
        peer_ts.sample_mdp, peer_ts.check_valuefunction = orig_mdp, orig_check
        peer_solver.get_opt_trajectory_dist = orig_dist


@contextlib.contextmanager
def count_ours(counts: Counts):
    """Same breakdown for ours, by wrapping the private stages ``sample_anymdp_task`` calls by name (one seed at a
    time: the spread flag is per quality check)."""
    orig_cal, orig_q, orig_spread = ours_mod._calibrate_terminal_rewards, ours_mod._quality, ours_mod.visit_spread
    flag = {}

    # The calibration and the quality filter are generators of solve requests (the sampler batches the solves of
    # many seeds): the wrappers pass the requests through and count on the result.
    def calibrate(*a, **kw):
        counts.draws += 1
        res = yield from orig_cal(*a, **kw)
        if res is None:
            counts.calib_fail += 1
        return res

    def spread_fn(*a, **kw):
        flag["spread"] = True
        return orig_spread(*a, **kw)

    def quality(*a, **kw):
        flag.clear()
        res = yield from orig_q(*a, **kw)
        if res is not None:
            counts.accepted += 1
        elif flag.get("spread"):
            counts.spread_fail += 1
        else:
            counts.gap_fail += 1
        return res

    ours_mod._calibrate_terminal_rewards, ours_mod._quality, ours_mod.visit_spread = calibrate, quality, spread_fn
    try:
        yield counts
    finally:
        ours_mod._calibrate_terminal_rewards, ours_mod._quality, ours_mod.visit_spread = orig_cal, orig_q, orig_spread


def accept_size(n: int, n_ours: int, n_peer: int) -> dict:
    ours_counts, peer_counts = Counts(), Counts()
    t0 = time.perf_counter()
    with count_ours(ours_counts):
        ours_tasks = [sample_anymdp_task(n, N_ACTIONS, seed=s) for s in range(n_ours)]
    t_ours = time.perf_counter() - t0
    meta_draws = sum(t.meta["draws"] for t in ours_tasks)
    t0 = time.perf_counter()
    with count_peer(peer_counts):
        peer_tasks = [peer_to_task(AnyMDPTaskSampler(state_space=n, action_space=N_ACTIONS, seed=s), s)
                      for s in range(n_peer)]
    t_peer = time.perf_counter() - t0
    return {"n": n, "ours": ours_counts, "peer": peer_counts, "meta_draws": meta_draws,
            "ours_tasks": ours_tasks, "peer_tasks": peer_tasks, "t_ours": t_ours, "t_peer": t_peer}


# ---------------------------------------------------------------------- task statistics


def task_stats(tasks: list[Task]) -> dict:
    """Structure and exact value statistics of same-size tasks (all computed here, not read from meta)."""
    b = stack_tasks(tasks)
    t, r, start, term = b.transition, b.reward, b.start, b.terminal
    n = t.shape[1]
    live = ~term  # [B, n]
    goal = term[:, -1]
    pits = term.sum(1) - goal
    rows = t[live]  # [L, na, n]
    nnz = (rows > 0).sum(-1)
    nnz_1e3 = (rows > 1e-3).sum(-1)
    # Band reach: farthest reachable state ahead of / behind s, over all actions.
    reach = t.max(2) > 0  # [B, n, n]
    cols = np.arange(n)
    s_idx = cols[None, :, None]
    fwd = np.where(reach, cols[None, None, :] - s_idx, -n).max(-1)[live]
    back = np.where(reach, s_idx - cols[None, None, :], -n).max(-1)[live]
    # Probability of moving into a pitfall (a terminal that is not the goal) in one step, per live (s, a) row.
    pit_cols = term & (cols[None, :] < n - 1)
    into_pit = np.einsum("bsat,bt->bsa", t, pit_cols.astype(float))[live]
    # Exact values at the quality filter's discount: the filter's own gap (min over start states) and spread.
    gf = quality_gamma(n)
    q_opt = optimal_q(t, r, gf, b.action_mask)
    q_rnd = policy_evaluation(t, r, uniform_policy(t, b.action_mask), gf)
    gaps, ginis, ents = [], [], []
    for i, task in enumerate(b.tasks):
        starts = start[i] > 0
        gaps.append(((q_opt[i][starts].max(-1) - q_rnd[i][starts].max(-1)) * (1 - gf) * task.max_steps).min())
        g, e = visit_spread(t[i], q_opt[i].argmax(-1), start[i], term[i], task.max_steps)
        ginis.append(g)
        ents.append(e)
    ret_gap = oracle_return(b) - random_return(b)
    return {
        "pitfalls": pits.mean(), "goal terminal": goal.mean(), "start states": (start > 0).sum(1).mean(),
        "max_steps": b.max_steps.mean(), "nnz per (s,a) row": nnz.mean(), "entries > 1e-3 per row": nnz_1e3.mean(),
        "forward reach": fwd.mean(), "backward reach": back.mean(), "P(step into pitfall)": into_pit.mean(),
        "filter gap (min over starts)": np.mean(gaps), "gini": np.mean(ginis), "entropy": np.mean(ents),
        "oracle - random return": ret_gap.mean(), "oracle - random return (median)": np.median(ret_gap),
    }


# ---------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: n = 16, 32, few seeds")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help=f"state counts (default {SIZES})")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per contender (default 5, after 1 warm-up)")
    ap.add_argument("--no-stats", action="store_true", help="skip the acceptance rates and task statistics")
    ap.add_argument("--verbose", action="store_true", help="print every timed call")
    args = ap.parse_args(argv)
    sizes = tuple(args.sizes or ((16, 32) if args.quick else SIZES))
    peer_k = {n: 1 if args.quick else PEER_TASKS.get(n, 2) for n in sizes}
    ours_k = {n: 10 if args.quick else OURS_TASKS.get(n, 25) for n in sizes}
    ours_acc = 20 if args.quick else OURS_ACCEPT_SEEDS
    peer_acc = {n: 4 if args.quick else PEER_ACCEPT_SEEDS.get(n, 10) for n in sizes}

    print("benchmarks.sampler: accepted AnyMDP tasks per second, ours vs the peer (xenoverse.anymdp.AnyMDPTaskSampler)")
    print(machine_line())
    print(f"{N_ACTIONS} actions; {args.repeats} timed repeats after 1 warm-up, contenders alternated per repeat"
          + ("; QUICK smoke run" if args.quick else ""))
    t_all = time.perf_counter()

    rows = []
    for n in sizes:
        res = time_size(n, args.repeats, peer_k[n], ours_k[n], args.verbose)
        rows.append([n, f"{res['k_peer']} / {res['k_ours']}", fmt_time(res["peer"]), fmt_time(res["ours_same"]),
                     fmt_time(res["ours"]), f"{1 / med(res['peer']):.3g}", f"{1 / med(res['ours']):.3g}",
                     f"{res['ratio']:.0f}x", f"{res['ratio_same']:.0f}x"])
        print(f"  n={n}: timed ({time.perf_counter() - t_all:.0f} s so far)", flush=True)
    print("\nSeconds per accepted task, median [min, max] over repeats; tasks/s from the medians;"
          " speed-up = ratio of medians peer / ours")
    print(table(["n", "tasks/repeat peer / ours", "peer s/task", "ours s/task (same seeds)", "ours s/task",
                 "peer tasks/s", "ours tasks/s", "speed-up", "speed-up (same seeds)"], rows))

    if args.no_stats:
        return
    acc_rows, stats = [], []
    for n in sizes:
        a = accept_size(n, ours_acc, peer_acc[n])
        o, p = a["ours"], a["peer"]
        if a["meta_draws"] != o.draws:
            print(f"  WARNING n={n}: our tasks' meta['draws'] sum to {a['meta_draws']}, the wrapped calibration "
                  f"stage was called {o.draws} times")
        acc_rows.append([n, f"{o.rate():.0%} ({o.accepted}/{o.draws})", f"{p.rate():.0%} ({p.accepted}/{p.draws})",
                         f"{SPEC_ACCEPT.get(n, float('nan')):.0%}", o.breakdown(), p.breakdown()])
        stats.append((n, task_stats(a["ours_tasks"]), task_stats(a["peer_tasks"]), len(a["ours_tasks"]),
                      len(a["peer_tasks"])))
        print(f"  n={n}: acceptance + statistics done ({time.perf_counter() - t_all:.0f} s so far)", flush=True)
    print(f"\nAcceptance rate = accepted / raw draws over seeds 0..N-1 (ours N={ours_acc}, peer N="
          + ", ".join(f"{peer_acc[n]} at {n}" for n in sizes) + "); rejected draws by cause, as a share of draws")
    print(table(["n", "ours", "peer", "spec (reference)", "ours rejected by", "peer rejected by"], acc_rows))

    print("\nStatistics of the accepted tasks above (same code on both sides; values exact, by linear solves;"
          " filter gap/gini/entropy at the filter's discount 2^(-1/n), returns at the oracle's 0.994)")
    keys = list(stats[0][1])
    header = ["statistic"] + [f"n={n} {side}" for n, *_ in stats for side in ("ours", "peer")]
    body = [[k] + [f"{s[k]:.3g}" for _, so, sp, *_ in stats for s in (so, sp)] for k in keys]
    body.append(["tasks"] + [str(c) for *_, co, cp in stats for c in (co, cp)])
    print(table(header, body))
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
