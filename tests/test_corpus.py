"""The corpus folder: shards, determinism, resumability, ``datasets`` loading, the dataset card, the CLI.

Everything runs offline on tiny corpora (a few sequences of a hundred-odd rows).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import anymdp_agent.data.corpus as corpus_mod
from anymdp_agent.cli import main
from anymdp_agent.data import (
    BEHAVIOURS,
    TAGS,
    CorpusConfig,
    MixtureConfig,
    check_corpus_features,
    corpus_features,
    generate_corpus,
    generate_shard,
)
from anymdp_agent.envs import GENERATOR_VERSION, sample_anymdp_task
from anymdp_agent.envs.seeds import SEED_RANGES, TEST, TRAIN, VALIDATION
from corpus_checks import check_episode_structure, greedy_sets

LABELS = ("oracle", "planner")
COMMAND = "anymdp-agent generate --out corpus --tasks 6 --seq-len 120"


def small_cfg(**kw) -> CorpusConfig:
    args = dict(tasks=6, seq_len=120, n_states=(8, 12), n_actions=(3, 5), labels=LABELS, tasks_per_shard=3)
    args.update(kw)
    return CorpusConfig(**args)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a folder (relative path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n", 2)[1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A finished two-shard corpus with both labels and curriculum sizes (written once per module)."""
    folder = tmp_path_factory.mktemp("c") / "corpus"
    generate_corpus(folder, small_cfg(), command=COMMAND)
    return folder


@pytest.fixture(scope="module")
def table(corpus):
    return pq.read_table(corpus / "data" / "train-00000-of-00002.parquet").combine_chunks()


# ---------------------------------------------------------------------- layout and rows


def test_folder_layout(corpus):
    files = sorted(folder_bytes(corpus))
    assert files == ["README.md", "corpus.json", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
                     "stats/train-00000.json", "stats/train-00001.json"]
    meta = json.loads((corpus / "corpus.json").read_text())
    assert meta["splits"]["train"] == json.loads(json.dumps(small_cfg().to_dict()))
    assert meta["commands"] == {"train": COMMAND}


def test_shard_schema_and_scalar_columns(corpus, table):
    assert table.schema == corpus_features(LABELS).arrow_schema
    assert table.num_rows == 3
    cfg = small_cfg()
    assert table["task_seed"].to_pylist() == list(cfg.task_seeds(0)) == [0, 1, 2]
    assert table["prompt"].to_pylist() == [0, 0, 0]
    assert table["sampler_version"].to_pylist() == [GENERATOR_VERSION] * 3
    for n, na in zip(table["n_states"].to_pylist(), table["n_actions"].to_pylist()):
        assert 8 <= n <= 12 and 3 <= na <= 5
    for name in ("observations", "actions", "rewards", "tags", "label_oracle", "label_planner"):
        assert all(len(x) == 120 for x in table[name].to_pylist()), name


def test_rows_are_the_tasks_their_seeds_name(table):
    """A reader can rebuild each row's task from (n_states, n_actions, task_seed): the oracle labels are its
    greedy actions at the observations' states, and the episode structure holds."""
    rows = table.to_pylist()
    tasks = [sample_anymdp_task(r["n_states"], r["n_actions"], seed=r["task_seed"]) for r in rows]
    arr = {k: np.array([r[k] for r in rows]) for k in ("observations", "actions", "rewards", "label_oracle", "label_planner")}
    counts = check_episode_structure(arr["observations"], arr["actions"], arr["rewards"],
                                     {"oracle": arr["label_oracle"], "planner": arr["label_planner"]}, tasks)
    assert counts["terminated"] + counts["truncated"] > 0
    greedy = greedy_sets(tasks, 0.994)
    for i, task in enumerate(tasks):
        real = arr["actions"][i] >= 0
        states = task.observation_to_state[arr["observations"][i][real]]
        assert np.all(greedy[i][states, arr["label_oracle"][i][real]])
        assert np.all(np.isin(arr["actions"][i][~real], [-1, -2]))
    assert np.all(np.isin(np.array([r["tags"] for r in rows]), np.arange(len(TAGS))))


