"""Rollout latency per step of the agent (recurrent form) at a short and a long history, B = 1, 64, 1024.

    python -m benchmarks.agent_rollout           # the full run (about 5 minutes on one core)
    python -m benchmarks.agent_rollout --quick   # smoke run (histories 100 and 2k rows, B = 1 and 64; ~30 s)

One process pinned to one core, 1 torch thread, float32, ``torch.no_grad``. Models: the default-size
**planning** backbone (``AnyMDPAgentConfig()``) and **sequence** backbone (``backbone="sequence"``), untrained,
same seeds as ``agent_training``. The planning backbone is run twice: with statistics over the model's whole
vocabulary of 64 observation ids (``initial_state(B)``, the default), and over 16 ids
(``initial_state(B, num_observations=16)``, what ``AgentLearner`` does for the 16-state tasks used here).

One step = ``model.act(state, obs, temperature=1.0, generator=g)`` (the observation token, the policy, sampling)
then ``model.observe(state, actions, rewards, next_obs, terminated=False, truncated=False)`` (the action token;
with no episode end it is ``_end_row`` plus one ``any()``), the state carried from step to step. A timed call is
``K`` consecutive steps from the same starting state (``K`` chosen per backbone and B so a call lasts ~0.5 s;
the same observations, rewards and generator seed in every call); the latency is time / K.

Starting states: the cache after a history of ``H`` = 1,000 and 100,000 rows (steps; the AnyMDP history of
``agent_training``: one 16-state task, random actions, episode-end rows included), built once, untimed, by
``model.forward`` over the history in 4096-row segments with the cache carried, at **batch 1**, then **tiled** to
B histories with ``AnyMDPAgentCache.index(torch.arange(B) % 1)`` (real copies: B independent states of the
same content). The two histories of one (model, B) are timed round-robin (1 warm-up round, ``--repeats`` timed
rounds); the ratio of median latencies 100k / 1k is the check (the state has a constant size, so <= 1.1).
"""

from __future__ import annotations

from benchmarks._common import pin_one_core

CORE = pin_one_core()

import argparse  # noqa: E402  (numpy must come after the pinning)
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402

import torch  # noqa: E402

from benchmarks._agent_common import (anymdp_rows, build_caches, code_line, eng, make_model, peak_rss_gb,  # noqa: E402
                                      torch_line)
from benchmarks._common import Contender, fmt_time, machine_line, med, run_alternating, table  # noqa: E402

HISTORIES = (1_000, 100_000)
BATCHES = (1, 64, 1024)
TARGET_S = 0.5          # seconds per timed call
K_RANGE = (3, 500)      # steps per timed call
N_OBS = 16              # observation ids used by the history and the stepped observations
VARIANTS = (("planning", None), ("planning", N_OBS), ("sequence", None))


def state_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for t in list(cache.tensors.values()) + list(cache.layers))


def stepper(model, start, obs, rew):
    """The timed call: ``len(obs)`` steps of act + observe from ``start``."""
    b = obs.shape[1]
    no = torch.zeros(b, dtype=torch.bool)

    def run():
        state = start
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for k in range(obs.shape[0]):
                actions, _, state = model.act(state, obs[k], temperature=1.0, generator=g)
                nxt = obs[k + 1] if k + 1 < obs.shape[0] else obs[0]
                state = model.observe(state, actions, rew[k], nxt, no, no)
        return state
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: histories 100 and 2k rows, B = 1 and 64")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; quick 2)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    histories, batches = ((100, 2_000), (1, 64)) if args.quick else (HISTORIES, BATCHES)
    repeats = args.repeats or (2 if args.quick else 5)
    t_start = time.perf_counter()
    print(f"agent_rollout, {date.today()}: histories {histories} rows, B {batches}, {repeats} timed repeats "
          f"after 1 warm-up, ~{TARGET_S} s per timed call")
    print(machine_line() + "; " + torch_line())
    print(code_line())

    rows = anymdp_rows(max(histories))
    rows.pop("labels")
    results = []
    for name, n_obs in VARIANTS:
        label = name if name == "sequence" else f"planning ({n_obs or 64} obs)"
        model = make_model(name).eval()
        t0 = time.perf_counter()
        base = model.initial_state(1, num_observations=n_obs)
        # build_caches starts from model(...)'s own initial state; pass ours through a first segment instead
        caches = build_caches(model, rows, histories, start=base)
        print(f"{label}: caches at {histories} rows built at batch 1 in {time.perf_counter() - t0:.1f} s (untimed); "
              f"state {state_bytes(caches[histories[0]])} bytes per history")
        for b in batches:
            gen = torch.Generator().manual_seed(b)
            tiled = {h: caches[h].index(torch.arange(b) % 1) for h in histories}
            # calibrate K with a few untimed steps from the short history
            probe_k = 2
            obs = torch.randint(0, N_OBS, (probe_k, b), generator=gen)
            rew = torch.randn(probe_k, b, generator=gen)
            stepper(model, tiled[histories[0]], obs, rew)()
            t0 = time.perf_counter()
            stepper(model, tiled[histories[0]], obs, rew)()
            per = (time.perf_counter() - t0) / probe_k
            k = int(min(max(math.ceil(TARGET_S / per), K_RANGE[0]), K_RANGE[1]))
            obs = torch.randint(0, N_OBS, (k, b), generator=gen)
            rew = torch.randn(k, b, generator=gen)
            contenders = [Contender(f"{label} B={b} H={h}", (lambda st: lambda rep: stepper(model, st, obs, rew))(
                tiled[h]), k) for h in histories]
            print(f"{label}, B = {b}: K = {k} steps per timed call")
            run_alternating(contenders, repeats, warmup=1, log=print)
            results.append({"label": label, "b": b, "k": k, "bytes": state_bytes(tiled[histories[0]]),
                            "per": {h: c.per_unit for h, c in zip(histories, contenders)}})
            del tiled

    lo, hi = histories[0], histories[-1]
    body = []
    for r in results:
        m_lo, m_hi = med(r["per"][lo]), med(r["per"][hi])
        ratio = m_hi / m_lo
        body.append([r["label"], r["b"], eng(r["bytes"], "B"), r["k"], fmt_time(r["per"][lo]), fmt_time(r["per"][hi]),
                     f"{ratio:.2f} ({'met' if ratio <= 1.1 else 'NOT met'})", eng(r["b"] / m_hi)])
    print()
    print(f"Rollout latency per step (act + observe, median [min, max] over {repeats} timed calls of K steps); "
          f"target: {hi} / {lo} <= 1.1:")
    print(table(["model", "B", "state (all B)", "K", f"per step, H = {lo}", f"per step, H = {hi}",
                 f"ratio {hi}/{lo}", f"env-steps/s (H = {hi})"], body))
    print(f"peak RSS {peak_rss_gb():.2f} GB; wall time {time.perf_counter() - t_start:.0f} s; "
          f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
