"""Pushing a folder to the Hub in one commit, offline: the operations, a fake API, failures, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from anymdp_agent import hub
from anymdp_agent.cli import main

from mock_hub import mock_hub  # noqa: F401  (a fixture)


class FakeApi:
    """Records the calls push_folder makes; ``fail`` names a method that raises."""

    def __init__(self, fail: str | None = None):
        self.calls = []
        self.fail = fail

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.fail == "create_repo":
            raise PermissionError("403 Forbidden: no write access")

    def create_commit(self, repo_id, **kwargs):
        self.calls.append(("create_commit", repo_id, kwargs))
        if self.fail == "create_commit":
            raise ConnectionError("connection reset by peer")
        return "commit-info"


def make_folder(root: Path) -> Path:
    folder = root / "corpus"
    files = {
        "README.md": "---\nlicense: apache-2.0\n---\n# card\n",
        "corpus.json": "{}",
        "data/train-00000-of-00002.parquet": "p0",
        "data/train-00001-of-00002.parquet": "p1",
        "stats/train-00000.json": "{}",
        # never sent: hidden files, hidden folders, temporary files of interrupted writes
        ".write-probe": "",
        "data/.train-00002-of-00002.parquet.abc123.tmp": "half",
        ".cache/huggingface/x.lock": "",
        "stats/leftover.tmp": "",
    }
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


EXPECTED = ["README.md", "corpus.json", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
            "stats/train-00000.json"]


def test_offline_in_tests():
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_commit_operations_list_exactly_the_folders_files(tmp_path):
    folder = make_folder(tmp_path)
    ops = hub.commit_operations(folder)
    assert [op.path_in_repo for op in ops] == EXPECTED
    for op in ops:
        assert Path(op.path_or_fileobj) == folder / op.path_in_repo


def test_commit_operations_refuse_empty_or_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        hub.commit_operations(tmp_path / "missing")
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    (empty / ".hidden" / "f").write_text("x")
    with pytest.raises(ValueError, match="holds no files"):
        hub.commit_operations(empty)


def test_push_folder_sends_one_commit_with_exactly_those_operations(tmp_path):
    folder = make_folder(tmp_path)
    api = FakeApi()
    info = hub.push_folder(folder, "user/anymdp-corpus", repo_type="dataset", private=True, api=api)
    assert info == "commit-info"
    names = [c[0] for c in api.calls]
    assert names == ["create_repo", "create_commit"]
    _, repo_id, kwargs = api.calls[0]
    assert repo_id == "user/anymdp-corpus"
    assert kwargs["repo_type"] == "dataset" and kwargs["exist_ok"] is True and kwargs["private"] is True
    _, repo_id, kwargs = api.calls[1]
    assert repo_id == "user/anymdp-corpus" and kwargs["repo_type"] == "dataset"
    assert [op.path_in_repo for op in kwargs["operations"]] == EXPECTED
    assert kwargs["commit_message"] == "Upload corpus with anymdp-agent"


def test_push_folder_commit_message(tmp_path):
    api = FakeApi()
    hub.push_folder(make_folder(tmp_path), "user/x", repo_type="dataset", commit_message="v2 shards", api=api)
    assert api.calls[1][2]["commit_message"] == "v2 shards"


@pytest.mark.parametrize("fail", ["create_commit", "create_repo"])
def test_failing_api_raises_push_error_saying_nothing_was_committed(tmp_path, fail):
    api = FakeApi(fail=fail)
    with pytest.raises(hub.PushError, match="nothing was committed") as exc:
        hub.push_folder(make_folder(tmp_path), "user/x", repo_type="dataset", api=api)
    assert "user/x" in str(exc.value)
    assert sum(c[0] == "create_commit" for c in api.calls) <= 1


def test_missing_card_is_refused_before_any_api_call(tmp_path):
    folder = make_folder(tmp_path)
    (folder / "README.md").unlink()
    api = FakeApi()
    with pytest.raises(ValueError, match="lacks README.md"):
        hub.push_folder(folder, "user/x", repo_type="dataset", api=api)
    assert api.calls == []
    # Extra required files (the CLI asks for corpus.json too).
    folder2 = make_folder(tmp_path / "b")
    (folder2 / "corpus.json").unlink()
    with pytest.raises(ValueError, match="lacks corpus.json"):
        hub.push_folder(folder2, "user/x", repo_type="dataset", required=("README.md", "corpus.json"), api=api)
    assert api.calls == []


@pytest.mark.parametrize("repo_id", ["noslash", "a/b/c", "/name", "user/", "", "user/na me", "user/name..", "us er/name"])
def test_bad_repo_ids_are_refused_before_any_api_call(tmp_path, repo_id):
    api = FakeApi()
    with pytest.raises(ValueError):
        hub.push_folder(make_folder(tmp_path), repo_id, repo_type="dataset", api=api)
    assert api.calls == []


def test_bad_repo_type_is_refused(tmp_path):
    api = FakeApi()
    with pytest.raises(ValueError, match="repo_type"):
        hub.push_folder(make_folder(tmp_path), "user/x", repo_type="space", api=api)
    assert api.calls == []


def test_push_of_a_real_corpus_folder(tmp_path):
    from anymdp_agent.data import CorpusConfig, generate_corpus

    folder = tmp_path / "corpus"
    generate_corpus(folder, CorpusConfig(tasks=2, seq_len=20, tasks_per_shard=1))
    api = FakeApi()
    hub.push_folder(folder, "user/corpus", repo_type="dataset", required=("README.md", "corpus.json"), api=api)
    ops = api.calls[1][2]["operations"]
    assert [op.path_in_repo for op in ops] == ["README.md", "corpus.json", "data/train-00000-of-00002.parquet",
                                               "data/train-00001-of-00002.parquet", "stats/train-00000.json",
                                               "stats/train-00001.json"]


# ---------------------------------------------------------------------- the command line


def test_cli_push_dataset_refusals_exit_2(tmp_path, capsys):
    folder = make_folder(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["push-dataset", "--folder", str(folder), "--repo-id", "noslash"])
    assert exc.value.code == 2
    assert "repo id must look like USER/NAME" in capsys.readouterr().err
    (folder / "corpus.json").unlink()
    with pytest.raises(SystemExit) as exc:
        main(["push-dataset", "--folder", str(folder), "--repo-id", "user/x"])
    assert exc.value.code == 2
    assert "lacks corpus.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["push-dataset", "--folder", str(tmp_path / "missing"), "--repo-id", "user/x"])
    assert exc.value.code == 2
    assert "not a folder" in capsys.readouterr().err


def test_cli_push_dataset_offline_fails_cleanly(tmp_path, capsys):
    """Offline (as in every test), the real HfApi cannot reach the Hub: exit 1, nothing committed, no traceback."""
    folder = make_folder(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["push-dataset", "--folder", str(folder), "--repo-id", "user/x", "--token", "hf_fake"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("anymdp-agent push-dataset: error: ") and "nothing was committed" in err


# ---------------------------------------------------------------------- checkpoints


class RecordingApi(FakeApi):
    """Also keeps the README text as it stood in the staged folder at commit time."""

    def create_commit(self, repo_id, **kwargs):
        for op in kwargs["operations"]:
            if op.path_in_repo == "README.md":
                self.readme = Path(op.path_or_fileobj).read_text()
        return super().create_commit(repo_id, **kwargs)


def _bundled_copy(tmp_path) -> Path:
    import shutil

    from anymdp_agent.rollout import bundled_agent_path

    folder = tmp_path / "ckpt"
    shutil.copytree(bundled_agent_path(), folder)
    return folder


def test_push_checkpoint_sends_the_bundled_agent_in_one_commit():
    from anymdp_agent.hub import push_checkpoint
    from anymdp_agent.rollout import bundled_agent_path

    folder = bundled_agent_path()
    card_before = (folder / "README.md").read_text()
    api = RecordingApi()
    assert push_checkpoint(folder, "someone/anymdp-agent", api=api) == "commit-info"
    commits = [c for c in api.calls if c[0] == "create_commit"]
    assert len(commits) == 1 and commits[0][2]["repo_type"] == "model"
    sent = {op.path_in_repo for op in commits[0][2]["operations"]}
    expected = {"config.json", "model.safetensors", "configuration_anymdp_agent.py", "modeling_anymdp_agent.py",
                "README.md", "train_config.json"}
    assert sent == expected | {f"eval/{p.name}" for p in (folder / "eval").iterdir()}
    assert 'from_pretrained("someone/anymdp-agent", trust_remote_code=True)' in api.readme
    assert "bundled_agent_path" not in api.readme
    assert (folder / "README.md").read_text() == card_before  # the source folder is left as it was


def test_push_keeps_every_section_of_the_bundled_card():
    """Only the load snippet changes: the bundled agent's own limitations (and everything else) are sent as written."""
    from anymdp_agent.hub import push_checkpoint
    from anymdp_agent.rollout import bundled_agent_path

    from anymdp_agent.training.bundle import limitations_for

    folder = bundled_agent_path()
    limitations = limitations_for(folder.name)
    before = (folder / "README.md").read_text()
    api = RecordingApi()
    push_checkpoint(folder, "someone/anymdp-agent", api=api)
    assert limitations.splitlines()[0] in before and limitations.splitlines()[0] in api.readme
    changed_before = [line for line in before.splitlines() if line not in api.readme.splitlines()]
    changed_after = [line for line in api.readme.splitlines() if line not in before.splitlines()]
    assert changed_before == ["from anymdp_agent.rollout import bundled_agent_path",
                              f'model = AutoModel.from_pretrained(bundled_agent_path("{folder.name}"), '
                              "trust_remote_code=True)"]
    assert changed_after == ['model = AutoModel.from_pretrained("someone/anymdp-agent", trust_remote_code=True)']


