"""Train the in-context RL agent with accelerate.

    accelerate launch training/train.py --config training/configs/tiny.yaml [--field value ...]
    ACCELERATE_USE_CPU=true accelerate launch --config_file training/accelerate/cpu-2proc.yaml training/train.py --config ...
    anymdp-agent train --cpu -- --config training/configs/cpu-default.yaml

Faults leave nothing half-written and lose nothing: a checkpoint is written under a hidden name, completed
with its manifest (``checkpoint.json``, written last) and renamed; ``--resume`` skips an incomplete one;
best/ is swapped by renames and repaired on the next start; one writer holds ``output_dir`` (``.lock``); a
non-finite loss or gradient stops the run before the optimiser step.

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
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from anymdp_agent import AnyMDPAgentConfig, AnyMDPAgentModel
from anymdp_agent.data import CorpusConfig, MixtureConfig, check_corpus_features, roll_sequences
from anymdp_agent.data.corpus import generate_command, open_corpus
from anymdp_agent.configuration_anymdp_agent import (END_TRUNCATED, IGNORE_INDEX, LABEL_TARGETS, NO_LABEL, NUM_PROMPTS,
                                                     UNKNOWN_TAG, label_kinds, label_prompt)
from anymdp_agent.data.onpolicy import roll_learner
from anymdp_agent.envs import sample_anymdp_task
from anymdp_agent.envs.seeds import TRAIN
from anymdp_agent.evaluation import SuiteReference, analyse, load_suite, run_learner, write_results
from anymdp_agent.baselines import make_learner
from anymdp_agent.fileio import dumps_json, replace_dir, write_json
from anymdp_agent.hub import push_folder, write_model_card
from anymdp_agent.rollout import AgentLearner
from anymdp_agent.training.recipes import load_recipe

#: Settings that must match to resume a run (the model's shape and the data it sees).
_RESUME_KEYS = ("backbone", "num_observations", "num_actions", "hidden_size", "num_hidden_layers", "num_heads",
                "chunk_size", "observation_statistics", "statistics_discount", "statistics_lookahead", "planning_steps", "bonus_hidden", "carry_values", "memory_decay",
                "corpus", "label", "seed", "batch_size", "gradient_accumulation_steps")


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
    statistics_discount: float = field(default=0.9, metadata={
        "help": "Discount of the discounted-return statistic of observation_statistics."})
    statistics_lookahead: bool = field(default=False, metadata={
        "help": "observation_statistics: add a one-step lookahead on the next observations' mean returns."})
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
    warmup_steps: int = field(default=5, metadata={
        "help": "Linear warm-up steps (from 0), then cosine decay to a tenth of the peak (transformers' "
                "get_cosine_with_min_lr_schedule_with_warmup); counted in optimiser steps, whatever the process count."})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "Batches of batch_size accumulated per optimiser step (accelerate's accumulate): the same data as "
                "that many times the processes."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: off)."})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 autocast for the forward pass; unset: the mixed precision of `accelerate launch` or its "
                "config file (none without a launcher)."})
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
    report_to: str = field(default="jsonl", metadata={
        "help": "Trackers, comma-separated: jsonl (logs/metrics.jsonl, no extra package) and every tracker accelerate "
                "knows (tensorboard, trackio, wandb, mlflow, ...), each needing its package."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    stop_at_step: int = field(default=0, metadata={
        "help": "Stop after this step as an interruption would (the schedule still spans max_steps); 0: never."})

    def __post_init__(self):
        if self.label not in LABEL_TARGETS:
            raise ValueError(f"label must be {', '.join(LABEL_TARGETS[:-1])} or {LABEL_TARGETS[-1]}, got {self.label!r}")
        for name in ("seq_len", "segment_len", "batch_size", "max_steps", "save_every", "eval_tasks", "eval_steps",
                     "onpolicy_every", "onpolicy_sequences", "gradient_accumulation_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.onpolicy_fraction <= 1.0:
            raise ValueError(f"onpolicy_fraction must lie in [0, 1], got {self.onpolicy_fraction}")
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("--push_to_hub needs --hub_repo_id USER/NAME")
        tracker_names(self.report_to)
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
            chunk_size=self.chunk_size, observation_statistics=self.observation_statistics,
            statistics_discount=self.statistics_discount, statistics_lookahead=self.statistics_lookahead,
            planning_steps=self.planning_steps, planning_gamma=self.planning_gamma,
            bonus_hidden=self.bonus_hidden, carry_values=self.carry_values, memory_decay=self.memory_decay,
            context_warmup=self.context_warmup, num_prompts=NUM_PROMPTS)

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
    parser.add_argument("--config", default=None, help="a YAML recipe (its keys are the fields below): a file, or "
                                                       "a bundled recipe by name: tiny, cpu-default, gpu-large")
    bf16 = parser._option_string_actions["--bf16"]  # unset (None) by default, yet `--bf16` alone means true
    bf16.nargs, bf16.const = "?", True
    if known.config:
        _, values = load_recipe(known.config, [f.name for f in fields(TrainArgs)])
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

    ``rank`` is the *data* rank: with gradient accumulation over ``k`` batches, batch ``m`` of process ``r``
    is data rank ``r * k + m`` of ``world * k`` (the data that many processes would see).
    """

    def __init__(self, args: TrainArgs, rank: int = 0, world: int = 1):
        self.args = args
        ds = open_corpus(args.corpus, args.corpus_split, streaming=args.streaming)
        need = () if args.label == "mix" else (args.label,)
        kinds = check_corpus_features(ds.features, need)
        self.kinds = kinds if args.label == "mix" else need
        if args.streaming:
            from datasets.distributed import split_dataset_by_node

            k = args.gradient_accumulation_steps
            self.streams = {r: _Stream(split_dataset_by_node(ds, rank=r, world_size=world * k))
                            for r in range(rank * k, rank * k + k)}
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

    def _shuffled(self, rank: int, epoch: int):
        """The data rank's part of the stream through a seeded shuffle buffer (datasets' own buffered shuffle
        took 5 s to yield its first row here)."""
        rng = _seed(self.args.seed, rank, epoch, 7)
        buffer = []
        for row in self.streams[rank].stream:
            buffer.append(row)
            if len(buffer) >= self.SHUFFLE_BUFFER:
                yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def _next_streamed(self, rank: int) -> dict:
        st = self.streams[rank]
        if st.iterator is None:
            st.iterator = self._shuffled(rank, st.epoch)
        try:
            row = next(st.iterator)
        except StopIteration:
            st.epoch, st.iterator = st.epoch + 1, None
            return self._next_streamed(rank)
        st.position += 1
        self._check_sizes(int(row["n_states"]), int(row["n_actions"]))  # a streamed corpus is checked as it comes
        return row

    def _streamed(self, step: int, rank: int, count: int) -> dict:
        st = self.streams[rank]
        target = step * count  # sequences this data rank consumed before this step
        if st.position > target or st.iterator is None and st.position != target:
            st.position, st.epoch, st.iterator = 0, 0, None
        while st.position < target:  # resume: replay the stream up to where the run stopped
            self._next_streamed(rank)
        rows = [self._next_streamed(rank) for _ in range(count)]
        return {k: [r[k] for r in rows] for k in rows[0]}

    def batch(self, step: int, rank: int, count: int) -> dict:
        rng = _seed(self.args.seed, step, rank, 1)
        if self.args.streaming:
            rows = self._streamed(step, rank, count)
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
            out["prompts"].append(label_prompt(kinds[i], rows["prompt"][i]))
            out["n_actions"].append(int(rows["n_actions"][i]))
        return {k: np.asarray(v) if k in ("prompts", "n_actions") else np.stack(v) for k, v in out.items()}


