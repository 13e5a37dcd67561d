"""The meta-training corpus: sequences of behaviour on AnyMDP tasks, step-wise labels, a ``datasets`` corpus.

Documented in ``docs/corpus.md``. One row of the dataset is one *sequence*: one task, episodes
concatenated until ``seq_len`` rows. Per-row list columns (``[seq_len]`` each):

- ``observations`` (int16), ``actions`` (int8: the behaviour's action, or ``-1`` / ``-2`` on the extra
  row that closes an episode which terminated / was truncated, whose observation is the final one),
  ``rewards`` (float32, 0 on closing rows), ``tags`` (int8, the behaviour tag; a closing row repeats its step's; see
  :data:`~anymdp_agent.data.behaviours.TAGS`);
- ``label_oracle`` (int8): the value-iteration oracle's action in the *true* state (gamma 0.994 by
  default), ``label_planner`` (int8): the count-based planner's action given the same history;
  ``-1`` where no label (closing rows). One or both, chosen at generation time.

Scalar columns: ``task_seed``, ``n_states``, ``n_actions``, ``prompt`` (which oracle labelled
``label_oracle``: :data:`ORACLE_PROMPTS`), ``sampler_version``.

Generation is sharded: shard ``k`` of a split holds sequences ``k * tasks_per_shard ...``, whose task
seeds come from the split's seed range (:mod:`anymdp_agent.envs.seeds`), and is a pure function of
the configuration and ``k`` (the same shard regenerated gives the same bytes). Shards are parquet
files in the Hub's layout (``data/<split>-<k>-of-<N>.parquet``), written under a temporary name and
renamed, so an interrupted run leaves only finished shards; a rerun skips them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..baselines.model_based import ModelBasedPlanner
from ..baselines.protocol import EnvSpec, Transition
from ..envs import BatchedAnyMDPEnv, GENERATOR_VERSION, stack_tasks
from ..envs.anymdp import sample_anymdp_tasks
from ..envs.anymdp import MIN_ACTIONS, MIN_STATES
from ..envs.memory import check_memory, task_table_bytes
from ..envs.seeds import SEED_RANGES, check_seed
from ..envs.solvers import oracle_q
from ..fileio import atomic_write
from .behaviours import BEHAVIOURS, TAGS, BehaviourMixture, MixtureConfig

from ..configuration_anymdp_agent import (END_TERMINATED, END_TRUNCATED, LABEL_KINDS, NO_LABEL,  # noqa: F401
                                          NUM_PROMPTS, ORACLE_PROMPTS, PLANNER_PROMPT)

CORPUS_FORMAT = 1
MAX_OBSERVATIONS = 32767  # int16 observation ids
#: Rows (values of one list column) a shard may hold: arrow list arrays have int32 offsets.
MAX_SHARD_ROWS = 2**31 - 1


def corpus_features(labels: tuple[str, ...]):
    """The explicit ``datasets.Features`` of a corpus with the given label columns."""
    from datasets import Features, List, Value

    cols = {
        "observations": List(Value("int16")),
        "actions": List(Value("int8")),
        "rewards": List(Value("float32")),
        "tags": List(Value("int8")),
    }
    for kind in labels:
        cols[f"label_{kind}"] = List(Value("int8"))
    cols.update({"task_seed": Value("int64"), "n_states": Value("int16"), "n_actions": Value("int8"),
                 "prompt": Value("int8"), "sampler_version": Value("string")})
    return Features(cols)


def check_corpus_features(features, need_labels: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Refuse a dataset that is not a corpus of this format; returns the label kinds it holds."""
    have = {k: str(v) for k, v in dict(features).items()}
    kinds = tuple(k for k in LABEL_KINDS if f"label_{k}" in have)
    if not kinds:
        raise ValueError(f"not an anymdp-agent corpus: no label column (label_oracle / label_planner) among {sorted(have)}")
    expected = {k: str(v) for k, v in dict(corpus_features(kinds)).items()}
    for name, feat in expected.items():
        if name not in have:
            raise ValueError(f"not an anymdp-agent corpus: column {name!r} is missing (has {sorted(have)})")
        if have[name] != feat:
            raise ValueError(f"corpus column {name!r} has feature {have[name]}, expected {feat}: "
                             "regenerate the corpus with this version of anymdp-agent")
    missing = [k for k in need_labels if k not in kinds]
    if missing:
        raise ValueError(f"the corpus has no {', '.join('label_' + k for k in missing)} column (it has "
                         f"{', '.join('label_' + k for k in kinds)}); generate it with --labels {','.join(need_labels)}")
    return kinds


