"""``anymdp-agent``: the command line.

Subcommands:

- ``eval``: run in-context learners on a suite and write the JSON, the PNG and a table;
- ``demo``: the main job on the bundled defaults (a short ``eval`` of every learner on fresh test tasks);
- ``generate``: generate (or resume) a trajectory corpus as a ``datasets`` folder in the Hub's layout;
- ``push-dataset``: upload a corpus folder to the Hub in one commit;
- ``train``: ``accelerate launch -m anymdp_agent.training.train`` with the given recipe and overrides;
- ``push``: upload a checkpoint folder (weights, config, modeling code, card, eval results) in one commit.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .baselines import LEARNERS
from .envs.families import SIZED_NAMES


def _add_hub_arguments(p) -> None:
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument("--private", action="store_true", help="create the repository private")


def _add_eval_arguments(p: argparse.ArgumentParser, defaults: dict) -> None:
    p.add_argument("--suite", default=defaults["suite"],
                   help=f"task suite: {SIZED_NAMES} (test seeds), frozenlake, frozenlake8x8, cliffwalking, or "
                        "gym:<EnvId> for any Gymnasium env with Discrete spaces "
                        f"(default: {defaults['suite']})")
    p.add_argument("--learners", default=defaults["learners"],
                   help=f"comma-separated learners, each NAME or NAME:key=value:key=value, NAME from {', '.join(LEARNERS)}, "
                        "or agent:PATH[:temperature_end=0.1:decay_steps=10000] for a pretrained agent checkpoint; "
                        "mbrl:known=transitions|rewards|both is the planner given the true model of the pairs it tried "
                        "(a measuring tool); mbrl:prior=bundled|agent|PATH is the planner with a learned transition prior "
                        "(agent: the bundled agent's; add :prior_weight=4:novelty=0.001:tail=10:seen_only=64:"
                        "refresh_fraction=0.125:evidence=1:off_terminal=1:arrival=1 for the bundled agent's rule) "
                        f"(default: {defaults['learners']})")
    p.add_argument("--tasks", type=int, default=defaults["tasks"],
                   help=f"number of tasks (independent runs for Gymnasium suites) (default: {defaults['tasks']})")
    p.add_argument("--steps", type=int, default=defaults["steps"],
                   help=f"environment steps each learner spends on each task (default: {defaults['steps']})")
    p.add_argument("--window", type=int, default=500, help="step window of the curve (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of environments and learners (default: 0)")
    p.add_argument("--seed-offset", type=int, default=0,
                   help="first task seed, counted into the test seed range (default: 0)")
    p.add_argument("--out", default=defaults["out"], help=f"output folder (default: {defaults['out']})")
    p.add_argument("--paired", default=None,
                   help="paired comparisons on the same tasks, LEARNER:BASELINE,... (e.g. agent:mbrl): the per-task "
                        "AUC difference, its mean and 95%% bootstrap CI; 'none' for none (default: every agent "
                        "learner against every other learner)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_flags(args: argparse.Namespace, positive: tuple[str, ...] = (), seeds: tuple[str, ...] = ()) -> None:
    """Integer options checked by name, so the error names the flag (``--frozenlake-steps must be ...``)."""
    from .envs.seeds import check_seed

    for name in positive:
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    for name in seeds:
        check_seed(getattr(args, name), f"--{name.replace('_', '-')}")


def _run_eval(args: argparse.Namespace) -> int:
    from .evaluation import EvalConfig, check_config, check_output_dir, evaluate, format_table, write_results

    _check_flags(args, positive=("tasks", "steps", "window"), seeds=("seed", "seed_offset"))
    learners = [x.strip() for x in args.learners.split(",") if x.strip()]
    paired = None if args.paired is None else ([] if args.paired.strip().lower() == "none" else
                                               [x.strip() for x in args.paired.split(",") if x.strip()])
    cfg = EvalConfig(suite=args.suite, learners=learners, tasks=args.tasks, steps=args.steps, seed=args.seed,
                     window=args.window, seed_offset=args.seed_offset, paired=paired)
    check_config(cfg)
    check_output_dir(args.out)
    result = evaluate(cfg, progress=not args.no_progress)
    paths = write_results(result, args.out)
    print(format_table(result))
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    import time

    from .evaluation import EvalConfig, build_learner, check_config, check_output_dir, evaluate, format_table, write_results
    from .rollout import SEQUENCE_AGENT, bundled_agent_names, bundled_agent_path

    _check_flags(args, positive=("tasks", "steps", "frozenlake_runs", "frozenlake_steps"), seeds=("seed",))
    try:
        agent = f"agent:{bundled_agent_path()}"
    except FileNotFoundError as e:
        print(f"note: {e}; running the baselines alone")
        agent = None
    # The default agent is the count-based planner with a learned transition prior: shown beside that planner.
    learners = ([agent] if agent else []) + ["mbrl", "ucbq", "tql", "random", "oracle"]
    # The paper's route beside it on AnyMDP: the bundled sequence-backbone agent (it samples with the schedule in
    # its config.json, picked on validation seeds).
    sequence = f"agent:{bundled_agent_path(SEQUENCE_AGENT)}" if SEQUENCE_AGENT in bundled_agent_names() else None
    runs = [EvalConfig(suite="anymdp-16", learners=learners[:1] + ([sequence] if sequence else []) + learners[1:],
                       tasks=args.tasks, steps=args.steps, seed=args.seed, window=500),
            EvalConfig(suite="frozenlake", learners=learners, tasks=args.frozenlake_runs, steps=args.frozenlake_steps,
                       seed=args.seed, window=max(args.frozenlake_steps // 10, 1))]
    for cfg in runs:
        check_config(cfg)
    check_output_dir(args.out)
    t0 = time.perf_counter()
    for cfg in runs:
        # The bundled agents are shown by role (their specs name the folders they were loaded from).
        learners = {("sequence-agent" if spec == sequence else "agent" if spec.startswith("agent:") else spec):
                    build_learner(spec) for spec in cfg.learners}
        result = evaluate(cfg, learners=learners, progress=not args.no_progress)
        paths = write_results(result, args.out)
        print(format_table(result))
        print(f"wrote {paths['json']} and {paths['png']}\n")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


def _run_push(args: argparse.Namespace) -> int:
    from .hub import push_checkpoint

    info = push_checkpoint(args.checkpoint, args.repo_id, token=args.token, private=args.private)
    print(f"pushed {args.checkpoint} to {args.repo_id} in one commit: {getattr(info, 'commit_url', info)}")
    return 0


def _shard_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    try:
        return (int(lo), int(hi)) if sep else (int(lo), int(lo) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or LO:HI, got {text!r}") from None


def _size_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    try:
        return (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO:HI, got {text!r}") from None


def _run_generate(args: argparse.Namespace) -> int:
    import shlex

    from .data import CorpusConfig, MixtureConfig, generate_corpus

    _check_flags(args, positive=("tasks", "seq_len", "tasks_per_shard", "num_proc"), seeds=("seed", "seed_offset"))
    weights = None
    if args.weights:
        weights = {}
        for item in args.weights.split(","):
            name, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"--weights takes NAME=WEIGHT,..., got {item!r}")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"--weights: the weight of {name.strip()!r} must be a number, got {value!r}") from None
    mixture = MixtureConfig() if weights is None else MixtureConfig(weights={**MixtureConfig().weights, **weights})
    cfg = CorpusConfig(tasks=args.tasks, seq_len=args.seq_len, n_states=args.n_states, n_actions=args.n_actions,
                       labels=tuple(x.strip() for x in args.labels.split(",") if x.strip()),
                       oracle_gamma=args.oracle_gamma, split=args.split, seed_offset=args.seed_offset, seed=args.seed,
                       tasks_per_shard=args.tasks_per_shard, mixture=mixture)
    shard_range = args.shard_range
    command = "anymdp-agent " + " ".join(shlex.quote(a) for a in args.argv) if args.record_command else None
    stats = generate_corpus(args.out, cfg, num_proc=args.num_proc, shard_range=shard_range,
                            progress=not args.no_progress, command=command)
    for split, s in stats.items():
        print(f"{args.out}: {split}: {s['sequences']} sequences, {s['rows']:,} rows in {s['shards']} shards")
    print(f"load it with datasets.load_dataset({args.out!r})")
    return 0


def _run_push_dataset(args: argparse.Namespace) -> int:
    from .hub import push_folder

    info = push_folder(args.folder, args.repo_id, repo_type="dataset", token=args.token, private=args.private,
                       required=("README.md", "corpus.json"))
    print(f"pushed {args.folder} to {args.repo_id} in one commit: {getattr(info, 'commit_url', info)}")
    return 0


#: The training entry point, launched as a module so that it runs from an installed package (any folder).
TRAIN_MODULE = "anymdp_agent.training.train"


def _run_train(args: argparse.Namespace) -> int:
    return _launch_training(args, ["-m", TRAIN_MODULE])


def _launch_command(args: argparse.Namespace, target: list[str]) -> tuple[list[str], dict]:
    """``accelerate launch`` for ``target`` (the trainer: a script path, or ``-m module``) and its environment.

    Several CPU processes go through accelerate's torchrun launcher with the CPU forced (gloo): its ``--cpu``
    launcher would start one process. An accelerate config file (``--config-file``) supplies the launch
    settings, mixed precision included; ``use_cpu: true`` there with several processes is handled the same way.
    """
    import os
    import subprocess

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--quiet"]
    env = dict(os.environ)
    processes, cpu = args.num_processes, args.cpu
    if args.config_file:
        import yaml

        try:
            config = yaml.safe_load(open(args.config_file)) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"cannot read the accelerate config {args.config_file}: {e}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{args.config_file} is not an accelerate config (a YAML mapping)")
        launch += ["--config_file", args.config_file]
        processes = int(config.get("num_processes", 1)) if args.num_processes is None else args.num_processes
        cpu = cpu or bool(config.get("use_cpu")) or config.get("distributed_type") == "MULTI_CPU"
        if args.num_processes is not None:
            launch += ["--num_processes", str(processes)]
    else:
        processes = 1 if processes is None else processes
        launch += ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no"]
    if processes > 1:
        launch.append("--multi_gpu")
        if cpu:
            env["ACCELERATE_USE_CPU"] = "true"
    elif cpu:
        launch.append("--cpu")
    return launch + [*target, *args.train_args], env


def _check_train_args(target: list[str], train_args: list[str]) -> None:
    """Parse the training arguments here, before any process starts: a bad recipe or setting is one line and
    exit 2 (raised as ValueError), not a launcher's traceback per process."""
    import importlib
    import importlib.util

    if any(a in ("-h", "--help") for a in train_args):
        return
    if target[0] == "-m":
        trainer = importlib.import_module(target[1])
    else:
        spec = importlib.util.spec_from_file_location("_anymdp_trainer", target[0])
        trainer = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(trainer)
    trainer.parse_args(list(train_args))


