"""The evaluation harness: learner-steps per second per baseline, and the wall time of a whole comparison.

    python -m benchmarks.harness           # the full run (a few minutes on one core)
    python -m benchmarks.harness --quick   # smoke run (n = 16, B = 256, short loops, a small comparison)

Part (a), per state count n (16 and 64; 5 actions) at B = 1024 tasks, one process pinned to one core,
contenders timed round-robin (one warm-up round, then ``--repeats`` timed rounds):

- **learner only**: ``learner.act`` + ``learner.observe`` over a pre-recorded stream of ``--steps``
  batched steps (observations, actions, rewards, final observations, terminated, truncated), recorded
  once, outside any timed region, by stepping ``BatchedAnyMDPEnv`` (SAME_STEP autoreset, as the
  harness) with uniform random actions. Every learner sees the same stream (the actions it returns
  are computed and discarded, the recorded ones are what it observes), and every repeat starts from
  a copy of the same fresh learner state.
- **full loop**: :func:`anymdp_agent.evaluation.run_learner` for ``--steps`` steps on the same tasks
  (env step + learner + the harness's episode bookkeeping); its own loop timer ``Run.seconds`` is the
  time (it leaves out the env's construction and the learner's ``initial_state``, e.g. the oracle's
  value iteration, which are done once per run, not per step).
- **env only**: ``BatchedAnyMDPEnv.step`` alone with the recorded actions, for the share of the loop
  that is the environment.

The peer for ratios is the random learner, the cheapest possible one: "x random" is a learner's
median time per step over the random learner's. Throughput = B * steps / time (learner-steps/s).
Tasks: ``--distinct`` distinct AnyMDP tasks per n (train seeds 0..distinct-1), tiled to B
(environment ``i`` gets task ``i mod distinct``).

Part (b): the whole anymdp-16 comparison, ``evaluate(EvalConfig(suite="anymdp-16", learners=[oracle,
random, tql, ucbq, mbrl], tasks=256, steps=10000))``, once, wall time (suite sampling, the exact
references and the analysis included), the per-learner loop seconds and the printed table.
"""

from __future__ import annotations

from benchmarks._common import pin_one_core

CORE = pin_one_core()

import argparse  # noqa: E402  (numpy must come after the pinning)
import copy  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from anymdp_agent.baselines import make_learner  # noqa: E402
from anymdp_agent.baselines.protocol import EnvSpec, InContextLearner, Transition  # noqa: E402
from anymdp_agent.envs import BatchedAnyMDPEnv, sample_anymdp_task, stack_tasks  # noqa: E402
from anymdp_agent.evaluation import EvalConfig, Suite, evaluate, format_table, run_learner  # noqa: E402
from anymdp_agent.envs.vector_env import final_observations  # noqa: E402  (the harness loop's own helper)
from benchmarks._common import Contender, fmt_rate, machine_line, med, table  # noqa: E402

LEARNERS = ("oracle", "random", "tql", "ucbq", "mbrl")
PEER = "random"
N_ACTIONS = 5
SIZES = (16, 64)
HEADLINE_N = 64
TARGET = 1e6  # learner-steps/s for tql and ucbq, learner only, at B = 1024, n = 64
EVAL_TARGET_S = 300.0


class _Cached(InContextLearner):
    """A learner whose ``initial_state`` is computed once and handed out as deep copies.

    So every repeat starts from the same state (same rng draws) and the oracle's value iteration at
    B = 1024 is not redone each time (it is outside the timed region anyway).
    """

    def __init__(self, inner: InContextLearner):
        self.inner, self.name, self._cache = inner, inner.name, None
        self.init_cpu = 0.0  # CPU seconds of the last initial_state call (copying included)

    def initial_state(self, spec: EnvSpec, seed: int):
        c0 = time.process_time()
        if self._cache is None:
            self._cache = self.inner.initial_state(spec, seed)
        state = copy.deepcopy(self._cache)
        self.init_cpu = time.process_time() - c0
        return state

    def act(self, state, obs):
        return self.inner.act(state, obs)

    def observe(self, state, transition):
        return self.inner.observe(state, transition)


class _Reusable:
    """The one pre-built env, handed to every ``run_learner`` call (its ``close()`` is a no-op)."""

    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        return getattr(self._env, name)

    def close(self):
        pass


