"""Learner-steps/s of the bundled agent, of its rule run by the harness' compiled planner (``mbrl:prior=agent`` with
the agent's settings, :func:`~anymdp_agent.baselines.model_based.agent_rule`) and of the planner with its learned transition prior
(``mbrl:prior=bundled``) next to the count-based planner (``mbrl``), through the harness.

    python -m benchmarks.learner_speed            # B = 1, 64, 1024 on anymdp-16 (about 2 minutes)
    python -m benchmarks.learner_speed --quick    # B = 1 and 64, fewer steps (~30 s)
    python -m benchmarks.learner_speed --quick --suite anymdp-64   # where the prior's network costs most

One process pinned to one core, 1 thread. A timed call is ``run_learner(learner, suite, steps)``: the whole
in-context loop the evaluation runs (act, env step, observe, episode-end rows), from a fresh state, on
``B`` validation tasks of ``--suite`` (AnyMDP-16 by default). The four are timed round-robin (1 warm-up
round, then ``--repeats`` timed rounds), so the ratios to ``mbrl`` are measured side by side under the same load.
Return-driven meta-training (``training/meta_rl.py``) pays this cost for every step of every run it learns from.
"""

from __future__ import annotations

from benchmarks._common import pin_one_core

CORE = pin_one_core()

import argparse  # noqa: E402  (numpy must come after the pinning)

import torch  # noqa: E402

from benchmarks._common import Contender, fmt_rate, machine_line, med, run_alternating, table  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--agent", default=None, help="checkpoint folder (default: the bundled agent)")
    ap.add_argument("--suite", default="anymdp-16", help="the tasks (an anymdp-N or garnet-N suite name)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from anymdp_agent.baselines import make_learner
    from anymdp_agent.baselines.model_based import agent_rule
    from anymdp_agent.evaluation import check_suite_name, load_suite, run_learner
    from anymdp_agent.rollout import AgentLearner, bundled_agent_path

    check_suite_name(args.suite)  # a clear error before anything runs

    print(machine_line())
    print(f"suite: {args.suite}")
    batches = (1, 64) if args.quick else (1, 64, 1024)
    rows = []
    for b in batches:
        steps = {1: 300, 64: 300, 1024: 100}[b] // (3 if args.quick else 1)
        suite = load_suite(args.suite, b, split="validation")
        agent = AgentLearner(args.agent or bundled_agent_path())
        learners = (("agent", agent), ("the agent's rule", make_learner(agent_rule(args.agent or "agent"))),
                    ("mbrl:prior=bundled", make_learner("mbrl:prior=bundled")), ("mbrl", make_learner("mbrl")))
        contenders = [Contender(name, (lambda rep, lr=lr: (lambda: run_learner(lr, suite, steps, seed=rep))), b * steps)
                      for name, lr in learners]
        run_alternating(contenders, args.repeats)
        a, r, p, m = contenders
        rows.append([str(b), fmt_rate(a.rates), fmt_rate(r.rates), fmt_rate(p.rates), fmt_rate(m.rates),
                     f"{med(a.rates) / med(m.rates):.3f}", f"{med(r.rates) / med(m.rates):.3f}",
                     f"{med(p.rates) / med(m.rates):.3f}"])
    print(table(["B", "agent learner-steps/s", "its rule learner-steps/s", "mbrl:prior learner-steps/s",
                 "mbrl learner-steps/s", "agent / mbrl", "its rule / mbrl", "mbrl:prior / mbrl"], rows))


if __name__ == "__main__":
    main()
