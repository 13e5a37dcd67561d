"""Writing files so that a reader never sees half of one: a temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then rename it to ``path``.

    On any error the temporary file is removed and ``path`` keeps its old content (or stays absent).
    The file gets the usual permissions (``0666`` less the umask), not ``mkstemp``'s private ``0600``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def replace_dir(new: str | os.PathLike, final: str | os.PathLike, old: str | os.PathLike | None = None) -> Path:
    """Put the complete folder ``new`` in place of ``final`` without deleting ``final`` first.

    The old ``final`` is renamed aside (to ``old``, default ``.<name>.old`` beside it), ``new`` renamed into
    place, then the old one deleted: at every moment one complete folder exists under ``final`` or ``old``,
    so a kill in between loses nothing (the caller's next start can restore ``old``).
    """
    import shutil

    new, final = Path(new), Path(final)
    old = Path(old) if old is not None else final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike):
    """Yield a new empty folder beside ``path`` to write into; when the block ends without error, put it in place
    of ``path`` (:func:`replace_dir`). On an error, or after the move, nothing of it is left behind."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finite_json(obj):
    """``obj`` made of standard JSON values: non-finite floats become ``None`` (null), numpy scalars and arrays
    plain numbers and lists, tuples lists, anything else its ``str``.

    Python's ``json`` writes ``NaN``/``Infinity`` by default, which strict readers (the Hub, ``jq``, browsers)
    refuse; everything the package writes goes through here and is dumped with ``allow_nan=False``.
    """
    import math

    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays, torch tensors
    if callable(tolist):
        return finite_json(tolist())
    return str(obj)


def dumps_json(obj, **kwargs) -> str:
    """``json.dumps`` of :func:`finite_json` ``(obj)``: always standard JSON (no NaN or Infinity)."""
    import json

    return json.dumps(finite_json(obj), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, obj, **kwargs) -> Path:
    """Write ``obj`` as standard JSON to ``path`` atomically (see :func:`atomic_write`)."""
    text = dumps_json(obj, **kwargs)
    return atomic_write(path, lambda fh: fh.write(text.encode()))
