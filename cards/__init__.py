"""The model-card and dataset-card templates (Jinja2, rendered by huggingface_hub's card classes).

The folder is ``cards/`` in the repository and ships in the wheel as ``anymdp_agent.cards``; the
renderers read the templates through :func:`template`, never through a path beside the package.
"""

from importlib.resources import files


def template(name: str) -> str:
    """The text of one template of this folder, e.g. ``template("model_card.md")``."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")