def test_oracle_gamma_sets_the_prompt():
    table, _ = generate_shard(small_cfg(tasks=2, tasks_per_shard=2, seq_len=40, labels=("oracle",), oracle_gamma=0.5), 0)
    assert table["prompt"].to_pylist() == [2, 2]
    assert "label_planner" not in table.column_names


# ---------------------------------------------------------------------- determinism and seeds


def test_generate_shard_is_deterministic_and_shards_differ():
    cfg = small_cfg(seq_len=60)
    a, sa = generate_shard(cfg, 0)
    b, sb = generate_shard(cfg, 0)
    assert a.equals(b) and sa == sb
    c, _ = generate_shard(cfg, 1)
    assert c["task_seed"].to_pylist() == [3, 4, 5]
    assert not a.equals(c)
    assert a["observations"].to_pylist() != c["observations"].to_pylist()
    # Another generation seed gives other behaviour on the same tasks.
    d, _ = generate_shard(small_cfg(seq_len=60, seed=1), 0)
    assert d["task_seed"].equals(a["task_seed"]) and not d["actions"].equals(a["actions"])


def test_writing_a_shard_twice_gives_the_same_bytes(tmp_path, corpus):
    again = tmp_path / "corpus"  # same folder name: the card names the folder
    generate_corpus(again, small_cfg(), command=COMMAND)
    assert folder_bytes(again) == folder_bytes(corpus)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_task_seeds_come_from_the_split_range(split):
    cfg = small_cfg(split=split, seed_offset=7, tasks=5, tasks_per_shard=2, seq_len=20)
    assert cfg.num_shards == 3
    rng = SEED_RANGES[split]
    seeds = [s for k in range(cfg.num_shards) for s in cfg.task_seeds(k)]
    assert seeds == list(range(rng.start + 7, rng.start + 12))
    table, _ = generate_shard(cfg, 2)
    assert table["task_seed"].to_pylist() == [rng.start + 11]
    assert cfg.shard_name(2) == f"data/{split}-00002-of-00003.parquet"


def test_split_seed_ranges_are_disjoint():
    ranges = [TRAIN, VALIDATION, TEST]
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            assert a.stop <= b.start or b.stop <= a.start, (a, b)
    assert set(SEED_RANGES) == {"train", "validation", "test"}
    with pytest.raises(ValueError, match="past the test seed range"):
        CorpusConfig(tasks=10, seq_len=10, split="test", seed_offset=len(TEST) - 5)


@pytest.mark.parametrize("kw, message", [
    (dict(n_states=4), "n_states must be >= 8"),
    (dict(n_actions=(3, 200)), "n_actions must be <= 127"),
    (dict(labels=("foo",)), "labels must be a non-empty subset"),
    (dict(labels=()), "labels must be a non-empty subset"),
    (dict(oracle_gamma=0.7), "oracle_gamma must be one of"),
    (dict(split="dev"), "split must be one of"),
    (dict(tasks=0), "tasks must be a positive integer"),
    (dict(seq_len=0), "seq_len must be a positive integer"),
    (dict(n_states=(12, 8)), "lo <= hi"),
])
def test_config_refuses_bad_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        small_cfg(**kw)


# ---------------------------------------------------------------------- resumability


def test_resume_skips_finished_shards_and_equals_one_shot(tmp_path, corpus):
    folder = tmp_path / "corpus"
    cfg = small_cfg()
    stats = generate_corpus(folder, cfg, shard_range=(0, 1), command=COMMAND)
    assert stats["train"]["shards"] == 1 and stats["train"]["sequences"] == 3
    first = folder / cfg.shard_name(0)
    assert not (folder / cfg.shard_name(1)).exists()
    before = first.stat()
    stats = generate_corpus(folder, cfg, command=COMMAND)
    after = first.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "a finished shard was rewritten"
    assert stats["train"]["shards"] == 2
    assert folder_bytes(folder) == folder_bytes(corpus)