def _parse_range(value, name: str, minimum: int) -> tuple[int, int]:
    lo, hi = (value, value) if isinstance(value, int) else tuple(value)
    if not (isinstance(lo, int) and isinstance(hi, int)) or lo > hi:
        raise ValueError(f"{name} must be an integer or a range lo:hi with lo <= hi, got {value!r}")
    if lo < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {lo}")
    return int(lo), int(hi)


@dataclass
class CorpusConfig:
    """Everything that determines a corpus' bytes (saved as ``corpus.json`` beside the shards)."""

    tasks: int
    seq_len: int
    n_states: tuple = (16, 16)
    n_actions: tuple = (5, 5)
    labels: tuple = ("oracle",)
    oracle_gamma: float = 0.994
    split: str = "train"
    seed_offset: int = 0
    seed: int = 0
    tasks_per_shard: int = 256
    planner_sweeps: int = 3
    plan_every: int = 4
    mixture: MixtureConfig = field(default_factory=MixtureConfig)

    def __post_init__(self):
        self.n_states = _parse_range(self.n_states, "n_states", MIN_STATES)
        self.n_actions = _parse_range(self.n_actions, "n_actions", MIN_ACTIONS)
        if self.n_states[1] > MAX_OBSERVATIONS:
            raise ValueError(f"n_states must be <= {MAX_OBSERVATIONS} (int16 observation ids)")
        if self.n_actions[1] > 127:
            raise ValueError("n_actions must be <= 127 (int8 actions)")
        self.labels = tuple(self.labels)
        bad = [k for k in self.labels if k not in LABEL_KINDS]
        if not self.labels or bad:
            raise ValueError(f"labels must be a non-empty subset of {list(LABEL_KINDS)}, got {list(self.labels)}")
        if self.oracle_gamma not in ORACLE_PROMPTS:
            raise ValueError(f"oracle_gamma must be one of {sorted(ORACLE_PROMPTS)} (the prompt vocabulary), "
                             f"got {self.oracle_gamma}")
        if self.split not in SEED_RANGES:
            raise ValueError(f"split must be one of {list(SEED_RANGES)}, got {self.split!r}")
        for name in ("tasks", "seq_len", "tasks_per_shard", "planner_sweeps", "plan_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_seed(self.seed, "seed")
        check_seed(self.seed_offset, "seed_offset")
        if self.seed_offset + self.tasks > len(SEED_RANGES[self.split]):
            raise ValueError(f"{self.tasks} tasks from offset {self.seed_offset} run past the {self.split} seed range")
        if isinstance(self.mixture, dict):
            self.mixture = MixtureConfig(**self.mixture)
        rows = min(self.tasks, self.tasks_per_shard) * self.seq_len
        if rows > MAX_SHARD_ROWS:
            raise ValueError(f"a shard of {min(self.tasks, self.tasks_per_shard)} sequences of {self.seq_len} rows holds "
                             f"{rows:,} rows, more than a parquet list column holds ({MAX_SHARD_ROWS:,}): lower "
                             "--seq-len or --tasks-per-shard")

    def shard_bytes(self) -> int:
        """Memory one process needs for one shard: the row arrays (about 3 copies: numpy, arrow, the parquet
        writer's buffers) and the tasks' tables."""
        b = min(self.tasks, self.tasks_per_shard)
        per_row = 2 + 1 + 4 + 1 + len(self.labels)  # observations, actions, rewards, tags, labels
        return 3 * b * self.seq_len * per_row + task_table_bytes(b, self.n_states[1], self.n_actions[1])

    @property
    def num_shards(self) -> int:
        return math.ceil(self.tasks / self.tasks_per_shard)

    @property
    def prompt(self) -> int:
        return ORACLE_PROMPTS[self.oracle_gamma]

    def shard_name(self, k: int) -> str:
        return f"data/{self.split}-{k:05d}-of-{self.num_shards:05d}.parquet"

    def task_seeds(self, k: int) -> range:
        lo = k * self.tasks_per_shard
        hi = min(self.tasks, lo + self.tasks_per_shard)
        return SEED_RANGES[self.split].seeds(hi - lo, self.seed_offset + lo)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["n_states"], d["n_actions"], d["labels"] = list(self.n_states), list(self.n_actions), list(self.labels)
        return d


# ---------------------------------------------------------------------- one shard


def _draw_sizes(cfg: CorpusConfig, seed: int) -> tuple[int, int]:
    """The state and action counts of the sequence on task ``seed`` (a curriculum draws them)."""
    rng = np.random.default_rng([cfg.seed, seed, 7])
    return (int(rng.integers(cfg.n_states[0], cfg.n_states[1] + 1)),
            int(rng.integers(cfg.n_actions[0], cfg.n_actions[1] + 1)))


def generate_shard(cfg: CorpusConfig, k: int):
    """Sequences of shard ``k``: a ``pyarrow.Table`` with the corpus features, and its statistics."""
    import pyarrow as pa

    seeds = list(cfg.task_seeds(k))
    sizes = [_draw_sizes(cfg, s) for s in seeds]
    tasks = sample_anymdp_tasks(seeds, [n for n, _ in sizes], [na for _, na in sizes])
    # Behaviour randomness depends on the split and the seed offset too, not only on the shard index.
    split_id = list(SEED_RANGES).index(cfg.split)
    arrays, stats = roll_sequences(tasks, cfg, np.random.default_rng([cfg.seed, split_id, cfg.seed_offset, k, 11]))
    b, t = arrays["observations"].shape
    offsets = pa.array(np.arange(0, (b + 1) * t, t, dtype=np.int32))
    cols = {}
    for name, dtype in (("observations", np.int16), ("actions", np.int8), ("rewards", np.float32), ("tags", np.int8)):
        cols[name] = pa.ListArray.from_arrays(offsets, pa.array(arrays[name].astype(dtype, copy=False).ravel()))
    for kind in cfg.labels:
        cols[f"label_{kind}"] = pa.ListArray.from_arrays(offsets, pa.array(arrays[f"label_{kind}"].astype(np.int8, copy=False).ravel()))
    cols["task_seed"] = pa.array(np.asarray(seeds, dtype=np.int64))
    cols["n_states"] = pa.array(np.asarray([n for n, _ in sizes], dtype=np.int16))
    cols["n_actions"] = pa.array(np.asarray([na for _, na in sizes], dtype=np.int8))
    cols["prompt"] = pa.array(np.full(b, cfg.prompt, dtype=np.int8))
    cols["sampler_version"] = pa.array([GENERATOR_VERSION] * b, type=pa.string())
    schema = corpus_features(cfg.labels).arrow_schema
    table = pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)
    return table, stats