def record_stream(env: BatchedAnyMDPEnv, steps: int, seed: int) -> tuple[list[np.ndarray], list[Transition]]:
    """``steps`` batched steps under uniform random actions: the observations and what a learner observes."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    obs = np.asarray(obs, dtype=np.int64)
    observations, transitions = [], []
    for _ in range(steps):
        actions = rng.integers(0, N_ACTIONS, size=env.num_envs)
        next_obs, rewards, term, trunc, info = env.step(actions)
        next_obs = np.asarray(next_obs, dtype=np.int64)
        final = final_observations(next_obs, info, term | trunc)
        observations.append(obs)
        transitions.append(Transition(obs, actions, np.asarray(rewards, dtype=np.float64), final,
                                      np.asarray(term, dtype=bool), np.asarray(trunc, dtype=bool)))
        obs = next_obs
    return observations, transitions


def learner_only(name: str, spec: EnvSpec, observations, transitions, b: int) -> Contender:
    learner = _Cached(make_learner(name))

    def prepare(rep):
        state = learner.initial_state(spec, 0)

        def run():
            s = state
            for o, t in zip(observations, transitions):
                _, s = learner.act(s, o)
                s = learner.observe(s, t)
        return run
    return Contender(f"{name} learner-only", prepare, b * len(transitions))


def full_loop(name: str, suite: Suite, steps: int) -> Contender:
    """``run_learner``; the times recorded are then replaced by its own loop timer (see :func:`fix_loop_times`)."""
    learner = _Cached(make_learner(name))
    c = Contender(f"{name} full-loop", None, suite.num_envs * steps)
    c.loop_seconds, c.loop_cpu = [], []

    def prepare(rep):
        def run():
            c0 = time.process_time()
            seconds = run_learner(learner, suite, steps, seed=0).seconds
            c.loop_cpu.append(time.process_time() - c0 - learner.init_cpu)
            c.loop_seconds.append(seconds)
        return run
    c.prepare = prepare
    return c


def fix_loop_times(c: Contender, warmup: int = 1) -> None:
    """Replace the call times of a full-loop contender by ``run_learner``'s own loop timer (wall) and
    its CPU time less the learner's ``initial_state`` (the env reset, well under 1%, stays in)."""
    c.times = c.loop_seconds[warmup:]
    c.cpu_times = c.loop_cpu[warmup:]