@dataclass
class _Stream:
    """One data rank's split of a streamed corpus and where it stands."""

    stream: object
    position: int = 0
    epoch: int = 0
    iterator: object = None


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
        self.labels = label_kinds(args.label)

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
    prompts = np.asarray([label_prompt(k, p) for k, p in zip(choice, oracle_prompts)])
    return {"observations": rows["observations"], "actions": rows["actions"], "rewards": rows["rewards"],
            "tags": rows["tags"], "labels": labels, "prompts": prompts, "n_actions": np.asarray(n_actions)}


def _pad_to(batch: dict, length: int) -> dict:
    """Crop or pad (closing rows, no labels) every sequence of a batch to ``length`` rows."""
    out = {}
    for key in ("observations", "actions", "rewards", "tags", "labels"):
        x = batch[key][:, :length]
        if x.shape[1] < length:
            fill = {"observations": 0, "actions": END_TRUNCATED, "rewards": 0.0, "tags": UNKNOWN_TAG, "labels": NO_LABEL}[key]
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
        write_json(self.path.parent / "config.json", values, indent=1)

    def log(self, values: dict, step: int | None = None, **kwargs):
        with open(self.path, "a") as fh:  # standard JSON: a non-finite value is written as null
            fh.write(dumps_json({"step": step, **values}) + "\n")

    def finish(self):
        pass


