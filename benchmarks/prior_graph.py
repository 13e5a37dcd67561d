"""The default agent's steps on a large task, computing only the graph rows its prior's refresh reads against the
whole history's graph every step (the same agent and the same histories otherwise).

    python -m benchmarks.prior_graph                       # Taxi-v4: 500 ids, 6 actions, 600 steps (~2 minutes)
    python -m benchmarks.prior_graph --walk 1000 --steps 200   # a random walk over 1,000 ids, 5 actions

One environment, one process pinned to one core, 1 thread. A timed call is ``--steps`` steps of ``act`` and
``observe`` from a fresh state. The two modes are timed round-robin (1 warm-up round, then ``--repeats`` (5) timed
rounds) on the same environment seeds, and their actions are compared: they must be the same, since the features
are the same bit for bit.
"""

from __future__ import annotations

from benchmarks._common import pin_one_core

CORE = pin_one_core()

import argparse  # noqa: E402  (numpy must come after the pinning)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import Contender, fmt_time, machine_line, med, run_alternating, table  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--walk", type=int, default=0, help="ids of a random walk (5 actions) instead of Taxi-v4")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.repeats < 1 or args.walk < 0:
        ap.error("--steps and --repeats must be >= 1, --walk >= 0")
    torch.set_num_threads(1)
    import gymnasium as gym

    import anymdp_agent.modeling_anymdp_agent as modeling
    from anymdp_agent.modeling_anymdp_agent import AnyMDPAgentModel
    from anymdp_agent.rollout import bundled_agent_path

    needed_rows = modeling.history_graph

    def whole_graph(counts, n_sa, visits, envs=None, states=None):
        return needed_rows(counts, n_sa, visits)

    model = AnyMDPAgentModel.from_pretrained(bundled_agent_path()).eval()
    actions: dict[str, list[list[int]]] = {"whole graph": [], "needed rows": []}

    def episode(name: str, graph, seed: int):
        def run():
            modeling.history_graph = graph
            try:
                if args.walk:
                    n_obs, n_act, obs, rng = args.walk, 5, 0, np.random.default_rng(seed)
                else:
                    env = gym.make("Taxi-v4")
                    n_obs, n_act = env.observation_space.n, env.action_space.n
                    obs, _ = env.reset(seed=seed)
                state = model.initial_state(1, num_observations=n_obs, num_actions=n_act)
                gen, taken = torch.Generator().manual_seed(seed), []
                for _ in range(args.steps):
                    a, _, state = model.act(state, torch.tensor([obs]), generator=gen)
                    if args.walk:
                        nxt = int((obs * 7 + int(a) * 131 + rng.integers(4) * 17) % n_obs)
                        r, term, trunc = 0.1, False, False
                    else:
                        nxt, r, term, trunc, _ = env.step(int(a))
                    state = model.observe(state, a, torch.tensor([float(r)]), torch.tensor([nxt]), torch.tensor([term]),
                                          torch.tensor([trunc]))
                    taken.append(int(a))
                    obs = nxt
                    if term or trunc:
                        obs, _ = env.reset()
                actions[name].append(taken)
            finally:
                modeling.history_graph = needed_rows
        return run

    contenders = [Contender(name, (lambda rep, name=name, graph=graph: episode(name, graph, rep)), args.steps)
                  for name, graph in (("whole graph", whole_graph), ("needed rows", needed_rows))]
    run_alternating(contenders, args.repeats)
    print(machine_line())
    task = f"a random walk over {args.walk} ids, 5 actions" if args.walk else "Taxi-v4 (500 ids, 6 actions)"
    whole, needed = contenders
    print(table(["task", "steps per run", "whole graph", "needed rows", "speed-up"],
                [[task, args.steps, fmt_time(whole.times), fmt_time(needed.times),
                  f"{med(whole.times) / med(needed.times):.2f}x"]]))
    print("same actions in every pair of runs:", actions["whole graph"] == actions["needed rows"])


if __name__ == "__main__":
    main()
