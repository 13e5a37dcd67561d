"""Return-driven meta-training: the agent is rewarded for what is measured, its in-context return.

    python training/meta_rl.py --config training/configs/cpu-meta-rl.yaml --init_from runs/cpu-meta-imitation/best

Imitating the count-based planner can at best reproduce it. This stage instead optimises the agent's
own in-context return on tasks it has never seen: every optimiser step samples fresh tasks from a broad
family of the package's own generators (AnyMDP at several sizes, a goal-only-reward AnyMDP variant,
Garnet, bandits; train seed range only), lets the agent act in each task ``rollouts`` times from
scratch with no weight updates inside a run, and takes a policy-gradient step on

    L = - mean_t  A_t * log pi(a_t | history_t)

where ``A_t`` is the normalised reward-to-go of the rest of the *whole in-context run* from step ``t``
minus the mean reward-to-go of the task's other rollouts at the same step (a leave-one-out baseline:
the same task, the same time, other action draws). Rewards are divided by the task's oracle-random
return gap, so every task counts alike. The log-probabilities are recomputed by the model's chunked
forward over the recorded rows (teacher forcing on its own history), so the gradient is exact for the
sampling temperature the rollout used.

What can be learned is small and interpretable: the planning backbone's discount, optimism, bonus and
temperature, and (``context_adaptation``) a head that sets them per row from the context (reward
sparsity, steps and episodes so far, episode length, share of tried pairs). Checkpoints are picked on
validation seeds only, by the paired in-context AUC difference to the count-based planner (``mbrl``)
on the same tasks.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anymdp_agent import AnyMDPAgentModel
from anymdp_agent.baselines import make_learner
from anymdp_agent.data.corpus import generate_command
from anymdp_agent.data.onpolicy import roll_learner
from anymdp_agent.envs import sample_anymdp_task, stack_tasks
from anymdp_agent.envs.families import SUITE_ACTIONS
from anymdp_agent.envs.garnet import sample_bandit_task, sample_garnet_task
from anymdp_agent.envs.seeds import TRAIN, VALIDATION
from anymdp_agent.evaluation import Suite, SuiteReference, analyse, run_learner
from anymdp_agent.fileio import atomic_write, replace_dir
from anymdp_agent.modeling_anymdp_agent import END_TERMINATED, END_TRUNCATED
from anymdp_agent.rollout import AgentLearner, load_agent
from anymdp_agent.training.recipes import load_recipe

#: Task families of the training distribution (all from the package's own samplers).
FAMILIES = ("anymdp", "anymdp_sparse", "garnet", "bandit")


@dataclass
class MetaRLArgs:
    """Every setting of a return-driven run; saved in ``train_config.json`` beside each checkpoint."""

    output_dir: str = field(default="runs/meta-rl", metadata={"help": "Run folder: checkpoints/, best/, logs/."})
    recipe: str = field(default="custom", metadata={"help": "Name of the recipe (set by the YAML file)."})
    init_from: str = field(default="", metadata={"help": "Checkpoint folder to start from (stage 1's best/)."})
    context_adaptation: bool = field(default=True, metadata={
        "help": "Add the context head (discount/optimism/temperature per row from the history); zero-initialised."})
    families: str = field(default="anymdp=0.4,anymdp_sparse=0.3,garnet=0.2,bandit=0.1", metadata={
        "help": "Task families and weights NAME=W,... over " + ", ".join(FAMILIES)})
    n_states: str = field(default="8,12,16,24,32", metadata={"help": "State counts, one drawn per optimiser step."})
    n_actions: str = field(default="2-5", metadata={"help": "Actions per task: N or LO-HI."})
    tasks: int = field(default=48, metadata={"help": "Tasks per optimiser step."})
    rollouts: int = field(default=2, metadata={"help": "In-context runs per task (>= 2: the leave-one-out baseline)."})
    seq_len: int = field(default=1024, metadata={"help": "Rows per run (environment steps plus episode-end rows)."})
    segment_len: int = field(default=512, metadata={"help": "Rows per back-propagation segment."})
    temperature_start: float = field(default=1.0, metadata={"help": "Sampling temperature schedule, as at evaluation."})
    temperature_end: float = field(default=0.1, metadata={"help": "Sampling temperature after decay_steps."})
    decay_steps: int = field(default=10_000, metadata={"help": "Environment steps of the temperature decay."})
    max_steps: int = field(default=60, metadata={"help": "Optimiser steps."})
    learning_rate: float = field(default=0.003, metadata={"help": "Adam learning rate (constant after warm-up)."})
    trainable: str = field(default="planner.context.", metadata={
        "help": "Name prefixes of the parameters this stage trains, comma-separated (empty: all). By default only the "
                "context head: the fixed discount, optimism and bonus of stage 1 stay, and what is learned is how "
                "to change them per row from the context."})
    bonus_lr_scale: float = field(default=0.3, metadata={
        "help": "Learning rate of the exploration-bonus network relative to the rest (its output is in reward units)."})
    warmup_steps: int = field(default=5, metadata={"help": "Linear warm-up steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    seed: int = field(default=0, metadata={"help": "Seed of tasks and action draws."})
    eval_every: int = field(default=10, metadata={"help": "Steps between validations (and at the end)."})
    eval_tasks: int = field(default=32, metadata={"help": "Validation tasks per suite."})
    eval_steps: int = field(default=2000, metadata={"help": "Environment steps per validation task."})
    eval_suites: str = field(default="anymdp-16,anymdp_sparse-16", metadata={
        "help": "Validation suites (validation seeds): FAMILY-N, FAMILY one of anymdp, anymdp_sparse, garnet."})
    threads: int = field(default=1, metadata={"help": "torch CPU threads."})

    def __post_init__(self):
        for name in ("tasks", "seq_len", "segment_len", "max_steps", "eval_every", "eval_tasks", "eval_steps", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rollouts < 2:
            raise ValueError(f"rollouts must be >= 2 (the leave-one-out baseline needs another run), got {self.rollouts}")
        for name in ("learning_rate", "bonus_lr_scale", "temperature_start", "temperature_end", "max_grad_norm"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        self.family_weights()
        self.state_counts()
        self.action_range()
        for suite in self.eval_suites.split(","):
            _parse_suite(suite)

    def family_weights(self) -> dict[str, float]:
        out = {}
        for item in self.families.split(","):
            name, eq, value = item.partition("=")
            name = name.strip()
            if name not in FAMILIES or not eq:
                raise ValueError(f"families: {item!r} is not NAME=W with NAME one of {', '.join(FAMILIES)}")
            try:
                w = float(value)
            except ValueError:
                raise ValueError(f"families: weight of {name} is not a number: {value!r}") from None
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"families: weight of {name} must be finite and >= 0, got {w}")
            out[name] = w
        if sum(out.values()) <= 0:
            raise ValueError("families: at least one weight must be > 0")
        return out

    def state_counts(self) -> list[int]:
        try:
            counts = [int(x) for x in self.n_states.split(",")]
        except ValueError:
            raise ValueError(f"n_states must be comma-separated integers, got {self.n_states!r}") from None
        if min(counts) < 8:
            raise ValueError(f"n_states: AnyMDP tasks need at least 8 states, got {min(counts)}")
        return counts

    def action_range(self) -> tuple[int, int]:
        lo, _, hi = self.n_actions.partition("-")
        try:
            lo, hi = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"n_actions must be N or LO-HI, got {self.n_actions!r}") from None
        if lo < 2 or hi < lo:
            raise ValueError(f"n_actions must lie in 2..num_actions, got {self.n_actions!r}")
        return lo, hi


def _parse_suite(name: str) -> tuple[str, int]:
    family, _, n = name.strip().rpartition("-")
    if family not in ("anymdp", "anymdp_sparse", "garnet") or not n.isdigit() or int(n) < 8:
        raise ValueError(f"validation suite {name!r} must be FAMILY-N with FAMILY anymdp, anymdp_sparse or garnet, N >= 8")
    return family, int(n)


def sample_task(family: str, n_states: int, n_actions: int, seed: int):
    """One task of a family of the training distribution (``anymdp_sparse``: AnyMDP with goal and pitfall
    rewards only, the rest of its composite reward switched off)."""
    if family == "anymdp":
        return sample_anymdp_task(n_states, n_actions, seed=seed)
    if family == "anymdp_sparse":
        return sample_anymdp_task(n_states, n_actions, seed=seed, reward_parts=())
    if family == "garnet":
        return sample_garnet_task(n_states, n_actions, seed=seed)
    if family == "bandit":
        return sample_bandit_task(n_actions, seed=seed)
    raise ValueError(f"unknown task family {family!r}")


def validation_suite(name: str, num_tasks: int) -> Suite:
    """``FAMILY-N`` on the validation seed range (never the test range)."""
    family, n = _parse_suite(name)
    seeds = list(VALIDATION.seeds(num_tasks, 0))
    return Suite.of_tasks(name, [sample_task(family, n, SUITE_ACTIONS, s) for s in seeds], seeds,
                          f"{family} tasks, {n} states, validation seeds")


# ---------------------------------------------------------------------- one optimiser step


def draw_tasks(args: MetaRLArgs, step: int) -> list:
    """The tasks of optimiser step ``step``: a pure function of ``(seed, step)``; one state count per step."""
    rng = np.random.default_rng([args.seed, step, 11])
    weights = args.family_weights()
    names = list(weights)
    p = np.asarray([weights[k] for k in names])
    n = int(rng.choice(args.state_counts()))
    lo, hi = args.action_range()
    out = []
    while len(out) < args.tasks:
        family = names[int(rng.choice(len(names), p=p / p.sum()))]
        task = sample_task(family, n, int(rng.integers(lo, hi + 1)), int(rng.integers(TRAIN.start, TRAIN.stop)))
        out.append(task)
    return out


def advantages(rows: dict, gap: np.ndarray, rollouts: int) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out advantages ``[B*K, T]`` of the normalised reward-to-go, and the real-row mask.

    Rows of run ``k`` of task ``i`` are at ``k * B + i``. The reward-to-go of the rest of a run is indexed
    by environment step (episode-end rows skipped), so the baseline compares the same step of other runs.
    """
    actions = rows["actions"]
    real = actions >= 0
    total, t = actions.shape
    b = total // rollouts
    # Each task's rewards in units of its oracle-random gap per episode, divided by its episodes per run: a
    # run's return is then its mean normalised episode score (the AUC the evaluation reports), whatever
    # the episode length.
    episodes = (actions < 0).sum(1).reshape(rollouts, b).mean(0) + 1.0
    r = np.where(real, rows["rewards"], 0.0) / np.tile(gap * episodes, rollouts)[:, None]
    # per-step (not per-row) reward-to-go: compact the real rows of each run
    step_index = np.cumsum(real, 1) - 1
    n_steps = real.sum(1)
    steps = int(n_steps.min())
    per_step = np.zeros((total, int(n_steps.max())))
    rr, cc = np.nonzero(real)
    per_step[rr, step_index[rr, cc]] = r[rr, cc]
    per_step = per_step[:, :steps]
    togo = np.cumsum(per_step[:, ::-1], 1)[:, ::-1].reshape(rollouts, b, steps)
    baseline = (togo.sum(0, keepdims=True) - togo) / (rollouts - 1)
    adv_step = (togo - baseline).reshape(total, steps)
    adv = np.zeros((total, t))
    keep = real & (step_index < steps)
    adv[keep] = adv_step[np.nonzero(keep)[0], step_index[keep]]
    return adv, keep


