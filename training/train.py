"""Train the in-context RL agent with accelerate.

    accelerate launch training/train.py --config training/configs/tiny.yaml [--field value ...]
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 training/train.py --config ...
    anymdp-agent train --config training/configs/cpu-default.yaml

One training function (as accelerate's examples): data for optimiser step ``s`` on process ``r`` is a
pure function of ``(seed, s, r)`` (and of the on-policy buffer, saved with the training state), so
``--resume`` continues *exactly*: an interrupted and resumed run ends with the same weights as an
uninterrupted one. Long sequences train by truncated back-propagation (segments of
``segment_len`` rows, the recurrent state carried detached, one optimiser step per batch).

The primary signal is not the loss but periodic in-context evaluation on validation tasks
(normalised score against the baselines), which also picks the best checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml

from anymdp_agent import AnyMDPAgentConfig, AnyMDPAgentModel
from anymdp_agent.data import CorpusConfig, MixtureConfig, check_corpus_features, roll_sequences
from anymdp_agent.data.corpus import PLANNER_PROMPT
from anymdp_agent.data.onpolicy import roll_learner
from anymdp_agent.envs import sample_anymdp_task
from anymdp_agent.envs.seeds import TRAIN
from anymdp_agent.evaluation import SuiteReference, analyse, load_suite, run_learner, write_results
from anymdp_agent.baselines import make_learner
from anymdp_agent.fileio import atomic_write
from anymdp_agent.hub import push_folder, write_model_card
from anymdp_agent.rollout import AgentLearner

#: Settings that must match to resume a run (the model's shape and the data it sees).
_RESUME_KEYS = ("backbone", "num_observations", "num_actions", "hidden_size", "num_hidden_layers", "num_heads",
                "chunk_size", "observation_statistics", "planning_steps", "bonus_hidden", "carry_values", "memory_decay", "corpus", "label", "seed",
                "batch_size")


@dataclass
class TrainArgs:
    """Every setting of a training run; saved as ``train_config.json`` beside each checkpoint."""

    output_dir: str = field(default="runs/tiny", metadata={"help": "Run folder: checkpoints/, logs/, best/."})
    recipe: str = field(default="custom", metadata={"help": "Name of the recipe (set by the YAML file)."})
    # -- model
    backbone: str = field(default="planning", metadata={"help": "planning (CPU default) or sequence (GLA stack)."})
    num_observations: int = field(default=64, metadata={"help": "Observation vocabulary (>= any task's states)."})
    num_actions: int = field(default=5, metadata={"help": "Action vocabulary (>= any task's actions)."})
    hidden_size: int = field(default=64, metadata={"help": "Width of the sequence backbone."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Depth of the sequence backbone."})
    num_heads: int = field(default=4, metadata={"help": "Heads of the sequence backbone."})
    chunk_size: int = field(default=64, metadata={"help": "Chunk of the chunkwise-parallel pass (rows)."})
    observation_statistics: bool = field(default=False, metadata={
        "help": "Sequence backbone: per-action visit counts and mean rewards at the current observation as extra inputs."})
    planning_steps: int = field(default=16, metadata={"help": "Value-iteration layers of the planning backbone."})
    planning_gamma: float = field(default=0.99, metadata={"help": "Initial discount of the planning layers."})
    bonus_hidden: int = field(default=16, metadata={"help": "Width of the learned exploration bonus."})
    carry_values: bool = field(default=False, metadata={"help": "Planning starts from the values of the last chunk."})
    memory_decay: bool = field(default=False, metadata={
        "help": "Learn a forgetting rate of the planning backbone's statistics (starts at 1.0: exact statistics)."})
    context_warmup: int = field(default=0, metadata={"help": "Rows over which the loss weight warms up (0: none)."})
    # -- data
    corpus: str = field(default="", metadata={"help": "Corpus folder or Hub id; empty: generate tasks on the fly."})
    corpus_split: str = field(default="train", metadata={"help": "Split of the corpus to read."})
    streaming: bool = field(default=False, metadata={"help": "Stream the corpus instead of loading it."})
    label: str = field(default="planner", metadata={"help": "Target: oracle, planner or mix (per sequence)."})
    behaviour_weights: str = field(default="", metadata={"help": "On-the-fly mixture weights NAME=W,... (default 0.1 each)."})
    curriculum: str = field(default="", metadata={
        "help": "Stages UNTIL:STATES:ACTIONS:SEQ_LEN separated by ';' (e.g. '200:8:2-3:256;inf:16:5:1024', the last stage open-ended: inf): "
                "on-the-fly and on-policy sequences use the stage of the current step; empty: n_states/n_actions/seq_len."})
    n_states: str = field(default="16", metadata={"help": "States per on-the-fly task: N or LO-HI."})
    n_actions: str = field(default="5", metadata={"help": "Actions per on-the-fly task: N or LO-HI."})
    seq_len: int = field(default=512, metadata={"help": "Rows per training sequence (crop of a corpus sequence)."})
    segment_len: int = field(default=256, metadata={"help": "Rows per truncated back-propagation segment."})
    batch_size: int = field(default=8, metadata={"help": "Sequences per process per optimiser step."})
    onpolicy_fraction: float = field(default=0.0, metadata={"help": "Share of each batch from the model's own rollouts."})
    onpolicy_every: int = field(default=20, metadata={"help": "Optimiser steps between on-policy refreshes."})
    onpolicy_sequences: int = field(default=16, metadata={"help": "Sequences per on-policy refresh (per process)."})
    # -- optimisation
    max_steps: int = field(default=50, metadata={"help": "Optimiser steps."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=5, metadata={"help": "Linear warm-up steps, then cosine decay to a tenth of the peak."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: off)."})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast for the forward pass."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute layer activations in backward."})
    seed: int = field(default=0, metadata={"help": "Seed of data, model init and rollouts."})
    # -- checkpoints, evaluation, logging
    save_every: int = field(default=25, metadata={"help": "Steps between checkpoints (and at the end)."})
    keep_checkpoints: int = field(default=3, metadata={"help": "Most recent checkpoints kept (best/ is separate)."})
    eval_every: int = field(default=25, metadata={"help": "Steps between in-context evaluations (0: only at the end)."})
    eval_suite: str = field(default="anymdp-16", metadata={"help": "Validation suite (validation seed range)."})
    eval_tasks: int = field(default=16, metadata={"help": "Validation tasks."})
    eval_steps: int = field(default=1000, metadata={"help": "Environment steps per validation task."})
    eval_baselines: str = field(default="mbrl,tql,random", metadata={"help": "Baselines run once on the validation suite."})
    resume: bool = field(default=False, metadata={"help": "Continue from the latest checkpoint in output_dir."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push pretrained_model/ at every checkpoint."})
    hub_repo_id: str = field(default="", metadata={"help": "USER/NAME for --push_to_hub."})
    report_to: str = field(default="jsonl", metadata={"help": "Trackers: jsonl, tensorboard (comma-separated)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    stop_at_step: int = field(default=0, metadata={
        "help": "Stop after this step as an interruption would (the schedule still spans max_steps); 0: never."})

    def __post_init__(self):
        if self.label not in ("oracle", "planner", "mix"):
            raise ValueError(f"label must be oracle, planner or mix, got {self.label!r}")
        for name in ("seq_len", "segment_len", "batch_size", "max_steps", "save_every", "eval_tasks", "eval_steps",
                     "onpolicy_every", "onpolicy_sequences"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.onpolicy_fraction <= 1.0:
            raise ValueError(f"onpolicy_fraction must lie in [0, 1], got {self.onpolicy_fraction}")
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("--push_to_hub needs --hub_repo_id USER/NAME")
        last = -1
        for until, states, actions, length in self.stages():  # every stage must fit the model, before training
            if until <= last:
                raise ValueError(f"curriculum stages must end at increasing steps, got {until} after {last}")
            last = until
            if states[0] < 8 or states[0] > states[1]:
                raise ValueError(f"curriculum states {states[0]}-{states[1]}: too small or empty (an AnyMDP task "
                                 "needs at least 8 states)")
            if states[1] > self.num_observations:
                raise ValueError(f"curriculum states up to {states[1]} outgrow the model's vocabulary "
                                 f"(num_observations={self.num_observations})")
            if actions[0] < 2 or actions[0] > actions[1] or actions[1] > self.num_actions:
                raise ValueError(f"curriculum actions {actions[0]}-{actions[1]} must lie in 2..num_actions "
                                 f"({self.num_actions})")
            if length < 1:
                raise ValueError(f"curriculum sequence length must be >= 1, got {length}")

    def model_config(self) -> AnyMDPAgentConfig:
        return AnyMDPAgentConfig(
            num_observations=self.num_observations, num_actions=self.num_actions, backbone=self.backbone,
            hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers, num_heads=self.num_heads,
            chunk_size=self.chunk_size, observation_statistics=self.observation_statistics, planning_steps=self.planning_steps, planning_gamma=self.planning_gamma,
            bonus_hidden=self.bonus_hidden, carry_values=self.carry_values, memory_decay=self.memory_decay,
            context_warmup=self.context_warmup, num_prompts=PLANNER_PROMPT + 1)

    def stages(self) -> list[tuple[int, tuple[int, int], tuple[int, int], int]]:
        """The curriculum: ``(until_step, states, actions, seq_len)`` per stage, the last open-ended."""
        def rng(text):
            lo, _, hi = str(text).partition("-")
            return (int(lo), int(hi or lo))

        if not self.curriculum:
            return [(math.inf, rng(self.n_states), rng(self.n_actions), self.seq_len)]
        out = []
        for part in self.curriculum.split(";"):
            try:
                until, states, actions, length = part.strip().split(":")
                out.append((math.inf if until.strip() in ("-", "inf") else int(until), rng(states), rng(actions), int(length)))
            except ValueError:
                raise ValueError(f"curriculum stage {part!r} is not UNTIL:STATES:ACTIONS:SEQ_LEN") from None
        return out

    def stage(self, step: int):
        for stage in self.stages():
            if step < stage[0]:
                return stage
        return self.stages()[-1]


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    """``--config recipe.yaml`` sets defaults; any ``--field value`` overrides them."""
    import argparse

    from transformers import HfArgumentParser

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(TrainArgs, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML recipe in training/configs/ (its keys are the fields below)")
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise ValueError(f"no recipe at {path}: see training/configs/")
        values = yaml.safe_load(path.read_text()) or {}
        unknown = set(values) - {f.name for f in fields(TrainArgs)}
        if unknown:
            raise ValueError(f"unknown keys in {path}: {sorted(unknown)}")
        values.setdefault("recipe", path.stem)
        parser.set_defaults(**values)
    args, *_ = parser.parse_args_into_dataclasses(args=rest + (["--config", known.config] if known.config else []),
                                                 look_for_args_file=False, return_remaining_strings=False)
    return args


# ---------------------------------------------------------------------- data


def _seed(*parts) -> np.random.Generator:
    return np.random.default_rng([int(p) for p in parts])


class CorpusSource:
    """Random crops of corpus sequences; the sequences of step ``s`` on process ``r`` are a function of
    ``(seed, s, r)``.

    Loaded in memory, sequences are drawn at random. Streamed (``--streaming``), each process reads its
    own split of the stream through a seeded shuffle buffer, in order, epoch after epoch; step ``s``
    takes the next ``batch_size`` sequences, and a resumed run replays the stream up to where the
    interrupted one stopped, so resume stays exact.
    """

    def __init__(self, args: TrainArgs, rank: int = 0, world: int = 1):
        from datasets import load_dataset

        self.args = args
        local = Path(args.corpus)
        try:
            if local.is_dir():
                # Read the parquet shards directly: datasets keys its cache of a folder with a card on the
                # folder's name, so a corpus regenerated in place would otherwise come back stale.
                files = sorted(str(p) for p in (local / "data").glob(f"{args.corpus_split}-*.parquet"))
                if not files:
                    raise ValueError(f"{local} holds no {args.corpus_split} shards (data/{args.corpus_split}-*.parquet)")
                ds = load_dataset("parquet", data_files={args.corpus_split: files}, split=args.corpus_split,
                                  streaming=args.streaming)
            else:
                ds = load_dataset(args.corpus, split=args.corpus_split, streaming=args.streaming)
        except FileNotFoundError as e:
            raise ValueError(f"no corpus at {args.corpus!r}: {e}") from e
        need = () if args.label == "mix" else (args.label,)
        kinds = check_corpus_features(ds.features, need)
        self.kinds = kinds if args.label == "mix" else need
        if args.streaming:
            from datasets.distributed import split_dataset_by_node

            self.stream = split_dataset_by_node(ds, rank=rank, world_size=world)
            self.rank = rank
            self.position, self.epoch, self.iterator = 0, 0, None
            first = next(iter(ds))
            self.length = len(first["actions"])
            if self.length < args.seq_len:
                raise ValueError(f"corpus sequences hold {self.length} rows, shorter than seq_len {args.seq_len}")
            self._check_sizes(int(first["n_states"]), int(first["n_actions"]))
            return
        self.ds = ds.with_format("numpy")
        self._check_sizes(int(np.max(self.ds["n_states"])), int(np.max(self.ds["n_actions"])))
        self.length = len(self.ds[0]["actions"])
        if self.length < args.seq_len:
            raise ValueError(f"corpus sequences hold {self.length} rows, shorter than seq_len {args.seq_len}")

    def _check_sizes(self, top: int, top_a: int) -> None:
        if top > self.args.num_observations:
            raise ValueError(f"the corpus has tasks with {top} states but num_observations is "
                             f"{self.args.num_observations}: raise num_observations (the model's vocabulary) to at least that")
        if top_a > self.args.num_actions:
            raise ValueError(f"the corpus has tasks with {top_a} actions but num_actions is {self.args.num_actions}")

    #: Sequences held by the shuffle buffer of a streamed corpus.
    SHUFFLE_BUFFER = 64

    def _shuffled(self, epoch: int):
        """The process's part of the stream through a seeded shuffle buffer (datasets' own buffered shuffle
        took 5 s to yield its first row here)."""
        rng = _seed(self.args.seed, self.rank, epoch, 7)
        buffer = []
        for row in self.stream:
            buffer.append(row)
            if len(buffer) >= self.SHUFFLE_BUFFER:
                yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def _next_streamed(self) -> dict:
        if self.iterator is None:
            self.iterator = self._shuffled(self.epoch)
        try:
            row = next(self.iterator)
        except StopIteration:
            self.epoch, self.iterator = self.epoch + 1, None
            return self._next_streamed()
        self.position += 1
        self._check_sizes(int(row["n_states"]), int(row["n_actions"]))  # a streamed corpus is checked as it comes
        return row

    def _streamed(self, step: int, count: int) -> dict:
        target = step * count  # sequences this process consumed before this step
        if self.position > target or self.iterator is None and self.position != target:
            self.position, self.epoch, self.iterator = 0, 0, None
        while self.position < target:  # resume: replay the stream up to where the run stopped
            self._next_streamed()
        rows = [self._next_streamed() for _ in range(count)]
        return {k: [r[k] for r in rows] for k in rows[0]}

    def batch(self, step: int, rank: int, count: int) -> dict:
        rng = _seed(self.args.seed, step, rank, 1)
        if self.args.streaming:
            rows = self._streamed(step, count)
        else:
            idx = rng.integers(0, len(self.ds), size=count)
            rows = self.ds[idx.tolist()] if count > 1 else {k: [v] for k, v in self.ds[int(idx[0])].items()}
        start = rng.integers(0, self.length - self.args.seq_len + 1, size=count)
        kinds = rng.choice(self.kinds, size=count)
        out = {k: [] for k in ("observations", "actions", "rewards", "tags", "labels", "prompts", "n_actions")}
        for i in range(count):
            sl = slice(int(start[i]), int(start[i]) + self.args.seq_len)
            out["observations"].append(np.asarray(rows["observations"][i])[sl])
            out["actions"].append(np.asarray(rows["actions"][i])[sl])
            out["rewards"].append(np.asarray(rows["rewards"][i])[sl])
            out["tags"].append(np.asarray(rows["tags"][i])[sl])
            out["labels"].append(np.asarray(rows[f"label_{kinds[i]}"][i])[sl])
            out["prompts"].append(PLANNER_PROMPT if kinds[i] == "planner" else int(rows["prompt"][i]))
            out["n_actions"].append(int(rows["n_actions"][i]))
        return {k: np.asarray(v) if k in ("prompts", "n_actions") else np.stack(v) for k, v in out.items()}


class TaskStream:
    """Fresh tasks at every step (infinite-task training), rolled by the behaviour mixture."""

    def __init__(self, args: TrainArgs):
        self.args = args
        weights = dict(MixtureConfig().weights)
        if args.behaviour_weights:
            for item in args.behaviour_weights.split(","):
                name, _, value = item.partition("=")
                weights[name.strip()] = float(value)
        self.mixture = MixtureConfig(weights=weights)
        self.labels = ("oracle", "planner") if args.label == "mix" else (args.label,)

    def tasks(self, step: int, rank: int, count: int, salt: int):
        _, states, actions, _ = self.args.stage(step)
        rng = _seed(self.args.seed, step, rank, salt)
        out = []
        for _ in range(count):
            seed = int(rng.integers(TRAIN.start, TRAIN.stop))
            out.append(sample_anymdp_task(int(rng.integers(states[0], states[1] + 1)),
                                          int(rng.integers(actions[0], actions[1] + 1)), seed=seed))
        return out, rng

    def batch(self, step: int, rank: int, count: int) -> dict:
        seq_len = self.args.stage(step)[3]
        tasks, rng = self.tasks(step, rank, count, 2)
        cfg = CorpusConfig(tasks=count, seq_len=seq_len, n_states=(8, 10**4), labels=self.labels, mixture=self.mixture)
        rows, _ = roll_sequences(tasks, cfg, rng)
        return _pick_labels(rows, self.labels, rng, [0] * count, [t.n_actions for t in tasks])


def _pick_labels(rows: dict, kinds, rng, oracle_prompts, n_actions) -> dict:
    """A training batch from rolled rows: one label kind per sequence (with its prompt), the action counts."""
    choice = rng.choice(kinds, size=len(rows["observations"]))
    labels = np.stack([rows[f"label_{k}"][i] for i, k in enumerate(choice)])
    prompts = np.asarray([PLANNER_PROMPT if k == "planner" else p for k, p in zip(choice, oracle_prompts)])
    return {"observations": rows["observations"], "actions": rows["actions"], "rewards": rows["rewards"],
            "tags": rows["tags"], "labels": labels, "prompts": prompts, "n_actions": np.asarray(n_actions)}


def _pad_to(batch: dict, length: int) -> dict:
    """Crop or pad (closing rows, no labels) every sequence of a batch to ``length`` rows."""
    out = {}
    for key in ("observations", "actions", "rewards", "tags", "labels"):
        x = batch[key][:, :length]
        if x.shape[1] < length:
            fill = {"observations": 0, "actions": -2, "rewards": 0.0, "tags": 4, "labels": -1}[key]
            x = np.concatenate([x, np.full((x.shape[0], length - x.shape[1]), fill, dtype=x.dtype)], 1)
        out[key] = x
    out["prompts"] = batch["prompts"]
    out["n_actions"] = batch["n_actions"]
    return out


def _concat(a: dict, b: dict) -> dict:
    length = max(a["observations"].shape[1], b["observations"].shape[1])
    a, b = _pad_to(a, length), _pad_to(b, length)
    return {k: np.concatenate([a[k], b[k]]) for k in a}


# ---------------------------------------------------------------------- checkpoints and logs


class JSONLTracker:
    """An accelerate tracker writing one JSON object per log call to ``logs/metrics.jsonl``."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str):
        self.path = Path(logging_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self):
        return self.path

    def start(self):
        pass

    def store_init_configuration(self, values: dict):
        (self.path.parent / "config.json").write_text(json.dumps(values, indent=1, default=str))

    def log(self, values: dict, step: int | None = None, **kwargs):
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, **values}, default=float) + "\n")

    def finish(self):
        pass


