"""Environment steps per second: our ``BatchedAnyMDPEnv`` (B tasks at once, one compiled loop) vs the peer's env.

    python -m benchmarks.env_step           # the full run (about 1 minute on one core)
    python -m benchmarks.env_step --quick   # smoke run (n = 16, B <= 1024; seconds)

Contenders, per state count n (16 and 64, 5 actions), timed round-robin in one process pinned to one
core, one warm-up round then ``--repeats`` timed rounds:

- **peer**: ``xenoverse.anymdp.AnyMDPEnv`` with one peer task, stepped in a Python loop with
  pre-drawn integer actions and ``reset()`` on ``terminated or truncated``, as its README does
  (resets are inside the timed loop, they are part of the cost of stepping it).
- **ours single**: our ``AnyMDPEnv`` (one task) in the same Python loop, for reference.
- **ours batched B**: ``BatchedAnyMDPEnv`` over B tasks, B = 1, 64, 1024, 4096; actions ``[T, B]``
  pre-drawn outside the timed region; autoreset NEXT_STEP, so a step after an episode ends is a
  reset step (its share is printed; it is a few percent at most).

Tasks: ``--distinct`` (default 256) distinct tasks per n, tiled to B (environment ``i`` gets task
``i mod distinct``); the batch still stores B copies, so memory traffic is that of B distinct tasks.
Steps/s = B * steps / time; ratios are of medians, against the peer at the same n.

Physical limit: each step must fetch one cumulative transition row (4n bytes, float32) plus the
reward mean and std (one random cache line each) per environment; the output gives the effective
bandwidth at that lower bound, next to the machine's streaming-copy bandwidth and the steps/s a bare
random-row gather of the same table would allow.
"""

from __future__ import annotations

from benchmarks._common import pin_one_core

CORE = pin_one_core()

import argparse  # noqa: E402  (numpy must come after the pinning)
import os  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # the peer's env module imports pygame

import numpy as np  # noqa: E402

from anymdp_agent.envs import AnyMDPEnv, BatchedAnyMDPEnv, sample_anymdp_task  # noqa: E402
from benchmarks._common import Contender, fmt_rate, machine_line, med, run_alternating, table  # noqa: E402

from xenoverse.anymdp import AnyMDPEnv as PeerEnv  # noqa: E402
from xenoverse.anymdp import AnyMDPTaskSampler  # noqa: E402

N_ACTIONS = 5
SIZES = (16, 64)
BATCHES = (1, 64, 1024, 4096)
HEADLINE = (64, 4096)  # (n, B) of the headline ratio
#: Python-loop steps per repeat (peer, ours single) and batched env.step calls per repeat, per B.
LOOP_STEPS = 4000
BATCH_CALLS = {1: 4000, 64: 3000, 1024: 800, 4096: 200}
TASK_SEED = 0


def python_loop(env, actions):
    """One environment stepped from Python, reset when an episode ends (as the peer's README does)."""
    def run():
        for a in actions:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
    return run


def peer_contender(n: int, steps: int) -> Contender:
    env = PeerEnv(max_steps=5000)
    env.set_task(AnyMDPTaskSampler(state_space=n, action_space=N_ACTIONS, seed=TASK_SEED))
    actions = [int(a) for a in np.random.default_rng(1).integers(0, N_ACTIONS, size=steps)]

    def prepare(rep):
        env.reset()
        return python_loop(env, actions)
    return Contender(f"peer n={n}", prepare, steps)


def single_contender(task, steps: int) -> Contender:
    env = AnyMDPEnv(task)
    actions = [int(a) for a in np.random.default_rng(1).integers(0, N_ACTIONS, size=steps)]

    def prepare(rep):
        env.reset(seed=rep)
        return python_loop(env, actions)
    return Contender(f"ours single n={task.n_active}", prepare, steps)


def batched_contender(tasks, b: int, calls: int, resets: dict) -> Contender:
    env = BatchedAnyMDPEnv([tasks[i % len(tasks)] for i in range(b)])
    actions = np.random.default_rng(2).integers(0, N_ACTIONS, size=(calls, b))
    name = f"ours B={b} n={tasks[0].n_active}"

    def prepare(rep):
        env.reset(seed=1000 * rep)
        if rep == 0:  # the warm-up also counts how many steps were autoreset steps
            def run():
                ended = 0
                for k in range(calls):
                    _, _, term, trunc, _ = env.step(actions[k])
                    ended += int(term.sum() + trunc.sum())
                resets[name] = ended / (calls * b)
            return run

        def run():
            for k in range(calls):
                env.step(actions[k])
        return run
    return Contender(name, prepare, calls * b)