def policy_loss(model, rows: dict, adv: np.ndarray, keep: np.ndarray, mask: np.ndarray, learner: AgentLearner,
                segment: int, n_obs: int) -> tuple[float, float]:
    """Accumulate the gradient of ``-mean(A log pi)`` over the rows, segment by segment (exact: the
    planning backbone's statistics carry no parameters); returns (loss, mean entropy)."""
    device = model.device
    obs = torch.as_tensor(rows["observations"], dtype=torch.long, device=device)
    act = torch.as_tensor(rows["actions"], dtype=torch.long, device=device)
    rew = torch.as_tensor(rows["rewards"], dtype=torch.float32, device=device)
    real = rows["actions"] >= 0
    steps_before = np.cumsum(real, 1) - real  # environment steps before each row: the sampling temperature
    temp = torch.as_tensor(learner.temperature(steps_before.reshape(-1)).reshape(real.shape), dtype=torch.float32)
    adv_t = torch.as_tensor(adv, dtype=torch.float32)
    keep_t = torch.as_tensor(keep)
    count = max(int(keep.sum()), 1)
    mask_t = torch.as_tensor(mask, device=device)
    cache = model.initial_state(obs.shape[0], num_observations=n_obs, device=device)
    total_loss, total_ent = 0.0, 0.0
    for s in range(0, obs.shape[1], segment):
        sl = slice(s, s + segment)
        out = model(observations=obs[:, sl], actions=act[:, sl], rewards=rew[:, sl], action_mask=mask_t, cache=cache)
        cache = out.cache.detach()
        logp = F.log_softmax(out.policy_logits / temp[:, sl, None].clamp(min=1e-6), -1)
        chosen = torch.gather(logp, 2, act[:, sl].clamp(min=0)[..., None])[..., 0]
        k = keep_t[:, sl]
        loss = -(adv_t[:, sl] * chosen * k).sum() / count
        loss.backward()
        probs = logp.exp()
        ent = -(probs * torch.where(probs > 0, logp, torch.zeros_like(logp))).sum(-1)
        total_loss += float(loss.detach())
        total_ent += float((ent * k).sum().detach()) / count
    return total_loss, total_ent


