"""Pushing folders to the Hugging Face Hub in one commit, and the model card of a checkpoint folder.

:func:`commit_operations` lists exactly what would be sent; :func:`push_folder` creates the repository if
needed and sends everything in **one** commit, so a failure leaves the repository as it was: nothing is
ever half-pushed. :func:`push_checkpoint` sends a checkpoint folder only if it holds nothing but what the
package writes (:data:`CHECKPOINT_PATTERNS`).

The model card is rendered by huggingface_hub's own classes (``ModelCardData`` + ``EvalResult`` for the
metadata, ``ModelCard.from_template`` into ``cards/model_card.md``), from the folder's artifacts alone:
``config.json``, ``train_config.json``, ``model.safetensors`` and the harness' ``eval/eval-*.json``.

The Hub's newer ``.eval_results/*.yaml`` files name a *benchmark dataset on the Hub* per result
(``dataset.id``, a registered Benchmark); no suite here is one (the tasks are generated from seeds), so
the card's ``model-index`` carries the results. A folder's ``.eval_results/`` is pushed all the same,
for whoever adds results against a Hub benchmark.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from pathlib import Path

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData

#: Hidden folders that are sent all the same: the Hub's evaluation-results layout.
SENT_HIDDEN = (".eval_results",)


class PushError(RuntimeError):
    """A push that did not happen (no token, no network, no permission); the repository is unchanged."""


def _is_sent(rel: Path) -> bool:
    """Hidden files and folders and temporary files of interrupted writes are never sent (``.eval_results/``
    at the top is, as the Hub reads it there)."""
    parts = rel.parts
    if any(part.endswith(".tmp") for part in parts):
        return False
    return not any(part.startswith(".") and not (i == 0 and part in SENT_HIDDEN and len(parts) > 1)
                   for i, part in enumerate(parts))


def commit_operations(folder: str | os.PathLike) -> list[CommitOperationAdd]:
    """One ``CommitOperationAdd`` per file of ``folder`` (recursively, sorted), hidden/temporary files left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"nothing to push: {folder} is not a folder")
    ops = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if _is_sent(rel):
            ops.append(CommitOperationAdd(path_in_repo=rel.as_posix(), path_or_fileobj=str(path)))
    if not ops:
        raise ValueError(f"nothing to push: {folder} holds no files")
    return ops


def check_repo_id(repo_id: str) -> None:
    """Refuse a repository id that is not ``USER/NAME`` (before anything is staged or sent)."""
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo id must look like USER/NAME, got {repo_id!r}")
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)  # HFValidationError (a ValueError) names what is wrong with it


def push_folder(folder: str | os.PathLike, repo_id: str, repo_type: str = "model", token: str | None = None,
                private: bool = False, commit_message: str | None = None, required: tuple[str, ...] = ("README.md",),
                api: HfApi | None = None):
    """Upload ``folder`` to ``repo_id`` in one commit; returns the commit info.

    ``required`` files must be present (a card at least), checked before anything is sent.
    """
    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}")
    check_repo_id(repo_id)
    folder = Path(folder)
    ops = commit_operations(folder)
    present = {op.path_in_repo for op in ops}
    missing = [name for name in required if name not in present]
    if missing:
        raise ValueError(f"{folder} lacks {', '.join(missing)}: render the card before pushing")
    api = api or HfApi(token=token)
    message = commit_message or f"Upload {folder.name} with anymdp-agent"
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        return api.create_commit(repo_id, operations=ops, commit_message=message, repo_type=repo_type)
    except Exception as e:  # network, authentication, permission: the one commit did not happen
        raise PushError(f"push of {folder} to {repo_type} repo {repo_id} failed ({type(e).__name__}: {e}); "
                        "nothing was committed. Check the token (HF_TOKEN or `hf auth login`) and the network.") from e


# ---------------------------------------------------------------------- model cards