def run_alternating_cpu(contenders, repeats: int, warmup: int = 1, log=None) -> None:
    """:func:`benchmarks._common.run_alternating`, recording the process CPU time of each call too
    (``c.cpu_times``), next to the wall time (``c.times``).

    On a shared machine another process time-sliced onto our core stretches the wall time but not
    our CPU time, so the CPU-time rate is the steadier number there; both are printed.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for c in contenders:
        c.cpu_times = []
    for rep in range(warmup + repeats):
        for c in contenders:
            fn = c.prepare(rep)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if rep >= warmup:
                c.times.append(dt)
                c.cpu_times.append(dc)
            if log is not None:
                log(f"  {'warm-up' if rep < warmup else f'repeat {rep - warmup + 1}'}: {c.name}: "
                    f"{dt:.4f} s wall, {dc:.4f} s CPU")


def cpu_rates(c: Contender) -> list[float]:
    return [c.work / t for t in c.cpu_times]


def env_only(env: BatchedAnyMDPEnv, transitions, b: int) -> Contender:
    actions = [t.actions for t in transitions]

    def prepare(rep):
        env.reset(seed=0)

        def run():
            for a in actions:
                env.step(a)
        return run
    return Contender("env only (BatchedAnyMDPEnv.step)", prepare, b * len(actions))


def part_a(sizes, b: int, steps: int, distinct: int, repeats: int, verbose: bool) -> dict:
    out = {}
    for n in sizes:
        t0 = time.perf_counter()
        base = [sample_anymdp_task(n, N_ACTIONS, seed=s) for s in range(distinct)]
        tasks = stack_tasks([base[i % distinct] for i in range(b)])
        env = BatchedAnyMDPEnv(tasks, autoreset_mode="SameStep")
        suite = Suite(name=f"bench-anymdp-{n}", num_envs=b, tasks=tasks, make_env=lambda env=env: _Reusable(env))
        spec = EnvSpec.from_tasks(tasks)
        observations, transitions = record_stream(env, steps, seed=12345)
        ended = sum(int((t.terminated | t.truncated).sum()) for t in transitions) / (b * steps)
        print(f"  n={n}: {distinct} distinct tasks tiled to B={b}, env built and {steps}-step stream recorded "
              f"in {time.perf_counter() - t0:.1f} s ({ended:.2%} of recorded steps end an episode)", flush=True)
        cs = [env_only(env, transitions, b)]
        for name in LEARNERS:
            cs.append(learner_only(name, spec, observations, transitions, b))
            cs.append(full_loop(name, suite, steps))
        run_alternating_cpu(cs, repeats, warmup=1, log=print if verbose else None)
        for c in cs:
            if hasattr(c, "loop_seconds"):
                fix_loop_times(c)
        out[n] = {c.name: c for c in cs}
        print(f"  n={n}: timed in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def report_a(results: dict, b: int, steps: int) -> None:
    rows = []
    env_name = "env only (BatchedAnyMDPEnv.step)"
    for n, cs in results.items():
        env = cs[env_name]
        peer_lo, peer_fl = cs[f"{PEER} learner-only"], cs[f"{PEER} full-loop"]
        rows.append([n, "(env alone: step only)", "-", "-", "-", fmt_rate(cpu_rates(env)), fmt_rate(env.rates),
                     f"{1e6 * med(env.cpu_times) / steps:.3g}", "-"])
        for name in LEARNERS:
            lo, fl = cs[f"{name} learner-only"], cs[f"{name} full-loop"]
            rows.append([n, name, fmt_rate(cpu_rates(lo)), fmt_rate(lo.rates),
                         f"{med(lo.cpu_times) / med(peer_lo.cpu_times):.2f}x",
                         fmt_rate(cpu_rates(fl)), fmt_rate(fl.rates), f"{1e6 * med(fl.cpu_times) / steps:.3g}",
                         f"{med(fl.cpu_times) / med(peer_fl.cpu_times):.2f}x"])
    print(f"\n(a) learner-steps per second at B={b}, {steps} batched steps per repeat; median [min, max] over repeats, "
          f"from the process CPU time ('CPU') and from the wall clock ('wall'); 'x {PEER}' = median CPU time / "
          f"the {PEER} learner's (same n, same part)")
    print(table(["n", "learner", "learner-only steps/s (CPU)", "learner-only steps/s (wall)", f"x {PEER}",
                 "full-loop steps/s (CPU)", "full-loop steps/s (wall)", "full loop, CPU us per batched step",
                 f"x {PEER} (full loop)"], rows))
    if HEADLINE_N in results:
        cs = results[HEADLINE_N]
        for name in ("tql", "ucbq"):
            c = cs[f"{name} learner-only"]
            rate, wall = med(cpu_rates(c)), med(c.rates)
            verdict = "meets" if rate >= TARGET else "MISSES"
            print(f"target: {name} learner-only at n={HEADLINE_N}, B={b}: {rate / 1e6:.2f} M learner-steps/s "
                  f"by CPU time, {wall / 1e6:.2f} M by wall clock ({verdict} the >= {TARGET / 1e6:.0f} M target by CPU time)")
        print("CPU time per learner-step (n=%d): " % HEADLINE_N + ", ".join(
            f"{name} {1e9 * med(cs[f'{name} learner-only'].cpu_times) / (b * steps):.0f} ns" for name in LEARNERS))


def part_b(tasks: int, steps: int) -> dict:
    cfg = EvalConfig(suite="anymdp-16", learners=list(LEARNERS), tasks=tasks, steps=steps)
    print(f"\n(b) the whole comparison: evaluate({cfg})", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    result = evaluate(cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    loops = sum(e["seconds"] for e in result["learners"].values())
    rows = [[name, f"{e['seconds']:.1f}", f"{e['learner_steps_per_second'] / 1e3:.0f}k"]
            for name, e in result["learners"].items()]
    print(table(["learner", "run_learner loop seconds", "full-loop learner-steps/s"], rows))
    verdict = "meets" if wall < EVAL_TARGET_S else "MISSES"
    print(f"wall time {wall:.1f} s ({verdict} the < {EVAL_TARGET_S:.0f} s target; CPU time {cpu:.1f} s); "
          f"learner loops {loops:.1f} s, "
          f"the rest ({wall - loops:.1f} s) is sampling {tasks} tasks, the exact references and the analysis")
    print(format_table(result))
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: n = 16, B = 256, 20 steps, a small comparison")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per contender (default 5, after 1 warm-up)")
    ap.add_argument("--batch", type=int, default=1024, help="tasks B stepped at once in part (a) (default 1024)")
    ap.add_argument("--steps", type=int, default=100, help="batched steps per repeat in part (a) (default 100)")
    ap.add_argument("--distinct", type=int, default=128, help="distinct tasks per n, tiled to B (default 128)")
    ap.add_argument("--skip-a", action="store_true", help="skip part (a)")
    ap.add_argument("--skip-b", action="store_true", help="skip part (b)")
    ap.add_argument("--verbose", action="store_true", help="print every timed call")
    args = ap.parse_args(argv)
    sizes = (16,) if args.quick else SIZES
    b = min(args.batch, 256) if args.quick else args.batch
    steps = 20 if args.quick else args.steps
    distinct = min(args.distinct, 32) if args.quick else args.distinct
    eval_tasks, eval_steps = (32, 1000) if args.quick else (256, 10000)

    print("benchmarks.harness: learner-steps per second of the baselines, and the wall time of a whole comparison")
    print(machine_line())
    print(f"{N_ACTIONS} actions; {args.repeats} timed repeats after 1 warm-up, contenders alternated per repeat; "
          f"{distinct} distinct AnyMDP tasks per n tiled to B={b}" + ("; QUICK smoke run" if args.quick else ""))
    t_all = time.perf_counter()
    if not args.skip_a:
        report_a(part_a(sizes, b, steps, distinct, args.repeats, args.verbose), b, steps)
    if not args.skip_b:
        part_b(eval_tasks, eval_steps)
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
