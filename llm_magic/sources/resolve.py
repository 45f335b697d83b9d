"""What MODEL names, resolved before any weights are read: a Hub id (its cached snapshot
when there is one), a model folder, or a .gguf file. A path that is not there, a file that
is not a GGUF, or a folder that holds no model fails here, said as such, before a reader
fails on it with a message about bytes.

Nothing here imports torch or transformers; only an id that is not cached asks the
network anything (a probe of a second or two).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .._compat import add_note
from ..errors import PROBE_NOTE, LoadError
from ..paths import nearest_existing, visible_files
from . import gguf_cache, gguf_header, hub

# A Hub id is "name" or "org/name"; anything else that does not exist on disk is a bad path.
_HUB_ID = re.compile(r"^[\w.\-]+(/[\w.\-]+)?$")


@dataclass(frozen=True)
class Source:
    """Where the weights come from, resolved before anything heavy is read."""

    kind: str  # "hub", "folder" or "gguf"
    name: str  # what the user typed
    path: str | None  # local folder to load from; for "gguf" the .gguf file itself
    revision: str | None = None  # commit of a cached snapshot, else what the user asked for
    cached: bool = False  # a Hub id whose snapshot is on disk: loaded from there, offline

    @property
    def identity(self) -> str:
        """What names these weights in the cache key."""
        if self.kind == "hub":  # a cached snapshot's revision is its commit
            return f"hub:{self.name}@{self.revision or 'main'}"
        if self.kind == "gguf" and self.path is not None:
            st = os.stat(self.path)
            return f"gguf:{self.path}:{st.st_size}:{st.st_mtime_ns}"
        return f"{self.kind}:{self.path}"


def resolve_source(name: str, revision: str | None = None) -> Source:
    """Turn MODEL into a Source; only an id that is not cached locally touches the network.

    A Hub id whose snapshot is already in the local Hugging Face cache resolves to that
    snapshot folder: transformers would otherwise retry the unreachable Hub for minutes,
    and HF_HUB_OFFLINE set after it is imported has no effect.
    """
    text = str(name).strip()
    if not text:
        raise LoadError(
            "no model given",
            fixes=["%llm_load HuggingFaceTB/SmolLM2-135M-Instruct", "%llm_load ./my_model_folder"],
        )
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise _missing_gguf(text, path)
        _check_gguf(text, path)
        _no_revision(text, "a .gguf file", revision)
        return Source("gguf", text, str(path.resolve()), None)
    if path.is_dir():
        _check_model_folder(text, path)
        _no_revision(text, "a folder", revision)
        return Source("folder", text, str(path.resolve()), None)
    if path.exists():
        raise _not_a_model(text, path)
    if not _HUB_ID.match(text) or text.startswith((".", "~")):
        raise _missing_path(text, path)
    snapshot = hub.cached_snapshot(text, revision)
    if snapshot is not None:
        return Source("hub", text, str(snapshot), snapshot.name, cached=True)
    if not hub.hub_reachable():
        # Fail in a second, not after minutes of retries (transformers retries each file
        # with backoff): ask huggingface_hub for the cached file only, which raises its
        # real LocalEntryNotFoundError for errors.diagnose(..., LOAD) to explain.
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            hf_hub_download(text, "config.json", revision=revision, local_files_only=True)
        except LocalEntryNotFoundError as e:
            add_note(e, f"{PROBE_NOTE} {constants.ENDPOINT}: asked for cached files only")
            raise
    return Source("hub", text, None, revision)


_GGUF_MAGIC = b"GGUF"
# What from_pretrained reads from a folder.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _check_gguf(text: str, path: Path) -> None:
    """An empty or non-GGUF file, said as such before any reader fails on its bytes
    ("unpack requires a buffer of 24 bytes" says nothing to a user)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise LoadError(
            f"{text}: empty file",
            "the file has 0 bytes: a download or copy that did not finish",
            [
                f"download or copy {path.name} again",
                "the demo model, offline: %llm_load $path  (path = llm_magic.demo_model())",
            ],
        )
    if head[:4] != _GGUF_MAGIC:
        if head.startswith(b"version https://git-lfs"):
            cause = "it is a Git LFS pointer, not the file itself"
            fixes = [
                "git lfs pull  (in the repository it came from)",
                "or download the file itself again",
            ]
        else:
            kind = "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "binary data"
            cause = (
                "a .gguf file starts with the bytes 'GGUF';"
                f" this one starts with {kind}: {head[:16]!r}"
            )
            fixes = [f"check what {path.name} is: file {path}", "download the .gguf again"]
        raise LoadError(f"{text}: not a GGUF file (no GGUF magic)", cause, fixes)
    damaged = gguf_header.problem(path)
    if damaged is not None:
        raise LoadError(
            f"{text}: the .gguf file is {damaged.split(':')[0]}",
            damaged,
            [
                f"download or copy {path.name} again",
                "the demo model, offline: %llm_load $path  (path = llm_magic.demo_model())",
            ],
        )