# ---------------------------------------------------------------------- validation


class Validator:
    """The agent and ``mbrl`` on fixed validation suites; the selection score is the mean paired AUC
    difference (agent - mbrl) over the suites."""

    def __init__(self, args: MetaRLArgs):
        self.args = args
        self.suites = [validation_suite(s, args.eval_tasks) for s in args.eval_suites.split(",")]
        self.refs = [SuiteReference.of(s) for s in self.suites]
        self.mbrl = []
        for suite, ref in zip(self.suites, self.refs):
            run = run_learner(make_learner("mbrl"), suite, args.eval_steps, seed=0)
            self.mbrl.append(np.asarray(analyse(run, ref, args.eval_steps, np.random.default_rng(0))["per_task_auc"]))

    def __call__(self, model) -> dict:
        out = {}
        diffs = []
        for suite, ref, base in zip(self.suites, self.refs, self.mbrl):
            learner = AgentLearner(model, self.args.temperature_start, self.args.temperature_end, self.args.decay_steps)
            run = run_learner(learner, suite, self.args.eval_steps, seed=0)
            auc = np.asarray(analyse(run, ref, self.args.eval_steps, np.random.default_rng(0))["per_task_auc"])
            d = auc - base
            out[suite.name] = {"agent": float(np.nanmean(auc)), "mbrl": float(np.nanmean(base)),
                               "paired_diff": float(np.nanmean(d))}
            diffs.append(float(np.nanmean(d)))
        out["score"] = float(np.mean(diffs))
        return out


