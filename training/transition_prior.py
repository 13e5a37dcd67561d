"""Meta-train the learned transition prior of the ``model_based`` agent and of ``mbrl:prior=...``.

    # the bundled agent's recipe: examples from a trajectory corpus, written as an agent checkpoint
    anymdp-agent generate --out data/prior-corpus --tasks 1024 --seq-len 4096 --n-states 8:32 --n-actions 2:5 \
        --weights explore=0.4,mixed_a=0.1,mixed_b=0.1,mixed_c=0.1,mixed_d=0.1,qlearn=0.1,random=0.1,distill_a=0,distill_b=0,oracle=0
    python -m anymdp_agent.training.transition_prior --corpus data/prior-corpus --out runs/prior \
        --agent_out runs/model-based-agent
    # or from histories of the planner generated on the fly
    python -m anymdp_agent.training.transition_prior --out runs/transition-prior

Training examples come either from a trajectory corpus made by ``anymdp-agent generate`` and read with
``datasets`` (``--corpus``: the behaviours' histories in each row are replayed, and each row's ``task_seed``
gives the task's true model) or, without ``--corpus``, from the count-based planner (``mbrl``) acting on tasks
from the *train* seed range (AnyMDP at 8-48 states and 2-5 actions, Garnet, and deterministic Garnet and
deterministic AnyMDP at 16 and 48 states: :data:`FAMILIES`). At fixed steps of each history its statistics are
taken, and every tried pair becomes one example: the prior network's features in, the task's *true*
next-observation row as the target.
The network is fitted by the cross-entropy of the true rows under the posterior-mean estimate
``(counts + g) / (n + sum g)`` (:func:`~anymdp_agent.baselines.transition_prior.prior_cross_entropy`); the same
score on histories from *validation* seeds picks the best of the evaluated iterations. No Gymnasium env, map or
grid is used. About 11 minutes on one CPU core with the defaults; the prior is written atomically to ``--out``
and, with ``--agent_out``, as a ``transformers`` checkpoint of the ``model_based`` agent (``AutoModel``-loadable,
its training record in ``train_config.json``). The optimisation runs under ``accelerate`` (``accelerate launch -m
anymdp_agent.training.transition_prior ...``: each process draws its own batches, gradients are averaged).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anymdp_agent.baselines.model_based import ModelBasedPlanner, PlannerState, true_model
from anymdp_agent.baselines.protocol import EnvSpec, Transition
from anymdp_agent.baselines.transition_prior import TransitionPrior, prior_cross_entropy
from anymdp_agent.configuration_anymdp_agent import END_TERMINATED
from anymdp_agent.data.corpus import generate_command
from anymdp_agent.evaluation import Suite, load_suite, run_learner

#: (suite, tasks, actions) of the training histories; the validation histories use the same families.
#: ``garnet-det-N`` is deterministic Garnet (one successor per pair), ``anymdp-det-N`` deterministic AnyMDP (each
#: action moves surely along the hidden chain, so the graph's places mean something where the rows are certain);
#: the larger tasks show the prior histories with more ids than the corpus' 8-32.
FAMILIES = (("anymdp-8", 48, 5), ("anymdp-16", 96, 5), ("anymdp-16", 48, 3), ("anymdp-24", 32, 4),
            ("anymdp-32", 32, 5), ("anymdp-16", 32, 2), ("garnet-16", 32, 5), ("garnet-det-16", 32, 5),
            ("garnet-det-48", 16, 4), ("anymdp-48", 16, 5), ("anymdp-det-16", 32, 5), ("anymdp-det-48", 16, 5))
#: Steps of each run at which the history's statistics become examples.
SNAPSHOTS = (20, 60, 150, 400, 1000, 2000, 4000)


def pair_examples(planner: ModelBasedPlanner, state: PlannerState, true: np.ndarray, chain: bool) -> tuple:
    """The examples of one snapshot of a history, one per tried pair: the prior's features ``[K, nO, F]``, the
    pair's counts ``[K, nO]`` and visits ``[K]``, and its true next-observation row ``[K, nO]`` (``true``: the
    tasks' rows ``[B, nO, na, nO]``; ``chain``: with the chain inputs)."""
    tried = state.n_sa >= 1
    return (planner.prior_inputs(state, chain=chain)[tried], state.counts[tried].astype(np.float32),
            state.n_sa[tried].astype(np.float32), true[tried])


class _Collector(ModelBasedPlanner):
    """Plain ``mbrl`` that keeps the prior's statistics and keeps the features of every tried pair at the
    snapshot steps, with the true next-observation rows as targets."""

    tracks_prior_statistics = True

    def __init__(self, snapshots, chain: bool = False):
        super().__init__()
        self._snapshots, self._step, self._examples, self._chain = set(snapshots), 0, [], chain

    def initial_state(self, spec, seed):
        self._true = true_model(spec)[0]
        self._step = 0
        return super().initial_state(spec, seed)

    def refresh_prior(self, state: PlannerState, envs=None, states=None) -> None:
        self._step += 1  # called once per step (for every pair, or for the observation just left)
        if self._step in self._snapshots:
            self._examples.append(pair_examples(self, state, self._true, self._chain))


