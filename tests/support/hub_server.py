"""A loopback stand-in for the Hub's file endpoint, so huggingface_hub itself writes the
local cache (blobs, snapshot links, refs) as it does for a real download.

Serves `HEAD|GET /<repo_id>/resolve/<revision>/<filename>` on 127.0.0.1 with the
headers `hf_hub_download` reads (X-Repo-Commit, ETag, Content-Length); nothing else.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

_RESOLVE = re.compile(r"^/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")

# The repositories of the `written_cache` fixture (tests/conftest.py).
TWO_REVS = "discovery-tests/two-revisions"  # main complete, v1 with config.json only
PARTIAL = "discovery-tests/partial"  # config.json only: an interrupted download
SHARDED = "discovery-tests/sharded"  # an index naming two shards, one of them missing
HOLDOUT = "holdout-org/tiny-cached"  # for the completion of `%llm_load holdout-`
MAIN, V1 = "a" * 40, "b" * 40


class LoopbackHub:
    """`repos[repo_id][revision] = (commit, {filename: bytes})`; a revision is a branch,
    a tag or the commit itself."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]] = {}
        self.requests: list[str] = []  # every request seen, "METHOD path"
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                match = _RESOLVE.match(unquote(self.path.split("?")[0]))
                found = None
                if match:
                    commit_files = hub.repos.get(match["repo"], {}).get(match["rev"])
                    if commit_files and match["file"] in commit_files[1]:
                        found = commit_files[0], commit_files[1][match["file"]]
                if found is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                commit, data = found
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(
        self, repo_id: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...] = ()
    ) -> None:
        for revision in (commit, *refs):
            self.repos.setdefault(repo_id, {})[revision] = (commit, files)

    def __enter__(self) -> LoopbackHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def download(hub: LoopbackHub, repo_id: str, revision: str, filenames, cache_dir: Path) -> Path:
    """Fetch files of one revision into `cache_dir` with huggingface_hub's own
    `hf_hub_download`; returns the snapshot folder."""
    from huggingface_hub import hf_hub_download

    path = None
    for name in filenames:
        path = hf_hub_download(
            repo_id,
            name,
            revision=revision,
            cache_dir=cache_dir,
            endpoint=hub.endpoint,
            etag_timeout=5,
        )
    return Path(path).parent


def write_test_repos(model_dir: Path, cache_dir: Path) -> dict:
    """The repositories above, downloaded into `cache_dir` by hf_hub_download; returns
    the files served and the snapshot folders."""
    import json

    files = folder_files(model_dir)
    config_v1 = json.dumps({**json.loads(files["config.json"]), "n_layer": 1}).encode()
    index = json.dumps(
        {
            "metadata": {},
            "weight_map": {
                "a": "model-00001-of-00002.safetensors",
                "b": "model-00002-of-00002.safetensors",
            },
        }
    ).encode()
    sharded = {
        "config.json": files["config.json"],
        "model.safetensors.index.json": index,
        "model-00001-of-00002.safetensors": files["model.safetensors"],
    }
    with LoopbackHub() as hub:
        hub.add(TWO_REVS, MAIN, files, refs=("main",))
        hub.add(TWO_REVS, V1, {**files, "config.json": config_v1}, refs=("v1",))
        hub.add(PARTIAL, "c" * 40, files, refs=("main",))
        hub.add(SHARDED, "d" * 40, sharded, refs=("main",))
        hub.add(HOLDOUT, "e" * 40, files, refs=("main",))
        snapshots = {
            TWO_REVS: download(hub, TWO_REVS, "main", files, cache_dir),
            "v1": download(hub, TWO_REVS, "v1", ["config.json"], cache_dir),
            PARTIAL: download(hub, PARTIAL, "main", ["config.json"], cache_dir),
            SHARDED: download(hub, SHARDED, "main", sharded, cache_dir),
            HOLDOUT: download(hub, HOLDOUT, "main", files, cache_dir),
        }
    return {"files": files, "snapshots": snapshots}
