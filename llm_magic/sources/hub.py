"""The local Hugging Face cache, read without the network: the snapshot a Hub id loads
from, the model repositories it holds (revisions, sizes, what each lacks), and whether
the Hub itself answers at all.

Everything is asked of huggingface_hub (its cache lookup and scanner), imported lazily,
so a change of the cache's layout is the library's concern.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The weights files transformers loads from a snapshot; one of them (or the shards an index
# names) must be there for the snapshot to load without the network.
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class HubRevision:
    """One snapshot of a cached Hub model."""

    commit: str
    refs: tuple[str, ...]  # branch or tag names pointing at it ("main", "v1.0")
    size_bytes: int
    missing: tuple[str, ...]  # what a load needs and the snapshot lacks; empty: complete
    path: str
    line: str  # the %llm_load line that loads this revision

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(frozen=True)
class HubModel:
    """A model repository in the local Hugging Face cache."""

    repo_id: str
    size_bytes: int  # on disk, all revisions (blobs shared between them counted once)
    revisions: tuple[HubRevision, ...]  # the one `main` names first

    @property
    def line(self) -> str:
        return self.revisions[0].line if self.revisions else f"%llm_load {self.repo_id}"

    @property
    def complete(self) -> bool:
        return any(r.complete for r in self.revisions)


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The local snapshot folder of `repo_id` at `revision` (default main), or None.

    huggingface_hub's own cache lookup resolves the branch or tag to its commit; a
    snapshot without config.json is a partial download: the Hub must finish it."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        config = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except HFValidationError:  # not a valid repo id: nothing of it can be cached
        return None
    return Path(config).parent if isinstance(config, str) else None


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hub endpoint answers an HTTP request (any status) within `timeout`
    seconds, through the proxy the environment names. A TCP connect alone is not
    enough: some networks accept every connection and then say nothing. Name
    resolution has no timeout of its own, so the attempt runs in a daemon thread and is
    abandoned when the time is up. False when HF_HUB_OFFLINE is set."""
    import threading
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    result: list[bool] = []

    def attempt() -> None:
        try:
            urllib.request.urlopen(
                urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout
            ).close()
            result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # it answered, if only with an error status
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=attempt, name="llm_magic-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def hub_models(problems: list[str] | None = None) -> tuple[HubModel, ...]:
    """The model repositories of the local Hugging Face cache, read by huggingface_hub's
    own scanner; what it cannot read is added to `problems`, said plainly."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.utils import CacheNotFound

    try:
        info = scan_cache_dir(constants.HF_HUB_CACHE)  # the folder the card names
    except CacheNotFound:
        return ()
    if problems is not None:
        problems += [f"unreadable cache entry: {w}" for w in info.warnings]
    models = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        # `main` first, then other named revisions, then bare commits, newest first.
        revisions = sorted(
            repo.revisions, key=lambda r: ("main" not in r.refs, not r.refs, -r.last_modified)
        )
        models.append(
            HubModel(
                repo.repo_id,
                repo.size_on_disk,
                tuple(_revision(repo.repo_id, r) for r in revisions),
            )
        )
    return tuple(models)


def cached_repo_ids() -> tuple[str, ...]:
    """The ids of the model repositories in the local Hugging Face cache."""
    return tuple(m.repo_id for m in hub_models())


def _revision(repo_id: str, rev: Any) -> HubRevision:
    """A scanned revision (huggingface_hub's CachedRevisionInfo) as a HubRevision."""
    names = {f.file_name for f in rev.files}
    if "main" in rev.refs:
        line = f"%llm_load {repo_id}"
    else:  # a tag or branch reads better than a commit, and loads the same snapshot
        name = sorted(rev.refs)[0] if rev.refs else rev.commit_hash
        line = f"%llm_load {repo_id} --revision {name}"
    return HubRevision(
        rev.commit_hash,
        tuple(sorted(rev.refs)),
        rev.size_on_disk,
        _missing(Path(rev.snapshot_path), names),
        str(rev.snapshot_path),
        line,
    )


def _missing(snapshot: Path, names: set[str]) -> tuple[str, ...]:
    """What a load needs that the snapshot lacks: config.json and the weights (every shard
    an index names). A snapshot can be partial when a download was interrupted."""
    missing = [] if "config.json" in names else ["config.json"]
    index = next((i for i in _INDEXES if i in names), None)
    if index is not None:
        try:
            shards = set(json.loads((snapshot / index).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError):
            return (*missing, f"a readable {index}")
        lacking = sorted(shards - names)
        if lacking:
            missing.append(
                f"{len(lacking)} of {len(shards)} weight shards"
                if len(lacking) > 2
                else ", ".join(lacking)
            )
    elif not any(w in names for w in _WEIGHTS):
        missing.append("weights (model.safetensors)")
    return tuple(missing)