def _trackers(args: TrainArgs):
    from accelerate.tracking import GeneralTracker

    class _JSONL(JSONLTracker, GeneralTracker):
        def __init__(self, run_name, logging_dir):
            GeneralTracker.__init__(self, _blank=True)
            JSONLTracker.__init__(self, run_name, logging_dir)

    out = []
    for name in filter(None, (x.strip() for x in args.report_to.split(","))):
        if name == "jsonl":
            out.append(_JSONL("train", str(Path(args.output_dir) / "logs")))
        elif name == "tensorboard":
            out.append("tensorboard")
        else:
            raise ValueError(f"unknown tracker {name!r}: jsonl or tensorboard")
    return out


def _latest_checkpoint(run: Path) -> Path | None:
    ckpts = sorted((p for p in (run / "checkpoints").glob("*") if (p / "training_state").is_dir()
                    and (p / "pretrained_model" / "config.json").is_file()), key=lambda p: int(p.name))
    return ckpts[-1] if ckpts else None


def check_run_folder(args: TrainArgs) -> Path:
    """Create/probe the output folder and, on resume, check the saved run's settings match."""
    run = Path(args.output_dir)
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to output_dir {run}: {e.strerror or e}; choose another --output_dir") from e
    latest = _latest_checkpoint(run)
    if args.resume:
        if latest is None:
            raise ValueError(f"--resume: no checkpoint in {run}/checkpoints to resume from")
        saved = json.loads((latest / "pretrained_model" / "train_config.json").read_text())
        diff = [k for k in _RESUME_KEYS if saved.get(k, getattr(TrainArgs, k, None)) != getattr(args, k)]
        if diff:
            raise ValueError(f"--resume: the checkpoint in {latest} was trained with other settings "
                             f"({', '.join(f'{k}: {saved.get(k)!r} vs {getattr(args, k)!r}' for k in diff)}); "
                             "resume with the same recipe or start a new output_dir")
    elif latest is not None:
        raise ValueError(f"{run} already holds checkpoints: pass --resume to continue it, or choose a new --output_dir")
    return run


