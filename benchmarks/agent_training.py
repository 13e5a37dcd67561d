"""Training throughput (forward + backward) of the agent's two backbones vs a same-size softmax-attention transformer.

    python -m benchmarks.agent_training           # the full run (about 5 minutes on one core)
    python -m benchmarks.agent_training --quick   # smoke run (contexts 1k and 2k steps, 2 repeats; ~1 minute)

Models (float32, one process pinned to one core, 1 torch thread):

- **planning**: ``AnyMDPAgentModel(AnyMDPAgentConfig())`` (defaults: ``backbone="planning"``, 64 observation
  ids, 5 actions, 16 value-iteration steps, chunk 64 rows).
- **sequence**: ``AnyMDPAgentConfig(backbone="sequence")`` (hidden 64, 2 gated-linear-attention layers, 4 heads,
  SwiGLU MLP 128, chunk 64 tokens).
- **llama**: the softmax-attention peer: the same sequence model (same embeddings, token layout of 2 tokens per
  step, heads and loss) with its layer stack replaced by a ``transformers.LlamaModel`` of the same hidden size,
  layers, heads and MLP width (4 KV heads, RoPE, SDPA attention, ``use_cache=False``), called with
  ``inputs_embeds``. So the only difference from **sequence** is the token mixer.

Data: one AnyMDP history (16 states, 5 actions, task seed 0) under uniform random actions, with the extra row
that closes each episode (``END_TERMINATED`` / ``END_TRUNCATED``), labels = the behaviour's action; batch 1.
Throughput is in **tokens/s with 2 tokens per step (row)** for every model, the planning backbone included
(it processes rows, in chunks of ``chunk_size`` rows).

What one timed call is, at a context of ``L`` steps:

- **ours, window** (both backbones, the headline): forward + backward over the last ``W = 4096`` steps of an
  ``L``-step history (rows ``L-W .. L-1``), continuing from the cache of the first ``L-W`` rows (built once,
  untimed, under ``no_grad``, in 4096-row segments): the per-token training cost at depth ``L`` with truncated
  back-propagation, which is how the model documents long-context training (``cache=output.cache.detach()``).
  At ``L = W`` it is the full pass over the whole history. For the planning backbone with the default
  ``carry_values=False`` no gradient crosses a chunk boundary (the statistics have no parameters), so the
  window costs per token exactly what a full-graph pass does; it also keeps memory bounded (a full graph
  holds ~0.25 GB per 1,000 rows, ~16 GB at 64k steps).
- **sequence, full**: one forward + backward over the whole ``L``-step history in one graph (no truncation).
- **llama, full**: one forward + backward over the whole ``L``-step history (``2L`` tokens).

All repeated calls (every context and model) are timed in one round-robin (1 warm-up round, then ``--repeats``
timed rounds), so load changes on the shared machine hit every context alike. Calls too
slow to repeat (llama at 32k and 64k steps, sequence-full at 64k) are run **once**, each in a child process
(same core, same seeds) with a hard limit of ``--cap`` seconds; one whose time predicted from the smaller
contexts (``t = a L + b L^2`` through the last two) exceeds 1.5 x the cap is not started.

FLOPs: counted once per model with ``torch.utils.flop_counter.FlopCounterMode`` over forward + backward at
three small sizes and fitted as ``c + a L + b L^2`` (exact for these models); matmul-class ops only (mm/bmm/addmm and
attention; elementwise work is not counted), causal attention counted at half of the full ``L x L`` product
(the CPU flash kernel skips the masked blocks). MFU = counted FLOPs / time / the 1-thread matmul peak
(float32 ``torch.matmul`` of 2048 x 2048 matrices, best of 7; the 2-thread peak is measured too, in a child
process allowed both cores, for reference).
"""

from __future__ import annotations

from benchmarks._common import pin_one_core

CORE = pin_one_core()

import argparse  # noqa: E402  (numpy must come after the pinning)
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count  # noqa: E402