def tracker_names(report_to: str) -> list[str]:
    """The trackers of ``--report_to``: ``jsonl`` (the project's own) and every tracker accelerate knows, checked
    for their package before training starts (accelerate would skip a missing one silently)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    names = [x.strip() for x in report_to.split(",") if x.strip()]
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in names:
        if name == "jsonl":
            continue
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(f"unknown tracker {name!r} in --report_to: choose from jsonl, "
                             f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
        if name not in available:
            hint = f"pip install 'anymdp-agent[{name}]'" if name in ("tensorboard", "trackio") else f"pip install {name}"
            raise ValueError(f"--report_to {name}: the {name} package is not installed ({hint})")
    return names


def _trackers(args: TrainArgs, logging_dir: Path):
    from accelerate.tracking import GeneralTracker

    class _JSONL(JSONLTracker, GeneralTracker):
        def __init__(self, run_name, logging_dir):
            GeneralTracker.__init__(self, _blank=True)
            JSONLTracker.__init__(self, run_name, logging_dir)

    return [_JSONL("train", str(logging_dir)) if name == "jsonl" else name for name in tracker_names(args.report_to)]


#: Written last into a checkpoint folder: every file of the folder with its size. A folder without it (or whose
#: files do not match it) is incomplete: a kill, a full disk or a damaged copy.
MANIFEST = "checkpoint.json"
#: The writer's lock in output_dir (its pid inside, for the message another writer gets).
LOCK = ".lock"


def _step_folders(run: Path) -> list[Path]:
    """``checkpoints/<step>`` folders, oldest first (hidden temporary folders excluded)."""
    return sorted((p for p in (run / "checkpoints").glob("*") if p.is_dir() and p.name.isdigit()),
                  key=lambda p: int(p.name))


def _files_of(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or ``None`` when it is (its manifest matches its files)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no valid {MANIFEST} (written last, so the checkpoint was never finished)"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} holds {path.stat().st_size} bytes, not {size} (truncated)"
    return None


def _latest_checkpoint(run: Path, say=None) -> Path | None:
    """The newest complete checkpoint; incomplete newer ones are skipped, with a message through ``say``."""
    for folder in reversed(_step_folders(run)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if say is not None:
            say(f"train: skipping the incomplete checkpoint {folder}: {problem}")
    return None


def _best_step(run: Path) -> int | None:
    """The step whose weights ``best/`` holds (from its ``train_config.json``), ``None`` without a best/."""
    try:
        return int(json.loads((run / "best" / "train_config.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def install_best(run: Path, pretrained: Path, repo_id: str | None) -> Path:
    """Make ``best/`` a copy of ``pretrained`` without a moment where no complete best/ exists on disk.

    The copy is made under ``.best.tmp``, renamed ``.best.new`` once complete; the old best/ is renamed
    ``.best.old``, the new one into place, then the old one deleted. A kill at any point is finished by
    :func:`repair_best` on the next start. The card is rendered for best/ itself, so its load snippet names
    a folder that checkpoint rotation never deletes.
    """
    best, tmp, new, old = run / "best", run / ".best.tmp", run / ".best.new", run / ".best.old"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(pretrained, tmp)
    write_model_card(tmp, repo_id=repo_id or str(best))
    shutil.rmtree(new, ignore_errors=True)
    os.replace(tmp, new)
    return replace_dir(new, best, old)


def repair_best(run: Path, record: dict | None, repo_id: str | None, say=print) -> None:
    """Finish a best/ swap that a kill interrupted, and make best/ hold the step the record names."""
    best, tmp, new, old = run / "best", run / ".best.tmp", run / ".best.new", run / ".best.old"
    shutil.rmtree(tmp, ignore_errors=True)  # a copy still being made: never complete
    if new.is_dir():  # complete: finish the swap
        replace_dir(new, best, old)
        say(f"train: finished replacing {best} (interrupted last time)")
    elif not best.exists() and old.is_dir():
        os.replace(old, best)
        say(f"train: restored {best} (interrupted last time)")
    shutil.rmtree(old, ignore_errors=True)
    step = (record or {}).get("step")
    if step is not None and _best_step(run) != step:
        source = run / "checkpoints" / f"{int(step):07d}"
        if checkpoint_problem(source) is None:
            install_best(run, source / "pretrained_model", repo_id)
            say(f"train: {best} rebuilt from {source}, the best checkpoint of the record")


def rotate_checkpoints(run: Path, keep: int, best_step: int | None) -> None:
    """Keep the ``keep`` newest complete checkpoints; never delete the one the record names as best while
    best/ does not hold it."""
    folders = _step_folders(run)
    complete = [f for f in folders if checkpoint_problem(f) is None]
    keep_names = {f.name for f in complete[-keep:]}
    if best_step is not None and _best_step(run) != best_step:
        keep_names.add(f"{int(best_step):07d}")
    for folder in folders:
        if folder.name not in keep_names:
            shutil.rmtree(folder, ignore_errors=True)


class RunLock:
    """An exclusive lock on ``output_dir`` (``flock`` on ``.lock``, the holder's pid inside): a second writer
    is refused with the pid of the first. The kernel drops the lock when its process dies, so a lock file left
    by a dead run is simply taken over."""

    def __init__(self, run: Path):
        import fcntl

        self.path = run / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise ValueError(f"{run} is in use by another training run (pid {other}): wait for it to end or stop it "
                             "(kill that pid), or choose another --output_dir") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (unlinking it would race a waiting writer)
            self.fd = None


def check_run_folder(args: TrainArgs) -> tuple[Path, RunLock]:
    """Create/probe the output folder, lock it, clear what a kill left half-written and, on resume, check the
    saved run's settings match. Runs on the main process before any work."""
    run = Path(args.output_dir)
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to output_dir {run}: {e.strerror or e}; choose another --output_dir") from e
    lock = RunLock(run)
    try:
        for stale in (run / "checkpoints").glob(".*"):  # checkpoints being written when a run was killed
            shutil.rmtree(stale, ignore_errors=True)
        latest = _latest_checkpoint(run, say=lambda m: print(m, file=sys.stderr))
        if args.resume:
            if latest is None:
                raise ValueError(f"--resume: no checkpoint in {run}/checkpoints to resume from (none there is complete)")
            saved = json.loads((latest / "pretrained_model" / "train_config.json").read_text())
            diff = [k for k in _RESUME_KEYS if saved.get(k, getattr(TrainArgs, k, None)) != getattr(args, k)]
            if diff:
                raise ValueError(f"--resume: the checkpoint in {latest} was trained with other settings "
                                 f"({', '.join(f'{k}: {saved.get(k)!r} vs {getattr(args, k)!r}' for k in diff)}); "
                                 "resume with the same recipe or start a new output_dir")
            repair_best(run, saved.get("best"), args.hub_repo_id or None,
                        say=lambda m: print(m, file=sys.stderr))
        elif _step_folders(run):
            raise ValueError(f"{run} already holds checkpoints: pass --resume to continue it, or choose a new --output_dir")
    except BaseException:
        lock.release()
        raise
    return run, lock


def save_checkpoint(accelerator, model, args: TrainArgs, step: int, buffer, extra: dict,
                    evaluated: dict | None = None) -> Path:
    """``checkpoints/<step>/pretrained_model`` (pushable: weights, config, record, eval/, card) and
    ``training_state`` (private, exact resume), written under a hidden name, completed with its manifest, then
    renamed into place: a folder with a step name is always complete."""
    run = Path(args.output_dir)
    folder = run / "checkpoints" / f"{step:07d}"
    tmp = run / "checkpoints" / f".tmp-{step:07d}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "training_state"))
    if buffer is not None:
        np.savez(tmp / "training_state" / f"onpolicy_rank{accelerator.process_index}.npz", **buffer)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pretrained = tmp / "pretrained_model"
        accelerator.unwrap_model(model).save_pretrained(pretrained)
        # Whether the corpus was a local folder or a Hub id: a card names it accordingly (a relative path such
        # as data/x looks like a Hub id).
        local = bool(args.corpus) and Path(args.corpus).is_dir()
        command = generate_command(args.corpus, args.corpus_split)
        write_json(pretrained / "train_config.json", {**asdict(args), "step": step, "corpus_local": local,
                                                      **({"corpus_command": command} if command else {}), **extra},
                   indent=1)
        if evaluated is not None:
            write_results(evaluated, pretrained / "eval", stem=f"eval-{evaluated['suite']['name']}")
        # rendered for the folder's final name (the snippet loads from where the checkpoint will be)
        write_model_card(pretrained, repo_id=args.hub_repo_id or str(folder / "pretrained_model"))
        write_json(tmp / MANIFEST, {"step": step, "files": _files_of(tmp)}, indent=1)
        if folder.exists():  # an incomplete one skipped on resume: replaced
            trash = run / "checkpoints" / f".old-{step:07d}"
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, folder)
    accelerator.wait_for_everyone()
    return folder