def _become_subreaper() -> bool:
    """Linux: processes orphaned below this one (training processes whose launcher died of the signal first)
    become its children, so that it can wait for them; elsewhere only the launcher is waited for."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _launch_training(args: argparse.Namespace, target: list[str]) -> int:
    """Run the launcher in its own process group, forward SIGTERM/SIGINT to that whole group (launcher and
    training processes) and return when it ends, with the training's own exit status (2 for a user error,
    whose one-line message the trainer printed), which the launcher does not pass on."""
    import os
    import signal
    import subprocess
    import tempfile

    _check_train_args(target, args.train_args)
    cmd, env = _launch_command(args, target)
    fd, status = tempfile.mkstemp(prefix="anymdp-train-status.")
    os.close(fd)
    env["ANYMDP_TRAIN_STATUS"] = status  # train.STATUS_ENV
    try:
        reaper = _become_subreaper()
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)

        forwarded = []

        def forward(signum, frame):
            forwarded.append(signum)
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass

        old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            rc = proc.wait()
            while reaper:  # training processes the launcher left behind are ours now: wait for its whole group
                try:
                    os.waitpid(-proc.pid, 0)
                except ChildProcessError:
                    break
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        text = open(status).read().strip()
    finally:
        os.unlink(status)
    if text.isdigit():
        return int(text)
    if forwarded:  # stopped before the trainer could report (the launcher's own exit status says little)
        print(f"anymdp-agent train: stopped by {signal.Signals(forwarded[0]).name}; every finished checkpoint is "
              "kept, continue with --resume", file=sys.stderr)
        return 128 + forwarded[0]
    if rc < 0:  # the launcher died of a signal
        return 128 - rc
    if rc:
        print(f"anymdp-agent train: error: the accelerate launcher failed (exit {rc}); see its messages above",
              file=sys.stderr)
    return rc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anymdp-agent", description="In-context RL on AnyMDP tasks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("eval", help="compare in-context learners on a task suite",
                       description="Run learners from scratch on every task of a suite for a step budget; write "
                                   "<out>/eval-<suite>.json (every number), .png (curves with 95% CIs) and print "
                                   "a table of normalised scores.")
    _add_eval_arguments(p, {"suite": "anymdp-16", "learners": "oracle,random,tql,ucbq,mbrl", "tasks": 64,
                            "steps": 4000, "out": "results"})
    p.set_defaults(func=_run_eval)
    d = sub.add_parser("demo", help="the main job: the bundled agent in context next to the baselines",
                       description="Loads the bundled agent with from_pretrained and runs it in context (no weight "
                                   "updates) next to the classic learners on fresh AnyMDP test tasks and on "
                                   "FrozenLake; prints the tables and writes JSON + PNG per suite.")
    d.add_argument("--tasks", type=int, default=64, help="AnyMDP test tasks (default: 64)")
    d.add_argument("--steps", type=int, default=4000, help="steps per AnyMDP task (default: 4000)")
    d.add_argument("--frozenlake-runs", type=int, default=16, help="independent FrozenLake runs (default: 16)")
    d.add_argument("--frozenlake-steps", type=int, default=8000, help="steps per FrozenLake run (default: 8000)")
    d.add_argument("--seed", type=int, default=0, help="seed of environments and learners (default: 0)")
    d.add_argument("--out", default="results/demo", help="output folder (default: results/demo)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=_run_demo)

    g = sub.add_parser("generate", help="generate (or resume) a trajectory corpus as a datasets folder",
                       description="Behaviour policies act on AnyMDP tasks; every row carries step-wise labels. "
                                   "Writes parquet shards in the Hub's layout, corpus.json and a dataset card; "
                                   "finished shards of an interrupted run are kept and skipped on rerun.")
    g.add_argument("--out", required=True, help="corpus folder (new, empty, or a corpus to resume)")
    g.add_argument("--tasks", type=int, required=True, help="number of sequences (one task each)")
    g.add_argument("--seq-len", type=int, default=4096, help="rows per sequence (default: 4096)")
    g.add_argument("--n-states", type=_size_range, default=(16, 16),
                   help="states per task: N, or LO:HI drawn per sequence (default: 16; at least 8)")
    g.add_argument("--n-actions", type=_size_range, default=(5, 5),
                   help="actions per task: N, or LO:HI drawn per sequence (default: 5; at least 2)")
    g.add_argument("--labels", default="oracle", help="label columns: oracle, planner or oracle,planner (default: oracle)")
    g.add_argument("--oracle-gamma", type=float, default=0.994, help="oracle discount: 0.994, 0.93, 0.5 or 0 (default: 0.994)")
    g.add_argument("--split", default="train", help="train, validation or test: picks the task seed range (default: train)")
    g.add_argument("--seed-offset", type=int, default=0, help="first task seed, counted into the split's range (default: 0)")
    g.add_argument("--seed", type=int, default=0, help="seed of the behaviour randomness (default: 0)")
    g.add_argument("--tasks-per-shard", type=int, default=256, help="sequences per parquet shard (default: 256)")
    g.add_argument("--weights", default="", help="behaviour weights NAME=W,... over random, explore, qlearn, "
                                                   "mixed_a..d, distill_a, distill_b, oracle (default: 0.1 each)")
    g.add_argument("--num-proc", type=int, default=1, help="processes generating shards in parallel (default: 1)")
    g.add_argument("--shard-range", type=_shard_range, default=None,
                   help="LO:HI: generate only shards LO..HI-1 (one range per machine); K alone is shard K")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-record-command", dest="record_command", action="store_false",
                   help="do not write the command line into the dataset card")
    g.set_defaults(func=_run_generate)

    pd = sub.add_parser("push-dataset", help="upload a corpus folder to the Hub in one commit")
    pd.add_argument("--folder", required=True, help="the corpus folder (written by generate)")
    pd.add_argument("--repo-id", required=True, help="USER/NAME of the dataset repository (created if missing)")
    _add_hub_arguments(pd)
    pd.set_defaults(func=_run_push_dataset)

    pm = sub.add_parser("push", help="upload a checkpoint folder (weights, code, card, eval) to the Hub in one commit")
    pm.add_argument("--checkpoint", required=True, help="a pretrained_model/ folder (or the bundled agent's)")
    pm.add_argument("--repo-id", required=True, help="USER/NAME of the model repository (created if missing)")
    _add_hub_arguments(pm)
    pm.set_defaults(func=_run_push)

    t = sub.add_parser("train", help="train the agent: accelerate launch -m anymdp_agent.training.train ...",
                       description="Runs `accelerate launch -m anymdp_agent.training.train` with the arguments after "
                                   "the options, e.g. `anymdp-agent train --cpu -- --config tiny` (a bundled recipe: "
                                   "tiny, cpu-default, gpu-large; or a YAML file). `python -m "
                                   "anymdp_agent.training.train --help` lists every training setting.")
    t.add_argument("--num-processes", type=int, default=None,
                   help="processes (data parallel) (default: 1, or the config file's num_processes)")
    t.add_argument("--cpu", action="store_true", help="force the CPU even where a GPU is present")
    t.add_argument("--config-file", default=None,
                   help="accelerate config file for the launch settings (processes, mixed precision), e.g. "
                        "training/accelerate/cpu-2proc.yaml")
    t.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments for the trainer (after --)")
    t.set_defaults(func=_run_train)
    return parser


def _one_thread_per_process() -> None:
    """Rollouts step tiny tensors, where intra-op threads only add synchronisation: on this 2-core machine,
    busy with another job, 64 agent rollouts of 300 steps took 1.7 s twice with one thread and 1.5 s or
    101 s with two. Set OMP_NUM_THREADS to choose otherwise."""
    import os

    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


#: Commands whose SIGTERM is handled as Ctrl-C: stop cleanly (a generate's workers with it), one line, no traceback.
_INTERRUPTIBLE = ("eval", "demo", "generate")


class _Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupt(signum, frame):
    raise _Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command in ("eval", "demo"):
        _one_thread_per_process()
    if getattr(args, "train_args", None) and args.train_args[0] == "--":
        args.train_args = args.train_args[1:]
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if args.command in _INTERRUPTIBLE else None
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        code = getattr(e, "signum", signal.SIGINT)
        hint = "; finished shards are kept: rerun the same command to resume" if args.command == "generate" else ""
        parser.exit(128 + code, f"anymdp-agent {args.command}: stopped by {signal.Signals(code).name}{hint}\n")
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"anymdp-agent {args.command}: error: {e}\n")
    except RuntimeError as e:  # e.g. a push that could not happen
        parser.exit(1, f"anymdp-agent {args.command}: error: {e}\n")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