def test_rerun_with_other_settings_is_refused(tmp_path):
    folder = tmp_path / "c"
    generate_corpus(folder, small_cfg(seq_len=30, tasks=2, tasks_per_shard=2))
    saved = folder_bytes(folder)
    with pytest.raises(ValueError, match="other settings.*seq_len"):
        generate_corpus(folder, small_cfg(seq_len=31, tasks=2, tasks_per_shard=2))
    with pytest.raises(ValueError, match="other settings.*mixture"):
        generate_corpus(folder, small_cfg(seq_len=30, tasks=2, tasks_per_shard=2,
                                          mixture=MixtureConfig(unknown_episode_prob=0.3)))
    assert folder_bytes(folder) == saved  # nothing touched
    # A second split must keep the label columns (one corpus, one schema).
    with pytest.raises(ValueError, match="one schema"):
        generate_corpus(folder, small_cfg(seq_len=30, tasks=2, tasks_per_shard=2, split="validation", labels=("oracle",)))


def test_non_corpus_folder_is_refused(tmp_path):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no corpus.json"):
        generate_corpus(folder, small_cfg(tasks=2, tasks_per_shard=2, seq_len=20))
    assert sorted(os.listdir(folder)) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        generate_corpus(a_file, small_cfg(tasks=2, tasks_per_shard=2, seq_len=20))


def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        try:
            (folder / "probe").write_text("")
        except OSError:
            pass
        else:
            pytest.skip("this user can write into a 0o555 folder (root)")
        with pytest.raises(ValueError, match="cannot write to"):
            generate_corpus(folder, small_cfg(tasks=2, tasks_per_shard=2, seq_len=20))
    finally:
        folder.chmod(0o755)


def test_unwritable_folder_is_refused_even_as_root(tmp_path, monkeypatch):
    """The same refusal, with the permission error simulated (root ignores 0o555)."""
    import pathlib

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", denied)
    with pytest.raises(ValueError, match="cannot write to .*Permission denied; choose a writable --out"):
        generate_corpus(tmp_path / "c", small_cfg(tasks=2, tasks_per_shard=2, seq_len=20))


def test_interrupted_run_leaves_only_finished_shards(tmp_path, monkeypatch, corpus):
    folder = tmp_path / "corpus"
    cfg = small_cfg()
    real = corpus_mod.generate_shard

    def failing(c, k):
        if k == 1:
            raise RuntimeError("killed")
        return real(c, k)

    monkeypatch.setattr(corpus_mod, "generate_shard", failing)
    with pytest.raises(RuntimeError, match="killed"):
        generate_corpus(folder, cfg, command=COMMAND)
    assert sorted(os.listdir(folder / "data")) == ["train-00000-of-00002.parquet"]  # no temporary files either
    assert sorted(os.listdir(folder / "stats")) == ["train-00000.json"]
    assert not (folder / "README.md").exists()
    # The rerun finishes the job and gives the one-shot corpus.
    monkeypatch.setattr(corpus_mod, "generate_shard", real)
    generate_corpus(folder, cfg, command=COMMAND)
    assert folder_bytes(folder) == folder_bytes(corpus)


def test_interrupted_write_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    """A failure inside the parquet write itself (disk full, kill) leaves neither the shard nor a temp file."""
    folder = tmp_path / "c"
    cfg = small_cfg(tasks=2, tasks_per_shard=2, seq_len=20)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError):
        generate_corpus(folder, cfg)
    assert os.listdir(folder / "data") == []


def test_bad_ranges_are_refused_before_writing(tmp_path):
    folder = tmp_path / "c"
    with pytest.raises(ValueError, match="shard range 5:9 is outside 0:2"):
        generate_corpus(folder, small_cfg(), shard_range=(5, 9))
    with pytest.raises(ValueError, match="num_proc"):
        generate_corpus(folder, small_cfg(), num_proc=0)
    assert not folder.exists()


# ---------------------------------------------------------------------- datasets


