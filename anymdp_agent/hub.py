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