def push_checkpoint_guarded(folder: Path, args: TrainArgs, step: int) -> bool:
    """``--push_to_hub``: push a finished checkpoint; a failure is reported in one line and training goes on."""
    try:
        push_folder(folder, args.hub_repo_id, commit_message=f"checkpoint at step {step}")
    except Exception as e:  # noqa: BLE001  (offline, no token, no permission: the run must not die of it)
        reason = " ".join(str(e).split()) or type(e).__name__
        print(f"train: warning: push of {folder} to {args.hub_repo_id} failed ({reason}); training goes on, "
              f"push it later with `anymdp-agent push --checkpoint {folder} --repo-id {args.hub_repo_id}`",
              file=sys.stderr)
        return False
    return True


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


def model_inputs(batch: dict, device) -> dict:
    """A batch as the model's tensors: ids (observations, actions, tags, prompts, labels, action counts) as
    int64 whatever integer dtype the data came in (``roll_sequences`` gives int16), rewards as float32, and
    ``IGNORE_INDEX`` where a row has no label."""
    out = {k: torch.as_tensor(np.asarray(v), device=device) for k, v in batch.items()}
    out = {k: v.float() if k == "rewards" else v.long() for k, v in out.items()}
    out["labels"] = torch.where(out["labels"] < 0, IGNORE_INDEX, out["labels"])
    return out