def test_load_dataset_eager_and_streaming_agree(corpus, tmp_path):
    from datasets import load_dataset

    ds = load_dataset(str(corpus), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 6
    assert ds.features == corpus_features(LABELS)
    assert check_corpus_features(ds.features, need_labels=("planner",)) == LABELS
    stream = load_dataset(str(corpus), split="train", streaming=True)
    rows = list(stream)
    assert len(rows) == 6
    assert rows == ds.to_list()
    assert [r["task_seed"] for r in rows] == [0, 1, 2, 3, 4, 5]
    # The rows are the parquet rows.
    shards = [pq.read_table(corpus / "data" / f"train-0000{k}-of-00002.parquet").to_pylist() for k in range(2)]
    assert rows == shards[0] + shards[1]


def test_features_are_small_explicit_dtypes():
    f = corpus_features(("oracle",))
    as_text = {k: str(v) for k, v in f.items()}
    assert "int16" in as_text["observations"] and "int8" in as_text["actions"] and "float32" in as_text["rewards"]
    assert "int8" in as_text["tags"] and "int8" in as_text["label_oracle"]
    assert "label_planner" not in f
    assert list(corpus_features(LABELS))[:6] == ["observations", "actions", "rewards", "tags", "label_oracle",
                                                 "label_planner"]


def _tiny_dataset(labels=("oracle",)):
    from datasets import Dataset

    feats = corpus_features(labels)
    data = {"observations": [[0, 1]], "actions": [[1, -1]], "rewards": [[0.5, 0.0]], "tags": [[0, 0]],
            "task_seed": [3], "n_states": [16], "n_actions": [5], "prompt": [0], "sampler_version": [GENERATOR_VERSION]}
    for k in labels:
        data[f"label_{k}"] = [[1, -1]]
    return Dataset.from_dict(data).cast(feats)


def test_check_corpus_features_refuses_other_datasets():
    from datasets import List, Value

    ds = _tiny_dataset()
    assert check_corpus_features(ds.features) == ("oracle",)
    with pytest.raises(ValueError, match="column 'rewards' is missing"):
        check_corpus_features(ds.remove_columns("rewards").features)
    with pytest.raises(ValueError, match="column 'task_seed' is missing"):
        check_corpus_features(ds.remove_columns("task_seed").features)
    wrong = ds.cast_column("observations", List(Value("int32")))
    with pytest.raises(ValueError, match="'observations' has feature .*int32.*expected .*int16"):
        check_corpus_features(wrong.features)
    wrong = ds.cast_column("rewards", List(Value("float64")))
    with pytest.raises(ValueError, match="'rewards'"):
        check_corpus_features(wrong.features)
    with pytest.raises(ValueError, match="no label column"):
        check_corpus_features(ds.remove_columns("label_oracle").features)
    with pytest.raises(ValueError, match="no label_planner column.*--labels planner"):
        check_corpus_features(ds.features, need_labels=("planner",))


# ---------------------------------------------------------------------- the dataset card


def _stats_files(folder: Path, split: str = "train") -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "stats").glob(f"{split}-*.json"))]


