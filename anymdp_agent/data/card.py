"""The dataset card of a corpus folder, rendered by huggingface_hub's ``DatasetCard`` into ``cards/dataset_card.md``.

The metadata (licence, task, size category, and the ``configs`` that tell ``datasets.load_dataset`` and
the Hub where each split's parquet shards are) is a ``DatasetCardData``; the body is filled from the
corpus' saved settings (``corpus.json``) and its per-shard statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from huggingface_hub import DatasetCard, DatasetCardData

from ..cards import template
from ..envs import GENERATOR_VERSION
from ..fileio import atomic_write
from .behaviours import BEHAVIOURS, TAGS

#: The template in ``cards/`` (shipped in the package as ``anymdp_agent.cards``).
TEMPLATE = "dataset_card.md"
#: The Hub's size categories, by number of examples (sequences).
_SIZE_CATEGORIES = [(1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"), (1e7, "1M<n<10M"),
                    (1e8, "10M<n<100M"), (1e9, "100M<n<1B"), (1e10, "1B<n<10B"), (1e11, "10B<n<100B"),
                    (1e12, "100B<n<1T")]


def aggregate_stats(folder: Path) -> dict:
    """Sum the per-shard statistics of every split present: ``{split: stats}``."""
    out = {}
    for path in sorted((folder / "stats").glob("*.json")):
        split = path.name.rsplit("-", 1)[0]
        s = json.loads(path.read_text())
        agg = out.setdefault(split, {"shards": 0, "sequences": 0, "rows": 0, "steps": 0, "episodes": 0,
                                     "episode_length_sum": 0, "behaviour_rows": {}, "tag_rows": {},
                                     "episode_length_hist": np.zeros(1001, dtype=np.int64), "label_agreement": {}})
        agg["shards"] += 1
        for key in ("sequences", "rows", "steps", "episodes", "episode_length_sum"):
            agg[key] += s[key]
        for key in ("behaviour_rows", "tag_rows"):
            for name, count in s[key].items():
                agg[key][name] = agg[key].get(name, 0) + count
        if s["episode_length_hist"]:
            agg["episode_length_hist"] += np.asarray(s["episode_length_hist"], dtype=np.int64)
        for kind, per_tag in s["label_agreement"].items():
            dst = agg["label_agreement"].setdefault(kind, {})
            for tag, c in per_tag.items():
                d = dst.setdefault(tag, {"rows": 0, "agree": 0})
                d["rows"] += c["rows"]
                d["agree"] += c["agree"]
    for agg in out.values():
        agg["episode_length_hist"] = agg["episode_length_hist"].tolist()
    return out


def _quantile(hist: list[int], q: float) -> int:
    c = np.cumsum(hist)
    return int(np.searchsorted(c, q * c[-1])) if len(c) and c[-1] else 0


def dataset_card_data(folder: Path, splits: list[str], examples: int) -> DatasetCardData:
    """The card's metadata; ``configs`` maps each split to its shards (``data/<split>-*``) for ``load_dataset``."""
    size = next((name for limit, name in _SIZE_CATEGORIES if examples < limit), "n>1T")
    return DatasetCardData(
        license="apache-2.0", task_categories=["reinforcement-learning"], size_categories=[size],
        tags=["in-context-reinforcement-learning", "anymdp", "tabular-mdp", "synthetic"],
        pretty_name=f"AnyMDP in-context RL corpus ({folder.name})",
        configs=[{"config_name": "default",
                  "data_files": [{"split": split, "path": f"data/{split}-*"} for split in splits]}])


def render_dataset_card(folder: Path, meta: dict, stats: dict) -> str:
    """The card's markdown from the corpus' saved settings (``corpus.json``) and statistics."""
    splits = sorted(meta.get("splits", {}))
    labels = meta["splits"][splits[0]]["labels"] if splits else []
    examples = sum(s["sequences"] for s in stats.values())  # the Hub counts examples: sequences, not rows
    commands = meta.get("commands", {})
    cmd_text = "\n\n".join(f"{split}:\n\n```bash\n{commands[split]}\n```" for split in splits if split in commands) \
        or "Generated through the Python API (`anymdp_agent.data.generate_corpus`)."
    settings = []
    for split in splits:
        c = meta["splits"][split]
        settings.append(f"- **{split}**: {c['tasks']} sequences of {c['seq_len']} rows, states {c['n_states'][0]}-"
                        f"{c['n_states'][1]}, actions {c['n_actions'][0]}-{c['n_actions'][1]}, labels "
                        f"{', '.join(c['labels'])} (oracle gamma {c['oracle_gamma']}), task seeds from offset "
                        f"{c['seed_offset']} of the {split} range, generation seed {c['seed']}, behaviour weights "
                        + ", ".join(f"{k} {v:g}" for k, v in c["mixture"]["weights"].items()))
    sizes = "\n".join(f"- {split}: {s['sequences']} sequences, {s['rows']:,} rows, {s['steps']:,} environment steps, "
                      f"{s['shards']} shards" for split, s in stats.items()) or "- (no shards yet)"
    label_rows = "\n".join(
        {"oracle": "| `label_oracle` | list of int8 | the value-iteration oracle's action in the true state (-1: none) |",
         "planner": "| `label_planner` | list of int8 | the count-based planner's action given the same history (-1: none) |"}[k]
        for k in labels)
    acting = {}
    for s in stats.values():
        for k, v in s["behaviour_rows"].items():
            acting[k] = acting.get(k, 0) + v
    total_acting = max(sum(acting.values()), 1)
    mix = "| behaviour | share |\n|---|---|\n" + "\n".join(f"| {k} | {acting.get(k, 0) / total_acting:.3f} |"
                                                     for k in BEHAVIOURS)
    hist = np.sum([s["episode_length_hist"] for s in stats.values() if s["episode_length_hist"]], axis=0) \
        if stats else np.zeros(1)
    episodes = sum(s["episodes"] for s in stats.values())
    mean_len = sum(s["episode_length_sum"] for s in stats.values()) / max(episodes, 1)
    rows = ["| label | " + " | ".join(TAGS) + " |", "|---|" + "---|" * len(TAGS)]
    for kind in labels:
        cells = []
        for tag in TAGS:
            r = sum(s["label_agreement"].get(kind, {}).get(tag, {}).get("rows", 0) for s in stats.values())
            a = sum(s["label_agreement"].get(kind, {}).get(tag, {}).get("agree", 0) for s in stats.values())
            cells.append(f"{a / r:.2f} ({r:,} rows)" if r else "-")
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    card = DatasetCard.from_template(
        dataset_card_data(folder, splits, examples), template_str=template(TEMPLATE), commands=cmd_text,
        sampler_version=GENERATOR_VERSION, corpus_format=meta.get("format"),
        settings="\n".join(settings), sizes=sizes, label_rows=label_rows, behaviour_mix=mix, episodes=f"{episodes:,}",
        mean_length=f"{mean_len:.1f}", median_length=_quantile(list(hist), 0.5), p90_length=_quantile(list(hist), 0.9),
        agreement="\n".join(rows))
    return str(card).rstrip() + "\n"


def write_dataset_card(folder: str | Path) -> dict:
    """Render ``README.md`` of a corpus folder from what it holds; returns the aggregated statistics."""
    folder = Path(folder)
    meta = json.loads((folder / "corpus.json").read_text())
    stats = aggregate_stats(folder)
    text = render_dataset_card(folder, meta, stats)
    atomic_write(folder / "README.md", lambda fh: fh.write(text.encode()))
    return stats