def test_push_checkpoint_refuses_an_incomplete_folder(tmp_path):
    from anymdp_agent.hub import push_checkpoint
    from anymdp_agent.rollout import bundled_agent_path

    folder = _bundled_copy(tmp_path)
    (folder / "model.safetensors").unlink()
    api = FakeApi()
    with pytest.raises(ValueError, match="model.safetensors"):
        push_checkpoint(folder, "someone/x", api=api)
    import shutil

    shutil.copy(bundled_agent_path() / "model.safetensors", folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="auto_map"):
        push_checkpoint(folder, "someone/x", api=api)
    assert api.calls == []


@pytest.mark.parametrize("extra", ["helper.py", "eval/plot_helper.py", "notes.txt", "pytorch_model.bin",
                                   "eval/extra/eval-x.json"])
def test_push_checkpoint_refuses_files_the_package_does_not_write(tmp_path, extra):
    from anymdp_agent.hub import push_checkpoint

    folder = _bundled_copy(tmp_path)
    (folder / extra).parent.mkdir(parents=True, exist_ok=True)
    (folder / extra).write_text("import os\n")
    api = FakeApi()
    with pytest.raises(ValueError, match="files the package does not write: " + extra.replace(".", r"\.")):
        push_checkpoint(folder, "someone/x", api=api)
    assert api.calls == []