def roll_sequences(tasks, cfg: CorpusConfig, rng: np.random.Generator) -> tuple[dict, dict]:
    """Run the behaviour mixture on ``tasks`` (one sequence each, all at once) for ``cfg.seq_len`` rows.

    Returns ``[B, seq_len]`` arrays (observations, actions, rewards, tags, label_<kind>) and statistics.
    """
    batch = stack_tasks(tasks)
    b, t_len = len(tasks), cfg.seq_len
    env = BatchedAnyMDPEnv(batch)  # next-step autoreset: the step after an episode's end is its closing row
    spec = EnvSpec(num_envs=b, n_observations=batch.n_states, n_actions=batch.action_mask.shape[1],
                   action_mask=batch.action_mask)
    q_star = oracle_q(batch, cfg.oracle_gamma)
    oracle_actions = np.where(batch.action_mask[:, None, :], q_star, -np.inf).argmax(-1)  # [B, n] chain space
    planner = ModelBasedPlanner(gamma=0.99, sweeps=cfg.planner_sweeps)
    pstate = planner.initial_state(spec, int(rng.integers(2**31)))
    mix = BehaviourMixture(spec, oracle_actions, batch.n_active, t_len, cfg.mixture, rng, planner, pstate)
    want_planner = "planner" in cfg.labels
    out = {name: np.zeros((b, t_len), dtype=dt) for name, dt in
           (("observations", np.int16), ("actions", np.int8), ("rewards", np.float32), ("tags", np.int8))}
    for kind in cfg.labels:
        out[f"label_{kind}"] = np.full((b, t_len), NO_LABEL, dtype=np.int8)
    obs, info = env.reset(seed=int(rng.integers(2**31)))
    chain = info["state"]
    rows = np.arange(b)
    closing = np.zeros(b, dtype=bool)       # this row closes an episode
    end_id = np.zeros(b, dtype=np.int64)    # its action id
    new_episode = np.ones(b, dtype=bool)
    for t in range(t_len):
        act, tag = mix.act(obs, chain, new_episode, closing)
        if "oracle" in cfg.labels:
            out["label_oracle"][:, t] = np.where(closing, NO_LABEL, oracle_actions[rows, chain])
        if want_planner:
            lab, pstate = planner.act(pstate, obs)
            out["label_planner"][:, t] = np.where(closing, NO_LABEL, lab)
        next_obs, reward, term, trunc, info = env.step(act)
        out["observations"][:, t] = obs
        out["actions"][:, t] = np.where(closing, end_id, act)
        out["rewards"][:, t] = reward
        out["tags"][:, t] = tag
        live = np.flatnonzero(~closing)
        step = Transition(obs[live], act[live], reward[live], next_obs[live], term[live], trunc[live])
        mix.learn(step, live)
        planner.record(pstate, step, live)
        if want_planner:
            planner.plan(pstate, cfg.planner_sweeps)
        elif t % cfg.plan_every == 0:
            planner.plan(pstate, 1)
        new_episode = closing.copy()
        end_id = np.where(term, END_TERMINATED, END_TRUNCATED)
        closing = (term | trunc) & ~closing
        obs, chain = next_obs, info["state"]
    return out, _statistics(out, cfg, mix.kinds_drawn)