class TrainingStopped(ValueError):
    """Training cannot go on (a non-finite loss or gradient); raised on every process, reported by the main one."""


def check_finite(accelerator, args: TrainArgs, step: int, logs: dict, grad_norm: float, last: Path | None) -> None:
    """Stop before the optimiser step when a loss or the gradient is not finite: a NaN weight must never reach a
    checkpoint. The decision is taken together (every process gets the same answer)."""
    losses = {k: logs[k] for k in ("policy_loss", "observation_loss", "reward_loss")}
    bad = torch.tensor([0.0 if all(math.isfinite(v) for v in losses.values()) else 1.0], device=accelerator.device)
    ranks = [r for r, flag in enumerate(accelerator.gather(bad).tolist()) if flag]
    # With fp16 the gradient scaler makes overflowing gradients on purpose: it skips that step and lowers its scale.
    bad_grad = not math.isfinite(grad_norm) and accelerator.scaler is None
    if not ranks and not bad_grad:
        return
    what = (f"the loss is not finite ({', '.join(f'{k}={v:.4g}' for k, v in losses.items())}) on the batch of "
            f"process {', '.join(map(str, ranks))}" if ranks else f"the gradient norm is not finite ({grad_norm})")
    data = (f"corpus {args.corpus!r} (split {args.corpus_split})" if args.corpus
            else f"tasks generated on the fly (seed {args.seed})")
    kept = f"; the last checkpoint, {last}, is intact" if last is not None else "; no checkpoint was written"
    raise TrainingStopped(f"step {step + 1}: {what}, data: {data}. Stopped before this optimiser step{kept}. Check the "
                          "data for NaN or huge rewards, or lower --learning_rate")


