"""Pushing folders to the Hugging Face Hub in one commit: a corpus, or a checkpoint with its card.

:func:`commit_operations` lists exactly what would be sent (tests check it offline); :func:`push_folder`
creates the repository if needed and sends everything in **one** commit, so a failure leaves the
repository as it was: nothing is ever half-pushed.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

#: Never sent: temporary files of interrupted writes and hidden files.
_SKIP_PREFIXES = (".",)


class PushError(RuntimeError):
    """A push that did not happen (no token, no network, no permission); the repository is unchanged."""


def commit_operations(folder: str | os.PathLike) -> list[CommitOperationAdd]:
    """One ``CommitOperationAdd`` per file of ``folder`` (recursively, sorted), hidden/temporary files left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"nothing to push: {folder} is not a folder")
    ops = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if any(part.startswith(_SKIP_PREFIXES) or part.endswith(".tmp") for part in rel.parts):
            continue
        ops.append(CommitOperationAdd(path_in_repo=rel.as_posix(), path_or_fileobj=str(path)))
    if not ops:
        raise ValueError(f"nothing to push: {folder} holds no files")
    return ops


def push_folder(folder: str | os.PathLike, repo_id: str, repo_type: str = "model", token: str | None = None,
                private: bool = False, commit_message: str | None = None, required: tuple[str, ...] = ("README.md",),
                api: HfApi | None = None):
    """Upload ``folder`` to ``repo_id`` in one commit; returns the commit info.

    ``required`` files must be present (a card at least), checked before anything is sent.
    """
    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}")
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo id must look like USER/NAME, got {repo_id!r}")
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)  # HFValidationError (a ValueError) names what is wrong with it
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

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "cards" / "model_card.md"


def _window_mean(entry: dict, lo: int, hi: int) -> float | None:
    vals = [w["mean"] for s, w in zip(entry["window_starts"], entry["windows"])
            if lo <= s < hi and w.get("mean") is not None]
    return float(sum(vals) / len(vals)) if vals else None


def _model_index(name: str, results: dict) -> str:
    """The Hub's ``model-index`` YAML: normalised score at fixed step windows per suite, success rates."""
    lines = ["model-index:", f"- name: {name}", "  results:"]
    for suite, res in sorted(results.items()):
        agent = next((v for k, v in res["learners"].items() if k.startswith("agent")), None)
        if agent is None:
            continue
        steps = res["config"]["steps"]
        metrics = []
        if agent.get("auc", {}).get("mean") is not None:
            metrics.append(("normalized_score_auc", agent["auc"]["mean"], f"AUC of the normalised score over {steps} steps"))
        late = _window_mean(agent, int(steps * 0.75), steps)
        if late is not None:
            metrics.append(("normalized_score_last_quarter", late, f"normalised score, steps {int(steps * 0.75)}-{steps}"))
        early = _window_mean(agent, 0, max(res["config"]["window"], 1))
        if early is not None:
            metrics.append(("normalized_score_first_window", early, f"normalised score, first {res['config']['window']} steps"))
        sw = agent.get("success_windows")
        if sw:
            full = max(x["n"] for x in sw)
            covered = [x for x in sw if x["n"] == full and x.get("mean") is not None]
            if covered:
                metrics.append(("success_rate_last_window", covered[-1]["mean"], "success rate, last fully covered "
                                f"{agent['success_episode_window']}-episode window"))
        if not metrics:
            continue
        lines += ["  - task:", "      type: reinforcement-learning", "      name: In-context reinforcement learning",
                  "    dataset:", f"      type: {suite}", f"      name: {res['suite']['description']}",
                  "    metrics:"]
        for mtype, value, mname in metrics:
            lines += [f"    - type: {mtype}", f"      value: {value:.4f}", f"      name: {mname}"]
    return "\n".join(lines) + "\n" if len(lines) > 3 else ""


