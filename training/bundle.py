"""Make a trained checkpoint the package's bundled agent: copy, evaluate on held-out suites, render its card.

    python training/bundle.py --checkpoint runs/cpu-meta-rl/best --name anymdp-agent-meta-cpu
    python training/bundle.py --card-only --name anymdp-agent-meta-cpu     # re-render the card only

Writes ``anymdp_agent/pretrained/<name>/`` (config, safetensors, modeling code, ``train_config.json``,
``eval/*.json`` + ``eval/*.png`` from the evaluation harness on *test* seeds, and ``README.md``, the model
card rendered from those artifacts). The suites compare the agent with every classic learner on the same
tasks and seeds; nothing here is tuned to pass a bar. ``--card-only`` renders the card of an existing
folder from the eval JSONs it already holds (no evaluation, weights untouched).

From Python, the same three steps work on any checkpoint folder: :func:`evaluate_checkpoint` (eval JSONs
and PNGs into ``folder/eval``), :func:`render_card` (``README.md`` from them), :func:`bundle` (both, into
the package's ``pretrained/`` folder, atomically).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from anymdp_agent.training.transition_prior import PriorArgs

#: (suite, instances, steps, window): the quality bar's suite first, then the rest of the picture; the last four
#: are families the default agent's training never draws from (dense Dirichlet MDPs, RiverSwim, bandits, and
#: AnyMDP with goal and pitfall rewards only).
SUITES = [("anymdp-16", 128, 4000, 500), ("frozenlake", 32, 20000, 2000), ("cliffwalking", 16, 10000, 1000),
          ("anymdp-32", 64, 4000, 500), ("anymdp-64", 32, 4000, 500), ("garnet-16", 64, 4000, 500),
          ("frozenlake8x8", 16, 20000, 2000), ("dirichlet-16", 128, 4000, 500), ("riverswim-6", 64, 4000, 500),
          ("bandit-5", 128, 4000, 500), ("sparse-16", 128, 4000, 500)]
#: The same 16-state tasks at a context of 16,000 steps: 16x the final training sequence length.
LONG = ("anymdp-16", 32, 16000, 2000)
#: ``mbrl:novelty=...`` is the planner with the default agent's rule for rewards that are all 0 (``planner_novelty``,
#: as the default recipe writes it): beside the agent, it shows what that rule does without the learned prior.
BASELINES = ["mbrl", f"mbrl:novelty={PriorArgs.novelty:g}", "mbrl:lookahead=1", "ucbq", "tql", "random", "oracle"]

#: What the card of each bundled agent says beyond the generic limitations (markdown bullets).
LIMITATIONS = {
    "anymdp-agent-model-based-cpu": (
        "- Most of its ability is built in: the count-based planner's exact statistics, value iteration and "
        "optimism. What is learned is the transition prior (about 1,900 parameters), which reads the history's "
        "count statistics and where each id lies along its transition graph, and says which few-visit transition "
        "estimates to distrust. Untrained, the agent is nearly that planner: the untrained prior's pseudo-counts are "
        "tiny (3e-4 per id) but sit on ids not yet reached too, whose values are the optimism, and act as a small "
        "bonus (+0.011 [+0.002, +0.020] on AnyMDP-16 validation tasks; training adds +0.032 [+0.020, +0.044] to it "
        "there). It is a strong, cheap in-context learner, not evidence that a generic sequence model learns to "
        "plan.\n"
        "- In the last 10 steps of an episode it plans for the steps left (`planner_tail_steps`, a rule of the "
        "backbone, not learned): the episode's length is the longest of its episodes that ended by truncation, so "
        "until one has, the rule does nothing. On validation tasks it is worth +0.014 [+0.008, +0.020] on "
        "AnyMDP-16 (three environment seeds), and the planner gains as much from it (`mbrl:tail=10`, +0.019 "
        "[+0.013, +0.024]).\n"
        "- Its gain over the planner is real but modest. On validation tasks it is ahead of `mbrl` on AnyMDP-16 by "
        "+0.063 (environment seed 0), and training adds +0.032 [+0.020, +0.044] to its untrained config (three "
        "environment seeds). On the 128 AnyMDP-16 test tasks it is ahead of `mbrl` (0.840 against 0.783; +0.057 "
        "[+0.028, +0.087]) and of `mbrl:tail=10` (0.795; +0.045 [+0.017, +0.074]), and its lead over its untrained "
        "config with the same rules (0.810) is +0.030 [+0.009, +0.053]; on AnyMDP-16 tasks from the authors' own "
        "generator (`python -m benchmarks.peer_tasks`: 0.848 against `mbrl`'s 0.776) it is +0.029 [+0.004, +0.055] "
        "ahead of its untrained config. It is still below the planner that knows the true transitions (about 0.88 "
        "on the same test tasks). Its per-task test numbers depend on the machine: the prior reads where each id lies "
        "along the history's graph, an eigenvector that MKL's eigensolver rounds differently on another CPU (forcing "
        "MKL's generic code path changes 17 of 64 validation runs), and from the first different decision the run's "
        "random stream differs; a test number is one draw of about +-0.015 on AnyMDP-16. It grows with the context "
        "(16,000 steps: +0.149 [+0.070, +0.245]). On the AnyMDP-32 test tasks it is 0.957x `mbrl` and on AnyMDP-64 "
        "1.026x: on each one task moves the mean, a task whose oracle and random returns differ by less than 1 (0.79 "
        "and 0.95; the median gap is about 190), so a return one unit off moves its score by more than 1. On those "
        "tasks every episode ends in a pitfall the best policy falls into at once, and the agent still wanders first "
        "on AnyMDP-32's (-5.30 against `mbrl`'s -1.01; AnyMDP-64's: -1.50 against -2.97). "
        "It acts greedily on its plan (random ties): it does not explore beyond the planner's optimism and the "
        "prior's weight (4, chosen on validation seeds).\n"
        "- Its prior's pseudo-transitions are paid the reward of arriving where they go (`prior_arrival_reward`, a "
        "rule of the backbone, not learned): each one to an id carries the pair's mean reward, minus the mean arrival "
        "reward of the pair's own transitions, plus that id's mean arrival reward. Without it the prior moved a "
        "pair's next observations but not its reward, so mass moved off a pitfall kept the pitfall's cost. On "
        "validation tasks: AnyMDP-16 +0.010 [+0.001, +0.019] (three environment seeds), AnyMDP-64 +0.004 [-0.011, "
        "+0.019] (its 8 smallest-gap tasks +0.29), AnyMDP-32 -0.001 [-0.010, +0.008], Garnet-16 +0.005 [-0.001, "
        "+0.012], RiverSwim -0.009 [-0.034, +0.016]; its untrained config moves -0.003, so it is a gain of the "
        "trained prior's. On the test tasks, against the same agent without it on the same machine: AnyMDP-16 +0.015 "
        "[-0.007, +0.039], AnyMDP-64 +0.058 (0.886x -> 1.026x `mbrl`), AnyMDP-32 -0.014 [-0.048, +0.013] (0.979x -> "
        "0.957x), FrozenLake 4x4 -0.002, FrozenLake 8x8 +0.045, RiverSwim -0.030 (transfer and never-trained-on "
        "families: nothing was chosen on them).\n"
        "- It puts no prior mass on ids where an episode has ended (`prior_off_terminal`, a rule of the backbone, not "
        "learned). A terminal id is worth 0 in the plan, and what arriving there pays sits in the mean reward of the "
        "pairs that arrived, so prior mass on it from another pair read as a way to end the episode for nothing: on "
        "tasks whose episodes end in costly pitfalls every move that stays alive looked better than it is. On "
        "validation tasks: AnyMDP-32 +0.011 [-0.000, +0.023] (1.005x -> 1.022x `mbrl`), AnyMDP-16 +0.001 [-0.008, "
        "+0.010], AnyMDP-64 +0.002 [-0.013, +0.019]; Garnet and RiverSwim have no terminal states and are unchanged. "
        "On the test tasks, against the same agent without it on the same machine: AnyMDP-32 +0.058 [-0.004, "
        "+0.167] (0.886x -> 0.979x; its task 5 from -7.71 to -4.50), AnyMDP-64 -0.044 [-0.314, +0.171] (0.990x -> "
        "0.886x; its task 18 from -1.55 to -4.96, the other 31 tasks +0.065), AnyMDP-16 +0.005 [-0.014, +0.024], "
        "FrozenLake 4x4 +0.044 [-0.024, +0.110] (0.834 against 0.790) and FrozenLake 8x8 -0.021 [-0.116, +0.066] "
        "(0.395 against 0.416; transfer, nothing chosen on either). On the "
        "pitfall-heavy tasks it is not a fix: it moves them both ways.\n"
        "- It weighs the prior by its own evidence (`prior_evidence`, a rule of the backbone, not learned): each "
        "history scores the prior's predictions of its own transitions (the sequential likelihood under the "
        "network's pseudo-counts times 1/16 to 1), and the plan's pseudo-counts at the ids it has shown are 4 times "
        "the best of those weights; at ids not shown yet they keep 4. On AnyMDP most histories keep the full weight; "
        "where the prior is wrong, as on RiverSwim, it is shrunk there, and the agent keeps being pulled on to states "
        "it has not reached. On validation tasks it is level on AnyMDP-16 (+0.001 [-0.008, +0.008]) and worth +0.015 "
        "[+0.005, +0.028] on AnyMDP-64 and +0.055 [+0.006, +0.104] on RiverSwim. On the test tasks, against the "
        "bundle without it: AnyMDP-64 +0.042 [+0.001, +0.096], AnyMDP-32 +0.037 [-0.004, +0.112], RiverSwim +0.144 "
        "[+0.043, +0.246], FrozenLake -0.017 [-0.048, +0.008], FrozenLake 8x8 -0.095 [-0.163, -0.026] (measured when it "
        "was bundled, on that card's machine).\n"
        "- Its exploration is mostly the planner's: optimism for untried pairs worth `r_max / (1 - gamma)`. On "
        "RiverSwim (`riverswim-6`, a family it never trained on, the standard test of deep exploration; its discovery "
        "window was chosen on RiverSwim validation seeds) it reaches the far end more often than the planner and "
        "than the planner tuned there: 0.247 (`mbrl` 0.016; 0.277 without the arrival rule, 0.120 without "
        "the evidence rule before that, 0.054 with the shorter discovery window before that) against 0.210 for the "
        "planner tuned there (optimism 8). The window and the "
        "evidence rule were both chosen on RiverSwim validation seeds among others, so it is no longer a family "
        "nothing was chosen on. While every reward seen is 0, "
        "a rule of the backbone, not learned (`planner_novelty` 0.001), keeps untried pairs worth more than tried "
        "ones where the planner, every Q at 0, walks at random: on AnyMDP with goal and pitfall rewards only "
        "(`sparse-16`, never trained on) 0.707 against 0.408 (+0.299 [+0.227, +0.369]) and on FrozenLake 8x8 0.440 "
        "against 0.063; on `sparse-16` the planner with the same rule (`mbrl:novelty=0.001`) scores 0.638, and the "
        "agent is +0.069 [+0.018, +0.117] ahead of it: most of that gain is the rule's, not training's. On dense "
        "Dirichlet MDPs, "
        "another family it never trained on, it is ahead of the planner inside it (`dirichlet-16`: 0.955 against "
        "0.928, paired +0.027 [+0.021, +0.034]) and level with the best planner there, which looks one step "
        "ahead (`mbrl:lookahead=1`, 0.954; `docs/training.md`). On multi-armed bandits (`bandit-5`, also never "
        "trained on) its prior keeps the least-pulled arms in play, where the planner is greedy once every arm is "
        "pulled: 0.963 against 0.921 over 4,000 pulls (+0.042 [+0.010, +0.080]); it pays for the extra pulls up "
        "front (an earlier bundle's first 100 pulls scored 0.76 against 0.89 on validation tasks, so it is behind on "
        "budgets of a few hundred pulls) and gains on the tasks where the planner settles on a wrong arm.\n"
        "- Size its state to the environment (`initial_state(batch, num_observations=n)`, as the harness does): it "
        "then keeps prior mass on the ids it has not shown yet while it is still finding new ones (worth +0.010 "
        "[+0.004, +0.017] on AnyMDP-16 validation tasks), and drops it once 400 transitions, or as many as the "
        "last new id took, pass without a new one, so ids the environment never uses pull its plan only for that "
        "window (100 transitions before this bundle: too short for RiverSwim's far states, `docs/training.md`). "
        "Started with the whole vocabulary (`initial_state(batch)`), or sized beyond it (more than 64 ids, beyond "
        "the prior's training tasks), it never puts mass on ids it has not shown: on Taxi (500 ids) mass on them "
        "cost 0.1 of AUC.\n"
        "- Planning costs O(states^2 x actions) per step, constant in the context's length; the prior's network runs "
        "on the pairs of the observation just left every step and on every pair after max(16, steps / 8) steps, so "
        "it steps several times slower than the numba-compiled planner, most at 48-64 states. The graph inputs add "
        "one symmetric eigensolver per history whenever it shows a transition edge it had not shown before: at "
        "Taxi's 500 ids, 8 runs of 200 steps took 85 s against 67 s for an earlier bundle without them, and "
        "over 3,000 steps the agent stepped at 17 learner-steps/s (the bundle without them 26, `mbrl` 498; each "
        "run with other jobs on the machine).\n"
        "- Its prior was trained on tasks of 8-48 states (AnyMDP, Garnet, and deterministic Garnet and AnyMDP); much larger "
        "tasks are an extrapolation. It reads how deterministic the history looks and how many ids it has shown, "
        "so on a deterministic task it stops spreading pseudo-counts over the other ids. On Taxi (500 ids, "
        "deterministic moves on a grid; 8 runs x 3,000 steps, a transfer check, nothing chosen on it) it is behind "
        "`mbrl`: 0.407 against 0.481, paired -0.074 [-0.113, -0.033], behind on 7 of 8 runs (the bundle without the "
        "tail plan 0.435, paired with this one -0.028 [-0.065, -0.003]). The bundle before that, "
        "whose prior had never seen sure moves along a chain, put 2.5% of a sure move's mass on other ids there and "
        "scored 0.321 (-0.160 against `mbrl`); the prior shipped since keeps 0.5% off (without the tail plan +0.114 "
        "[+0.074, +0.155] ahead of it, level with the bundle before the graph inputs, 0.425). Deterministic AnyMDP "
        "in training cost a little "
        "elsewhere: on bandits -0.007 on validation seeds (a bandit's history looks deterministic, so it doubts "
        "less), and on the AnyMDP-16 test tasks it is -0.018 [-0.043, +0.005] against the bundle before it "
        "(-0.004, se 0.004, on validation seeds; `docs/training.md`)."),
    "anymdp-agent-planning-cpu": (
        "- The previous default agent (`cpu-default`: imitation of the planner on tasks generated on the fly). "
        "Most of the planning backbone's ability is built in (exact statistics and value iteration); "
        "training tunes its discount, temperature, optimism and exploration bonus. It is a strong, "
        "cheap in-context learner, not evidence that a generic sequence model learns to plan.\n"
        "- On FrozenLake (sparse reward at the goal, slippery moves) it learns far more slowly than the "
        "count-based planner it imitates: what it tuned on AnyMDP's dense composite rewards does not transfer."),
    "anymdp-agent-sequence-cpu": (
        "- The paper's route at CPU scale: a generic gated-linear-attention model (2 layers, 64 wide, 0.1M "
        "parameters) reading per-observation statistics as extra input features (per action at the current "
        "observation: visit count, mean reward, mean discounted return, and a one-step lookahead on those returns "
        "over the pair's next observations), trained 400 steps on one CPU core. Nothing in it iterates values over "
        "the observation space. On 8-state tasks it is above UCB-Q; at 16 states it is level with UCB-Q, and far "
        "below the count-based planner at both sizes.\n"
        "- It samples with the schedule in its `config.json`: temperature 1.0 falling to 0.3 over the first 1,000 "
        "steps, chosen on validation seeds (`model.act` without a temperature, and `agent:anymdp-agent-sequence-cpu`, "
        "use it). Its vocabulary is 16 observations: larger tasks are refused."),
    "anymdp-agent-meta-cpu": (
        "- Not the default agent: return-driven meta-training (stage 2) raised the imitation stage's AnyMDP-16 "
        "score (0.691 -> 0.737 on the test tasks) but not above the count-based planner (`mbrl`, 0.783; the "
        "paired difference is -0.045 [-0.078, -0.014]), and both stages score about 0.05 on FrozenLake, where "
        "the untrained planner scores 0.43 and `mbrl` 0.73: what it learned from the corpus and the training "
        "families (dense AnyMDP, goal-only AnyMDP, Garnet, bandits) does not transfer to FrozenLake's slippery "
        "sparse-reward grid. It documents the two-stage recipe (`docs/training.md`), not a better learner.\n"
        "- Its context head (28 parameters) reads summary statistics of the history; the rest of its ability is "
        "built in (exact statistics and value iteration), as for the planning agent."),
}


def limitations_for(name: str) -> str:
    """The extra limitation bullets of the bundled agent ``name`` (empty for an agent not listed)."""
    return LIMITATIONS.get(name, "")


def quick_suites() -> tuple[list[tuple[str, int, int, int]], tuple[str, int, int, int]]:
    """Small versions of :data:`SUITES` and :data:`LONG` (a smoke run)."""
    def small(name, n, steps, window):
        return name, max(2, n // 16), max(200, steps // 20), max(50, window // 20)

    return [small(*s) for s in SUITES], small(*LONG)


def evaluate_checkpoint(folder: str | os.PathLike, suites=SUITES, long_context=LONG, seed: int = 0,
                        progress: bool = True) -> list[Path]:
    """Run the harness on ``folder`` next to :data:`BASELINES`; write ``folder/eval/eval-<suite>.json|png``.

    Each of ``suites`` and ``long_context`` is ``(suite, instances, steps, window)``; the long-context run's
    files are named ``eval-<suite>-long-context`` (``None``: no such run). The agent is named ``agent``.
    """
    import torch

    from anymdp_agent.evaluation import EvalConfig, evaluate, format_table, write_results

    torch.set_num_threads(1)
    folder = Path(folder)
    runs = [(s, False) for s in suites] + ([(long_context, True)] if long_context else [])
    written = []
    for (name, n, steps, window), is_long in runs:
        cfg = EvalConfig(suite=name, learners=[f"agent:{folder}", *BASELINES], tasks=n, steps=steps, seed=seed,
                         window=window)
        result = evaluate(cfg, progress=progress)
        # Name the agent by its role, not by the (possibly temporary) folder it was evaluated from.
        result["learners"] = {("agent" if k.startswith("agent:") else k): v for k, v in result["learners"].items()}
        result["config"]["learners"] = ["agent" if k.startswith("agent:") else k for k in cfg.learners]
        result["learners"]["agent"].get("hyperparameters", {}).pop("checkpoint", None)
        for pair in result.get("paired", []):
            for side in ("learner", "baseline"):
                if pair[side].startswith("agent:"):
                    pair[side] = "agent"
        paths = write_results(result, folder / "eval", stem=f"eval-{name}" + ("-long-context" if is_long else ""),
                              compact=True)
        written.append(Path(paths["json"]))
        print(format_table(result), flush=True)
    return written


def render_card(folder: str | os.PathLike, name: str, limitations: str | None = None) -> Path:
    """Render ``folder/README.md`` from the folder's artifacts (config, train_config, weights, ``eval/*.json``),
    as the card of the agent bundled under ``name`` (its snippet loads ``bundled_agent_path(name)``)."""
    from anymdp_agent.hub import write_model_card

    limitations = limitations_for(name) if limitations is None else limitations
    return write_model_card(folder, extra_limitations=limitations, name=name, bundled_as=name)


def bundle(checkpoint: str | os.PathLike, name: str, quick: bool = False, seed: int = 0,
           limitations: str | None = None) -> Path:
    """Copy ``checkpoint`` to ``anymdp_agent/pretrained/<name>`` with the package's own remote-code files, evaluate
    it there and render its card.

    Built under a temporary name and renamed at the end: an interrupted run leaves the old bundle intact.
    """
    import anymdp_agent
    from anymdp_agent.fileio import replace_dir
    from anymdp_agent.hub import CODE_FILES, pretrained_dir
    from anymdp_agent.rollout import load_agent

    src = Path(checkpoint)
    load_agent(src)  # refuses an incomplete or inconsistent checkpoint before anything is copied
    dest = pretrained_dir() / name
    tmp = dest.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("eval", "README.md", ".*"))
    # the evaluation runs the package's AnyMDPAgentModel, so the remote code shipped beside it is the package's
    # too, not a copy the checkpoint was saved with under an older package
    package = Path(anymdp_agent.__file__).parent
    for code_file in CODE_FILES:
        shutil.copyfile(package / code_file, tmp / code_file)
    t0 = time.perf_counter()
    suites, long_context = quick_suites() if quick else (SUITES, LONG)
    evaluate_checkpoint(tmp, suites, long_context, seed=seed)
    render_card(tmp, name, limitations)
    replace_dir(tmp, dest)
    print(f"bundled {src} as {dest} ({time.perf_counter() - t0:.0f} s of evaluation)")
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a pretrained_model/ folder (e.g. runs/cpu-default/best)")
    p.add_argument("--name", required=True, help="folder name under anymdp_agent/pretrained/ (e.g. anymdp-agent-meta-cpu)")
    p.add_argument("--quick", action="store_true", help="small suites (a smoke run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limitations", default=None,
                   help="a markdown file of extra limitation bullets for the card (default: bundle.LIMITATIONS[NAME])")
    p.add_argument("--card-only", action="store_true",
                   help="only re-render the card of the bundled folder NAME from the eval JSONs it holds")
    args = p.parse_args(argv)
    limitations = Path(args.limitations).read_text() if args.limitations else None
    if args.card_only:
        from anymdp_agent.rollout import bundled_agent_path

        print(f"wrote {render_card(bundled_agent_path(args.name), args.name, limitations)}")
        return 0
    if not args.checkpoint:
        p.error("--checkpoint is required (or --card-only)")
    bundle(args.checkpoint, args.name, quick=args.quick, seed=args.seed, limitations=limitations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