def _forward_backward(accelerator, model, args: TrainArgs, batch: dict, logs: dict, position_ce: dict,
                      weight: float) -> tuple[int, int]:
    """Truncated back-propagation through one batch (segments of ``segment_len`` rows, the recurrent state
    carried detached); adds the batch's losses times ``weight`` to ``logs``. Returns (rows per sequence, sequences)."""
    tensors = model_inputs(batch, accelerator.device)
    # Tasks with fewer actions than the vocabulary: the missing ones are masked (never taken, never planned on).
    n_act = tensors.pop("n_actions")
    action_mask = torch.arange(args.num_actions, device=accelerator.device)[None, :] < n_act[:, None]
    length = tensors["observations"].shape[1]
    unwrapped = accelerator.unwrap_model(model)
    # The planning backbone's statistics need only the ids in use (exact: it is permutation-equivariant
    # over observation ids), which makes small tasks cheap inside a large vocabulary.
    in_use = int(tensors["observations"].max()) + 1 if unwrapped.config.backbone == "planning" else None
    cache = unwrapped.initial_state(tensors["observations"].shape[0], num_observations=in_use, device=accelerator.device)
    seg_starts = list(range(0, length, args.segment_len))
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
            logs[key] += float(getattr(out, key).detach()) * share * weight
        position_ce[s0] = position_ce.get(s0, 0.0) + float(out.policy_loss.detach()) * weight
    return length, tensors["observations"].shape[0]


def train(args: TrainArgs) -> Path:
    """Run (or resume) training; returns the run folder. The main process holds output_dir's lock throughout."""
    torch.set_num_threads(max(1, int(os.environ.get("TRAIN_THREADS", "1"))))
    lock = None
    if int(os.environ.get("RANK", "0")) == 0:
        run, lock = check_run_folder(args)
    else:
        run = Path(args.output_dir)
    try:
        return _train(args, run)
    finally:
        if lock is not None:
            lock.release()