def _statistics(out: dict, cfg: CorpusConfig, kinds_drawn: np.ndarray) -> dict:
    """Behaviour mix, episode lengths, and how often the behaviour's action equals each label, per tag."""
    actions, tags = out["actions"], out["tags"]
    real = actions >= 0
    closing_rows = ~real
    b, t = actions.shape
    # Episode lengths: real rows between closing rows (complete episodes only).
    lengths = []
    for i in range(b):
        ends = np.flatnonzero(closing_rows[i])
        starts = np.concatenate([[0], ends[:-1] + 1])
        lengths.extend((ends - starts).tolist())
    agree = {}
    for kind in cfg.labels:
        lab = out[f"label_{kind}"]
        per_tag = {}
        for tag_id, tag in enumerate(TAGS):
            sel = real & (tags == tag_id)
            per_tag[tag] = {"rows": int(sel.sum()), "agree": int((actions[sel] == lab[sel]).sum())}
        agree[kind] = per_tag
    return {
        "sequences": int(b), "rows": int(b * t), "steps": int(real.sum()),
        "behaviour_rows": {name: int(c) for name, c in zip(BEHAVIOURS, kinds_drawn)},
        "tag_rows": {tag: int(((tags == i) & real).sum()) for i, tag in enumerate(TAGS)},
        "episodes": len(lengths), "episode_length_sum": int(np.sum(lengths)) if lengths else 0,
        "episode_length_hist": np.bincount(np.minimum(lengths, 1000), minlength=1001).tolist() if lengths else [],
        "label_agreement": agree,
    }