def test_card_front_matter_and_command(corpus):
    readme = (corpus / "README.md").read_text()
    fm = front_matter(readme)
    assert fm["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert fm["license"] == "apache-2.0"
    assert "reinforcement-learning" in fm["task_categories"]
    assert f"```bash\n{COMMAND}\n```" in readme
    assert "label_oracle" in readme and "label_planner" in readme
    assert GENERATOR_VERSION in readme


def test_card_without_command_names_the_api(tmp_path):
    folder = tmp_path / "c"
    generate_corpus(folder, small_cfg(tasks=2, tasks_per_shard=2, seq_len=20, labels=("oracle",)))
    readme = (folder / "README.md").read_text()
    assert "generate_corpus" in readme
    assert "label_planner" not in readme


def test_card_statistics_match_the_stats_files(corpus):
    readme = (corpus / "README.md").read_text()
    stats = _stats_files(corpus)
    assert len(stats) == 2
    seqs = sum(s["sequences"] for s in stats)
    rows = sum(s["rows"] for s in stats)
    steps = sum(s["steps"] for s in stats)
    assert (seqs, rows) == (6, 6 * 120)
    assert f"- train: {seqs} sequences, {rows:,} rows, {steps:,} environment steps, 2 shards" in readme
    episodes = sum(s["episodes"] for s in stats)
    mean_len = sum(s["episode_length_sum"] for s in stats) / episodes
    assert f"Episodes: {episodes:,} complete episodes, mean length {mean_len:.1f} steps" in readme
    acting = {k: sum(s["behaviour_rows"][k] for s in stats) for k in BEHAVIOURS}
    total = sum(acting.values())
    assert total == steps
    for k in BEHAVIOURS:
        assert f"| {k} | {acting[k] / total:.3f} |" in readme
    for kind in LABELS:
        cells = []
        for tag in TAGS:
            r = sum(s["label_agreement"][kind][tag]["rows"] for s in stats)
            a = sum(s["label_agreement"][kind][tag]["agree"] for s in stats)
            cells.append(f"{a / r:.2f} ({r:,} rows)" if r else "-")
        assert f"| {kind} | " + " | ".join(cells) + " |" in readme
    # The steps counted in the stats are the real (non-closing) rows of the shards.
    real = sum(int((np.array(pq.read_table(p).column("actions").to_pylist()) >= 0).sum())
               for p in sorted((corpus / "data").glob("*.parquet")))
    assert real == steps


def test_card_size_category_counts_examples(tmp_path):
    """The Hub's ``size_categories`` is the number of examples (dataset rows = sequences), not of steps."""
    folder = tmp_path / "c"
    generate_corpus(folder, small_cfg(tasks=2, tasks_per_shard=2, seq_len=600, labels=("oracle",)))
    fm = front_matter((folder / "README.md").read_text())
    assert fm["size_categories"] == ["n<1K"]  # 2 sequences (of 1,200 steps in all)


def test_card_counts_only_shards_whose_data_exists(tmp_path, monkeypatch):
    """A shard whose parquet write failed must not be counted by a later partial run's card."""
    folder = tmp_path / "c"
    cfg = small_cfg(tasks=2, tasks_per_shard=1, seq_len=20, labels=("oracle",))
    real = pq.write_table

    def fail_once(*args, **kwargs):
        monkeypatch.setattr(pq, "write_table", real)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", fail_once)
    with pytest.raises(OSError):
        generate_corpus(folder, cfg, shard_range=(0, 1))
    assert not (folder / cfg.shard_name(0)).exists()
    stats = generate_corpus(folder, cfg, shard_range=(1, 2))  # e.g. another machine's range
    present = sorted(p.name for p in (folder / "data").glob("*.parquet"))
    assert present == ["train-00001-of-00002.parquet"]
    assert stats["train"]["sequences"] == 1 and stats["train"]["shards"] == 1
    assert "- train: 1 sequences" in (folder / "README.md").read_text()


def test_second_split_joins_the_card_and_loads(tmp_path):
    from datasets import load_dataset

    folder = tmp_path / "c"
    generate_corpus(folder, small_cfg(tasks=2, tasks_per_shard=2, seq_len=20, labels=("oracle",)))
    generate_corpus(folder, small_cfg(tasks=1, tasks_per_shard=2, seq_len=20, labels=("oracle",), split="validation"))
    fm = front_matter((folder / "README.md").read_text())
    assert fm["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"},
                                              {"split": "validation", "path": "data/validation-*"}]
    val = load_dataset(str(folder), split="validation", cache_dir=str(tmp_path / "cache"))
    assert val["task_seed"] == [VALIDATION.start]
    train = load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert train["task_seed"] == [0, 1]


# ---------------------------------------------------------------------- processes


@pytest.mark.slow
def test_two_processes_give_the_same_bytes(tmp_path):
    cfg = small_cfg(tasks=4, tasks_per_shard=1, seq_len=60)
    generate_corpus(tmp_path / "one" / "c", cfg, num_proc=1)
    generate_corpus(tmp_path / "two" / "c", cfg, num_proc=2)
    one, two = folder_bytes(tmp_path / "one" / "c"), folder_bytes(tmp_path / "two" / "c")
    assert len([k for k in one if k.endswith(".parquet")]) == 4
    assert one == two


# ---------------------------------------------------------------------- the command line

CLI_SMALL = ["--tasks", "4", "--seq-len", "50", "--tasks-per-shard", "2", "--n-states", "8:10", "--labels",
             "oracle,planner", "--no-progress"]


