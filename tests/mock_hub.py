"""A stand-in for the Hub's HTTP API, at the network boundary: huggingface_hub's own code runs unchanged.

huggingface_hub sends every request through one ``httpx2.Client`` made by a replaceable factory
(``set_client_factory``); the fixture :func:`mock_hub` swaps in a client whose transport answers the
four endpoints a one-commit push uses (create the repo, validate the card's YAML, pre-upload, commit)
and records what was sent. Preupload answers ``regular`` for every file, so the content travels in the
commit payload itself, where the test can read it back byte for byte.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
import yaml


class MockHub:
    """Records every request; ``commits`` holds each commit as ``{"summary": ..., "files": {path: bytes}}``."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.commits: list[dict] = []

    def handler(self, request):
        import httpx2

        path = request.url.path
        self.requests.append((request.method, path))
        if path == "/api/repos/create":
            body = json.loads(request.content)
            prefix = "" if body.get("type") in (None, "model") else f"{body['type']}s/"
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{prefix}{body['organization']}/{body['name']}"})
        if path == "/api/validate-yaml":
            content = json.loads(request.content)["content"]
            m = re.match(r"---\n(.*?)\n---\n", content, re.S)
            try:
                yaml.safe_load(m.group(1) if m else "")
            except yaml.YAMLError as e:
                return httpx2.Response(400, json={"errors": [{"message": str(e)}], "warnings": []})
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if re.fullmatch(r"/api/(models|datasets)/[^/]+/[^/]+/preupload/main", path):
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                        for f in files]})
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/commit/main", path)
        if m:
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line]
            header = next(x["value"] for x in lines if x["key"] == "header")
            files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            others = [x["key"] for x in lines if x["key"] not in ("header", "file")]
            self.commits.append({"repo_type": m.group(1), "repo_id": m.group(2), "summary": header["summary"],
                                 "files": files, "other_operations": others})
            return httpx2.Response(200, json={"commitUrl": f"https://huggingface.co/{m.group(2)}/commit/abc123",
                                              "commitOid": "abc123"})
        return httpx2.Response(404, json={"error": f"mock hub: no route for {request.method} {path}"})


@pytest.fixture
def mock_hub():
    """The Hub's API answered in-process for one test; huggingface_hub's default client is restored after."""
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    hub = MockHub()
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub.handler)))
    try:
        yield hub
    finally:
        set_client_factory(default_client_factory)