def _check_model_folder(text: str, path: Path) -> None:
    """A folder with neither config.json nor any weights is no model folder: say that,
    rather than let the tokenizer loader fail first and be blamed."""
    if (path / "config.json").is_file() or any(
        p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir()
    ):
        return
    files = visible_files(path)
    fixes: list[str] = []
    ggufs = sorted(p for p in path.iterdir() if p.suffix == ".gguf")
    fixes += [f"it holds a .gguf: %llm_load {ggufs[0]}"] if ggufs else []
    inner = sorted(p.parent for p in path.glob("*/config.json"))
    fixes += [f"a model folder inside it: %llm_load {inner[0]}"] if inner else []
    fixes.append(
        "a model folder is what save_pretrained writes: config.json, model.safetensors,"
        " tokenizer files"
    )
    fixes.append("offline, the demo model: %llm_load $path  (path = llm_magic.demo_model())")
    raise LoadError(
        f"{text}: not a model folder: no config.json and no weights",
        None,
        fixes,
        [
            f"the folder holds: {', '.join(files[:8]) or 'nothing'}"
            + (" ..." if len(files) > 8 else "")
        ],
    )


def _no_revision(text: str, what: str, revision: str | None) -> None:
    """--revision picks a version of a Hub model: on a local file it would be shown on the
    card as if it had been used."""
    if revision is not None:
        raise LoadError(
            f"--revision {revision}: {text} is {what} on disk, which has no revisions",
            "--revision picks a branch, tag or commit of a Hub model",
            [f"%llm_load {text}  (without --revision)"],
        )


def _not_a_model(text: str, path: Path) -> LoadError:
    """A file that is there, but neither a .gguf nor a model folder."""
    return LoadError(
        f"{text}: not a model",
        "MODEL is a Hub id, a model folder (what save_pretrained writes) or a .gguf file;"
        " this is another kind of file",
        [
            f"the folder it is in, if that holds the model: %llm_load {path.parent}",
            "offline, the demo model: %llm_load $path  (path = llm_magic.demo_model())",
        ],
    )


def _missing_path(text: str, path: Path) -> LoadError:
    """A path that is not there: the nearest folder that is (and what it holds), and the
    Hub id it may have meant (only for ./org/name or ~/org/name: a .gguf, a path up
    the tree or an absolute one names a file, never a Hub model)."""
    parent = nearest_existing(path)
    near = sorted(p.name for p in parent.iterdir())[:8] if parent.is_dir() else []
    fixes = [
        f"nearest existing folder: {parent}" + (f" (holds: {', '.join(near)})" if near else "")
    ]
    hub_id = text.removeprefix("./").removeprefix("~/")
    if (
        hub_id != text
        and _HUB_ID.match(hub_id)
        and ".." not in hub_id
        and not hub_id.lower().endswith(".gguf")
    ):
        fixes.append(f"for the Hub id, drop the path prefix: %llm_load {hub_id}")
    return LoadError(f"{text}: no such file or folder", "the path does not exist", fixes)


def _missing_gguf(text: str, path: Path) -> LoadError:
    """A .gguf that is gone: where it was looked for, and the converted copies it left
    (plain safetensors folders that load without it)."""
    error = _missing_path(text, path)
    left = [
        c
        for c in gguf_cache.converted_copies()
        if c.gguf == str(path.resolve()) and c.problem is None
    ]
    if not left:
        return error
    d = error.diagnosis
    copies = "copy" if len(left) == 1 else "copies"
    return LoadError(
        f"{text}: the .gguf file is gone",
        f"nothing is at {path.resolve()}; {len(left)} converted {copies} of it remain in the cache",
        [
            f"put the .gguf back at {path.resolve()} (or give its new path)",
            f"or load the converted copy, a plain safetensors folder: %llm_load {left[0].folder}",
            f"or delete the copies: %llm_unload --disk {path.name}",
            *d.fixes[:1],
        ],
    )


def checkpoint_dtype(folder: str | None) -> str | None:
    """The dtype recorded in the folder's config.json, if any (no weights are read)."""
    if folder is None:
        return None
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return str(value) if value else None