def test_cli_generate(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["generate", "--out", str(out), *CLI_SMALL]) == 0
    printed = capsys.readouterr().out
    assert f"{out}: train: 4 sequences, 200 rows in 2 shards" in printed
    cfg = CorpusConfig(**json.loads((out / "corpus.json").read_text())["splits"]["train"])
    assert (cfg.tasks, cfg.seq_len, cfg.n_states, cfg.labels) == (4, 50, (8, 10), LABELS)
    assert sorted(os.listdir(out / "data")) == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    # Rerunning the same command resumes (nothing to do) and succeeds.
    assert main(["generate", "--out", str(out), *CLI_SMALL]) == 0


def test_cli_generate_records_its_own_command(tmp_path, capsys):
    """The card names the command that was run: the arguments given to main(), not the host process' argv."""
    out = tmp_path / "corpus"
    assert main(["generate", "--out", str(out), *CLI_SMALL]) == 0
    capsys.readouterr()
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["commands"]["train"] == "anymdp-agent generate --out " + str(out) + " " + " ".join(CLI_SMALL)
    assert meta["commands"]["train"] in (out / "README.md").read_text()


def test_cli_generate_weights(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["generate", "--out", str(out), "--tasks", "2", "--seq-len", "40", "--weights", "oracle=1,random=0,explore=0,"
                 "qlearn=0,mixed_a=0,mixed_b=0,mixed_c=0,mixed_d=0,distill_a=0,distill_b=0", "--no-progress",
                 "--no-record-command"]) == 0
    capsys.readouterr()
    table = pq.read_table(out / "data" / "train-00000-of-00001.parquet")
    acts = np.array(table["actions"].to_pylist())
    labs = np.array(table["label_oracle"].to_pylist())
    np.testing.assert_array_equal(acts[acts >= 0], labs[acts >= 0])
    assert "commands" not in json.loads((out / "corpus.json").read_text())


@pytest.mark.parametrize("args, message", [
    (["--n-states", "4"], "n_states must be >= 8"),
    (["--labels", "foo"], "labels must be a non-empty subset"),
    (["--oracle-gamma", "0.7"], "oracle_gamma must be one of"),
    (["--tasks", "0"], "tasks must be a positive integer"),
    (["--shard-range", "5:9"], "shard range 5:9 is outside 0:2"),
    (["--shard-range", "1:1"], "shard range 1:1 is outside"),
    (["--weights", "nope=1"], "unknown behaviours"),
    (["--weights", "oracle"], "--weights takes NAME=WEIGHT"),
    (["--split", "dev"], "split must be one of"),
    (["--num-proc", "0"], "--num-proc must be a positive integer, got 0"),
    (["--weights", "random=abc"], "--weights: the weight of 'random' must be a number, got 'abc'"),
    (["--weights", "random=nan"], "the weight of behaviour 'random' must be a finite number >= 0, got nan"),
    (["--weights", "random=inf"], "the weight of behaviour 'random' must be a finite number >= 0, got inf"),
    (["--weights", "random=-1"], "must be a finite number >= 0"),
    (["--seq-len", "2000000000"], "lower --seq-len or --tasks-per-shard"),  # was a MemoryError traceback
    (["--seed", str(2**63)], "--seed must be in 0..2**63 - 1"),
    (["--seq-len", "0"], "--seq-len must be a positive integer"),
])
def test_cli_generate_bad_input_exits_2_before_writing(tmp_path, capsys, args, message):
    out = tmp_path / "corpus"
    base = ["generate", "--out", str(out), "--tasks", "4", "--tasks-per-shard", "2", "--seq-len", "20", "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main(base + args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("anymdp-agent generate: error: ") and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("value", ["abc", "1:x"])
def test_cli_generate_malformed_shard_range_exits_2(tmp_path, capsys, value):
    out = tmp_path / "corpus"
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--out", str(out), "--tasks", "4", "--tasks-per-shard", "2", "--seq-len", "20",
              "--no-progress", "--shard-range", value])
    assert exc.value.code == 2
    assert "LO:HI" in capsys.readouterr().err
    assert not out.exists()