#: The task of every result in the card's model-index (the Hub's task id).
TASK_TYPE = "reinforcement-learning"
TASK_NAME = "In-context reinforcement learning"
#: How the card's snippet loads the model: ``{source}`` is Python source (a quoted id or path, or a call).
LOAD_LINE = "model = AutoModel.from_pretrained({source}, trust_remote_code=True)"
_BUNDLED_IMPORT = "from anymdp_agent.rollout import bundled_agent_path\n"
_LOAD_RE = re.compile("(?:" + re.escape(_BUNDLED_IMPORT) + ")?" + re.escape(LOAD_LINE).replace(r"\{source\}", "(.+)"))


def _window_mean(entry: dict, lo: int, hi: int) -> float | None:
    vals = [w["mean"] for s, w in zip(entry["window_starts"], entry["windows"])
            if lo <= s < hi and w.get("mean") is not None]
    return float(sum(vals) / len(vals)) if vals else None


def read_eval_results(folder: str | os.PathLike) -> dict[str, dict]:
    """The harness' results in ``folder/eval``: ``{suite name: result}``, the name from the file
    (``eval-anymdp-16.json`` -> ``anymdp-16``; ``eval-anymdp-16-long-context.json`` -> ``anymdp-16-long-context``)."""
    eval_dir = Path(folder) / "eval"
    return {path.stem[len("eval-"):]: json.loads(path.read_text())
            for path in sorted(eval_dir.glob("eval-*.json"))} if eval_dir.is_dir() else {}


def _agent_entry(result: dict) -> dict | None:
    return next((v for k, v in result["learners"].items() if k.startswith("agent")), None)


def headline_metrics(result: dict) -> list[tuple[str, float, str]]:
    """``(metric id, value, description)`` of the agent in one result: the AUC, the first window, the last
    quarter of the budget, and (Gymnasium suites with a goal) the success rate of the last full window."""
    agent = _agent_entry(result)
    if agent is None:
        return []
    steps, window = result["config"]["steps"], result["config"]["window"]
    metrics = []
    if agent.get("auc", {}).get("mean") is not None:
        metrics.append(("normalized_score_auc", agent["auc"]["mean"], f"AUC of the normalised score over {steps} steps"))
    late = _window_mean(agent, int(steps * 0.75), steps)
    if late is not None:
        metrics.append(("normalized_score_last_quarter", late, f"normalised score, steps {int(steps * 0.75)}-{steps}"))
    early = _window_mean(agent, 0, max(window, 1))
    if early is not None:
        metrics.append(("normalized_score_first_window", early, f"normalised score, first {window} steps"))
    sw = agent.get("success_windows")
    if sw:
        full = max(x["n"] for x in sw)
        covered = [x for x in sw if x["n"] == full and x.get("mean") is not None]
        if covered:
            metrics.append(("success_rate_last_window", covered[-1]["mean"], "success rate, last fully covered "
                            f"{agent['success_episode_window']}-episode window"))
    return metrics


def eval_results(results: dict[str, dict]) -> list[EvalResult]:
    """The card's ``model-index`` entries: one ``EvalResult`` per (suite, headline metric), values to 4 digits."""
    out = []
    for suite, result in sorted(results.items()):
        for metric, value, description in headline_metrics(result):
            out.append(EvalResult(task_type=TASK_TYPE, task_name=TASK_NAME, dataset_type=suite,
                                  dataset_name=result["suite"]["description"], metric_type=metric,
                                  metric_value=round(float(value), 4), metric_name=description))
    return out


def _is_hub_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if text.count("/") != 1 or Path(text).exists():
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def corpus_name(train: dict | None) -> str | None:
    """The training corpus of a checkpoint, as its card's ``datasets:`` names it: the Hub id it was read
    from, else the name of the local corpus folder (the card's text says how it was made); ``None`` for
    tasks generated on the fly. A two-stage agent names the corpus of its first stage."""
    train = train or {}
    record = train if train.get("corpus") else (train.get("imitation") or train.get("first_stage") or {})
    corpus = record.get("corpus") or ""
    if not corpus:
        return None
    local = record.get("corpus_local")  # recorded by the trainer; older records: guessed from the text
    hub = _is_hub_id(corpus) if local is None else not local
    return corpus if hub else (Path(corpus).name or None)