class _Replay(ModelBasedPlanner):
    """The planner's statistics of a recorded history (no planning, no prior): what the prior reads."""

    tracks_prior_statistics = True

    def refresh_prior(self, state: PlannerState, envs=None, states=None) -> None:
        pass


def corpus_parts(corpus: str, sequences: int, snapshots=SNAPSHOTS, batch: int = 64, chain: bool = False) -> list[tuple]:
    """Examples from the first ``sequences`` rows of a corpus' train split: each row's history is replayed (every
    row with an action is a transition to the next row's observation; a closing row ``END_TERMINATED`` marks it
    terminal),
    and at each of ``snapshots`` (rows into the sequence) every tried pair is an example, with the true row of
    the task named by the row's ``task_seed``, ``n_states`` and ``n_actions`` (``chain``: the prior's chain inputs
    too)."""
    from anymdp_agent.data import check_corpus_features
    from anymdp_agent.data.corpus import open_corpus
    from anymdp_agent.envs import GENERATOR_VERSION, sample_anymdp_task, stack_tasks

    ds = open_corpus(corpus, "train")
    check_corpus_features(ds.features)
    ds = ds.with_format("numpy")
    sequences = min(sequences, len(ds))
    keep = set(snapshots)
    parts = []
    for lo in range(0, sequences, batch):
        rows = ds[lo:min(lo + batch, sequences)]
        versions = set(np.asarray(rows["sampler_version"]).tolist())
        if versions != {GENERATOR_VERSION}:
            raise ValueError(f"{corpus} was generated by sampler version(s) {sorted(versions)}, this package samples "
                             f"{GENERATOR_VERSION}: its task seeds name other tasks; regenerate the corpus")
        tasks = [sample_anymdp_task(int(n), int(a), seed=int(s))
                 for n, a, s in zip(rows["n_states"], rows["n_actions"], rows["task_seed"])]
        spec = EnvSpec.from_tasks(stack_tasks(tasks))
        true = true_model(spec)[0]
        replay = _Replay()
        state = replay.initial_state(spec, seed=0)
        obs, act, rew = (np.stack(rows[k]) for k in ("observations", "actions", "rewards"))
        for j in range(obs.shape[1] - 1):
            envs = np.nonzero(act[:, j] >= 0)[0]
            if len(envs):
                replay.record(state, Transition(obs=obs[envs, j], actions=act[envs, j], rewards=rew[envs, j].astype(np.float64),
                                                next_obs=obs[envs, j + 1], terminated=act[envs, j + 1] == END_TERMINATED,
                                                truncated=np.zeros(len(envs), dtype=bool)), envs)
            if j + 1 in keep:
                parts.append(pair_examples(replay, state, true, chain))
    return parts


#: The sampler options that make a family's ``<family>-det-N`` tasks deterministic (see :func:`family_suite`).
DETERMINISTIC_OPTIONS = {"garnet": {"branching": 1}, "anymdp": {"deterministic": True}}


def family_suite(name: str, tasks: int, actions: int, split: str) -> Suite:
    """The tasks of one of :data:`FAMILIES`: the suite :func:`~anymdp_agent.evaluation.load_suite` builds;
    ``<family>-det-N`` is ``<family>-N`` with :data:`DETERMINISTIC_OPTIONS` (Garnet with one successor per pair,
    AnyMDP with every action's most likely move made sure), on the split's own seeds."""
    det = re.fullmatch(rf"({'|'.join(DETERMINISTIC_OPTIONS)})-det-(\d+)", name)
    if det:
        return load_suite(f"{det.group(1)}-{det.group(2)}", tasks, n_actions=actions, split=split,
                          task_options=DETERMINISTIC_OPTIONS[det.group(1)])
    return load_suite(name, tasks, n_actions=actions, split=split)