def test_cli_generate_into_a_non_corpus_folder_exits_2(tmp_path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--out", str(out), "--tasks", "2", "--seq-len", "20", "--no-progress"])
    assert exc.value.code == 2
    assert "no corpus.json" in capsys.readouterr().err
    assert os.listdir(out) == ["keep.txt"]


def test_copied_corpus_resumes_elsewhere(tmp_path, corpus):
    """A corpus folder is self-contained: copied to another place it resumes with nothing to do."""
    dst = tmp_path / "corpus"
    shutil.copytree(corpus, dst)
    before = {p: (dst / p).stat().st_mtime_ns for p in ("data/train-00000-of-00002.parquet",
                                                         "data/train-00001-of-00002.parquet")}
    stats = generate_corpus(dst, small_cfg(), command=COMMAND)
    assert stats["train"]["sequences"] == 6
    assert before == {p: (dst / p).stat().st_mtime_ns for p in before}
    assert folder_bytes(dst) == folder_bytes(corpus)


# ---------------------------------------------------------------------- faults: damaged shards, failed runs, bad metadata


def test_rerun_regenerates_a_truncated_shard_and_removes_stale_temporaries(tmp_path, corpus, capsys):
    folder = tmp_path / corpus.name  # the card names the folder
    shutil.copytree(corpus, folder)
    cfg = small_cfg()
    shard = folder / cfg.shard_name(0)
    good = shard.read_bytes()
    shard.write_bytes(good[:300])  # a finished shard truncated after the fact (a bad copy, a full disk)
    stale = [folder / "data" / f".{Path(cfg.shard_name(1)).name}.x1y2.tmp", folder / "stats" / ".train-00001.json.ab.tmp",
             folder / ".corpus.json.zz.tmp"]
    for f in stale:
        f.write_bytes(b"half")
    untouched = folder / cfg.shard_name(1)
    before = untouched.stat()
    generate_corpus(folder, cfg, command=COMMAND)
    assert "is damaged (its bytes do not match the checksum in corpus.json): regenerating it" in capsys.readouterr().err
    assert shard.read_bytes() == good
    assert not any(f.exists() for f in stale)
    assert (untouched.stat().st_ino, untouched.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert folder_bytes(folder) == folder_bytes(corpus)


def test_a_shard_without_a_recorded_checksum_is_regenerated(tmp_path, corpus, capsys):
    folder = tmp_path / corpus.name
    shutil.copytree(corpus, folder)
    meta = json.loads((folder / "corpus.json").read_text())
    cfg = small_cfg()
    assert set(meta["shards"]) == {cfg.shard_name(0), cfg.shard_name(1)}
    assert meta["shards"][cfg.shard_name(0)] == {"rows": 3, "sha256": corpus_mod.file_sha256(folder / cfg.shard_name(0))}
    del meta["shards"][cfg.shard_name(1)]  # killed between the rename and the record
    (folder / "corpus.json").write_text(json.dumps(meta))
    generate_corpus(folder, cfg, command=COMMAND)
    assert "no checksum was recorded" in capsys.readouterr().err
    assert folder_bytes(folder) == folder_bytes(corpus)


def test_check_shard_refuses_what_training_cannot_use(tmp_path, corpus):
    cfg = small_cfg()
    good = corpus / cfg.shard_name(0)
    assert corpus_mod.check_shard(good, expected_rows=3) == 3
    assert corpus_mod.check_corpus_files([corpus / cfg.shard_name(k) for k in range(2)]) == cfg.tasks
    table = pq.read_table(good)
    cases = {}
    rewards = table.column("rewards").to_pylist()
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        bad = [list(r) for r in rewards]
        bad[1][2] = value
        cases[name] = table.set_column(table.schema.get_field_index("rewards"), "rewards",
                                       pa.array(bad, type=table.schema.field("rewards").type))
    cases["empty"] = table.slice(0, 0)
    for name, t in cases.items():
        pq.write_table(t, tmp_path / f"{name}.parquet")
    with pytest.raises(ValueError, match=r"nan.parquet holds 1 NaN or infinite rewards"):
        corpus_mod.check_shard(tmp_path / "nan.parquet")
    with pytest.raises(ValueError, match=r"inf.parquet holds 1 NaN or infinite rewards"):
        corpus_mod.check_shard(tmp_path / "inf.parquet")
    with pytest.raises(ValueError, match=r"empty.parquet holds no rows"):
        corpus_mod.check_shard(tmp_path / "empty.parquet")
    (tmp_path / "cut.parquet").write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut.parquet is not a readable parquet file"):
        corpus_mod.check_shard(tmp_path / "cut.parquet")
    with pytest.raises(ValueError, match=r"holds 3 sequences, 2 expected"):
        corpus_mod.check_shard(good, expected_rows=2)


def test_settings_that_never_produced_a_shard_can_be_replaced(tmp_path, monkeypatch):
    folder = tmp_path / "c"
    real = corpus_mod.generate_shard
    monkeypatch.setattr(corpus_mod, "generate_shard", lambda c, k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):
        generate_corpus(folder, small_cfg(seq_len=30, tasks=2, tasks_per_shard=2))
    assert json.loads((folder / "corpus.json").read_text())["splits"]["train"]["seq_len"] == 30
    monkeypatch.setattr(corpus_mod, "generate_shard", real)
    generate_corpus(folder, small_cfg(seq_len=31, tasks=2, tasks_per_shard=2))  # the corrected rerun
    assert json.loads((folder / "corpus.json").read_text())["splits"]["train"]["seq_len"] == 31
    with pytest.raises(ValueError, match="other settings.*seq_len"):  # now a shard exists: refused
        generate_corpus(folder, small_cfg(seq_len=30, tasks=2, tasks_per_shard=2))


def test_corpus_json_is_standard_json(corpus):
    text = (corpus / "corpus.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"corpus.json holds {c}"))
    with pytest.raises(ValueError, match="must be a finite number"):
        MixtureConfig(weights={"random": float("nan")})


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "is not an anymdp-agent corpus.json (a JSON object with a 'splits' object, got list)"),
    ('{"format": 1, "spl', "is corrupt (not JSON"),
    ('{"format": 1, "splits": [1]}', "is not an anymdp-agent corpus.json"),
])
def test_bad_corpus_json_is_named(tmp_path, capsys, content, message):
    out = tmp_path / "c"
    out.mkdir()
    (out / "corpus.json").write_text(content)
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--out", str(out), "--tasks", "2", "--seq-len", "20", "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{out / 'corpus.json'} {message}" in err and len(err.strip().splitlines()) == 1
    assert os.listdir(out) == ["corpus.json"]