def model_card_data(name: str, results: dict[str, dict], train: dict | None) -> ModelCardData:
    """The card's metadata: library, licence, task, tags, the training corpus and the model-index of the
    evaluation results."""
    corpus = corpus_name(train)
    entries = eval_results(results)
    return ModelCardData(library_name="transformers", license="apache-2.0", pipeline_tag=TASK_TYPE,
                         tags=["in-context-reinforcement-learning", "anymdp", "tabular-mdp", "custom_code"],
                         datasets=[corpus] if corpus else None,
                         model_name=name if entries else None, eval_results=entries or None)


def pretrained_dir() -> Path:
    """The package's folder of bundled agents (``anymdp_agent/pretrained``, wherever the package is installed)."""
    from importlib.resources import files

    return Path(str(files("anymdp_agent").joinpath("pretrained")))


def load_lines(source: str | None = None, bundled_as: str | None = None) -> str:
    """The snippet's load line(s): ``from_pretrained("<source>")`` for a repo id or folder, or
    ``from_pretrained(bundled_agent_path("<name>"))`` for an agent bundled in the package."""
    if bundled_as is not None:
        return _BUNDLED_IMPORT + LOAD_LINE.format(source=f"bundled_agent_path({json.dumps(bundled_as)})")
    return LOAD_LINE.format(source=json.dumps(str(source)))


def point_card_at(text: str, repo_id: str) -> str:
    """The card ``text`` with its snippet loading from ``repo_id``; every other line kept as it is."""
    new, count = _LOAD_RE.subn(lambda _: load_lines(repo_id), text)
    if count != 1:
        raise ValueError("the card has no load snippet to point at the repository (it was not rendered by "
                         "anymdp_agent.hub.write_model_card): re-render it before pushing")
    return new


def _space_texts(config: dict) -> tuple[str, str]:
    """The card's two sentences on the task sizes a checkpoint takes: what it takes (any, for the backbone whose
    state is sized by nothing learned; else its vocabulary) and the matching limitation."""
    from .modeling_anymdp_agent import BACKBONE_SIZE_FREE

    n_obs, n_act = config["num_observations"], config["num_actions"]
    if config["backbone"] == BACKBONE_SIZE_FREE:
        return (f"any number of observation ids and actions (`initial_state(num_observations=..., num_actions=...)`; "
                f"by default {n_obs} ids and {n_act} actions)",
                "Tabular, discrete observations and actions only (any number of each); planning costs O(states^2 x "
                "actions) per step, so very large spaces are slow.")
    return (f"vocabulary: {n_obs} observation ids, {n_act} actions",
            f"Tabular, discrete observations only, at most {n_obs} observation ids and {n_act} actions; larger "
            "spaces need a model with a larger vocabulary.")


def _backbone_text(config: dict) -> str:
    if config["backbone"] == "model_based":
        return ("Model-based backbone: the count-based planner (exact per-(observation, action) statistics, "
                f"{config.get('planner_sweeps', 3)} value-iteration sweeps per step warm-started from the last values, "
                f"discount {config.get('planning_gamma')}, optimism for untried pairs, greedy with random ties) with a "
                f"learned transition prior: a network ({config.get('prior_hidden')} wide) that reads the history's "
                "statistics and gives every tried pair pseudo-counts over next observations (weighted by "
                f"{config.get('prior_weight', 1.0)}); a pair is worth the larger of its empirical backup and its backup "
                "on the posterior-mean model.")
    if config["backbone"] == "planning":
        return ("Planning backbone: exact per-(observation, action) statistics held as a linear-attention "
                f"state with one-hot keys, read by {config['planning_steps']} learned differentiable "
                "value-iteration layers (learned discount, exploration bonus, optimism, temperature).")
    return (f"Sequence backbone: {config['num_hidden_layers']} gated linear attention layers, width "
            f"{config['hidden_size']}, {config['num_heads']} heads (chunkwise-parallel training, "
            "recurrent stepping).")