# ---------------------------------------------------------------------- the run


def load_start(args: MetaRLArgs) -> AnyMDPAgentModel:
    """Stage 1's checkpoint, with the context head added (zero-initialised) if asked for."""
    if not args.init_from:
        raise ValueError("--init_from is required: the checkpoint of stage 1 (imitation), e.g. runs/cpu-meta-imitation/best")
    model = load_agent(args.init_from)
    if model.config.backbone != "planning":
        raise ValueError(f"{args.init_from} has the {model.config.backbone!r} backbone; return-driven training "
                         "here tunes the planning backbone")
    if args.context_adaptation and not model.config.context_adaptation:
        cfg = model.config
        cfg.context_adaptation = True
        fresh = AnyMDPAgentModel(cfg)
        missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
        if unexpected or any(not k.startswith("planner.context.") for k in missing):
            raise ValueError(f"cannot extend {args.init_from}: missing {missing}, unexpected {unexpected}")
        model = fresh
    return model


def training_record(args: MetaRLArgs, step: int, extra: dict) -> dict:
    """``train_config.json`` of a checkpoint of this stage: its settings, the step, and the record of the
    imitation stage it started from (with the corpus and the command that generated it, where known)."""
    record = {"recipe": args.recipe, "step": step, "args": asdict(args), **extra}
    first = Path(args.init_from) / "train_config.json"
    if first.is_file():
        imitation = json.loads(first.read_text())
        record["imitation"] = imitation
        command = imitation.get("corpus_command") or generate_command(imitation.get("corpus") or "",
                                                                      imitation.get("corpus_split", "train"))
        if command:
            record["corpus_command"] = command
    return record


def save(model, run: Path, name: str, args: MetaRLArgs, step: int, extra: dict) -> Path:
    """``save_pretrained`` plus ``train_config.json`` into a temporary folder, then renamed over ``run/name``
    (never half-written)."""
    final = run / name
    tmp = run / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    record = training_record(args, step, extra)
    atomic_write(tmp / "train_config.json",
                 lambda fh: fh.write(json.dumps(record, indent=1, allow_nan=False, default=str).encode()))
    return replace_dir(tmp, final)


