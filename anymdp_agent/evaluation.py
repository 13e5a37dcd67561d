"""How learning in context is measured: suites, the harness, normalised scores, confidence intervals, plots.

Documented in ``docs/evaluation.md``. Every learner (baselines and the pretrained agent alike) runs
through :func:`run_learner` on the same tasks, with the same environment seeds, for a fixed budget
of steps, episode after episode, learning as it goes. An episode's normalised score is
``(R - R_random) / (R_oracle - R_random)`` with the *exact* expected returns of the oracle and of
uniform random actions (dynamic programming on the true model).
The curve is the mean score of the episodes that end in each step window (each episode counts once;
the unfinished last episode of each run is left out); the area under the curve (AUC) of a run is the
mean score of all its episodes within the budget. Tasks where the oracle barely beats random are
skipped and counted (:data:`MIN_GAP`, :data:`MIN_RELATIVE_GAP`).

Every reported statistic (the mean and the IQM of each window and of the AUC) carries a 95% percentile
bootstrap CI over tasks, seeded by the evaluation's seed. Two learners of one evaluation met the same
tasks, so they are compared *paired*: :func:`paired_difference` bootstraps the per-task AUC difference.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .baselines import LEARNERS, make_learner
from .baselines.protocol import EnvSpec, InContextLearner
from .envs import BatchedAnyMDPEnv, stack_tasks
from .envs.families import SAMPLED_FAMILIES, SIZED_NAMES
from .envs.gym_adapter import check_discrete, make_gym_vector_env, task_from_gym
from .envs.memory import check_memory, task_table_bytes
from .envs.seeds import SEED_RANGES, TEST, check_seed
from .envs.solvers import oracle_return, random_return
from .envs.task import TaskBatch
from .fileio import atomic_write
from .rollout import Run, parse_agent_spec, run_in_context

#: Tasks whose oracle beats random by less than this (per episode) are skipped and counted.
MIN_GAP = 0.01
#: ... or by less than this share of the larger of the two returns' magnitudes: the oracle is optimal for
#: the discounted return, not for the capped undiscounted one, and on a few large-state tasks it beats
#: random by a sliver of returns of -40, which would blow single scores up to -40.
MIN_RELATIVE_GAP = 0.01

_GYM_SUITES = {
    "frozenlake": ("FrozenLake-v1", {"map_name": "4x4", "is_slippery": True}),
    "frozenlake8x8": ("FrozenLake-v1", {"map_name": "8x8", "is_slippery": True}),
    "cliffwalking": ("CliffWalking-v1", {}),
}


_SIZED = re.compile(rf"^({'|'.join(SAMPLED_FAMILIES)})-(\d+)$")


# ---------------------------------------------------------------------- suites


@dataclass
class Suite:
    """A named, reproducible set of ``num_envs`` task instances and the vector env that runs them.

    ``tasks`` is the true model of each instance (``None`` for an env without a transition table:
    then scores are raw returns). ``success`` marks suites whose episodes succeed or fail (reward > 0
    at the end, as FrozenLake's goal): their success rate is reported too.
    """

    name: str
    num_envs: int
    make_env: Callable[[], object]
    tasks: TaskBatch | None
    seeds: list[int] = field(default_factory=list)
    success: bool = False
    description: str = ""

    @classmethod
    def of_tasks(cls, name: str, tasks: list, seeds: list[int], description: str) -> "Suite":
        """The suite of a list of tabular tasks (one instance each), run in one batched env."""
        batch = stack_tasks(tasks)
        return cls(name=name, num_envs=len(tasks), tasks=batch, seeds=list(seeds), description=description,
                   make_env=lambda: BatchedAnyMDPEnv(batch, autoreset_mode="SameStep"))


def suite_names() -> list[str]:
    """Names :func:`load_suite` understands (sized ones of any size their family allows, :data:`SAMPLED_FAMILIES`)."""
    return (["anymdp-16", "anymdp-32", "anymdp-64", "anymdp-128", "garnet-16", "garnet-32", "garnet-64", "garnet-128",
             "dirichlet-16", "riverswim-6", "bandit-5"] + list(_GYM_SUITES) + ["gym:<EnvId>"])


def check_suite_name(name: str) -> None:
    """Raise a clear ``ValueError`` for a name :func:`load_suite` would not understand."""
    m = _SIZED.match(name)
    if m and int(m.group(2)) >= SAMPLED_FAMILIES[m.group(1)].min_size:
        return
    if m:
        family = SAMPLED_FAMILIES[m.group(1)]
        raise ValueError(f"suite {name!r} is too small: {m.group(1)}-N needs N >= {family.min_size} {family.unit}")
    if name in _GYM_SUITES:
        return
    if name.startswith("gym:"):
        import gymnasium as gym

        env_id = name[4:]
        if env_id not in gym.registry:
            raise ValueError(f"unknown Gymnasium environment {env_id!r} in suite {name!r}")
        try:
            env = gym.make(env_id)
        except (ImportError, gym.error.DependencyNotInstalled) as e:
            raise ValueError(f"suite {name!r} needs a package that is not installed: {e}") from None
        try:
            check_discrete(env, env_id)
        finally:
            env.close()
        return
    raise ValueError(f"unknown suite {name!r}; choose from {', '.join(suite_names())} "
                     f"(sized suites: {SIZED_NAMES}, e.g. anymdp-24)")


def load_suite(name: str, num_tasks: int, seed_offset: int = 0, n_actions: int | None = None,
               split: str = "test", task_options: dict | None = None) -> Suite:
    """Build a suite by name.

    - ``anymdp-N`` / ``sparse-N`` / ``garnet-N`` / ``dirichlet-N`` / ``riverswim-N``: ``num_tasks`` tasks with ``N`` states
      and ``n_actions`` actions (``None``: the family's own, :data:`SAMPLED_FAMILIES`); ``bandit-N``: bandits
      with ``N`` arms (``n_actions`` None or ``N``); task seeds
      ``start + seed_offset + i`` of the ``split`` seed range (``test`` by default, which training never
      touches; training monitors itself on ``validation``); ``task_options`` go to the sampler (e.g.
      ``{"branching": 1}`` for deterministic Garnet, ``{"deterministic": True}`` for deterministic AnyMDP,
      ``{"alpha": 0.1}`` for sparser Dirichlet rows);
    - ``frozenlake`` (4x4, slippery), ``frozenlake8x8``, ``cliffwalking`` (capped at 200 steps),
      ``gym:<EnvId>`` (any registered env with Discrete spaces): ``num_tasks`` independent runs.
    """
    check_suite_name(name)
    if num_tasks < 1:
        raise ValueError(f"a suite needs at least one task, got {num_tasks}")
    m = _SIZED.match(name)
    if not m and task_options:
        raise ValueError(f"task_options apply to the sampled suites ({SIZED_NAMES}), not to {name!r}")
    if m:
        family, n = SAMPLED_FAMILIES[m.group(1)], int(m.group(2))
        n_actions = family.sizes(n, n_actions)[1]
        if split not in SEED_RANGES:
            raise ValueError(f"split must be one of {list(SEED_RANGES)}, got {split!r}")
        seeds = list(SEED_RANGES[split].seeds(num_tasks, seed_offset))
        options = dict(task_options or {})
        named = "".join(f", {k}={v}" for k, v in options.items())
        actions = f", {n_actions} actions" if family.unit == "states" else ""  # a bandit's actions are its arms
        return Suite.of_tasks(name, [family.sampler(n, n_actions, seed=s, **options) for s in seeds], seeds,
                              f"{family.description}, {n} {family.unit}{actions}{named}, {split} seeds "
                              f"{seeds[0]}..{seeds[-1]}")
    env_id, kwargs = _GYM_SUITES[name] if name in _GYM_SUITES else (name[4:], {})
    task = task_from_gym(env_id, **kwargs)
    tasks = None if task is None else stack_tasks([task] * num_tasks)
    success = env_id.startswith("FrozenLake")
    return Suite(name=name, num_envs=num_tasks, tasks=tasks, seeds=[],
                 make_env=lambda: make_gym_vector_env(env_id, num_tasks, **kwargs), success=success,
                 description=f"Gymnasium {env_id} {kwargs or ''}".strip())


# ---------------------------------------------------------------------- running


def suite_spec(suite: Suite, envs) -> EnvSpec:
    """What a learner may know about a suite's environments (the true model for the oracle only)."""
    n_obs = int(envs.single_observation_space.n)
    n_act = int(envs.single_action_space.n)
    if suite.tasks is not None:
        return EnvSpec(num_envs=suite.num_envs, n_observations=n_obs, n_actions=n_act,
                       action_mask=suite.tasks.action_mask, tasks=suite.tasks)
    return EnvSpec.uniform(suite.num_envs, n_obs, n_act)


def run_learner(learner: InContextLearner, suite: Suite, steps: int, seed: int = 0, progress: bool = False) -> Run:
    """Run ``learner`` from scratch on every instance of ``suite`` for ``steps`` environment steps.

    The environments are reset with ``seed`` (instance ``i`` gets ``seed + i``), so every learner
    meets the same random outcomes where it takes the same actions; the learner gets ``seed`` too.
    """
    envs = suite.make_env()
    try:
        return run_in_context(learner, envs, suite_spec(suite, envs), steps, seed,
                              progress_label=f"{suite.name} {learner.name}" if progress else None)
    finally:
        envs.close()


# ---------------------------------------------------------------------- statistics


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (rliable's recommended aggregate)."""
    x = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    if hi <= lo:
        return x.mean(axis=axis)
    return np.take(x, np.arange(lo, hi), axis=axis).mean(axis=axis)


#: Bootstrap resamples behind every confidence interval the harness reports.
BOOTSTRAP_RESAMPLES = 2000
#: The level of every reported confidence interval.
CI_LEVEL = 0.95


def bootstrap_cis(x: np.ndarray, rng: np.random.Generator, stats: dict[str, Callable],
                  resamples: int = BOOTSTRAP_RESAMPLES, level: float = CI_LEVEL) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals of several statistics over the entries of ``x`` (tasks).

    Every statistic is computed on the *same* resamples (one draw of task indices from ``rng``), so the
    intervals of the mean and of the IQM of one set of tasks come from one bootstrap and the same
    ``rng`` state always gives the same intervals. Non-finite entries are dropped; one entry gives a
    zero-width interval, none gives NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {k: (math.nan, math.nan) for k in stats}
    if len(x) == 1:
        return {k: (float(x[0]), float(x[0])) for k in stats}
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    sample = x[idx]
    alpha = (1.0 - level) / 2.0
    out = {}
    for k, stat in stats.items():
        values = stat(sample, axis=-1)
        out[k] = (float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha)))
    return out


def bootstrap_ci(x: np.ndarray, rng: np.random.Generator, resamples: int = BOOTSTRAP_RESAMPLES,
                 level: float = CI_LEVEL, stat: Callable = np.mean) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of one statistic ``stat`` over the entries of ``x`` (tasks)."""
    return bootstrap_cis(x, rng, {"stat": stat}, resamples, level)["stat"]


def summarise(per_task: np.ndarray, rng: np.random.Generator) -> dict:
    """Mean and IQM over the finite entries of ``per_task``, each with its 95% bootstrap CI over tasks, and
    the count: ``mean``, ``ci_low``, ``ci_high`` (the mean's CI), ``iqm``, ``iqm_ci_low``, ``iqm_ci_high``, ``n``."""
    x = np.asarray(per_task, dtype=np.float64)
    x = x[np.isfinite(x)]
    cis = bootstrap_cis(x, rng, {"mean": np.mean, "iqm": iqm})
    if len(x) == 0:
        mean = middle = math.nan
    else:
        mean, middle = float(x.mean()), float(iqm(x))
    return {"mean": mean, "ci_low": cis["mean"][0], "ci_high": cis["mean"][1],
            "iqm": middle, "iqm_ci_low": cis["iqm"][0], "iqm_ci_high": cis["iqm"][1], "n": int(len(x))}


def window_scores(run: Run, score: np.ndarray, window: int) -> np.ndarray:
    """``[num_envs, n_windows]`` mean score of the episodes that *end* in each step window (NaN where none).

    Episodes are weighted equally (a step-weighted mean would favour long episodes and bias the
    estimate of the expected episode score).
    """
    n_win = math.ceil(run.steps / window)
    total = np.zeros((run.num_envs, n_win))
    count = np.zeros((run.num_envs, n_win))
    if len(run.start):
        w = (run.start + run.length - 1) // window
        np.add.at(total, (run.env_index, w), score)
        np.add.at(count, (run.env_index, w), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1.0), np.nan)


def episode_mean(run: Run, score: np.ndarray) -> np.ndarray:
    """``[num_envs]`` mean score over every finished episode of each run (NaN where none).

    This is the run's area under the curve: each episode counts once. (Averaging the window means
    instead would over-weight windows holding few, long episodes.)
    """
    total = np.bincount(run.env_index, weights=score, minlength=run.num_envs)
    count = np.bincount(run.env_index, minlength=run.num_envs)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def per_episode_index(run: Run, values: np.ndarray, max_episodes: int | None = None) -> np.ndarray:
    """``[num_envs, max_episodes]`` of a per-episode quantity indexed by episode number within each run."""
    order = np.lexsort((run.start, run.env_index))
    env, vals = run.env_index[order], values[order]
    counts = np.bincount(env, minlength=run.num_envs)
    k = int(counts.max()) if max_episodes is None and len(counts) else (max_episodes or 0)
    out = np.full((run.num_envs, k), np.nan)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(env)) - first[env]
    keep = pos < k
    out[env[keep], pos[keep]] = vals[keep]
    return out


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means over finite entries (NaN for a row with none)."""
    finite = np.isfinite(x)
    count = finite.sum(-1)
    return np.where(count > 0, np.where(finite, x, 0.0).sum(-1) / np.maximum(count, 1), np.nan)


@dataclass
class SuiteReference:
    """Exact oracle and random expected returns per instance, and which instances are scored."""

    oracle: np.ndarray
    random: np.ndarray
    scored: np.ndarray  # bool [B]: gap >= MIN_GAP and >= MIN_RELATIVE_GAP of the returns' magnitude

    @classmethod
    def of(cls, suite: Suite) -> "SuiteReference | None":
        return None if suite.tasks is None else cls.of_tasks(suite.tasks)

    @classmethod
    def of_tasks(cls, tasks) -> "SuiteReference":
        """The reference of a batch of tasks with a transition table (a ``TaskBatch`` or a list of tasks)."""
        hi, lo = oracle_return(tasks), random_return(tasks)
        gap = hi - lo
        scale = np.maximum(np.abs(hi), np.abs(lo))
        return cls(oracle=hi, random=lo, scored=(gap >= MIN_GAP) & (gap >= MIN_RELATIVE_GAP * scale))

    def normalise(self, run: Run) -> np.ndarray:
        gap = np.where(self.scored, self.oracle - self.random, 1.0)
        return (run.ret - self.random[run.env_index]) / gap[run.env_index]


def analyse(run: Run, ref: SuiteReference | None, window: int, rng: np.random.Generator,
            success: bool = False, episode_window: int = 50) -> dict:
    """Curves and summaries of one run: per-window aggregates over tasks, AUC, per-task numbers, and (with three
    windows or more) the in-context improvement: ``early`` (the first window), ``late`` (the mean of the last two)
    and ``late_minus_early`` per task, each with its CI. Bootstrap draws for these come last, so the other
    statistics are the same with or without them."""
    score = ref.normalise(run) if ref is not None else run.ret
    keep = ref.scored if ref is not None else np.ones(run.num_envs, dtype=bool)
    win = window_scores(run, score, window)[keep]
    auc_task = episode_mean(run, score)[keep]  # mean score of all episodes in the budget, per task
    out = {
        "score_kind": "normalised" if ref is not None else "return",
        "window_starts": (np.arange(win.shape[1]) * window).tolist(),
        "windows": [summarise(win[:, j], rng) for j in range(win.shape[1])],
        "auc": summarise(auc_task, rng),
        "per_task_window_scores": np.round(win, 6).tolist(),
        "per_task_auc": np.round(auc_task, 6).tolist(),
        "episodes_per_task": summarise(np.bincount(run.env_index, minlength=run.num_envs)[keep], rng),
        "learner_steps_per_second": run.num_envs * run.steps / max(run.seconds, 1e-9),
    }
    if success:
        succ = per_episode_index(run, (run.ret > 0).astype(np.float64))[keep]
        starts = list(range(0, succ.shape[1], episode_window))
        out["success_episode_window"] = episode_window
        out["success_window_starts"] = starts
        out["success_windows"] = [summarise(_nanmean_rows(succ[:, s:s + episode_window]), rng) for s in starts]
    if win.shape[1] >= 3:  # in-context improvement per task: the last two windows against the first
        early, late = win[:, 0], _nanmean_rows(win[:, -2:])
        out["early"], out["late"] = summarise(early, rng), summarise(late, rng)
        out["late_minus_early"] = summarise(late - early, rng)
    return out


def _per_task_auc(result: dict, name: str) -> np.ndarray:
    learners = result["learners"]
    if name not in learners:
        raise ValueError(f"no learner {name!r} in this result; it holds {', '.join(learners)}")
    return np.array([math.nan if v is None else v for v in learners[name]["per_task_auc"]], dtype=np.float64)


def paired_difference(result: dict, learner: str, baseline: str, seed: int | None = None) -> dict:
    """The paired comparison of two learners of one result on the same tasks.

    Per task, the difference of the AUCs (``learner - baseline``); then its mean and IQM with 95% bootstrap
    CIs over tasks (:func:`summarise`, seeded with ``seed``, by default the result's own ``config.seed``, so
    the same result and seed always give the same interval), the count of tasks where the learner is ahead,
    level and behind, and the per-task differences. Pairing removes the spread between tasks that both
    learners share, so its interval is much narrower than the two AUC intervals side by side. Tasks where
    either learner finished no episode are left out.
    """
    a, b = _per_task_auc(result, learner), _per_task_auc(result, baseline)
    if a.shape != b.shape:
        raise ValueError(f"learners {learner!r} and {baseline!r} were scored on different task sets "
                         f"({len(a)} and {len(b)} tasks): pair learners of one evaluation")
    diff = a - b
    seed = result.get("config", {}).get("seed", 0) if seed is None else seed
    both = np.isfinite(diff)
    out = {"learner": learner, "baseline": baseline, "statistic": "per-task AUC difference (learner - baseline)",
           **summarise(diff, np.random.default_rng(seed)),
           "ahead": int((diff[both] > 0).sum()), "level": int((diff[both] == 0).sum()),
           "behind": int((diff[both] < 0).sum()),
           "per_task_difference": np.round(diff, 6).tolist()}
    return out


def _resolve_learner(text: str, names: Sequence[str]) -> str | None:
    """The learner of ``names`` that ``text`` names: itself, or the one learner of that kind (``agent`` for
    ``agent:PATH``, ``mbrl`` for ``mbrl:sweeps=10``); ``None`` if none or several."""
    if text in names:
        return text
    kind = [n for n in names if n.partition(":")[0] == text]
    return kind[0] if len(kind) == 1 else None


def parse_pairs(text: str | Sequence, names: Sequence[str]) -> list[tuple[str, str]]:
    """``LEARNER:BASELINE,...`` (or a list of such strings or of pairs) as pairs of learner names of ``names``.

    Learner names may hold colons themselves (``mbrl:sweeps=10``, ``agent:PATH``), so each item is split
    at the one colon where both halves name learners of the evaluation (a kind alone, as ``agent``, names
    the one learner of that kind); a clear ``ValueError`` otherwise.
    """
    items = [x.strip() for x in text.split(",") if x.strip()] if isinstance(text, str) else list(text)
    names = list(names)
    pairs = []
    for item in items:
        if not isinstance(item, str):
            pair = tuple(_resolve_learner(str(x), names) for x in item)
            if len(pair) != 2 or None in pair:
                raise ValueError(f"paired comparison {item!r}: name two learners of the evaluation "
                                 f"({', '.join(names)})")
            pairs.append(pair)
            continue
        cuts = {(a, b) for i, ch in enumerate(item) if ch == ":"
                for a, b in [(_resolve_learner(item[:i], names), _resolve_learner(item[i + 1:], names))]
                if a is not None and b is not None}
        if len(cuts) != 1:
            why = "is ambiguous" if cuts else "does not name two of its learners"
            raise ValueError(f"--paired {item!r} {why}: write LEARNER:BASELINE with learners from --learners "
                             f"({', '.join(names)}), e.g. {names[0]}:{names[-1]}")
        pairs.append(cuts.pop())
    return pairs


def default_pairs(learners: dict[str, InContextLearner]) -> list[tuple[str, str]]:
    """The comparisons an evaluation reports unasked: every pretrained agent against every other learner."""
    agents = [k for k, v in learners.items() if getattr(v, "name", "") == "agent"]
    return [(a, b) for a in agents for b in learners if b not in agents]


# ---------------------------------------------------------------------- the whole comparison


@dataclass
class EvalConfig:
    """Everything that determines an evaluation's numbers (saved with them)."""

    suite: str
    learners: list[str]
    tasks: int
    steps: int
    seed: int = 0
    window: int = 500
    seed_offset: int = 0
    #: Paired comparisons ``[learner, baseline]`` to report (:func:`paired_difference`); ``None``: every
    #: pretrained agent against every other learner (:func:`default_pairs`).
    paired: list | None = None