def _training_text(train: dict | None) -> str:
    if not train:
        return "No training record in this folder (`train_config.json` missing)."
    if "imitation" in train:  # two stages: imitation from a corpus, then return-driven meta-training
        return _two_stage_text(train)
    if train.get("recipe") == "transition-prior":
        return _prior_text(train)
    data = train.get("corpus") or "tasks generated on the fly (infinite-task training)"
    if train.get("corpus"):
        command = train.get("corpus_command")
        data = _corpus_text(data, command)
    return (f"- Recipe: `{train.get('recipe', 'custom')}`; data: {data}; label: {train.get('label')}; "
            f"{train.get('max_steps')} optimiser steps of {train.get('batch_size')} sequences x "
            f"{train.get('seq_len')} rows per process; on-policy share {train.get('onpolicy_fraction')}.\n"
            f"- Checkpoint: step {train.get('step')} of {train.get('max_steps')}; compute to this checkpoint: "
            f"{train.get('compute', 'see train_config.json')}.\n"
            "- Every setting is in `train_config.json` beside the weights.")


def _corpus_text(corpus: str, command: str | None) -> str:
    """How a card names a training corpus: ``the corpus `NAME`, made with `COMMAND`, read with `datasets```."""
    return f"the corpus `{corpus}`" + (f", made with `{command}`" if command else "") + ", read with `datasets`"


def _prior_data(train: dict) -> str:
    if train.get("corpus"):
        command = train.get("corpus_command")
        return (f"histories of the first {train.get('corpus_sequences')} sequences of "
                f"{_corpus_text(train['corpus'], command)} and replayed")
    return "histories of the count-based planner on tasks of the package's samplers generated on the fly (train seeds)"


def _prior_text(train: dict) -> str:
    """The training section of a ``model_based`` agent made by ``anymdp_agent.training.transition_prior`` (one
    stage, or a stage on top of a first one, ``first_stage``)."""
    first = train.get("first_stage")
    if first:
        stages = (f"- Stage 1 (`{first.get('command')}`): {_prior_data(first)}; {first.get('training_pairs')} examples, "
                  f"validation cross-entropy {first.get('validation_cross_entropy')}.\n"
                  "- Stage 2, from the stage-1 prior: ")
    else:
        stages = "- Recipe: "
    return (f"{stages}the transition prior (`{train.get('command')}`); data: {_prior_data(train)}. Every tried pair at "
            f"{len(train.get('snapshots', []))} points of each history is one example ({train.get('training_pairs')} "
            "in all): the history's statistics in, the task's true next-observation row (from its seed) as the target; "
            "the loss is the cross-entropy of the true row under the posterior-mean model.\n"
            f"- Checkpoint: Adam iteration {train.get('step')} of {train.get('max_steps')}, picked by the same "
            f"cross-entropy on histories of validation-seed tasks ({train.get('validation_cross_entropy')} against "
            f"{train.get('validation_cross_entropy_untrained')} at the stage's start); {train.get('seconds')} s on "
            f"{train.get('processes')} process(es).\n"
            "- Every setting is in `train_config.json` beside the weights.")


def _two_stage_text(train: dict) -> str:
    """The training section of an agent made by ``training/meta_rl.py`` on top of an imitation checkpoint."""
    first, args = train["imitation"], train.get("args", {})
    corpus = first.get("corpus") or "tasks generated on the fly"
    command = train.get("corpus_command")
    return (f"1. **Imitation from a trajectory corpus** (recipe `{first.get('recipe', 'custom')}`): "
            f"{_corpus_text(corpus, command)}; label: the {first.get('label')} action given the same "
            f"history; {first.get('max_steps')} optimiser steps of {first.get('batch_size')} sequences x "
            f"{first.get('seq_len')} rows; checkpoint of step {first.get('step')} (picked on validation seeds).\n"
            f"2. **Return-driven meta-training** (recipe `{args.get('recipe', 'custom')}`, `training/meta_rl.py`): "
            f"policy gradient on the agent's own normalised in-context return, {args.get('rollouts')} runs of "
            f"{args.get('seq_len')} rows on each of {args.get('tasks')} fresh tasks per step (families "
            f"{args.get('families')}; {args.get('n_states')} states, {args.get('n_actions')} actions; train seeds), a "
            f"leave-one-out baseline; context head: {args.get('context_adaptation')}. Checkpoint of step "
            f"{train.get('step')} of {args.get('max_steps')}, picked on validation seeds by the paired AUC "
            f"difference to the count-based planner; compute: {train.get('compute', 'see train_config.json')}.\n\n"
            "Every setting of both stages is in `train_config.json` beside the weights.")