def collect(split: str, steps: int, scale: float = 1.0, seed: int = 0, corpus: str = "",
            corpus_sequences: int = 0, chain: bool = False) -> list[torch.Tensor]:
    """Examples: features ``[N, W, F]``, counts ``[N, W]``, visits ``[N]``, true rows ``[N, W]`` and the mask of
    real ids ``[N, W]``, padded to the largest id count ``W``; from ``corpus`` (its first ``corpus_sequences``
    rows) or, without one, from ``mbrl`` acting on every family of ``split`` (``chain``: with the chain inputs)."""
    parts = []
    if corpus:
        parts = corpus_parts(corpus, corpus_sequences, [s for s in SNAPSHOTS if s <= steps], chain=chain)
    else:
        for name, tasks, actions in FAMILIES:
            suite = family_suite(name, max(int(tasks * scale), 2), actions, split)
            collector = _Collector((s for s in SNAPSHOTS if s <= steps), chain)
            run_learner(collector, suite, steps, seed=seed)
            parts.extend(collector._examples)
    width = max(p[1].shape[-1] for p in parts)
    def pad(x, axis):
        return np.pad(x, [(0, width - x.shape[axis]) if i == axis else (0, 0) for i in range(x.ndim)])
    columns = [[pad(f, 1), pad(c, 1), n, pad(t, 1), pad(np.ones_like(c), 1)] for f, c, n, t in parts]
    return [torch.from_numpy(np.concatenate([col[k] for col in columns]).astype(np.float32)) for k in range(5)]


def _pseudo(prior: TransitionPrior, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return prior(features) * mask  # no pseudo-counts on the padding


def _cross_entropy(prior: TransitionPrior, data, chunk: int = 8192) -> float:
    features, counts, n_sa, true, mask = data
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(counts), chunk):
            j = slice(i, i + chunk)
            total += float(prior_cross_entropy(_pseudo(prior, features[j], mask[j]), counts[j], n_sa[j], true[j])) * len(counts[j])
    return total / len(counts)


@dataclass
class PriorArgs:
    out: str = "runs/transition-prior"
    steps: int = 4000          # length of each collected run (or replayed corpus history)
    iters: int = 3000          # Adam steps
    batch: int = 4096          # examples per step (per process)
    lr: float = 3e-3
    hidden: int = 32
    eval_every: int = 500
    scale: float = 1.0         # multiplies every family's task count (tests use a small one)
    seed: int = 0
    corpus: str = ""           # a corpus folder or Hub id from anymdp-agent generate ("": mbrl histories on the fly)
    corpus_sequences: int = 512  # corpus rows replayed for examples
    agent_out: str = ""        # also write the model_based agent with this prior here ("": only the prior)
    init_from: str = ""        # start from this saved prior (a later stage on top of an earlier one)
    prior_weight: float = 4.0  # the agent's weight on the prior's pseudo-counts (chosen on validation seeds)
    refresh_fraction: float = 0.125  # the agent's prior_refresh_fraction (the same scores, fewer full refreshes)
    seen_only: bool = True     # the agent's prior_seen_only: no prior mass on ids the history has never shown
    novelty: float = 0.001     # the agent's planner_novelty: untried pairs stay worth something while no reward is positive
    chain_features: bool = True  # the prior also reads each id's place along the transition graph (prior_chain_features)
    tail_steps: int = 10       # the agent's planner_tail_steps: each episode's last steps planned for the steps left
    evidence: bool = True      # the agent's prior_evidence: each history weighs the prior by its own transitions' likelihood
    off_terminal: bool = True  # the agent's prior_off_terminal: no prior mass on ids where an episode has ended
    arrival_reward: bool = True  # the agent's prior_arrival_reward: pseudo-transitions carry their ids' arrival reward


def write_agent(prior: TransitionPrior, path: str, record: dict, args: PriorArgs) -> Path:
    """The ``model_based`` agent with ``prior`` and the planner settings of ``args`` as a ``transformers`` checkpoint
    at ``path`` (written into a temporary folder beside it with ``train_config.json`` and its card, then put in
    place)."""
    from anymdp_agent.configuration_anymdp_agent import AnyMDPAgentConfig
    from anymdp_agent.fileio import staged_dir, write_json
    from anymdp_agent.hub import write_model_card
    from anymdp_agent.modeling_anymdp_agent import AnyMDPAgentModel

    config = AnyMDPAgentConfig(backbone="model_based", num_observations=64, num_actions=5, prior_hidden=prior.hidden,
                               prior_weight=args.prior_weight, prior_refresh_fraction=args.refresh_fraction,
                               prior_seen_only=args.seen_only, planner_novelty=args.novelty,
                               prior_chain_features=prior.chain, planner_tail_steps=args.tail_steps,
                               prior_evidence=args.evidence, prior_off_terminal=args.off_terminal,
                               prior_arrival_reward=args.arrival_reward,
                               temperature_start=1.0, temperature_end=1.0, temperature_decay_steps=0)
    model = AnyMDPAgentModel(config)
    model.model_based.prior.load_state_dict(prior.state_dict())
    final = Path(path)
    with staged_dir(final) as tmp:
        model.save_pretrained(tmp)
        write_json(tmp / "train_config.json", record, indent=1)
        write_model_card(tmp, repo_id=str(final))
    return final