def versions() -> dict:
    """Package versions and machine facts for result files."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    for pkg in ("anymdp-agent", "numpy", "gymnasium", "torch", "transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def check_output_dir(out: str | os.PathLike, create: bool = False) -> Path:
    """Probe that an output folder can be written, so an unwritable one fails before any work.

    Folders the probe had to create are removed again unless ``create``: a check, or an evaluation that
    fails later, leaves no empty folder behind (:func:`write_results` creates it with the results).
    """
    path = Path(out)
    missing = [p for p in [path, *path.parents] if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write to output folder {path}: {e.strerror or e}; choose another --out") from e
    finally:
        if not create:
            for p in missing:  # deepest first
                try:
                    p.rmdir()
                except OSError:
                    break
    return path


def build_learner(spec: str, dry_run: bool = False) -> InContextLearner | None:
    """A baseline (``tql``, ``mbrl:sweeps=10``, ...) or the pretrained agent (``agent:PATH[:key=value]``)."""
    if spec.partition(":")[0] == "agent":
        return parse_agent_spec(spec, load=not dry_run)
    return make_learner(spec, dry_run=dry_run)


def check_config(cfg: EvalConfig) -> None:
    """Every problem with an evaluation's settings, as a clear ``ValueError``, before anything runs."""
    check_suite_name(cfg.suite)
    if not cfg.learners:
        raise ValueError("name at least one learner")
    for name in cfg.learners:
        build_learner(name, dry_run=True)
    if cfg.paired is not None:
        parse_pairs(cfg.paired, cfg.learners)
    for key in ("tasks", "steps", "window"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    check_seed(cfg.seed, "seed", count=cfg.tasks)
    if isinstance(cfg.seed_offset, bool) or not isinstance(cfg.seed_offset, int) or cfg.seed_offset < 0:
        raise ValueError(f"seed offset must be an integer >= 0, got {cfg.seed_offset!r}")
    m = _SIZED.match(cfg.suite)
    if m and cfg.seed_offset + cfg.tasks > len(TEST):
        raise ValueError(f"seed offset {cfg.seed_offset} + {cfg.tasks} tasks runs past the {len(TEST)} test seeds")
    if m:
        family = SAMPLED_FAMILIES[m.group(1)]
        check_memory(task_table_bytes(cfg.tasks, *family.sizes(int(m.group(2)))),
                     f"suite {cfg.suite} with {cfg.tasks} tasks ({m.group(2)} {family.unit} each)",
                     f"choose fewer {family.unit} or fewer --tasks")


def check_learners(learners: dict[str, InContextLearner], suite: Suite) -> None:
    """Every learner checked against the suite's environments (vocabulary, action count, true model) before
    any runs, so a learner that cannot run fails at once and not after the others' work."""
    envs = suite.make_env()
    try:
        spec = suite_spec(suite, envs)
    finally:
        envs.close()
    for name, learner in learners.items():
        try:
            learner.check_spec(spec)
        except ValueError as e:
            raise ValueError(f"learner {name!r} cannot run on suite {suite.name}: {e}") from None


def evaluate(cfg: EvalConfig, learners: dict[str, InContextLearner] | None = None, progress: bool = False) -> dict:
    """Run every learner on the suite and return the full result record (see :func:`write_results`)."""
    check_config(cfg)
    learners = learners or {name: build_learner(name) for name in cfg.learners}
    suite = load_suite(cfg.suite, cfg.tasks, cfg.seed_offset)
    check_learners(learners, suite)
    ref = SuiteReference.of(suite)
    result = {
        "config": vars(cfg).copy(),
        "versions": versions(),
        "suite": {"name": suite.name, "description": suite.description, "instances": suite.num_envs,
                  "task_seeds": suite.seeds,
                  "skipped_degenerate": int((~ref.scored).sum()) if ref is not None else 0,
                  "oracle_return": None if ref is None else np.round(ref.oracle, 6).tolist(),
                  "random_return": None if ref is None else np.round(ref.random, 6).tolist()},
        "learners": {},
    }
    for name, learner in learners.items():
        run = run_learner(learner, suite, cfg.steps, cfg.seed, progress=progress)
        rng = np.random.default_rng(cfg.seed)
        entry = analyse(run, ref, cfg.window, rng, success=suite.success)
        entry["hyperparameters"] = learner.hyperparameters()
        entry["episodes"] = {"env": run.env_index.tolist(), "start": run.start.tolist(),
                             "length": run.length.tolist(), "return": np.round(run.ret, 6).tolist()}
        entry["seconds"] = run.seconds
        result["learners"][name] = entry
    pairs = default_pairs(learners) if cfg.paired is None else parse_pairs(cfg.paired, list(learners))
    result["paired"] = [paired_difference(result, a, b) for a, b in pairs]
    return result


def _with_ci(stat: dict, key: str = "mean", digits: int = 3) -> str:
    """``value [low, high]`` of one summary (:func:`summarise`); ``key`` is ``mean`` or ``iqm``."""
    lo, hi = ("ci_low", "ci_high") if key == "mean" else (f"{key}_ci_low", f"{key}_ci_high")
    f = lambda v: "nan" if v is None else f"{v:.{digits}f}"  # noqa: E731  (JSON writes NaN as null)
    return f"{f(stat.get(key))} [{f(stat.get(lo))}, {f(stat.get(hi))}]"


def format_table(result: dict) -> str:
    """Plain-text tables in which every number has its 95% bootstrap CI over tasks: the mean score per step
    window (one column per learner), the AUC's mean and IQM per learner, the in-context improvement (last two
    windows against the first), the paired AUC differences, and the success rates of suites that have them."""
    lines = []
    learners = result["learners"]
    first = next(iter(learners.values()), {})
    kind, starts = first.get("score_kind", "normalised"), first.get("window_starts", [])
    cfg, suite = result["config"], result["suite"]
    window = cfg["window"]
    lines.append(f"suite {suite['name']}: {suite['description']}; {suite['instances']} instances, "
                 f"{cfg['steps']} steps, {kind} score per {window}-step window "
                 f"({suite['skipped_degenerate']} degenerate tasks skipped)")
    lines.append("mean score per window [95% bootstrap CI over tasks]:")
    width = max([22] + [len(n) + 2 for n in learners])
    lines.append(f"{'steps':<13}" + "".join(f"{n:>{width}}" for n in learners))
    for j, s0 in enumerate(starts):
        span = f"{s0}-{min(s0 + window, cfg['steps'])}"
        lines.append(f"{span:<13}"
                     + "".join(f"{_with_ci(e['windows'][j], digits=2):>{width}}" for e in learners.values()))
    name_width = max([22] + [len(n) + 2 for n in learners])
    lines.append(f"{'learner':<{name_width}}{'AUC mean [95% CI]':>26}{'AUC IQM [95% CI]':>26}{'tasks':>7}")
    for name, e in learners.items():
        auc = e["auc"]
        lines.append(f"{name:<{name_width}}{_with_ci(auc):>26}{_with_ci(auc, 'iqm'):>26}{auc['n']:>7}")
    if any("late_minus_early" in e for e in learners.values()):
        lines.append("in context: first window, mean of the last two, their difference per task [95% CI]:")
        for name, e in learners.items():
            if "late_minus_early" in e:
                lines.append(f"{name:<{name_width}}early {_with_ci(e['early'])}  late {_with_ci(e['late'])}  "
                             f"late - early {_with_ci(e['late_minus_early'])}")
    if result.get("paired"):
        lines.append("paired AUC difference, learner - baseline on the same tasks [95% CI]:")
        pair_width = max([26] + [len(p["learner"]) + len(p["baseline"]) + 5 for p in result["paired"]])
        for p in result["paired"]:
            label = f"{p['learner']} - {p['baseline']}"
            lines.append(f"{label:<{pair_width}}{_with_ci(p):>26}  ahead on {p['ahead']}, level on {p['level']}, "
                         f"behind on {p['behind']} of {p['n']} tasks")
    if any("success_windows" in e for e in learners.values()):
        lines.append("success rate per episode window [95% CI]:")
        for name, e in learners.items():
            if "success_windows" in e:
                w = e["success_episode_window"]
                # Only windows that every scored run reached (later ones hold a biased subset of runs).
                full = max((x["n"] for x in e["success_windows"]), default=0)
                parts = [f"{s}-{s + w}: {_with_ci(x, digits=2)}"
                         for s, x in zip(e["success_window_starts"], e["success_windows"]) if x["n"] == full]
                lines.append(f"  {name:<20}" + "  ".join(parts))
    return "\n".join(lines)


def plot_curves(result: dict, path: str | os.PathLike) -> Path:
    """PNG of the mean score per window with 95% CI bands, one line per learner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    window = result["config"]["window"]
    for name, e in result["learners"].items():
        x = np.array(e["window_starts"]) + window / 2
        mean = np.array([w["mean"] for w in e["windows"]])
        lo = np.array([w["ci_low"] for w in e["windows"]])
        hi = np.array([w["ci_high"] for w in e["windows"]])
        line, = ax.plot(x, mean, marker="o", ms=3, label=f"{name} (AUC {e['auc']['mean']:.2f})")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
    kind = next(iter(result["learners"].values()))["score_kind"] if result["learners"] else "normalised"
    ax.set_xlabel("environment steps in context")
    ax.set_ylabel("normalised score" if kind == "normalised" else "episode return")
    ax.set_title(f"{result['suite']['name']}: {result['suite']['instances']} instances, mean and 95% CI")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    finally:
        plt.close(fig)
    return path


def compact_result(result: dict) -> dict:
    """The result without its per-episode and per-task-window lists (curves, CIs and per-task AUC kept):
    small enough to ship beside a checkpoint."""
    out = dict(result)
    out["learners"] = {name: {k: v for k, v in e.items() if k not in ("episodes", "per_task_window_scores")}
                       for name, e in result["learners"].items()}
    return out


def write_results(result: dict, out: str | os.PathLike, stem: str | None = None, compact: bool = False) -> dict[str, Path]:
    """Write ``<stem>.json`` (every number, or :func:`compact_result`) and ``<stem>.png`` (curves) atomically."""
    folder = check_output_dir(out, create=True)
    result = compact_result(result) if compact else result
    stem = stem or f"eval-{result['suite']['name'].replace(':', '_').replace('/', '_')}"
    json_path = folder / f"{stem}.json"
    text = json.dumps(_json_safe(result), indent=1, allow_nan=False)
    atomic_write(json_path, lambda fh: fh.write(text.encode()))
    png = plot_curves(result, folder / f"{stem}.png")
    return {"json": json_path, "png": png}


def _json_safe(obj):
    """Plain JSON: NaN and infinities become ``null``, numpy scalars and arrays become numbers and lists."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


__all__ = ["EvalConfig", "LEARNERS", "Run", "Suite", "SuiteReference", "analyse", "bootstrap_ci", "bootstrap_cis",
           "build_learner", "check_config", "check_learners", "check_output_dir", "default_pairs", "paired_difference", "parse_pairs",
           "evaluate", "format_table", "iqm", "load_suite", "plot_curves", "run_learner", "suite_names",
           "summarise", "window_scores", "write_results"]