from benchmarks._agent_common import (MODELS, anymdp_rows, build_caches, eng, make_model, n_params,  # noqa: E402
                                      code_line, peak_rss_gb, rows_slice, torch_line, train_call)
from benchmarks._common import Contender, fmt_rate, fmt_time, machine_line, med, run_alternating, table  # noqa: E402

CONTEXTS = (4096, 16384, 65536)
WINDOW = 4096
LLAMA_REPEATED_MAX = 16384          # llama is repeated up to this context, then run once per context
LLAMA_SINGLES = (32768, 65536)
SEQUENCE_FULL_SINGLES = (65536,)    # sequence-full is repeated below this context, run once at these
CAP_S = 180.0
PEAK_N = 2048


# ---------------------------------------------------------------------- FLOPs and the matmul peak


def _cpu_sdpa(query_shape, key_shape, value_shape, dropout_p=0.0, is_causal=False, *args, out_shape=None,
              **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape) // (2 if is_causal else 1)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, out_shape_, lse_shape, dropout_p=0.0,
                       is_causal=False, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape) // (2 if is_causal else 1)


CPU_SDPA_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
                  torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}


def count_flops(model, rows: dict, n: int) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        train_call(model, rows_slice(rows, 0, n))()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def flop_fit(model, rows: dict, sizes=(128, 256, 512)) -> tuple[float, float, float]:
    """``(c, a, b)`` with FLOPs(forward + backward over L rows) = c + a L + b L^2 (exact: the counts are
    such polynomials; ``c`` is small and negative, the first chunk needs no gradient for its start state)."""
    ls = np.array(sizes, dtype=float)
    f = np.array([count_flops(model, rows, n) for n in sizes], dtype=float)
    c, a, b = np.linalg.solve(np.stack([np.ones(3), ls, ls * ls], 1), f)
    return float(c), float(a), float(b)


def flops_at(fit: tuple[float, float, float], rows: int) -> float:
    return fit[0] + fit[1] * rows + fit[2] * rows * rows


def matmul_peak_here(n: int = PEAK_N, reps: int = 7) -> list[float]:
    """FLOP/s of ``torch.matmul`` on two ``n x n`` float32 matrices in this process (pinned, 1 thread)."""
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.matmul(a, b, out=c)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=c)
        out.append(2.0 * n ** 3 / (time.perf_counter() - t0))
    return out


_PEAK_CHILD = """
import os, sys, time, json
os.sched_setaffinity(0, set(range(os.cpu_count())))
import torch
k, n, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(k)
a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
torch.matmul(a, b, out=c)
out = []
for _ in range(reps):
    t0 = time.perf_counter(); torch.matmul(a, b, out=c); out.append(2.0 * n ** 3 / (time.perf_counter() - t0))
print(json.dumps({"rates": out, "threads": torch.get_num_threads()}))
"""


def matmul_peak_child(threads: int, n: int = PEAK_N, reps: int = 7) -> list[float] | None:
    env = dict(os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    try:
        res = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(threads), str(n), str(reps)], env=env,
                             capture_output=True, text=True, timeout=120, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])["rates"]
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        print(f"  {threads}-thread matmul peak failed: {e}")
        return None


# ---------------------------------------------------------------------- single runs in a child


def single_child(model_name: str, rows_n: int) -> None:
    """``--single``: one forward + backward of ``model_name`` over ``rows_n`` rows; prints ``RESULT {json}``."""
    rows = anymdp_rows(rows_n)
    model = make_model(model_name, max_rows=rows_n)
    fn = train_call(model, rows)
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    print("RESULT " + json.dumps({"seconds": dt, "peak_rss_gb": peak_rss_gb()}), flush=True)


def run_single(model_name: str, rows_n: int, cap: float) -> dict:
    env = dict(os.environ, BENCH_CORE=str(CORE))
    cmd = [sys.executable, "-m", "benchmarks.agent_training", "--single", model_name, "--rows", str(rows_n)]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return {"status": "stopped", "seconds": time.perf_counter() - t0}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        why = "out of memory (killed)" if res.returncode in (-9, 137) else f"exit {res.returncode}"
        return {"status": "failed", "why": why, "stderr": res.stderr[-400:]}
    return {"status": "ok", **json.loads(lines[-1][len("RESULT "):])}