def test_push_checkpoint_refuses_code_that_auto_map_names(tmp_path):
    """A .py that auto_map names is still not the package's code: refused before anything is sent."""
    from anymdp_agent.hub import push_checkpoint

    folder = _bundled_copy(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoModel"] = "my_model.MyModel"
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "my_model.py").write_text("class MyModel: ...\n")
    api = FakeApi()
    with pytest.raises(ValueError, match=r"auto_map names code the package does not write \(my_model\.py\)"):
        push_checkpoint(folder, "someone/x", api=api)
    assert api.calls == []


def test_push_checkpoint_refuses_a_card_that_does_not_parse(tmp_path):
    from anymdp_agent.hub import push_checkpoint

    folder = _bundled_copy(tmp_path)
    (folder / "README.md").write_text("---\nmodel-index:\n  name: FrozenLake-v1 {'map_name': '4x4'}: x\n---\n# card\n")
    api = FakeApi()
    with pytest.raises(ValueError, match="does not parse as a model card"):
        push_checkpoint(folder, "someone/x", api=api)
    assert api.calls == []


def test_push_checkpoint_renders_a_missing_card_for_the_repository(tmp_path):
    from anymdp_agent.hub import push_checkpoint

    folder = _bundled_copy(tmp_path)
    (folder / "README.md").unlink()
    api = RecordingApi()
    push_checkpoint(folder, "someone/fresh-agent", api=api)
    assert "# fresh-agent" in api.readme and 'from_pretrained("someone/fresh-agent"' in api.readme
    assert not (folder / "README.md").exists()


def test_eval_results_folder_is_sent_other_hidden_files_are_not(tmp_path):
    folder = make_folder(tmp_path)
    (folder / ".eval_results").mkdir()
    (folder / ".eval_results" / "anymdp.yaml").write_text("- dataset: {id: x/y, task_id: t}\n  value: 1\n")
    (folder / ".eval_results" / ".anymdp.yaml.abc.tmp").write_text("half")
    (folder / "data" / ".eval_results").mkdir()
    (folder / "data" / ".eval_results" / "x.yaml").write_text("")  # only at the top, where the Hub reads it
    assert [op.path_in_repo for op in hub.commit_operations(folder)] == [".eval_results/anymdp.yaml", *EXPECTED]