def test_a_shard_that_does_not_fit_in_memory_is_refused_before_writing(tmp_path, monkeypatch, capsys):
    import anymdp_agent.envs.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda: 2**30)
    out = tmp_path / "c"
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--out", str(out), "--tasks", "4", "--seq-len", "100000000", "--tasks-per-shard", "1",
              "--num-proc", "2", "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "generating 2 shard(s) of 1 sequences x 100000000 rows at once needs about 5.0 GiB of memory and 1.0 GiB" \
        in err and "lower --seq-len, --tasks-per-shard or --num-proc" in err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_num_proc_workers_stop_with_the_parent(tmp_path, signame):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "c"
    p = subprocess.Popen([sys.executable, "-m", "anymdp_agent.cli", "generate", "--out", str(out), "--tasks", "40",
                          "--seq-len", "3000", "--tasks-per-shard", "2", "--num-proc", "2", "--no-progress"],
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("data/*.parquet")):  # stop it once it has finished a shard
        time.sleep(0.1)
    sig = getattr(signal, signame)
    if sig == signal.SIGINT:
        os.killpg(p.pid, sig)  # Ctrl-C reaches the whole foreground process group
    else:
        os.kill(p.pid, sig)  # SIGTERM to the parent alone
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig
    assert err == f"anymdp-agent generate: stopped by {signame}; finished shards are kept: rerun the same command " \
                  "to resume\n"
    shards = sorted(os.listdir(out / "data"))
    time.sleep(3)
    assert sorted(os.listdir(out / "data")) == shards  # no orphan worker goes on writing
    assert subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True).stdout == b""