def save_checkpoint(accelerator, model, args: TrainArgs, step: int, buffer, extra: dict) -> Path:
    """``checkpoints/<step>/pretrained_model`` (pushable) and ``training_state`` (private, exact resume)."""
    run = Path(args.output_dir)
    folder = run / "checkpoints" / f"{step:07d}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder / "training_state"))
    if buffer is not None:
        np.savez(folder / "training_state" / f"onpolicy_rank{accelerator.process_index}.npz", **buffer)
    if accelerator.is_main_process:
        pretrained = folder / "pretrained_model"
        accelerator.unwrap_model(model).save_pretrained(pretrained)
        cfg = {**asdict(args), "step": step, **extra}
        atomic_write(pretrained / "train_config.json", lambda fh: fh.write(json.dumps(cfg, indent=1, default=str).encode()))
        write_model_card(pretrained, repo_id=args.hub_repo_id or None)
        if args.push_to_hub:
            push_folder(pretrained, args.hub_repo_id, commit_message=f"checkpoint at step {step}")
        ckpts = sorted((run / "checkpoints").glob("*"), key=lambda p: p.name)
        for old in ckpts[:-args.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


# ---------------------------------------------------------------------- evaluation


class Validator:
    """In-context evaluation on validation tasks: the agent against the baselines, on the same tasks."""

    def __init__(self, args: TrainArgs):
        self.args = args
        self.suite = load_suite(args.eval_suite, args.eval_tasks, split="validation")
        self.ref = SuiteReference.of(self.suite)
        self.baselines = {}
        for name in filter(None, args.eval_baselines.split(",")):
            run = run_learner(make_learner(name), self.suite, args.eval_steps, args.seed)
            self.baselines[name] = analyse(run, self.ref, max(args.eval_steps // 8, 1), np.random.default_rng(0))

    def __call__(self, model) -> dict:
        window = max(self.args.eval_steps // 8, 1)
        learner = AgentLearner(model, temperature_start=1.0, temperature_end=0.1,
                               decay_steps=max(self.args.eval_steps // 2, 1))
        run = run_learner(learner, self.suite, self.args.eval_steps, self.args.seed)
        entry = analyse(run, self.ref, window, np.random.default_rng(0))
        result = {"config": {"suite": self.suite.name, "learners": ["agent", *self.baselines], "tasks": self.args.eval_tasks,
                             "steps": self.args.eval_steps, "seed": self.args.seed, "window": window, "seed_offset": 0},
                  "versions": {}, "suite": {"name": self.suite.name, "description": self.suite.description,
                                            "instances": self.suite.num_envs, "task_seeds": self.suite.seeds,
                                            "skipped_degenerate": int((~self.ref.scored).sum())},
                  "learners": {"agent": {**entry, "hyperparameters": learner.hyperparameters()}, **self.baselines}}
        return result


# ---------------------------------------------------------------------- training


def train(args: TrainArgs) -> Path:
    """Run (or resume) training; returns the run folder."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    torch.set_num_threads(max(1, int(os.environ.get("TRAIN_THREADS", "1"))))
    run = check_run_folder(args) if int(os.environ.get("RANK", "0")) == 0 else Path(args.output_dir)
    accelerator = Accelerator(mixed_precision="bf16" if args.bf16 else "no", log_with=_trackers(args),
                              project_dir=args.output_dir)
    accelerator.wait_for_everyone()
    set_seed(args.seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    model = AnyMDPAgentModel(args.model_config())
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    source = CorpusSource(args, rank, world) if args.corpus else TaskStream(args)
    onpolicy_labels = ("oracle", "planner") if args.label == "mix" else (args.label,)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)

    def lr_lambda(step):
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        frac = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.init_trackers("train", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                              for k, v in asdict(args).items()})
    start_step, buffer, best = 0, None, {"auc": -math.inf, "step": None}
    if args.resume:
        latest = _latest_checkpoint(Path(args.output_dir))
        accelerator.load_state(str(latest / "training_state"))
        saved = json.loads((latest / "pretrained_model" / "train_config.json").read_text())
        start_step = int(saved["step"])
        best = saved.get("best", best)
        buf_path = latest / "training_state" / f"onpolicy_rank{rank}.npz"
        if buf_path.is_file():
            with np.load(buf_path) as data:
                buffer = {k: data[k] for k in data.files}
    validator = Validator(args) if accelerator.is_main_process and args.eval_every >= 0 else None
    bar = None
    if args.progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.max_steps, initial=start_step, desc=f"train {args.recipe}", unit="step")
    if validator is not None and start_step == 0:  # where training starts from, on the same yardstick
        untrained = validator(accelerator.unwrap_model(model))["learners"]["agent"]
        accelerator.log({"eval/auc": untrained["auc"]["mean"], "eval/last_window": untrained["windows"][-1]["mean"],
                         **{f"eval/baseline_auc_{k}": v["auc"]["mean"] for k, v in validator.baselines.items()}}, step=0)
    n_onpolicy = int(round(args.batch_size * args.onpolicy_fraction))
    t_start = time.perf_counter()
    rows_seen = 0
    for step in range(start_step, args.max_steps):
        # -- on-policy refresh: the current model acts on fresh tasks, labels stay step-wise
        onpolicy_stats = {}
        if n_onpolicy and (buffer is None or step % args.onpolicy_every == 0):
            tasks, _ = source.tasks(step, rank, args.onpolicy_sequences, 3) if isinstance(source, TaskStream) \
                else TaskStream(args).tasks(step, rank, args.onpolicy_sequences, 3)
            learner = AgentLearner(accelerator.unwrap_model(model), temperature_start=1.0, temperature_end=0.1,
                                   decay_steps=max(args.stage(step)[3] // 2, 1))
            rows, st = roll_learner(tasks, learner, args.stage(step)[3], onpolicy_labels,
                                    seed=int(_seed(args.seed, step, rank, 4).integers(2**31)))
            buffer = _pick_labels(rows, onpolicy_labels, _seed(args.seed, step, rank, 5), [0] * len(tasks),
                                  [t.n_actions for t in tasks])
            onpolicy_stats = {f"onpolicy/agreement_{k}": v for k, v in st["agreement"].items()}
        model.train()
        batch = source.batch(step, rank, args.batch_size - n_onpolicy)
        if n_onpolicy:
            pick = _seed(args.seed, step, rank, 6).integers(0, len(buffer["observations"]), size=n_onpolicy)
            batch = _concat(batch, {k: v[pick] for k, v in buffer.items()})
        tensors = {k: torch.as_tensor(v, device=accelerator.device) for k, v in batch.items()}
        tensors["rewards"] = tensors["rewards"].float()
        tensors["labels"] = torch.where(tensors["labels"] < 0, -100, tensors["labels"]).long()
        # Tasks with fewer actions than the vocabulary: the missing ones are masked (never taken, never planned on).
        n_act = tensors.pop("n_actions")
        action_mask = torch.arange(args.num_actions, device=accelerator.device)[None, :] < n_act[:, None]
        length = tensors["observations"].shape[1]
        unwrapped = accelerator.unwrap_model(model)
        # The planning backbone's statistics need only the ids in use (exact: it is permutation-equivariant
        # over observation ids), which makes small tasks cheap inside a large vocabulary.
        in_use = int(tensors["observations"].max()) + 1 if unwrapped.config.backbone == "planning" else None
        cache = unwrapped.initial_state(tensors["observations"].shape[0], num_observations=in_use,
                                        device=accelerator.device)
        seg_starts = list(range(0, length, args.segment_len))
        logs = {"policy_loss": 0.0, "observation_loss": 0.0, "reward_loss": 0.0}
        position_ce = []
        for j, s0 in enumerate(seg_starts):
            sl = slice(s0, s0 + args.segment_len)
            sync = accelerator.no_sync(model) if j < len(seg_starts) - 1 else _null()
            with sync, accelerator.autocast():
                out = model(observations=tensors["observations"][:, sl], actions=tensors["actions"][:, sl],
                            rewards=tensors["rewards"][:, sl], tags=tensors["tags"][:, sl], prompts=tensors["prompts"],
                            labels=tensors["labels"][:, sl], action_mask=action_mask, cache=cache)
                share = (min(s0 + args.segment_len, length) - s0) / length
                accelerator.backward(out.loss * share)
            cache = out.cache.detach()
            for key in logs:
                logs[key] += float(getattr(out, key).detach()) * share
            position_ce.append(float(out.policy_loss.detach()))
        if args.max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            logs["grad_norm"] = float(grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        rows_seen += length * tensors["observations"].shape[0] * world
        logs.update({"lr": scheduler.get_last_lr()[0], "rows_per_second": rows_seen / (time.perf_counter() - t_start),
                     "seq_len": length, **onpolicy_stats})
        for j, ce in enumerate(position_ce):
            logs[f"policy_loss_by_position/{seg_starts[j]}"] = ce
        if unwrapped.config.backbone == "planning":
            logs["planner/gamma"] = unwrapped.planner.gamma.item()
            logs["planner/temperature"] = unwrapped.planner.temperature().item()
        accelerator.log(logs, step=step + 1)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{logs['policy_loss']:.3f}")
        done = step + 1 == args.max_steps
        eval_due = bool(args.eval_every and (step + 1) % args.eval_every == 0) or done
        evaluated = None
        if validator is not None and eval_due:
            evaluated = validator(accelerator.unwrap_model(model))
            agent = evaluated["learners"]["agent"]
            last = agent["windows"][-1]["mean"]
            accelerator.log({"eval/auc": agent["auc"]["mean"], "eval/last_window": last,
                             **{f"eval/baseline_auc_{k}": v["auc"]["mean"] for k, v in validator.baselines.items()}},
                            step=step + 1)
        interrupted = args.stop_at_step and step + 1 == args.stop_at_step
        if (step + 1) % args.save_every == 0 or eval_due or interrupted:  # the same decision on every process
            improved = evaluated is not None and evaluated["learners"]["agent"]["auc"]["mean"] > best["auc"]
            if improved:
                best = {"auc": evaluated["learners"]["agent"]["auc"]["mean"], "step": step + 1}
            extra = {"best": best, "compute": f"{world} process(es), {time.perf_counter() - t_start:.0f} s so far"}
            folder = save_checkpoint(accelerator, model, args, step + 1, buffer, extra)
            if accelerator.is_main_process and evaluated is not None:
                write_results(evaluated, folder / "pretrained_model" / "eval", stem=f"eval-{evaluated['suite']['name']}")
                write_model_card(folder / "pretrained_model", repo_id=args.hub_repo_id or None)
                if improved:
                    best_dir = run / "best"
                    tmp = run / ".best.tmp"
                    shutil.rmtree(tmp, ignore_errors=True)
                    shutil.copytree(folder / "pretrained_model", tmp)
                    shutil.rmtree(best_dir, ignore_errors=True)
                    os.replace(tmp, best_dir)
        if interrupted:
            break
    if bar is not None:
        bar.close()
    accelerator.end_training()
    return run


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        train(args)
    except ValueError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