def train(args: MetaRLArgs) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=True)
    set_seed(args.seed)
    run = Path(args.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "logs").mkdir(exist_ok=True)
    model = load_start(args)
    model.train()
    prefixes = tuple(x.strip() for x in args.trainable.split(",") if x.strip())
    for name, p in model.named_parameters():
        p.requires_grad_(not prefixes or name.startswith(prefixes))
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"--trainable {args.trainable!r} names no parameter of the model "
                         f"(e.g. planner.context., planner.bonus_, planner.gamma_logit)")
    bonus = [p for n, p in model.named_parameters() if n.startswith("planner.bonus_") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("planner.bonus_") and p.requires_grad]
    groups = [{"params": rest}] + ([{"params": bonus, "lr": args.learning_rate * args.bonus_lr_scale}] if bonus else [])
    opt = torch.optim.Adam([g for g in groups if g["params"]], lr=args.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(args.warmup_steps, 1)))
    model, opt = accelerator.prepare(model, opt)
    validator = Validator(args)
    log = run / "logs" / "metrics.jsonl"
    best = {"score": -math.inf, "step": None}
    t0 = time.perf_counter()

    def validate(step):
        nonlocal best
        model.eval()
        res = validator(accelerator.unwrap_model(model))
        model.train()
        res["step"] = step
        res["seconds"] = round(time.perf_counter() - t0, 1)
        with open(log, "a") as fh:
            fh.write(json.dumps(res, allow_nan=False) + "\n")
        print(json.dumps(res), flush=True)
        if res["score"] > best["score"]:
            best = {"score": res["score"], "step": step}
            save(accelerator.unwrap_model(model), run, "best", args, step,
                 {"best": best, "validation": res, "compute": f"1 process, {res['seconds']:.0f} s of this stage"})
        return res

    validate(0)
    for step in range(args.max_steps):
        tasks = draw_tasks(args, step)
        batch = stack_tasks(tasks)
        # A task counts as the evaluation scores it: where its oracle-random gap is large enough to normalise
        # by; the others (e.g. a goal-only task without goal or pitfalls) teach nothing and get no weight.
        ref = SuiteReference.of_tasks(batch)
        gap = np.where(ref.scored, ref.oracle - ref.random, np.inf)
        learner = AgentLearner(accelerator.unwrap_model(model), args.temperature_start, args.temperature_end,
                               args.decay_steps)
        model.eval()
        rows, _ = roll_learner(tasks * args.rollouts, learner, args.seq_len, labels=(), seed=args.seed * 100_003 + step)
        model.train()
        adv, keep = advantages(rows, gap, args.rollouts)
        std = adv[keep].std()
        adv = adv / max(std, 1e-8)
        mask = np.zeros((len(tasks) * args.rollouts, model.config.num_actions), dtype=bool)
        mask[:, :batch.action_mask.shape[1]] = np.tile(batch.action_mask, (args.rollouts, 1))
        opt.zero_grad()
        loss, ent = policy_loss(accelerator.unwrap_model(model), rows, adv, keep, mask, learner, args.segment_len,
                                int(batch.n_states))
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
        if not torch.isfinite(norm):
            raise RuntimeError(f"non-finite gradient at step {step + 1}; nothing saved from this step")
        opt.step()
        sched.step()
        # each scored run's mean normalised episode score (what its advantages are in units of)
        run_gap = np.tile(gap, args.rollouts)
        scored = np.isfinite(run_gap)
        run_return = np.where(rows["actions"] >= 0, rows["rewards"], 0.0).sum(1)
        episodes = np.maximum((rows["actions"] < 0).sum(1), 1)
        ret = float(np.mean(run_return[scored] / run_gap[scored] / episodes[scored]))
        rec = {"step": step + 1, "loss": loss, "entropy": ent, "grad_norm": float(norm), "normalised_return": ret,
               "n_states": int(batch.n_states), "seconds": round(time.perf_counter() - t0, 1)}
        with open(log, "a") as fh:
            fh.write(json.dumps(rec, allow_nan=False) + "\n")
        print(json.dumps(rec), flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.max_steps:
            validate(step + 1)
            save(accelerator.unwrap_model(model), run, "last", args, step + 1,
                 {"best": best, "compute": f"1 process, {time.perf_counter() - t0:.0f} s of this stage"})
    return run / "best"


def parse_args(argv: list[str] | None = None) -> MetaRLArgs:
    """``--config recipe.yaml`` sets defaults; any ``--field value`` overrides them."""
    import argparse

    from transformers import HfArgumentParser

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(MetaRLArgs, description=__doc__.split("\n\n")[1])
    parser.add_argument("--config", default=None, help="a YAML recipe (its keys are the fields below): a file, or a "
                                                       "bundled recipe by name, e.g. cpu-meta-rl")
    if known.config:
        _, values = load_recipe(known.config, [f.name for f in fields(MetaRLArgs)])
        parser.set_defaults(**values)
    args, *_ = parser.parse_args_into_dataclasses(args=rest, look_for_args_file=False, return_remaining_strings=False)
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        best = train(args)
    except ValueError as e:
        print(f"meta_rl: error: {e}", file=sys.stderr)
        return 2
    print(f"best checkpoint: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