def test_push_checkpoint_sends_eval_results(tmp_path):
    from anymdp_agent.hub import push_checkpoint

    folder = _bundled_copy(tmp_path)
    (folder / ".eval_results").mkdir()
    (folder / ".eval_results" / "anymdp-16.yaml").write_text("- dataset: {id: x/y, task_id: t}\n  value: 0.7\n")
    api = RecordingApi()
    push_checkpoint(folder, "someone/x", api=api)
    sent = [op.path_in_repo for op in api.calls[1][2]["operations"]]
    assert ".eval_results/anymdp-16.yaml" in sent


# ---------------------------------------------------------------------- huggingface_hub's real code, network mocked


def test_push_checkpoint_through_huggingface_hub_sends_exactly_the_staged_folder(mock_hub):
    """The real HfApi (create_repo, YAML validation, preupload, commit), answered at the HTTP layer."""
    from anymdp_agent.hub import push_checkpoint
    from anymdp_agent.rollout import bundled_agent_path

    folder = bundled_agent_path()
    info = push_checkpoint(folder, "someone/anymdp-agent", token="hf_fake_token")
    assert info.commit_url == "https://huggingface.co/someone/anymdp-agent/commit/abc123"
    assert [r for r in mock_hub.requests] == [
        ("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"),
        ("POST", "/api/models/someone/anymdp-agent/preupload/main"),
        ("POST", "/api/models/someone/anymdp-agent/commit/main")]
    commit, = mock_hub.commits
    assert commit["repo_type"] == "models" and commit["other_operations"] == []
    files = commit["files"]
    expected = {"config.json", "model.safetensors", "configuration_anymdp_agent.py", "modeling_anymdp_agent.py",
                "README.md", "train_config.json", *(f"eval/{p.name}" for p in (folder / "eval").iterdir())}
    assert set(files) == expected
    for name in expected - {"README.md"}:
        assert files[name] == (folder / name).read_bytes(), name  # byte for byte what the folder holds
    card = files["README.md"].decode()
    assert card == (folder / "README.md").read_text().replace(
        'from anymdp_agent.rollout import bundled_agent_path\n'
        f'model = AutoModel.from_pretrained(bundled_agent_path("{folder.name}"), trust_remote_code=True)',
        'model = AutoModel.from_pretrained("someone/anymdp-agent", trust_remote_code=True)')


def test_cli_push_and_push_dataset_through_huggingface_hub(mock_hub, tmp_path, capsys):
    from anymdp_agent.data import CorpusConfig, generate_corpus
    from anymdp_agent.rollout import bundled_agent_path

    assert main(["push", "--checkpoint", str(bundled_agent_path()), "--repo-id", "someone/agent",
                 "--token", "hf_fake_token"]) == 0
    corpus = tmp_path / "corpus"
    generate_corpus(corpus, CorpusConfig(tasks=2, seq_len=20, tasks_per_shard=1))
    assert main(["push-dataset", "--folder", str(corpus), "--repo-id", "someone/corpus", "--token", "hf_fake_token"]) == 0
    out = capsys.readouterr().out
    assert "https://huggingface.co/someone/agent/commit/abc123" in out
    model_commit, data_commit = mock_hub.commits
    assert model_commit["repo_id"] == "someone/agent" and data_commit["repo_id"] == "someone/corpus"
    assert data_commit["repo_type"] == "datasets"
    assert set(data_commit["files"]) == {"README.md", "corpus.json", "data/train-00000-of-00002.parquet",
                                         "data/train-00001-of-00002.parquet", "stats/train-00000.json",
                                         "stats/train-00001.json"}
    assert ("POST", "/api/validate-yaml") in mock_hub.requests


def test_a_card_whose_yaml_does_not_parse_is_stopped_by_the_hub_check(mock_hub, tmp_path):
    """The mock answers validate-yaml as the Hub does: the old f-string YAML would have been refused there."""
    folder = make_folder(tmp_path)
    (folder / "README.md").write_text("---\nname: FrozenLake-v1 {'map_name': '4x4'}: x\n---\n# card\n")
    with pytest.raises(hub.PushError, match="nothing was committed"):
        hub.push_folder(folder, "someone/x", repo_type="dataset", token="hf_fake_token")
    assert mock_hub.commits == []