def _train(args: TrainArgs, run: Path) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    k = args.gradient_accumulation_steps
    # The schedule counts optimiser steps: stepped here once per optimiser step (step_scheduler_with_optimizer
    # off), where accelerate would step it once per process (its batches being split over processes).
    accelerator = Accelerator(mixed_precision=None if args.bf16 is None else ("bf16" if args.bf16 else "no"),
                              gradient_accumulation_steps=k, step_scheduler_with_optimizer=False,
                              log_with=_trackers(args, run / "logs"),
                              project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs")))
    accelerator.wait_for_everyone()
    set_seed(args.seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    model = AnyMDPAgentModel(args.model_config())
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    source = CorpusSource(args, rank, world) if args.corpus else TaskStream(args)
    onpolicy_labels = label_kinds(args.label)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=args.warmup_steps,
                                                            num_training_steps=args.max_steps, min_lr_rate=0.1)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.init_trackers("train", config={k_: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                              for k_, v in asdict(args).items()})
    start_step, buffer, best, last_saved = 0, None, {"auc": None, "step": None}, None
    if args.resume:
        last_saved = _latest_checkpoint(run)
        accelerator.load_state(str(last_saved / "training_state"))
        saved = json.loads((last_saved / "pretrained_model" / "train_config.json").read_text())
        start_step = int(saved["step"])
        best = saved.get("best") or best
        if best.get("auc") is not None and not math.isfinite(best["auc"]):  # records before the JSON was standard
            best = {"auc": None, "step": None}
        buf_path = last_saved / "training_state" / f"onpolicy_rank{rank}.npz"
        if buf_path.is_file():
            with np.load(buf_path) as data:
                buffer = {key: data[key] for key in data.files}
    validator = Validator(args) if accelerator.is_main_process and args.eval_every >= 0 else None
    bar = None
    if args.progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.max_steps, initial=start_step, desc=f"train {args.recipe}", unit="step")
    if validator is not None and start_step == 0:  # where training starts from, on the same yardstick
        untrained = validator(accelerator.unwrap_model(model))["learners"]["agent"]
        accelerator.log({"eval/auc": untrained["auc"]["mean"], "eval/last_window": untrained["windows"][-1]["mean"],
                         **{f"eval/baseline_auc_{name}": v["auc"]["mean"] for name, v in validator.baselines.items()}},
                        step=0)
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
            onpolicy_stats = {f"onpolicy/agreement_{key}": v for key, v in st["agreement"].items()}
        model.train()
        logs = {"policy_loss": 0.0, "observation_loss": 0.0, "reward_loss": 0.0}
        position_ce = {}
        for micro in range(k):  # gradient accumulation: batch `micro` is data rank rank * k + micro
            data_rank = rank * k + micro
            batch = source.batch(step, data_rank, args.batch_size - n_onpolicy)
            if n_onpolicy:
                pick = _seed(args.seed, step, data_rank, 6).integers(0, len(buffer["observations"]), size=n_onpolicy)
                batch = _concat(batch, {key: v[pick] for key, v in buffer.items()})
            with accelerator.accumulate(model):
                length, sequences = _forward_backward(accelerator, model, args, batch, logs, position_ce, 1.0 / k)
            rows_seen += length * sequences * world
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(),
                                                      args.max_grad_norm if args.max_grad_norm > 0 else math.inf))
        check_finite(accelerator, args, step, logs, grad_norm, last_saved)
        lr = optimizer.param_groups[0]["lr"]  # the rate of this step
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        logs.update({"grad_norm": grad_norm, "lr": lr, "rows_per_second": rows_seen / (time.perf_counter() - t_start),
                     "seq_len": length, **onpolicy_stats})
        for s0, ce in position_ce.items():
            logs[f"policy_loss_by_position/{s0}"] = ce
        unwrapped = accelerator.unwrap_model(model)
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
            accelerator.log({"eval/auc": agent["auc"]["mean"], "eval/last_window": agent["windows"][-1]["mean"],
                             **{f"eval/baseline_auc_{name}": v["auc"]["mean"] for name, v in validator.baselines.items()}},
                            step=step + 1)
        interrupted = args.stop_at_step and step + 1 == args.stop_at_step
        if (step + 1) % args.save_every == 0 or eval_due or interrupted:  # the same decision on every process
            auc = evaluated["learners"]["agent"]["auc"]["mean"] if evaluated is not None else None
            improved = auc is not None and math.isfinite(auc) and (best["auc"] is None or auc > best["auc"])
            if improved:
                best = {"auc": auc, "step": step + 1}
            extra = {"best": best, "compute": f"{world} process(es), {time.perf_counter() - t_start:.0f} s so far"}
            folder = save_checkpoint(accelerator, model, args, step + 1, buffer, extra, evaluated)
            last_saved = folder
            if accelerator.is_main_process:
                if improved:
                    install_best(run, folder / "pretrained_model", args.hub_repo_id or None)
                rotate_checkpoints(run, args.keep_checkpoints, best["step"])
                if args.push_to_hub:  # last: eval/ and the card are in the folder, a failure only warns
                    push_checkpoint_guarded(folder / "pretrained_model", args, step + 1)
            accelerator.wait_for_everyone()
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