def render_model_card(folder: str | os.PathLike, repo_id: str | None = None, extra_limitations: str = "",
                      name: str | None = None) -> str:
    """A model card from the artifacts in a checkpoint folder only.

    Reads ``config.json``, ``train_config.json`` (if present), ``eval/*.json`` and ``eval/*.png``
    (evaluation results written by :func:`anymdp_agent.evaluation.write_results`).
    """
    import json
    from string import Template

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    train = json.loads((folder / "train_config.json").read_text()) if (folder / "train_config.json").is_file() else None
    results = {}
    for path in sorted((folder / "eval").glob("eval-*.json")) if (folder / "eval").is_dir() else []:
        results[path.stem[len("eval-"):]] = json.loads(path.read_text())  # e.g. anymdp-16, anymdp-16-long-context
    name = name or (repo_id.split("/")[-1] if repo_id else folder.name)
    if config["backbone"] == "planning":
        backbone_text = ("Planning backbone: exact per-(observation, action) statistics held as a linear-attention "
                         f"state with one-hot keys, read by {config['planning_steps']} learned differentiable "
                         "value-iteration layers (learned discount, exploration bonus, optimism, temperature).")
    else:
        backbone_text = (f"Sequence backbone: {config['num_hidden_layers']} gated linear attention layers, width "
                         f"{config['hidden_size']}, {config['num_heads']} heads (chunkwise-parallel training, "
                         "recurrent stepping).")
    params = None
    st = folder / "model.safetensors"
    if st.is_file():
        from safetensors import safe_open

        with safe_open(str(st), "pt") as fh:
            params = sum(_prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    if train:
        data = train.get("corpus") or "tasks generated on the fly (infinite-task training)"
        training = (f"- Recipe: `{train.get('recipe', 'custom')}`; data: {data}; label: {train.get('label')}; "
                    f"{train.get('max_steps')} optimiser steps of {train.get('batch_size')} sequences x "
                    f"{train.get('seq_len')} rows per process; on-policy share {train.get('onpolicy_fraction')}.\n"
                    f"- Checkpoint: step {train.get('step')} of {train.get('max_steps')}; compute to this checkpoint: "
                    f"{train.get('compute', 'see train_config.json')}.\n"
                    "- Every setting is in `train_config.json` beside the weights.")
    else:
        training = "No training record in this folder (`train_config.json` missing)."
    if results:
        parts = []
        for suite, res in sorted(results.items()):
            parts.append(f"**{suite}** ({res['suite']['description']}; {res['suite']['instances']} instances, "
                         f"{res['config']['steps']} steps, window {res['config']['window']}):\n")
            parts.append("| learner | AUC [95% CI] | first window | last quarter |\n|---|---|---|---|")
            steps = res["config"]["steps"]
            for lname, e in res["learners"].items():
                auc = e["auc"]
                first = _window_mean(e, 0, res["config"]["window"])
                last = _window_mean(e, int(steps * 0.75), steps)
                fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
                parts.append(f"| {lname} | {fmt(auc.get('mean'))} [{fmt(auc.get('ci_low'))}, {fmt(auc.get('ci_high'))}] "
                             f"| {fmt(first)} | {fmt(last)} |")
            png = folder / "eval" / f"eval-{suite}.png"
            if png.is_file():
                parts.append(f"\n![{suite} learning curves](eval/{png.name})\n")
            parts.append("")
        evaluation = "\n".join(parts)
    else:
        evaluation = "Not evaluated yet (no `eval/*.json` in this folder)."
    datasets_yaml = ""
    if train and train.get("corpus") and not Path(str(train["corpus"])).exists():
        datasets_yaml = f"datasets:\n- {train['corpus']}\n"
    return Template(MODEL_CARD_TEMPLATE.read_text()).substitute(
        datasets_yaml=datasets_yaml, model_index=_model_index(name, results), name=name,
        backbone=config["backbone"], parameters=f"{params:,}" if params is not None else "?",
        num_observations=config["num_observations"], num_actions=config["num_actions"],
        backbone_text=backbone_text, training=training, evaluation=evaluation,
        limitations=extra_limitations, repo_or_path=repo_id or str(folder))


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None, extra_limitations: str = "",
                     name: str | None = None) -> Path:
    """Render the card of a checkpoint folder into its ``README.md`` (atomically)."""
    from .fileio import atomic_write

    text = render_model_card(folder, repo_id, extra_limitations, name)
    return atomic_write(Path(folder) / "README.md", lambda fh: fh.write(text.encode()))


#: What a pushable checkpoint folder must hold.
CHECKPOINT_FILES = ("config.json", "model.safetensors", "configuration_anymdp_agent.py", "modeling_anymdp_agent.py",
                    "README.md")


def push_checkpoint(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False,
                    api: HfApi | None = None):
    """Push a ``pretrained_model/`` folder in one commit, after checking it is complete and self-contained.

    The card is re-rendered for ``repo_id`` (so its load snippet names the repository) in a staging
    copy; the folder itself is left as it is.
    """
    import json
    import shutil
    import tempfile

    folder = Path(folder)
    missing = [name for name in CHECKPOINT_FILES[:-1] if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a pushable checkpoint: it lacks {', '.join(missing)} "
                         "(save_pretrained writes them)")
    config = json.loads((folder / "config.json").read_text())
    if "AutoModel" not in config.get("auto_map", {}):
        raise ValueError(f"{folder}/config.json has no auto_map: the Hub could not load it with trust_remote_code")
    with tempfile.TemporaryDirectory(prefix="anymdp-push-") as tmp:
        staged = Path(tmp) / folder.name
        shutil.copytree(folder, staged, ignore=shutil.ignore_patterns(".*", "*.tmp", "__pycache__"))
        write_model_card(staged, repo_id=repo_id)
        return push_folder(staged, repo_id, repo_type="model", token=token, private=private, required=CHECKPOINT_FILES,
                           commit_message=f"Upload {folder.name} (weights, config, modeling code, card, eval results)",
                           api=api)
