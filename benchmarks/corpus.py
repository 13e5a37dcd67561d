"""Corpus generation throughput: rows per second of ``generate_corpus`` (behaviour + labels + parquet), 1 and 2 processes.

    python -m benchmarks.corpus            # the full run (about 3 minutes on the idle 2-core machine)
    python -m benchmarks.corpus --quick    # smoke run (n = 16, short sequences; about a minute)
    python -m benchmarks.corpus --profile  # also print a cProfile of one shard of the headline config

What is timed: ``anymdp_agent.data.generate_corpus`` into a fresh temporary folder, everything included
(task sampling, the behaviour mixture, labels, the parquet and statistics files, the dataset card).
Every configuration writes ``--shards`` shards (default 4, so 2 processes get >= 2 shards each) and is
run with ``num_proc=1`` and ``num_proc=2`` on the same work, alternated 1 2 1 2 ..., after one small
warm-up round (imports, the fork pool), ``--repeats`` timed rounds (default 5). Not pinned: the 2-process
runs need both cores; BLAS/OpenMP are set to one thread before numpy is imported (as every worker gets).

Reported per configuration (label kind, n states, sequences per shard B, rows per sequence T):

- rows/s (every row written, closing rows included) and env steps/s (rows that are environment
  steps), median [min, max]; the 2-process / 1-process ratio of medians;
- bytes on disk per million rows (``data/*.parquet`` bytes / rows * 1e6; zstd parquet);
- the time of one shard split into task sampling (``sample_anymdp_tasks``), rolling the sequences
  (``roll_sequences``: behaviour + labels + env), building the arrow table, writing the parquet, and the
  rest (statistics json, card), by wrapping those functions in one untimed single-shard run.

The peer (the authors' pipeline) steps one ``xenoverse.anymdp.AnyMDPEnv`` in a Python loop and takes the
oracle label from ``AnyMDPSolverOpt.policy`` (value iteration on the true model, a lookup in the inner
state) at every step; behaviour actions are pre-drawn uniform integers (the cheapest possible behaviour,
so the peer's loop is a lower bound on its cost) and the rows are appended to Python lists. It is timed
in the same rounds as the headline configuration. Its per-task set-up (``AnyMDPTaskSampler`` + the
solver) is timed separately and folded into a "peer pipeline" estimate for sequences of T rows.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported; both cores stay allowed (the 2-process runs need them)
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # the peer's env module imports pygame

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import anymdp_agent.data.corpus as corpus_mod  # noqa: E402
from anymdp_agent.data import CorpusConfig, generate_corpus  # noqa: E402
from benchmarks._common import Contender, fmt_rate, machine_line, med, run_alternating, table  # noqa: E402

N_ACTIONS = 5
#: (label column name, labels, n states, sequences per shard B, rows per sequence T).
CONFIGS = [
    ("oracle", ("oracle",), 16, 256, 4096),  # the headline: default shard size, realistic T
    ("oracle", ("oracle",), 64, 128, 2048),
    # Label kinds side by side at a common (smaller) shape: the planner label is slow.
    ("oracle", ("oracle",), 16, 64, 1024),
    ("planner", ("planner",), 16, 64, 1024),
    ("both", ("oracle", "planner"), 16, 64, 1024),
    ("oracle", ("oracle",), 64, 16, 1024),
    ("planner", ("planner",), 64, 16, 1024),
    ("both", ("oracle", "planner"), 64, 16, 1024),
]
QUICK_CONFIGS = [
    ("oracle", ("oracle",), 16, 64, 1024),
    ("planner", ("planner",), 16, 16, 256),
    ("both", ("oracle", "planner"), 16, 16, 256),
]
TARGET_STEPS_PER_S = 1e6  # environment steps per second, oracle labels, n = 16, this 2-core machine


def make_cfg(labels, n, tps, seq_len, shards) -> CorpusConfig:
    return CorpusConfig(tasks=tps * shards, seq_len=seq_len, n_states=n, n_actions=N_ACTIONS, labels=labels,
                        tasks_per_shard=tps)


# ---------------------------------------------------------------------- ours


class CorpusRun:
    """One contender: ``generate_corpus`` of ``cfg`` with ``num_proc`` processes into a fresh folder."""

    def __init__(self, root: Path, name: str, cfg: CorpusConfig, num_proc: int, warmup_cfg: CorpusConfig):
        self.root, self.cfg, self.num_proc, self.warmup_cfg = root, cfg, num_proc, warmup_cfg
        self.folder: Path | None = None
        self.stats: dict | None = None
        self.cpu: list[float] = []  # CPU seconds (this process + its finished children) per timed repeat
        self.contender = Contender(name, self.prepare, cfg.tasks * cfg.seq_len)

    def prepare(self, rep: int):
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = Path(tempfile.mkdtemp(dir=self.root)) / "corpus"
        cfg = self.warmup_cfg if rep == 0 else self.cfg

        def run():
            c0 = cpu_seconds()
            self.stats = generate_corpus(self.folder, cfg, num_proc=self.num_proc)
            if rep > 0:
                self.cpu.append(cpu_seconds() - c0)
        return run

    def parquet_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.folder / "data").glob("*.parquet"))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have finished (pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@contextmanager
def timed_parts():
    """Wrap the stages of one shard's generation; yields a dict of accumulated seconds per stage."""
    acc = {"sample": 0.0, "roll": 0.0, "shard": 0.0, "parquet": 0.0}
    saved = (corpus_mod.sample_anymdp_tasks, corpus_mod.roll_sequences, corpus_mod.generate_shard, pq.write_table)

    def wrap(fn, key):
        def inner(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[key] += time.perf_counter() - t0
        return inner

    corpus_mod.sample_anymdp_tasks = wrap(saved[0], "sample")
    corpus_mod.roll_sequences = wrap(saved[1], "roll")
    corpus_mod.generate_shard = wrap(saved[2], "shard")
    pq.write_table = wrap(saved[3], "parquet")
    try:
        yield acc
    finally:
        corpus_mod.sample_anymdp_tasks, corpus_mod.roll_sequences, corpus_mod.generate_shard, pq.write_table = saved


def time_split(root: Path, cfg: CorpusConfig) -> dict:
    """Seconds per stage of generating (and writing) shard 0 alone, single process."""
    folder = Path(tempfile.mkdtemp(dir=root)) / "corpus"
    with timed_parts() as acc:
        t0 = time.perf_counter()
        generate_corpus(folder, cfg, shard_range=(0, 1))
        total = time.perf_counter() - t0
    shutil.rmtree(folder.parent, ignore_errors=True)
    table_build = acc["shard"] - acc["sample"] - acc["roll"]
    return {"total": total, "sample": acc["sample"], "roll": acc["roll"], "table": table_build,
            "parquet": acc["parquet"], "other": total - acc["shard"] - acc["parquet"],
            "rows": cfg.tasks_per_shard * cfg.seq_len}


def profile_shard(cfg: CorpusConfig, top: int = 25) -> str:
    root = Path(tempfile.mkdtemp(prefix="bench-corpus-prof-"))
    prof = cProfile.Profile()
    prof.enable()
    generate_corpus(root / "corpus", cfg, shard_range=(0, 1))
    prof.disable()
    shutil.rmtree(root, ignore_errors=True)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ---------------------------------------------------------------------- the peer


def peer_contender(n: int, steps: int) -> tuple[Contender, dict]:
    from xenoverse.anymdp import AnyMDPEnv as PeerEnv
    from xenoverse.anymdp import AnyMDPSolverOpt, AnyMDPTaskSampler

    env = PeerEnv(max_steps=5000)
    env.set_task(AnyMDPTaskSampler(state_space=n, action_space=N_ACTIONS, seed=0))
    solver = AnyMDPSolverOpt(env, gamma=0.994)
    actions = [int(a) for a in np.random.default_rng(1).integers(0, N_ACTIONS, size=steps)]
    last = {}

    def prepare(rep):
        obs, _ = env.reset()
        last["obs"] = obs

        def run():
            c0 = cpu_seconds()
            o = last["obs"]
            rows_obs, rows_act, rows_rew, rows_lab = [], [], [], []
            for a in actions:
                label = solver.policy(o)  # the oracle's action in the env's inner state
                o2, r, term, trunc, _ = env.step(a)
                rows_obs.append(o)
                rows_act.append(a)
                rows_rew.append(r)
                rows_lab.append(label)
                o = o2
                if term or trunc:
                    o, _ = env.reset()
            last["obs"] = o
            last["rows"] = len(rows_obs)
            if rep > 0:
                last.setdefault("cpu", []).append(cpu_seconds() - c0)
        return run
    return Contender(f"peer loop n={n} (1 process)", prepare, steps), last


def peer_setup_seconds(n: int, tasks: int) -> list[float]:
    """Seconds per task of the peer's set-up: sampling a task and solving it (``AnyMDPSolverOpt``)."""
    from xenoverse.anymdp import AnyMDPEnv as PeerEnv
    from xenoverse.anymdp import AnyMDPSolverOpt, AnyMDPTaskSampler

    out = []
    for seed in range(100, 100 + tasks):
        t0 = time.perf_counter()
        env = PeerEnv(max_steps=5000)
        env.set_task(AnyMDPTaskSampler(state_space=n, action_space=N_ACTIONS, seed=seed))
        AnyMDPSolverOpt(env, gamma=0.994)
        out.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: n = 16, short sequences, 2 repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per contender (default 5; quick 2)")
    ap.add_argument("--shards", type=int, default=4, help="shards per configuration (default 4: >= 2 per process)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one shard of the first configuration")
    ap.add_argument("--verbose", action="store_true", help="print every timed call")
    args = ap.parse_args(argv)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    repeats = args.repeats or (2 if args.quick else 5)
    peer_steps = 3000 if args.quick else 20000

    print("benchmarks.corpus: corpus rows per second of generate_corpus (behaviour + labels + parquet), "
          "1 and 2 processes; the peer's Python loop (xenoverse AnyMDPEnv + AnyMDPSolverOpt labels) for reference")
    print(machine_line())
    print(f"{N_ACTIONS} actions; {args.shards} shards per configuration; {repeats} timed repeats after 1 small warm-up "
          "round, 1- and 2-process runs alternated" + ("; QUICK smoke run" if args.quick else ""))
    t_all = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    results = []
    peer = peer_info = None
    try:
        for i, (kind, labels, n, tps, seq_len) in enumerate(configs):
            cfg = make_cfg(labels, n, tps, seq_len, args.shards)
            warm = make_cfg(labels, n, 2, 64, 2)
            name = f"{kind} n={n} B={tps} T={seq_len}"
            runs = [CorpusRun(root, f"{name} {p}p", cfg, p, warm) for p in (1, 2)]
            cs = [r.contender for r in runs]
            if i == 0:  # the peer is timed in the rounds of the headline configuration
                peer, peer_info = peer_contender(n, peer_steps)
                cs.append(peer)
            t0 = time.perf_counter()
            run_alternating(cs, repeats, warmup=1, log=print if args.verbose else None)
            size = runs[0].parquet_bytes()
            stats = runs[0].stats["train"]
            split = time_split(root, make_cfg(labels, n, tps, seq_len, 1))
            for r in runs:
                shutil.rmtree(r.folder.parent, ignore_errors=True)
            results.append({"name": name, "kind": kind, "n": n, "tps": tps, "T": seq_len, "cfg": cfg, "runs": runs,
                            "bytes": size, "rows": stats["rows"], "steps": stats["steps"], "split": split})
            print(f"  {name}: 1p {fmt_rate(cs[0].rates)} rows/s, 2p {fmt_rate(cs[1].rates)} rows/s "
                  f"({time.perf_counter() - t0:.0f} s; {time.perf_counter() - t_all:.0f} s so far)", flush=True)
        setup = peer_setup_seconds(configs[0][2], 2 if args.quick else 4)
        prof = profile_shard(make_cfg(configs[0][1], configs[0][2], configs[0][3], configs[0][4], 1)) \
            if args.profile else None
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = []
    for r in results:
        one, two = r["runs"][0].contender, r["runs"][1].contender
        step_share = r["steps"] / r["rows"]
        work = one.work
        cpu1, cpu2 = med(r["runs"][0].cpu), med(r["runs"][1].cpu)
        rows.append([r["kind"], r["n"], r["tps"], r["T"], f"{r['cfg'].tasks} x {r['T']}",
                     fmt_rate(one.rates), fmt_rate(two.rates), f"{med(two.rates) / med(one.rates):.2f}x",
                     f"{cpu2 / med(two.times):.2f}", f"{work / cpu1 / 1e3:.0f}k", f"{work / cpu2 / 1e3:.0f}k",
                     f"{step_share:.1%}", f"{r['bytes'] / r['rows'] * 1e6 / 2**20:.2f} MiB"])
    print("\nRows per second of generate_corpus (median [min, max] over repeats); 2p/1p = ratio of medians; cores used "
          "2p = CPU seconds / wall seconds of the 2-process runs (2.0 = both cores to ourselves); rows per CPU-second "
          "(load-independent: the rate per core that an idle machine would give); env steps = share of rows that are "
          "environment steps (the rest close episodes)")
    print(table(["labels", "n", "B (seq/shard)", "T", "work (seq x rows)", "rows/s 1 process", "rows/s 2 processes",
                 "2p / 1p", "cores used 2p", "rows/CPU-s 1p", "rows/CPU-s 2p", "env steps", "parquet per 1M rows"], rows))

    srows = []
    for r in results:
        s = r["split"]
        parts = [("sample", "task sampling"), ("roll", "roll (behaviour+labels+env)"), ("table", "arrow table"),
                 ("parquet", "parquet write"), ("other", "stats+card")]
        srows.append([r["name"], f"{s['total']:.2f} s"] + [f"{s[k]:.2f} s ({s[k] / s['total']:.0%})" for k, _ in parts]
                     + [f"{s['rows'] / s['roll'] / 1e3:.0f}k"])
    print("\nOne shard, single process, split by stage (one untimed run per configuration)")
    print(table(["config", "total", "task sampling", "roll (behaviour+labels+env)", "arrow table", "parquet write",
                 "stats+card", "roll-only rows/s"], srows))

    head = results[0]
    ours1, ours2 = (med(c.contender.rates) for c in head["runs"])
    peer_rate = med(peer.rates)
    setup_s = med(setup)
    t_seq = head["T"]
    peer_pipeline = t_seq / (setup_s + t_seq / peer_rate)
    peer_cpu_rate = peer.work / med(peer_info["cpu"])
    ours_cpu_rate = head["runs"][0].contender.work / med(head["runs"][0].cpu)
    print(f"\nPeer: {peer_info.get('rows', 0)} rows per repeat; loop {fmt_rate(peer.rates)} rows/s, "
          f"{peer_cpu_rate / 1e3:.1f}k rows/CPU-s; per-task set-up "
          f"(AnyMDPTaskSampler + AnyMDPSolverOpt) {setup_s:.3f} s [{min(setup):.3f}, {max(setup):.3f}]; "
          f"pipeline estimate for T={t_seq}: {peer_pipeline / 1e3:.1f}k rows/s per process")
    print(table(["comparison", "ours rows/s", "peer rows/s", "ratio"], [
        [f"{head['name']} 1 process vs peer loop (1 process)", f"{ours1 / 1e3:.0f}k", f"{peer_rate / 1e3:.1f}k",
         f"{ours1 / peer_rate:.1f}x"],
        [f"{head['name']} 1 process vs peer pipeline incl. set-up", f"{ours1 / 1e3:.0f}k", f"{peer_pipeline / 1e3:.1f}k",
         f"{ours1 / peer_pipeline:.1f}x"],
        [f"{head['name']} 2 processes vs 2 x peer loop (ideal scaling)", f"{ours2 / 1e3:.0f}k",
         f"{2 * peer_rate / 1e3:.1f}k", f"{ours2 / (2 * peer_rate):.1f}x"],
        [f"{head['name']} per CPU-second vs peer loop per CPU-second", f"{ours_cpu_rate / 1e3:.0f}k",
         f"{peer_cpu_rate / 1e3:.1f}k", f"{ours_cpu_rate / peer_cpu_rate:.1f}x"],
    ]))
    # The target counts environment steps (closing rows, ~3% of rows, are not steps).
    oracle16 = [r for r in results if r["kind"] == "oracle" and r["n"] == 16]
    best = max((med(r["runs"][1].contender.rates) * r["steps"] / r["rows"], r["name"]) for r in oracle16)
    worst = min(min(r["runs"][1].contender.rates) * r["steps"] / r["rows"] for r in oracle16 if r["name"] == best[1])
    cap = max(2 * r["runs"][0].contender.work / med(r["runs"][0].cpu) * r["steps"] / r["rows"] for r in oracle16)
    print(f"\ntarget: >= {TARGET_STEPS_PER_S / 1e6:.0f} M env steps/s with oracle labels at n = 16 on this machine: best "
          f"{best[0] / 1e6:.2f} M steps/s median (slowest repeat {worst / 1e6:.2f} M) ({best[1]}, 2 processes): "
          f"{'met' if best[0] >= TARGET_STEPS_PER_S else 'NOT met'}; 2 x steps per CPU-second (what 2 idle cores would "
          f"give at perfect scaling): {cap / 1e6:.2f} M steps/s")
    if prof is not None:
        print(f"\ncProfile of one shard of {results[0]['name']} (single process), top functions by own time:")
        print(prof)
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