def train(args: PriorArgs) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(args.seed)
    t0 = time.time()
    prior = TransitionPrior(args.hidden, chain=args.chain_features)
    earlier = None  # the earlier stage's record; its mismatches are named before any examples are collected
    if args.init_from:
        start = TransitionPrior.load(args.init_from)
        if start.hidden != args.hidden:
            raise ValueError(f"--init_from {args.init_from} is {start.hidden} wide, --hidden is {args.hidden}: pass "
                             f"--hidden {start.hidden}")
        if start.chain != args.chain_features:
            raise ValueError(f"--init_from {args.init_from} {'reads' if start.chain else 'does not read'} the chain "
                             f"inputs: pass --chain_features {start.chain}")
        prior.load_state_dict(start.state_dict())
        earlier = {k: v for k, v in json.loads((Path(args.init_from) / "config.json").read_text()).items()
                   if k not in ("kind", "hidden", "num_features")}
    data = collect("train", args.steps, args.scale, corpus=args.corpus, corpus_sequences=args.corpus_sequences,
                   chain=args.chain_features)
    val = collect("validation", args.steps, args.scale / 2, chain=args.chain_features)
    say = accelerator.print
    say(f"{len(data[1])} training and {len(val[1])} validation pairs in {time.time() - t0:.0f} s", flush=True)
    opt = torch.optim.Adam(prior.parameters(), lr=args.lr)
    model, opt = accelerator.prepare(prior, opt)
    rng = torch.Generator().manual_seed(args.seed * 1000 + accelerator.process_index)  # each process its own batches
    best = (_cross_entropy(prior, val), 0, {k: v.clone() for k, v in prior.state_dict().items()})
    empirical = best[0]
    for it in range(1, args.iters + 1):
        idx = torch.randint(0, len(data[1]), (args.batch,), generator=rng)
        features, counts, n_sa, true, mask = (x[idx].to(accelerator.device) for x in data)
        loss = prior_cross_entropy(_pseudo(model, features, mask), counts, n_sa, true)
        opt.zero_grad()
        accelerator.backward(loss)
        opt.step()
        if it % args.eval_every == 0 or it == args.iters:
            score = _cross_entropy(prior, val)
            say(f"iter {it}: train CE {loss.item():.4f}, validation CE {score:.4f}", flush=True)
            if score < best[0]:
                best = (score, it, {k: v.clone() for k, v in prior.state_dict().items()})
    prior.load_state_dict(best[2])
    source = ({"corpus": args.corpus, "corpus_local": Path(args.corpus).is_dir(),
               "corpus_command": generate_command(args.corpus), "corpus_sequences": args.corpus_sequences}
              if args.corpus else {"families": [list(f) for f in FAMILIES]})
    summary = {"validation_cross_entropy": round(best[0], 4), "validation_cross_entropy_untrained": round(empirical, 4),
               "iteration": best[1], "training_pairs": len(data[1]), "validation_pairs": len(val[1]),
               **source, "snapshots": list(SNAPSHOTS), "steps": args.steps,
               "iters": args.iters, "lr": args.lr, "batch": args.batch, "seed": args.seed, "scale": args.scale,
               "processes": accelerator.num_processes, **({"first_stage": earlier} if earlier else {}),
               "command": "python -m anymdp_agent.training.transition_prior" + "".join(
                   f" --{k} {v}" for k, v in vars(args).items() if v != getattr(PriorArgs, k)),
               "seconds": round(time.time() - t0)}
    if accelerator.is_main_process:
        prior.save(args.out, summary)
        say(f"kept iteration {best[1]} (validation CE {best[0]:.4f}, untrained {empirical:.4f}) -> {args.out}", flush=True)
        if args.agent_out:
            record = {"recipe": "transition-prior", "step": best[1], "max_steps": args.iters, **summary}
            written = write_agent(prior, args.agent_out, record, args)
            say(f"agent -> {written}", flush=True)
    accelerator.wait_for_everyone()
    return summary


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(PriorArgs, description=__doc__.split("\n\n")[1])
    args, *_ = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False, return_remaining_strings=False)
    if args.steps < 1 or args.iters < 1 or args.batch < 1 or args.eval_every < 1 or not args.lr > 0 or not args.scale > 0 \
            or args.corpus_sequences < 1 or not args.prior_weight >= 0 or not args.refresh_fraction >= 0 \
            or not args.novelty >= 0 or args.tail_steps < 0:
        parser.error("steps, iters, batch, eval_every and corpus_sequences must be >= 1, lr and scale > 0, "
                     "prior_weight, refresh_fraction, novelty and tail_steps >= 0")
    if args.corpus:
        from anymdp_agent.data.corpus import open_corpus

        try:  # a missing or malformed corpus is named before any work
            open_corpus(args.corpus, "train")
        except ValueError as e:
            parser.error(f"--corpus: {e}")
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