def _evaluation_text(folder: Path, results: dict[str, dict]) -> str:
    if not results:
        return "Not evaluated yet (no `eval/*.json` in this folder)."

    def fmt(x):
        return "-" if x is None else f"{x:.3f}"

    parts = []
    for suite, res in sorted(results.items()):
        steps, window = res["config"]["steps"], res["config"]["window"]
        parts.append(f"**{suite}** ({res['suite']['description']}; {res['suite']['instances']} instances, "
                     f"{steps} steps, window {window}):\n")
        parts.append("| learner | AUC [95% CI] | first window | last quarter |\n|---|---|---|---|")
        for lname, e in res["learners"].items():
            auc = e["auc"]
            parts.append(f"| {lname} | {fmt(auc.get('mean'))} [{fmt(auc.get('ci_low'))}, {fmt(auc.get('ci_high'))}] "
                         f"| {fmt(_window_mean(e, 0, window))} | {fmt(_window_mean(e, int(steps * 0.75), steps))} |")
        png = folder / "eval" / f"eval-{suite}.png"
        if png.is_file():
            parts.append(f"\n![{suite} learning curves](eval/{png.name})\n")
        parts.append("")
    return "\n".join(parts).rstrip()


def _parameters(folder: Path) -> int | None:
    st = folder / "model.safetensors"
    if not st.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(st), "pt") as fh:
        total = 0
        for k in fh.keys():
            n = 1
            for d in fh.get_slice(k).get_shape():
                n *= int(d)
            total += n
    return total


def render_model_card(folder: str | os.PathLike, repo_id: str | None = None, extra_limitations: str = "",
                      name: str | None = None, load_from: str | None = None, bundled_as: str | None = None) -> str:
    """A model card (markdown with YAML metadata) from the artifacts of a checkpoint folder only.

    The snippet loads from ``repo_id`` if given, else ``load_from`` (a folder that outlives the checkpoint,
    e.g. a run's ``best/``), else ``bundled_agent_path(bundled_as)`` for an agent bundled in the package
    (found by itself for a folder of ``anymdp_agent/pretrained/``), else ``folder``. ``extra_limitations``
    (markdown bullets) follow the generic ones.
    """
    from .cards import template

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    train = json.loads((folder / "train_config.json").read_text()) if (folder / "train_config.json").is_file() else None
    results = read_eval_results(folder)
    if bundled_as is None and repo_id is None and load_from is None and folder.resolve().parent == pretrained_dir().resolve():
        bundled_as = folder.name
    name = name or (repo_id.split("/")[-1] if repo_id else bundled_as or folder.name)
    params = _parameters(folder)
    sizes, space_limits = _space_texts(config)
    card = ModelCard.from_template(
        model_card_data(name, results, train), template_str=template("model_card.md"), name=name,
        backbone=config["backbone"], parameters=f"{params:,}" if params is not None else "?",
        sizes=sizes, space_limits=space_limits, backbone_text=_backbone_text(config), training=_training_text(train),
        evaluation=_evaluation_text(folder, results), limitations=extra_limitations.rstrip(),
        load_lines=load_lines(repo_id or load_from or folder, None if (repo_id or load_from) else bundled_as))
    return str(card).rstrip() + "\n"


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None, extra_limitations: str = "",
                     name: str | None = None, load_from: str | None = None, bundled_as: str | None = None) -> Path:
    """Render the card of a checkpoint folder into its ``README.md`` (atomically); see :func:`render_model_card`."""
    from .fileio import atomic_write

    text = render_model_card(folder, repo_id, extra_limitations, name, load_from, bundled_as)
    return atomic_write(Path(folder) / "README.md", lambda fh: fh.write(text.encode()))