# ---------------------------------------------------------------------- checking shards


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_shard(path: str | os.PathLike, expected_rows: int | None = None) -> int:
    """Refuse a shard file that cannot be trained on, naming it: not parquet (a truncated file has no footer),
    no rows (or not ``expected_rows``), or a NaN or infinite reward. Returns its number of sequences."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        file = pq.ParquetFile(path)
        rows = file.metadata.num_rows
        has_rewards = "rewards" in file.schema_arrow.names  # (a missing column is check_corpus_features' to name)
        rewards = pq.read_table(path, columns=["rewards"]).column("rewards") if rows and has_rewards else None
    except Exception as e:  # noqa: BLE001  (pyarrow raises ArrowInvalid, OSError, KeyError, ... for a bad file)
        raise ValueError(f"corpus shard {path} is not a readable parquet file ({type(e).__name__}: {e}): "
                         "it is truncated or corrupt; regenerate it (rerun anymdp-agent generate)") from None
    if rows == 0:
        raise ValueError(f"corpus shard {path} holds no rows: regenerate it (rerun anymdp-agent generate) or remove it")
    if expected_rows is not None and rows != expected_rows:
        raise ValueError(f"corpus shard {path} holds {rows} sequences, {expected_rows} expected: regenerate it")
    if rewards is None:
        return rows
    values = pc.list_flatten(rewards.combine_chunks())
    bad = len(values) - pc.sum(pc.is_finite(values)).as_py() if len(values) else 0
    if bad:
        raise ValueError(f"corpus shard {path} holds {bad} NaN or infinite rewards: the data is corrupt; "
                         "regenerate the corpus")
    return rows


def check_corpus_files(files) -> int:
    """:func:`check_shard` on every shard file of a corpus before training reads any; returns the sequences."""
    return sum(check_shard(f) for f in files)


# ---------------------------------------------------------------------- the folder


def _write_shard(folder: Path, cfg: CorpusConfig, k: int) -> dict:
    """Generate shard ``k`` and write it (parquet + its statistics) atomically; returns the statistics."""
    import pyarrow.parquet as pq

    table, stats = generate_shard(cfg, k)
    # Data first: a stats file vouches for a shard that exists.
    atomic_write(folder / cfg.shard_name(k), lambda fh: pq.write_table(table, fh, compression="zstd", use_dictionary=False))
    atomic_write(folder / "stats" / f"{cfg.split}-{k:05d}.json",
                 lambda fh: fh.write(json.dumps(stats, allow_nan=False).encode()))
    return {"rows": int(table.num_rows), "sha256": file_sha256(folder / cfg.shard_name(k))}


def _load_compiled_loops() -> None:
    """Roll one tiny sequence: numba loads the compiled loops from its cache on first use (~0.3 s)."""
    cfg = CorpusConfig(tasks=1, seq_len=2, labels=LABEL_KINDS, tasks_per_shard=1)
    roll_sequences([sample_anymdp_tasks([0], 16, 5)[0]], cfg, np.random.default_rng(0))


def _worker_init() -> None:
    """A worker leaves Ctrl-C to the parent (which stops the pool) and dies with it, even on SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _shard_worker(args):
    folder, cfg_dict, k = args
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    cfg = CorpusConfig(**cfg_dict)
    return k, _write_shard(Path(folder), cfg, k)


