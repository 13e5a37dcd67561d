"""Model and dataset cards parse with huggingface_hub, and their metadata says what the artifacts say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard

from anymdp_agent.hub import pretrained_dir, render_model_card, write_model_card
from anymdp_agent.rollout import bundled_agent_names

BUNDLED = [pretrained_dir() / name for name in bundled_agent_names()]


def _expected_metrics(result: dict) -> dict[str, float]:
    """The headline numbers of the agent, read straight from the harness' JSON."""
    agent = result["learners"]["agent"]
    steps, window = result["config"]["steps"], result["config"]["window"]

    def mean_of(lo, hi):
        vals = [w["mean"] for s, w in zip(agent["window_starts"], agent["windows"]) if lo <= s < hi]
        return sum(vals) / len(vals)

    out = {"normalized_score_auc": agent["auc"]["mean"],
           "normalized_score_last_quarter": mean_of(int(steps * 0.75), steps),
           "normalized_score_first_window": mean_of(0, window)}
    if agent.get("success_windows"):
        full = max(x["n"] for x in agent["success_windows"])
        out["success_rate_last_window"] = [x for x in agent["success_windows"] if x["n"] == full][-1]["mean"]
    return out


def check_model_index(card: ModelCard, name: str, eval_dir: Path) -> None:
    """Every eval JSON appears in the parsed model-index: task, dataset type and name, every metric and value."""
    results = {p.stem[len("eval-"):]: json.loads(p.read_text()) for p in sorted(eval_dir.glob("eval-*.json"))}
    assert results
    assert card.data.model_name == name
    by_suite = {}
    for r in card.data.eval_results:
        assert (r.task_type, r.task_name) == ("reinforcement-learning", "In-context reinforcement learning")
        by_suite.setdefault(r.dataset_type, []).append(r)
    assert set(by_suite) == set(results)
    for suite, result in results.items():
        entries = by_suite[suite]
        assert {r.dataset_name for r in entries} == {result["suite"]["description"]}
        got = {r.metric_type: r.metric_value for r in entries}
        expected = _expected_metrics(result)
        assert set(got) == set(expected)
        for metric, value in expected.items():
            assert got[metric] == pytest.approx(value, abs=5e-5), (suite, metric)