def predict(points: list[tuple[int, float]], rows: int) -> float | None:
    """Time at ``rows`` from ``t = a L + b L^2`` through the last two (context, seconds) points."""
    if len(points) < 2:
        return None
    (l1, t1), (l2, t2) = points[-2], points[-1]
    b = max((t2 / l2 - t1 / l1) / (l2 - l1), 0.0)
    a = t1 / l1 - b * l1
    return a * rows + b * rows * rows


# ---------------------------------------------------------------------- the run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: contexts 1k, 2k steps, window 1k, 2 repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per context (default 5; quick 2)")
    ap.add_argument("--cap", type=float, default=None, help=f"seconds limit of a single run (default {CAP_S:.0f})")
    ap.add_argument("--single", choices=MODELS, help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.single:
        single_child(args.single, args.rows)
        return

    if args.quick:
        contexts, window, llama_rep_max, llama_singles, seq_singles = (1024, 2048), 1024, 1024, (2048, 4096), (2048,)
        repeats, cap = args.repeats or 2, args.cap or 30.0
    else:
        contexts, window, llama_rep_max = CONTEXTS, WINDOW, LLAMA_REPEATED_MAX
        llama_singles, seq_singles = LLAMA_SINGLES, SEQUENCE_FULL_SINGLES
        repeats, cap = args.repeats or 5, args.cap or CAP_S
    t_start = time.perf_counter()
    print(f"agent_training, {date.today()}: contexts {contexts} steps, window {window} rows, batch 1, "
          f"{repeats} timed repeats after 1 warm-up; single runs capped at {cap:.0f} s")
    print(machine_line() + "; " + torch_line())
    print(code_line())

    # -- matmul peak
    peak1 = matmul_peak_here()
    peak2 = matmul_peak_child(2)
    peak = max(peak1)
    print(f"matmul peak (float32 {PEAK_N}^3): 1 thread (pinned) {fmt_rate(peak1, 'FLOP/s')}; "
          + (f"2 threads (both cores, child process) {fmt_rate(peak2, 'FLOP/s')}" if peak2 else "2 threads: n/a"))

    # -- data, models, FLOPs, caches
    rows = anymdp_rows(max(contexts))
    ends = int((rows["actions"] < 0).sum())
    print(f"history: {rows['observations'].shape[1]} rows of one AnyMDP task (16 states, 5 actions, seed 0), "
          f"uniform random actions, {ends} episode-end rows")
    models = {name: make_model(name) for name in MODELS}
    fits = {name: flop_fit(m, rows) for name, m in models.items()}
    for name, m in models.items():
        c0, a1, b2 = fits[name]
        quad = f" + {b2:.4g} L^2" if abs(b2) > 1e-6 else ""
        print(f"  {name}: {n_params(m):,} parameters; counted FLOPs (fwd+bwd) over L steps = {a1:.4g} L{quad}"
              f" {c0:+.3g} ({a1 / 2:.4g} per token{' + the quadratic term' if quad else ''})")
    t0 = time.perf_counter()
    depths = [c - window for c in contexts if c > window]
    caches = {name: build_caches(models[name], rows, depths) for name in ("planning", "sequence")}
    print(f"caches at depths {depths} built in {time.perf_counter() - t0:.1f} s (untimed)")

    results = []  # dicts: context, model, mode, tokens, flops, times | single
    # Every repeated call, all contexts and models, in one round-robin: load changes on the shared machine then
    # hit every context alike, so the flatness ratios (64k vs 4k) and the ratios to llama are side by side.
    contenders = []
    for ctx in contexts:
        for name in ("planning", "sequence"):
            lo = ctx - window
            c = Contender(f"{name} window @{ctx}",
                          (lambda m, inp, cch: lambda rep: train_call(m, inp, cch))(
                              models[name], rows_slice(rows, lo, ctx), caches[name].get(lo)),
                          2 * window)
            contenders.append((ctx, c, name, "window" if ctx > window else "full", window))
        if ctx > window and ctx not in seq_singles:
            c = Contender(f"sequence full @{ctx}", lambda rep, inp=rows_slice(rows, 0, ctx): train_call(
                models["sequence"], inp), 2 * ctx)
            contenders.append((ctx, c, "sequence", "full", ctx))
        if ctx <= llama_rep_max:
            c = Contender(f"llama full @{ctx}", lambda rep, inp=rows_slice(rows, 0, ctx): train_call(
                models["llama"], inp), 2 * ctx)
            contenders.append((ctx, c, "llama", "full", ctx))
    print(f"timed round-robin over {len(contenders)} contenders:")
    run_alternating([c for _, c, *_ in contenders], repeats, warmup=1, log=print)
    for ctx, c, name, mode, n_rows in contenders:
        results.append({"context": ctx, "model": name, "mode": mode, "rows": n_rows, "times": list(c.times),
                        "flops": flops_at(fits[name], n_rows)})

    # -- single runs (too slow to repeat)
    def timed_points(name, mode):
        return [(r["context"], med(r["times"])) for r in results
                if r["model"] == name and r["mode"] == mode and r["rows"] == r["context"] and r.get("times")]

    for name, singles in (("llama", llama_singles), ("sequence", seq_singles)):
        for ctx in singles:
            pts = timed_points(name, "full") + [(r["context"], r["seconds"]) for r in results
                                                if r["model"] == name and r.get("single") and r.get("seconds")
                                                and r.get("status") == "ok"]
            guess = predict(sorted(pts), ctx)
            entry = {"context": ctx, "model": name, "mode": "full", "rows": ctx, "single": True,
                     "predicted": guess, "flops": flops_at(fits[name], ctx)}
            if guess is not None and guess > 1.5 * cap:
                entry["status"] = "skipped"
                print(f"{name} full @{ctx}: not started, predicted {guess:.0f} s > 1.5 x cap {cap:.0f} s")
            else:
                print(f"{name} full @{ctx}: one run in a child process (predicted "
                      f"{'?' if guess is None else f'{guess:.0f}'} s, cap {cap:.0f} s) ...", flush=True)
                entry.update(run_single(name, ctx, cap))
                print(f"  -> {entry}")
            results.append(entry)

    # -- tables
    llama_rate = {r["context"]: med([2 * r["rows"] / t for t in r["times"]]) for r in results
                  if r["model"] == "llama" and r.get("times")}
    llama_rate.update({r["context"]: 2 * r["rows"] / r["seconds"] for r in results
                       if r["model"] == "llama" and r.get("single") and r.get("status") == "ok"})
    body = []
    for r in sorted(results, key=lambda r: (r["context"], MODELS.index(r["model"]), r["mode"])):
        what = (f"last {r['rows']} of {r['context']} steps (TBPTT)" if r["mode"] == "window"
                else f"all {r['rows']} steps")
        tokens = 2 * r["rows"]
        if r.get("times"):
            rates = [tokens / t for t in r["times"]]
            rate, time_s, reps = med(rates), fmt_time(r["times"]), str(len(r["times"]))
            rate_s = fmt_rate(rates)
        elif r.get("status") == "ok":
            rate, time_s, reps, rate_s = tokens / r["seconds"], f"{r['seconds']:.3g} s", "1", eng(tokens / r["seconds"])
        else:
            pred = "" if r.get("predicted") is None else f", predicted {r['predicted']:.0f} s"
            why = {"skipped": f"not run{pred}", "stopped": f"stopped after {cap:.0f} s{pred}"}.get(
                r["status"], f"failed: {r.get('why')}")
            body.append([r["context"], r["model"], what, tokens, why, "-", "-", "-", f"{r['flops'] / 1e9:.3g}", "-", "-"])
            continue
        vs = llama_rate.get(r["context"])
        ratio = "-" if r["model"] == "llama" or vs is None else f"{rate / vs:.2f}x"
        fps = r["flops"] * rate / tokens
        body.append([r["context"], r["model"], what, tokens, time_s, reps, rate_s, ratio,
                     f"{r['flops'] / 1e9:.3g}", eng(fps), f"{100 * fps / peak:.2f}%"])
    print()
    print("Training throughput (forward + backward, batch 1, 2 tokens per step; tokens/s median [min, max]; "
          "'vs llama' = ratio of median tokens/s at the same context):")
    print(table(["context (steps)", "model", "timed call", "tokens/call", "time/call", "n", "tokens/s", "vs llama",
                 "GFLOP/call", "FLOP/s", "MFU (1 thread)"], body))

    summary = []
    for name in ("planning", "sequence"):
        win = {r["context"]: med([2 * r["rows"] / t for t in r["times"]]) for r in results
               if r["model"] == name and r.get("times") and (r["mode"] == "window" or r["rows"] == window)}
        full = {r["context"]: med([2 * r["rows"] / t for t in r["times"]]) for r in results
                if r["model"] == name and r["mode"] == "full" and r.get("times")}
        full.update({r["context"]: 2 * r["rows"] / r["seconds"] for r in results
                     if r["model"] == name and r.get("single") and r.get("status") == "ok"})
        lo, hi, mid = contexts[0], contexts[-1], contexts[1] if len(contexts) > 2 else contexts[-1]
        flat = win[lo] / win[hi] if lo in win and hi in win else None
        stopped = [r for r in results if r["model"] == name and r.get("single") and r["context"] == hi
                   and r.get("status") == "stopped"]
        if lo in full and hi in full:
            flat_full = f"{full[lo] / full[hi]:.2f}x ({'met' if full[lo] / full[hi] <= 1.3 else 'NOT met'})"
        elif lo in full and stopped:  # a lower bound: it ran longer than the cap
            flat_full = f"> {full[lo] / (2 * hi / stopped[0]['seconds']):.1f}x (NOT met; stopped after {cap:.0f} s)"
        else:
            flat_full = "-"
        if lo in full and mid in full and mid != hi:
            flat_full += f"; {mid}/{lo}: {full[lo] / full[mid]:.2f}x"
        speed = win[mid] / llama_rate[mid] if mid in win and mid in llama_rate else None
        speed_full = full[mid] / llama_rate[mid] if mid in full and mid in llama_rate else None
        fmt = lambda x, ok: "-" if x is None else f"{x:.2f}x ({'met' if ok(x) else 'NOT met'})"  # noqa: E731
        summary.append([name, f"{n_params(models[name]):,}",
                        " / ".join(eng(win[c]) if c in win else "-" for c in contexts),
                        fmt(flat, lambda x: x <= 1.3),
                        " / ".join(eng(full[c]) if c in full else "-" for c in contexts),
                        flat_full,
                        fmt(speed, lambda x: x >= 3.0), fmt(speed_full, lambda x: x >= 3.0)])
    lo, hi = contexts[0], contexts[-1]
    mid = contexts[1] if len(contexts) > 2 else contexts[-1]
    print()
    print(f"Summary (targets: cost per token {hi} / {lo} <= 1.3x; tokens/s >= 3x llama at {mid} steps):")
    print(table(["backbone", "parameters", f"tokens/s window ({', '.join(map(str, contexts))})",
                 f"cost/token {hi}/{lo} (window)", "tokens/s full graph", f"cost/token {hi}/{lo} (full)",
                 f"vs llama @{mid} (window)", f"vs llama @{mid} (full)"], summary))
    print(f"llama: {n_params(models['llama']):,} parameters (without the unused token embedding); tokens/s "
          + ", ".join(f"{c}: {eng(v)}" for c, v in sorted(llama_rate.items()))
          + (f"; cost/token {mid}/{lo}: {llama_rate[lo] / llama_rate[mid]:.2f}x" if lo in llama_rate and mid in
             llama_rate and mid != lo else ""))
    print(f"peak RSS of this process {peak_rss_gb():.2f} GB; "
          f"wall time {time.perf_counter() - t_start:.0f} s; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
