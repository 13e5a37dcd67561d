"""The bundled training recipes: ``--config tiny`` names ``configs/tiny.yaml`` wherever the package is installed."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def recipes_dir() -> Path:
    """The folder of the bundled recipes (inside the installed package, or ``training/configs`` in a clone)."""
    return Path(str(files("anymdp_agent.training").joinpath("configs")))


def recipe_names() -> list[str]:
    """Names of the bundled recipes, e.g. ``['cpu-default', 'gpu-large', 'tiny']``."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe file: an existing YAML path as given, else the bundled recipe of that name (``tiny``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = recipes_dir() / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.name == name_or_path and bundled.is_file():  # a bare name ("tiny" or "tiny.yaml"), not a path
        return bundled
    raise ValueError(f"no recipe at {name_or_path}: pass a YAML file or a bundled recipe name "
                     f"({', '.join(recipe_names())})")


def load_recipe(name_or_path: str, settings) -> tuple[Path, dict]:
    """The recipe file and its settings, checked: valid YAML, a mapping, every key one of ``settings`` (the
    field names of the trainer's args dataclass); ``recipe`` defaults to the file's stem."""
    import yaml

    path = resolve_recipe(name_or_path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path} is not valid YAML ({problem}{where}): fix the recipe") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must be a mapping of setting: value (one per line), not a {type(values).__name__}")
    unknown = set(values) - set(settings)
    if unknown:
        raise ValueError(f"unknown keys in {path}: {sorted(unknown)}")
    values.setdefault("recipe", path.stem)
    return path, values