@pytest.mark.parametrize("folder", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_cards_parse_and_carry_their_eval_results(folder):
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert (data.library_name, data.license, data.pipeline_tag) == ("transformers", "apache-2.0",
                                                                    "reinforcement-learning")
    assert "custom_code" in data.tags
    check_model_index(card, folder.name, folder / "eval")
    # The FrozenLake suite's name holds braces and colons: parsed back exactly, not a YAML error.
    names = {r.dataset_name for r in data.eval_results}
    if (folder / "eval" / "eval-frozenlake.json").is_file():
        assert "Gymnasium FrozenLake-v1 {'map_name': '4x4', 'is_slippery': True}" in names
    # The snippet loads the bundled folder itself: a path that survives anything done to a training run.
    assert (f'model = AutoModel.from_pretrained(bundled_agent_path("{folder.name}"), trust_remote_code=True)'
            in card.text)


@pytest.mark.parametrize("folder", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_cards_are_what_the_renderer_writes_now(folder):
    """The bundled card is the renderer's output from the folder's own artifacts (regenerate with
    ``python training/bundle.py --card-only --name NAME``)."""
    from anymdp_agent.training.bundle import limitations_for

    assert (folder / "README.md").read_text() == render_model_card(folder, extra_limitations=limitations_for(folder.name),
                                                                   name=folder.name)


@pytest.fixture(scope="module")
def evaluated_checkpoint(tmp_path_factory):
    """A tiny untrained planning agent, evaluated by the real harness on two small suites."""
    import torch

    from anymdp_agent import AnyMDPAgentConfig, AnyMDPAgentModel
    from anymdp_agent.evaluation import EvalConfig, evaluate, write_results

    folder = tmp_path_factory.mktemp("card") / "pretrained_model"
    torch.manual_seed(0)
    AnyMDPAgentModel(AnyMDPAgentConfig(num_observations=10, num_actions=5, planning_steps=3,
                                       backbone="planning")).save_pretrained(folder)
    for suite in ("anymdp-8", "anymdp-10"):  # caps of 100 steps: every task ends episodes within the budget
        cfg = EvalConfig(suite=suite, learners=[f"agent:{folder}", "random"], tasks=2, steps=240, window=60)
        result = evaluate(cfg, progress=False)
        result["learners"] = {("agent" if k.startswith("agent:") else k): v for k, v in result["learners"].items()}
        write_results(result, folder / "eval", stem=f"eval-{suite}", compact=True)
    return folder


def test_a_rendered_card_parses_with_its_model_index(evaluated_checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(evaluated_checkpoint, folder)
    write_model_card(folder, name="tiny-agent", load_from="runs/x/best")
    card = ModelCard.load(folder / "README.md")
    check_model_index(card, "tiny-agent", folder / "eval")
    assert card.data.datasets is None  # no train_config.json: no corpus to name
    assert 'model = AutoModel.from_pretrained("runs/x/best", trust_remote_code=True)' in card.text
    assert "| agent |" in card.text and "| random |" in card.text


def test_a_card_says_which_task_sizes_its_checkpoint_takes(evaluated_checkpoint):
    """A planning agent's card names its vocabulary; the model_based default's says any size (its state takes any)."""
    planning = render_model_card(evaluated_checkpoint)
    assert "vocabulary: 10 observation ids, 5 actions" in planning and "at most 10 observation ids" in planning
    default = (pretrained_dir() / "anymdp-agent-model-based-cpu" / "README.md").read_text()
    assert "any number of observation ids and actions" in default and "at most 64" not in default


def test_quoting_is_left_to_the_yaml_writer(evaluated_checkpoint, tmp_path):
    """Descriptions with the characters that broke the hand-written YAML come back exactly."""
    folder = tmp_path / "ckpt"
    shutil.copytree(evaluated_checkpoint, folder)
    path = folder / "eval" / "eval-anymdp-8.json"
    result = json.loads(path.read_text())
    nasty = "Gymnasium X-v1 {'map_name': '4x4'}: a # b - 'c' \"d\""
    result["suite"]["description"] = nasty
    path.write_text(json.dumps(result))
    card = ModelCard(render_model_card(folder, name="n"))
    assert nasty in {r.dataset_name for r in card.data.eval_results}


def test_the_training_corpus_is_named_by_its_hub_id_or_its_folder(evaluated_checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(evaluated_checkpoint, folder)
    local = tmp_path / "anymdp-s16-planner"
    local.mkdir()
    for corpus, local, datasets in [("someone/anymdp-s16", None, ["someone/anymdp-s16"]),
                                    (str(local), None, ["anymdp-s16-planner"]), ("", None, None),
                                    ("data/seq-a", True, ["seq-a"]), ("someone/anymdp-s16", False, ["someone/anymdp-s16"])]:
        record = {"recipe": "tiny", "corpus": corpus, "step": 2, **({} if local is None else {"corpus_local": local})}
        (folder / "train_config.json").write_text(json.dumps(record))
        card = ModelCard(render_model_card(folder))
        assert card.data.datasets == datasets, corpus
        assert "Recipe: `tiny`" in card.text
    record = {"recipe": "tiny", "corpus": "data/seq-a", "corpus_local": True, "step": 2,
              "corpus_command": "anymdp-agent generate --out data/seq-a --tasks 8"}
    (folder / "train_config.json").write_text(json.dumps(record))
    assert "made with `anymdp-agent generate --out data/seq-a --tasks 8`" in ModelCard(render_model_card(folder)).text


def test_a_card_of_an_unevaluated_checkpoint_has_no_model_index(evaluated_checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(evaluated_checkpoint, folder)
    shutil.rmtree(folder / "eval")
    card = ModelCard(render_model_card(folder, repo_id="someone/agent"))
    assert card.data.eval_results is None and "model-index" not in card.content
    assert "Not evaluated yet" in card.text and 'from_pretrained("someone/agent"' in card.text


def test_dataset_card_parses_and_its_configs_load(tmp_path):
    from datasets import load_dataset

    from anymdp_agent.data import CorpusConfig, generate_corpus

    folder = tmp_path / "corpus"
    generate_corpus(folder, CorpusConfig(tasks=3, seq_len=24, tasks_per_shard=2))
    generate_corpus(folder, CorpusConfig(tasks=2, seq_len=24, tasks_per_shard=2, split="validation"))
    card = DatasetCard.load(folder / "README.md")
    data = card.data
    assert (data.license, data.task_categories, data.size_categories) == ("apache-2.0", ["reinforcement-learning"],
                                                                          ["n<1K"])
    assert data.pretty_name == "AnyMDP in-context RL corpus (corpus)"
    assert data.configs == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"}, {"split": "validation", "path": "data/validation-*"}]}]
    assert "- train: 3 sequences" in card.text and "- validation: 2 sequences" in card.text
    ds = load_dataset(str(folder))
    assert (ds["train"].num_rows, ds["validation"].num_rows) == (3, 2)