def bandwidth(repeats: int, rows: int, n: int, b: int) -> dict:
    """Streaming-copy bandwidth (256 MiB arrays) and the time of a bare gather of ``b`` random float32
    rows of length ``n`` from a ``[rows, n]`` table (the one memory operation a step cannot avoid)."""
    src = np.ones(64 * 2**20, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    copy = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        copy.append(2 * src.nbytes / (time.perf_counter() - t0))
    del src, dst
    tbl = np.random.default_rng(0).random((rows, n), dtype=np.float32)
    idx = np.random.default_rng(1).integers(0, rows, size=(50, b))
    out = np.empty((b, n), dtype=np.float32)
    gather = []
    for rep in range(repeats + 1):
        t0 = time.perf_counter()
        for k in range(len(idx)):
            np.take(tbl, idx[k], axis=0, out=out)
        if rep:
            gather.append(len(idx) * b / (time.perf_counter() - t0))
    return {"copy": copy, "gather": gather, "table_bytes": tbl.nbytes}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: n = 16, B <= 1024, short loops")
    ap.add_argument("--repeats", type=int, default=9, help="timed repeats per contender (default 9, after 1 warm-up)")
    ap.add_argument("--distinct", type=int, default=256, help="distinct tasks per n, tiled to B (default 256)")
    ap.add_argument("--verbose", action="store_true", help="print every timed call")
    args = ap.parse_args(argv)
    sizes = (16,) if args.quick else SIZES
    batches = (1, 64, 1024) if args.quick else BATCHES
    loop_steps = 500 if args.quick else LOOP_STEPS
    calls = {b: max(20, c // 10) if args.quick else c for b, c in BATCH_CALLS.items()}
    distinct = min(args.distinct, 32) if args.quick else args.distinct

    print("benchmarks.env_step: environment steps per second, ours (BatchedAnyMDPEnv, AnyMDPEnv) vs the peer "
          "(xenoverse.anymdp.AnyMDPEnv in a Python loop)")
    print(machine_line())
    print(f"{N_ACTIONS} actions; {args.repeats} timed repeats after 1 warm-up, contenders alternated per repeat; "
          f"{distinct} distinct tasks per n tiled to B (env i gets task i mod {distinct}); peer: task seed "
          f"{TASK_SEED}, {loop_steps} steps per repeat" + ("; QUICK smoke run" if args.quick else ""))
    t_all = time.perf_counter()

    results, resets, extra = {}, {}, {}
    for n in sizes:
        t0 = time.perf_counter()
        tasks = [sample_anymdp_task(n, N_ACTIONS, seed=s) for s in range(distinct)]
        t_sample = time.perf_counter() - t0
        t0 = time.perf_counter()
        cs = [peer_contender(n, loop_steps), single_contender(tasks[0], loop_steps)]
        cs += [batched_contender(tasks, b, calls[b], resets) for b in batches]
        print(f"  n={n}: sampled {distinct} tasks in {t_sample:.1f} s, built the envs in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        run_alternating(cs, args.repeats, warmup=1, log=print if args.verbose else None)
        for c in cs:
            results[c.name] = (n, c)
        extra[n] = bandwidth(args.repeats, max(batches) * n * N_ACTIONS, n, max(batches))
        del cs
        print(f"  n={n}: timed ({time.perf_counter() - t_all:.0f} s so far)", flush=True)

    rows = []
    for name, (n, c) in results.items():
        peer = med(results[f"peer n={n}"][1].rates)
        calls_or_steps = c.work if "B=" not in name else f"{int(c.work)} ({int(c.work) // int(name.split('B=')[1].split()[0])} calls)"
        rows.append([name, calls_or_steps, fmt_rate(c.rates), f"{med(c.rates) / peer:.1f}x",
                     f"{resets[name]:.2%}" if name in resets else "-", f"{1e6 / med(c.rates):.3g}"])
    print("\nSteps per second, median [min, max] over repeats; ratio = median / median of the peer at the same n")
    print(table(["contender", "steps per repeat", "steps/s", "vs peer", "autoreset steps", "us per step"], rows))

    n_h, b_h = HEADLINE
    if f"ours B={b_h} n={n_h}" in results:
        ours_h = med(results[f"ours B={b_h} n={n_h}"][1].rates)
        peer_h = med(results[f"peer n={n_h}"][1].rates)
        print(f"\nheadline: ours B={b_h} n={n_h}: {ours_h / 1e6:.2f} M steps/s, peer n={n_h}: {peer_h / 1e3:.1f} k steps/s, "
              f"ratio {ours_h / peer_h:.0f}x (targets: >= 100x the peer, >= 2 M steps/s)")

    print("\nMemory perspective (largest B per n): bytes a step must fetch per env, at least = 4n (cumulative row, "
          "float32) + 2 x 64 (random cache lines of reward mean and std)")
    mem_rows = []
    for n in sizes:
        b = max(batches)
        name = f"ours B={b} n={n}"
        rate = med(results[name][1].rates)
        need = 4 * n + 128
        bw = extra[n]
        mem_rows.append([n, b, f"{bw['table_bytes'] / 2**20:.0f} MiB", need, f"{rate * need / 1e9:.2f}",
                         f"{med(bw['copy']) / 1e9:.1f}", f"{med(bw['gather']) / 1e6:.2f} M",
                         f"{rate / med(bw['gather']):.0%}"])
    print(table(["n", "B", "cdf table", "bytes/step (min)", "effective GB/s", "stream copy GB/s (read+write)",
                 "bare row-gather ceiling, steps/s", "ours / gather ceiling"], mem_rows))
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