def read_corpus_meta(path: str | os.PathLike) -> dict:
    """A folder's ``corpus.json``, or a ``ValueError`` naming the file if it is not one (corrupt JSON, a list)."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt (not JSON: {e}): restore it, or generate into a new --out") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("splits", {}), dict) \
            or not all(isinstance(v, dict) for v in meta.get("splits", {}).values()) \
            or not isinstance(meta.get("shards", {}), dict):
        raise ValueError(f"{path} is not an anymdp-agent corpus.json (a JSON object with a 'splits' object, got "
                         f"{type(meta).__name__}): restore it, or generate into a new --out")
    return meta


def open_corpus(corpus: str | os.PathLike, split: str = "train", streaming: bool = False):
    """``split`` of a corpus as a ``datasets`` dataset: a local folder written by ``anymdp-agent generate`` (its
    parquet shards read directly, each checked first) or a Hub id; a clear error when there is none."""
    from datasets import load_dataset

    local = Path(corpus)
    try:
        if str(corpus) and local.is_dir():
            # Read the parquet shards directly: datasets keys its cache of a folder with a card on the
            # folder's name, so a corpus regenerated in place would otherwise come back stale.
            files = sorted(str(p) for p in (local / "data").glob(f"{split}-*.parquet"))
            if not files:
                raise ValueError(f"{local} holds no {split} shards (data/{split}-*.parquet)")
            check_corpus_files(files)  # truncated, 0-row or NaN/inf-reward shards refused, the file named
            return load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming)
        return load_dataset(str(corpus), split=split, streaming=streaming)
    except FileNotFoundError as e:
        raise ValueError(f"no corpus at {str(corpus)!r}: {e}") from e
    except ConnectionError as e:  # not a local folder, and the Hub cannot be reached (offline, no network)
        raise ValueError(f"no corpus at {str(corpus)!r}: it is not a local folder and the Hub could not be reached "
                         f"({type(e).__name__}); pass the folder that anymdp-agent generate wrote") from e


def generate_command(corpus: str | os.PathLike, split: str = "train") -> str | None:
    """The ``anymdp-agent generate`` command that wrote ``split`` of the local corpus folder ``corpus``, as its
    ``corpus.json`` records it; ``None`` for a Hub id, a folder without one, or a record without the command."""
    path = Path(corpus) / "corpus.json"
    if not str(corpus) or not path.is_file():  # "" is no folder (Path("") would be the working directory)
        return None
    try:
        command = read_corpus_meta(path).get("commands", {}).get(split)
    except ValueError:
        return None
    return command if isinstance(command, str) and command else None


def _write_meta(folder: Path, meta: dict) -> None:
    """``corpus.json``, atomically, in standard JSON (no NaN or Infinity), keys sorted (the same bytes every run)."""
    text = json.dumps(meta, indent=1, sort_keys=True, allow_nan=False)
    atomic_write(folder / "corpus.json", lambda fh: fh.write(text.encode()))


def _split_files(folder: Path, split: str) -> list[Path]:
    return sorted((folder / "data").glob(f"{split}-*.parquet"))


def prepare_folder(folder: str | os.PathLike, cfg: CorpusConfig, command: str | None = None) -> Path:
    """Create or reopen a corpus folder for ``cfg``; a clear error before any work if it cannot be used.

    A folder may be reused only if it is a corpus of this format whose saved configuration for the
    split equals ``cfg`` (then finished shards are kept: the run resumes), or whose saved configuration
    for the split never produced a shard (a failed run's settings are replaced).
    """
    folder = Path(folder)
    meta_path = folder / "corpus.json"
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder: choose another --out")
    wanted = _jsonable(cfg.to_dict())
    if folder.is_dir() and any(folder.iterdir()):
        if not meta_path.is_file():
            raise ValueError(f"{folder} is not empty and holds no corpus.json: it is not a resumable corpus; "
                             "choose an empty or new --out")
        meta = read_corpus_meta(meta_path)
        if meta.get("format") != CORPUS_FORMAT:
            raise ValueError(f"{folder} holds a corpus of format {meta.get('format')}; this version writes "
                             f"format {CORPUS_FORMAT}: choose a new --out")
        saved = meta.get("splits", {}).get(cfg.split)
        if saved is not None and saved != wanted:
            if _split_files(folder, cfg.split):
                diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
                raise ValueError(f"{folder} holds a {cfg.split} split generated with other settings ({', '.join(diff)}): "
                                 "rerun with the same settings to resume, or choose a new --out")
            # Those settings never produced a shard: nothing is lost by replacing them.
            meta["shards"] = {k: v for k, v in meta.get("shards", {}).items()
                              if not Path(k).name.startswith(f"{cfg.split}-")}
            for stale in (folder / "stats").glob(f"{cfg.split}-*.json"):
                stale.unlink()
        other = [s for s, c in meta.get("splits", {}).items() if s != cfg.split and c.get("labels") != list(cfg.labels)]
        if other:
            raise ValueError(f"the {other[0]} split in {folder} has other label columns; one corpus has one schema")
    else:
        meta = {"format": CORPUS_FORMAT, "splits": {}}
    try:
        (folder / "data").mkdir(parents=True, exist_ok=True)
        (folder / "stats").mkdir(exist_ok=True)
        probe = folder / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to {folder}: {e.strerror or e}; choose a writable --out") from e
    meta["splits"][cfg.split] = wanted
    meta.setdefault("shards", {})
    if command:
        meta.setdefault("commands", {})[cfg.split] = command
    _write_meta(folder, meta)
    return folder


def _jsonable(d):
    return json.loads(json.dumps(d, allow_nan=False))


def _remove_stale_temporaries(folder: Path, cfg: CorpusConfig, shards: range) -> None:
    """Delete the hidden temporary files a killed run left (``atomic_write``'s ``.<name>.*.tmp``) for the shards
    of this run's range and the folder's own files; other ranges' may belong to another live machine."""
    names = [("data", Path(cfg.shard_name(k)).name) for k in shards]
    names += [("stats", f"{cfg.split}-{k:05d}.json") for k in shards]
    names += [(".", "corpus.json"), (".", "README.md")]
    for sub, name in names:
        for tmp in (folder / sub).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _verified(folder: Path, cfg: CorpusConfig, k: int, meta: dict) -> bool:
    """Whether finished shard ``k`` is intact: its statistics exist, its bytes have the checksum recorded when
    it was written, and it is a readable parquet file with the expected number of sequences."""
    path = folder / cfg.shard_name(k)
    if not path.is_file() or not (folder / "stats" / f"{cfg.split}-{k:05d}.json").is_file():
        return False
    record = meta.get("shards", {}).get(cfg.shard_name(k))
    why = None
    if not isinstance(record, dict) or "sha256" not in record:
        why = "no checksum was recorded for it"
    elif file_sha256(path) != record["sha256"]:
        why = "its bytes do not match the checksum in corpus.json"
    else:
        try:
            check_shard(path, expected_rows=len(cfg.task_seeds(k)))
        except ValueError as e:
            why = str(e)
    if why:
        print(f"anymdp-agent generate: shard {path} is damaged ({why}): regenerating it", file=sys.stderr)
        return False
    return True


def generate_corpus(folder: str | os.PathLike, cfg: CorpusConfig, num_proc: int = 1,
                    shard_range: tuple[int, int] | None = None, progress: bool = False,
                    command: str | None = None) -> dict:
    """Generate (or resume) a corpus split in ``folder``; returns the aggregated statistics.

    ``shard_range = (lo, hi)`` generates shards ``lo..hi-1`` only (several machines share one corpus
    by taking disjoint ranges). Finished shards are verified (checksum recorded in ``corpus.json``,
    parquet footer, row count) and skipped; damaged ones are regenerated. The dataset card is rendered at
    the end from the statistics of every shard present.
    """
    lo, hi = shard_range or (0, cfg.num_shards)
    if not 0 <= lo < hi <= cfg.num_shards:
        raise ValueError(f"shard range {lo}:{hi} is outside 0:{cfg.num_shards} ({cfg.num_shards} shards of "
                         f"{cfg.tasks_per_shard} sequences)")
    if isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1:
        raise ValueError(f"num_proc must be >= 1, got {num_proc}")
    procs = min(num_proc, hi - lo)
    check_memory(cfg.shard_bytes() * procs, f"generating {procs} shard(s) of {min(cfg.tasks, cfg.tasks_per_shard)} "
                 f"sequences x {cfg.seq_len} rows at once", "lower --seq-len, --tasks-per-shard or --num-proc")
    folder = prepare_folder(folder, cfg, command)
    _remove_stale_temporaries(folder, cfg, range(lo, hi))
    meta = read_corpus_meta(folder / "corpus.json")
    todo = [k for k in range(lo, hi) if not _verified(folder, cfg, k, meta)]

    def finished(k: int, record: dict) -> None:
        meta["shards"][cfg.shard_name(k)] = record
        _write_meta(folder, meta)
        if bar is not None:
            bar.update(1)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=hi - lo, initial=hi - lo - len(todo), desc=f"{cfg.split} shards", unit="shard")
    try:
        if num_proc == 1 or len(todo) <= 1:
            for k in todo:
                finished(k, _write_shard(folder, cfg, k))
        else:
            import multiprocessing as mp

            _load_compiled_loops()  # once here, not once per forked worker
            ctx = mp.get_context("fork")
            # Leaving the block (an error, Ctrl-C, SIGTERM turned into KeyboardInterrupt) terminates the workers.
            with ctx.Pool(min(num_proc, len(todo)), initializer=_worker_init) as pool:
                for k, record in pool.imap_unordered(_shard_worker, [(str(folder), cfg.to_dict(), k) for k in todo]):
                    finished(k, record)
    finally:
        if bar is not None:
            bar.close()
    from .card import write_dataset_card

    return write_dataset_card(folder)