# ---------------------------------------------------------------------- pushing checkpoints

#: What a pushable checkpoint folder must hold.
CHECKPOINT_FILES = ("config.json", "model.safetensors", "configuration_anymdp_agent.py", "modeling_anymdp_agent.py",
                    "README.md")
#: The only code a checkpoint carries: the two remote-code files save_pretrained copies from the package.
CODE_FILES = ("configuration_anymdp_agent.py", "modeling_anymdp_agent.py")
#: Everything the package writes into a checkpoint folder (save_pretrained, train.py, the harness, the card):
#: push sends these and refuses a folder holding anything else.
CHECKPOINT_PATTERNS = ("config.json", "model.safetensors", *CODE_FILES, "README.md", "train_config.json",
                       "eval/eval-*.json", "eval/eval-*.png", ".eval_results/*.yaml")


def _allowed(rel: str) -> bool:
    return any(rel.count("/") == pat.count("/") and fnmatch.fnmatchcase(rel, pat) for pat in CHECKPOINT_PATTERNS)


def check_checkpoint(folder: str | os.PathLike) -> list[str]:
    """The files push would send from a checkpoint folder, after refusing an incomplete folder, files the
    package does not write (any other code above all), and an ``auto_map`` naming code it does not write."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"nothing to push: {folder} is not a folder")
    missing = [name for name in CHECKPOINT_FILES[:-1] if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a pushable checkpoint: it lacks {', '.join(missing)} "
                         "(save_pretrained writes them)")
    config = json.loads((folder / "config.json").read_text())
    auto_map = config.get("auto_map", {})
    if "AutoModel" not in auto_map:
        raise ValueError(f"{folder}/config.json has no auto_map: the Hub could not load it with trust_remote_code")
    foreign = sorted({ref.split("--")[-1].rsplit(".", 1)[0] + ".py" for ref in auto_map.values()} - set(CODE_FILES))
    if foreign:
        raise ValueError(f"{folder}/config.json's auto_map names code the package does not write ({', '.join(foreign)}): "
                         f"a checkpoint carries only {' and '.join(CODE_FILES)}")
    sent = [op.path_in_repo for op in commit_operations(folder)]
    unknown = [rel for rel in sent if not _allowed(rel)]
    if unknown:
        raise ValueError(f"{folder} holds files the package does not write: {', '.join(unknown)}; push sends only "
                         f"{', '.join(CHECKPOINT_PATTERNS)}: move the others out")
    return sent


def push_checkpoint(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False,
                    api: HfApi | None = None):
    """Push a ``pretrained_model/`` folder in one commit, after checking it holds exactly what the package writes.

    The folder's card is kept, section for section (the limitations of a bundled agent, say); in a staging copy
    only its load snippet is pointed at ``repo_id``. A folder without a card gets one rendered for ``repo_id``.
    The folder itself is left as it is.
    """
    import shutil
    import tempfile

    check_repo_id(repo_id)
    folder = Path(folder)
    sent = check_checkpoint(folder)
    card_path = folder / "README.md"
    text = None
    if card_path.is_file():
        try:
            ModelCard.load(card_path)  # the metadata must parse, as the Hub will parse it
        except Exception as e:
            raise ValueError(f"{card_path} does not parse as a model card ({type(e).__name__}: {e}): re-render it "
                             "with anymdp_agent.hub.write_model_card") from e
        text = point_card_at(card_path.read_text(encoding="utf-8"), repo_id)
    with tempfile.TemporaryDirectory(prefix="anymdp-push-") as tmp:
        staged = Path(tmp) / folder.name
        for rel in sent:
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / rel, staged / rel)
        if text is None:
            write_model_card(staged, repo_id=repo_id)
        else:
            (staged / "README.md").write_text(text, encoding="utf-8")
        return push_folder(staged, repo_id, repo_type="model", token=token, private=private, required=CHECKPOINT_FILES,
                           commit_message=f"Upload {folder.name} (weights, config, modeling code, card, eval results)",
                           api=api)