class Interrupted(BaseException):
    """SIGTERM or SIGINT: training stops where it is (a checkpoint being written stays hidden and is cleared)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop_on_signals():
    """SIGTERM/SIGINT raise :class:`Interrupted`; returns the function restoring the previous handlers.

    While stopping, a further SIGTERM is ignored: launchers pass a stop on as SIGTERM to a process that already
    has it (``anymdp-agent train`` signals the whole launch, then accelerate's launcher and torchrun terminate
    their children too), and dying of that duplicate would lose the clean stop. A second SIGINT (Ctrl-C again)
    still ends the process at once.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    fired = []

    def handler(signum, frame):
        if fired:
            if signum == signal.SIGTERM:
                return
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        fired.append(signum)
        raise Interrupted(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    return lambda: [signal.signal(sig, h) for sig, h in old.items()]


def check_launch(environ=os.environ) -> None:
    """Refuse a launch that asked for several processes and got one: accelerate's simple launcher (what
    ``accelerate launch --cpu --num_processes N`` uses without mpirun) starts a single process, setting
    MASTER_ADDR but no WORLD_SIZE."""
    if ("ACCELERATE_USE_CPU" in environ and "MASTER_ADDR" in environ and "WORLD_SIZE" not in environ
            and not any(k in environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"))):
        raise ValueError("this launch asked for several processes but started one (accelerate's --cpu launcher needs "
                         "mpirun for more): use `anymdp-agent train --cpu --num-processes N`, or `ACCELERATE_USE_CPU=true "
                         "accelerate launch --config_file training/accelerate/cpu-2proc.yaml ...`")


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 on success, 2 for a user error (one line on stderr), 128 + the signal when stopped."""
    restore = _stop_on_signals()
    main_process = int(os.environ.get("RANK", "0")) == 0
    try:
        check_launch()
        args = parse_args(argv)
        train(args)
        rc = 0
    except TrainingStopped as e:
        if main_process:  # the same message on every process: said once
            print(f"train: error: {e}", file=sys.stderr)
        rc = 2
    except ValueError as e:
        print(f"train: error: {e}", file=sys.stderr)
        rc = 2
    except Interrupted as e:
        if main_process:
            print(f"train: stopped by {signal.Signals(e.signum).name}; every finished checkpoint is kept, continue "
                  "with --resume", file=sys.stderr)
        rc = 128 + e.signum
    finally:
        restore()
    status = os.environ.get(STATUS_ENV)
    if status and rc:  # the exit status for `anymdp-agent train`, which the launcher does not pass on
        try:
            Path(status).write_text(f"{rc}\n")
        except OSError:
            pass
    return rc


#: Where ``anymdp-agent train`` asks the training processes to leave their exit status.
STATUS_ENV = "ANYMDP_TRAIN_STATUS"


if __name__ == "__main__":
    sys.exit(main())
