"""The converted-copy cache of .gguf files: where copies live, their check, conversion,
leftovers, listing and deletion.

transformers parses and dequantizes a .gguf at every load (tens of seconds for 100 MB),
so the first load writes a plain safetensors folder (a "converted copy") that later
loads read in about two seconds. The copy is llm_magic's own cache, so llm_magic keeps
it sound: a copy is checked (cheaply: headers and sizes, no tensor data) before it is
trusted, a damaged one is converted again, and what a killed conversion leaves behind is
removed at the next .gguf load.

Layout, under $LLM_MAGIC_CACHE/gguf (default ~/.cache/llm_magic/gguf):
  STEM-KEY-DTYPE/            a finished copy; KEY hashes the .gguf's path, size and mtime
  STEM-KEY-DTYPE.partial-PID a conversion being written by process PID (renamed into place
                             atomically when complete: others see all of it or nothing)
  STEM-KEY-DTYPE.old-PID     a copy process PID is deleting (moved aside first, for the
                             same reason)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._compat import dtype_keyword
from ..errors import LLMError, LoadError
from ..paths import cache_root, nearest_existing
from ..quiet import bar_dropped
from ..units import DTYPE_BYTES, format_bytes
from .sizing import read_gguf_tensor_counts, read_safetensors_header

if TYPE_CHECKING:
    from ..display import DiskCard

Progress = Callable[[str], None]

MARK = "llm_magic_gguf.json"  # written last into a copy: its presence says the copy is complete
_INDEX = "model.safetensors.index.json"
_LEFTOVER = re.compile(r"^(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)$")
# Beside the weights a copy holds its tokenizer, config and headers: a few MB, more for a
# big vocabulary. Asked for on top of the weights before converting.
_SLACK_BYTES = 16 * 1000**2


def copies_dir() -> Path:
    return cache_root() / "gguf"


def _key(gguf_path: str) -> str:
    st = os.stat(gguf_path)
    return hashlib.sha256(f"{gguf_path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]


def converted_folder(gguf_path: str, dtype: str) -> Path:
    """The cache folder for one .gguf file at one dtype, keyed by the file's path, size
    and mtime: a .gguf that changed gets a new folder."""
    return copies_dir() / f"{Path(gguf_path).stem}-{_key(gguf_path)}-{dtype}"


# ------------------------------------------------------------------------------ the check


def problem(folder: Path) -> str | None:
    """None when `folder` is a sound converted copy, else what is wrong with it.

    Cheap: the marker, every weights file the index names (or model.safetensors), and
    each file's size against its header (8 bytes of length, the JSON header, then the
    data its offsets describe). No tensor data is read."""
    if not folder.is_dir():
        return "it is missing"
    if not (folder / MARK).is_file():
        return f"{MARK} is missing: the conversion did not finish"
    try:
        written = json.loads((folder / MARK).read_text()).get("files") or {"config.json": None}
    except (OSError, ValueError, AttributeError) as e:
        return f"{MARK} is unreadable ({type(e).__name__})"
    for name, size in written.items():  # every file the conversion wrote, at its size
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if size is not None and not name.endswith(".safetensors") and path.stat().st_size != size:
            return f"{name}: {path.stat().st_size} bytes, {size} were written"
    try:
        index = folder / _INDEX
        names = (
            sorted(set(json.loads(index.read_text())["weight_map"].values()))
            if index.is_file()
            else ["model.safetensors"]
        )
    except (OSError, ValueError, KeyError, AttributeError) as e:
        return f"{_INDEX} is unreadable ({type(e).__name__})"
    for name in names:
        if not (folder / name).is_file():
            return f"{name} is missing"
        try:
            # The library refuses a file its header does not cover exactly.
            read_safetensors_header(folder / name)
        except (OSError, ValueError) as e:
            return f"{name}: {e}"
    return None


def usable_copy(gguf_path: str, dtype: str) -> Path | None:
    """The sound converted copy of `gguf_path` at `dtype`, or None (not converted yet, or
    damaged: the next load converts it again)."""
    folder = converted_folder(gguf_path, dtype)
    return folder if problem(folder) is None else None


# ---------------------------------------------------------------------------- leftovers


def _process_gone(pid: int, since: float) -> bool:
    """Whether process `pid`, which was writing a folder last modified at `since`, is gone.

    A PID the system has since given to a newer process (started after the folder was
    last written) counts as gone; a zombie too. A process of another user is alive."""
    if pid == os.getpid() or os.name == "nt":  # on Windows, os.kill(pid, 0) would send a Ctrl-C
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return True
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return False  # no /proc: trust the PID
    return started > since + 1  # btime and clock ticks are whole seconds apart at worst


def remove_leftovers() -> list[tuple[str, int]]:
    """Remove the `NAME.partial-PID` / `NAME.old-PID` folders whose process is gone (a
    kernel killed while converting or deleting); a live process's folder is left alone,
    e.g. another kernel converting the same file right now. Returns (name, bytes) of
    each one removed."""
    removed: list[tuple[str, int]] = []
    try:
        entries = list(copies_dir().iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if not match or not entry.is_dir():
            continue
        try:
            since = entry.stat().st_mtime
        except OSError:
            continue  # its owner just renamed or removed it
        if _process_gone(int(match["pid"]), since):
            size = _size_on_disk(entry)
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append((entry.name, size))
    return removed


def _discard(folder: Path) -> None:
    """Remove a copy: moved aside first (one rename), so another kernel never sees a half
    deleted copy under the real name; a kernel killed meanwhile leaves a leftover that
    `remove_leftovers` takes."""
    aside = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    # This process's own, from a removal that stopped halfway.
    shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return  # another kernel took it first
    shutil.rmtree(aside, ignore_errors=True)


def _size_on_disk(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


# ------------------------------------------------------------------------------ listing


@dataclass(frozen=True)
class ConvertedCopy:
    """One converted copy, as plain values."""

    folder: str
    name: str  # the folder's name: what `%llm_unload --disk NAME` takes
    dtype: str
    size_bytes: int  # on disk
    gguf: str | None  # the .gguf it was converted from (None: unknown, e.g. no marker)
    source_exists: bool  # that .gguf is still there
    source_matches: bool  # ... and unchanged since (same size and mtime)
    problem: str | None = None  # None: sound; else why the next load converts it again


def converted_copies() -> list[ConvertedCopy]:
    """Every converted copy in the cache, sorted by name (leftovers of conversions are
    not copies: see `remove_leftovers`)."""
    copies: list[ConvertedCopy] = []
    try:
        entries = sorted(copies_dir().iterdir())
    except OSError:
        return copies
    for entry in entries:
        if _LEFTOVER.match(entry.name) or not entry.is_dir():
            continue
        gguf = _marked_source(entry)
        exists = bool(gguf and os.path.isfile(gguf))
        stem_key_dtype = entry.name.rsplit("-", 2)
        dtype = stem_key_dtype[-1] if len(stem_key_dtype) == 3 else "?"
        matches = bool(gguf and exists and entry.name == converted_folder(gguf, dtype).name)
        copies.append(
            ConvertedCopy(
                str(entry),
                entry.name,
                dtype,
                _size_on_disk(entry),
                gguf,
                exists,
                matches,
                problem(entry),
            )
        )
    return copies


def _marked_source(folder: Path) -> str | None:
    try:
        return json.loads((folder / MARK).read_text()).get("gguf")
    except (OSError, ValueError, AttributeError):
        return None


def delete_copies(name: str | None = None, *, all: bool = False) -> list[ConvertedCopy]:  # noqa: A002 (mirrors --all)
    """Delete the converted copy named NAME (a folder name as listed), every copy of the
    .gguf NAME (its path or file name), or with `all=True` every copy. Returns what was
    deleted; a name that matches nothing raises LLMError listing the names."""
    copies = converted_copies()
    if all:
        chosen = copies
    else:
        wanted = str(name or "").strip()
        chosen = [c for c in copies if wanted in (c.name, c.folder)]
        chosen = chosen or [
            c for c in copies if c.gguf and wanted in (c.gguf, os.path.basename(c.gguf))
        ]
        if not chosen:
            raise LLMError(
                f"no converted copy named {wanted!r}"
                if wanted
                else "which converted copy? give a NAME or --all",
                "converted copies: " + ", ".join(c.name for c in copies)
                if copies
                else f"{copies_dir()} holds no converted copy",
                [f"%llm_unload --disk {copies[0].name}", "%llm_unload --disk --all"]
                if copies
                else ["%llm_models --disk lists them"],
            )
    for copy in chosen:
        try:
            _discard(Path(copy.folder))
        except OSError as e:
            raise LLMError(
                f"could not delete {copy.name}",
                f"{copies_dir()} is not writable ({e.strerror or type(e).__name__})",
                [
                    "delete it as the user who owns the folder, or make the folder writable",
                    f"the copy takes {format_bytes(copy.size_bytes)} at {copy.folder}",
                ],
            ) from e
    return chosen


def disk_card(deleted: tuple[ConvertedCopy, ...] = (), said: tuple[str, ...] = ()) -> DiskCard:
    """The card of `%llm_models --disk` (and of `%llm_unload --disk`, with what it deleted
    and what more it says)."""
    from ..display import DiskCard

    folder = copies_dir()
    copies = tuple(converted_copies())
    return DiskCard(str(folder), copies, tuple(deleted), _free_bytes(folder), said)


def _remove_outdated(gguf_path: str) -> list[ConvertedCopy]:
    """Remove the copies of an earlier version of `gguf_path` (same path, other size or
    mtime): nothing will load them again."""
    outdated = [c for c in converted_copies() if c.gguf == gguf_path and not c.source_matches]
    for copy in outdated:
        _discard(Path(copy.folder))
    return outdated


# ---------------------------------------------------------------------------- conversion


def bytes_needed(gguf_path: str, dtype: str) -> int:
    """The disk space a copy at `dtype` takes, from the GGUF header's tensor shapes."""
    elements, _ = read_gguf_tensor_counts(gguf_path)
    return elements * DTYPE_BYTES.get(dtype, 4) + _SLACK_BYTES


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(nearest_existing(folder)).free


def check_space(gguf_path: str, dtype: str) -> None:
    """Refuse a conversion that would not fit on the cache's disk, before anything is
    read or written."""
    target = converted_folder(gguf_path, dtype)
    needed, free = bytes_needed(gguf_path, dtype), _free_bytes(target.parent)
    if needed <= free:
        return
    raise LoadError(
        f"{Path(gguf_path).name}: not enough disk space to convert it",
        f"the converted copy goes to {target}: it needs {format_bytes(needed)},"
        f" {format_bytes(free)} free there",
        [
            "free space on that disk: %llm_models --disk lists the converted copies,"
            " %llm_unload --disk NAME deletes one",
            "or keep converted copies on a bigger disk: set LLM_MAGIC_CACHE=/big/disk/llm_magic"
            " before starting the kernel",
        ],
    )


def check_writable(gguf_path: str) -> None:
    """Refuse a conversion whose copy could not be written (LLM_MAGIC_CACHE read-only, or
    a file), before anything is read or converted."""
    folder = copies_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return
    except OSError as e:
        existing = nearest_existing(folder)
        cause = (
            f"{existing} is a file, not a folder"
            if existing.exists() and not existing.is_dir()
            else f"{folder} is not writable ({e.strerror or type(e).__name__})"
        )
    raise LoadError(
        f"{Path(gguf_path).name}: cannot convert it: the converted copy cannot be written",
        f"converted copies go to {folder}, and {cause}",
        [
            "set LLM_MAGIC_CACHE to a writable folder before starting the kernel",
            "or --engine llama.cpp runs the .gguf as it is, with no copy",
        ],
    )


def ensure_converted(
    gguf_path: str, dtype: str, progress: Progress, reconvert: bool = False
) -> tuple[Path, tuple[str, ...]]:
    """The sound converted copy of `gguf_path` at `dtype`, converting it first where it is
    missing, damaged or `reconvert` is asked; returns (folder, notes for the card).

    Every call first removes leftovers of killed conversions; a conversion first removes
    the copies of an earlier version of the same file and checks the free disk space."""
    notes = [
        f"removed {n}, left by a conversion whose process is gone ({format_bytes(b)} freed)"
        for n, b in remove_leftovers()
    ]
    target = converted_folder(gguf_path, dtype)
    why = problem(target)
    if why is None and not reconvert:
        return target, tuple(notes)
    name = Path(gguf_path).name
    if target.exists():
        if why is not None:
            progress(f"the converted copy of {name} is damaged ({why}): converting it again…")
            notes.append(f"the converted copy was damaged ({why}): converted again from {name}")
        else:
            notes.append(f"converted again from {name} (--reload)")
        _discard(target)
    outdated = _remove_outdated(gguf_path)
    if outdated:
        copies = "copy" if len(outdated) == 1 else "copies"
        freed = format_bytes(sum(c.size_bytes for c in outdated))
        notes.append(
            f"{name} changed: removed {len(outdated)} converted {copies}"
            f" of its earlier version ({freed} freed)"
        )
    check_space(gguf_path, dtype)
    convert(gguf_path, dtype, progress)
    return target, tuple(notes)


def convert(gguf_path: str, dtype: str, progress: Progress) -> Path:
    """Dequantize a .gguf into a safetensors folder at `dtype`, written under a
    `.partial-PID` name and renamed into place when complete.

    The copy is kept at the dtype it is loaded at: a float32 copy loaded as bf16 would
    hold both in memory while loading."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_folder(gguf_path, dtype)
    progress(
        f"converting {Path(gguf_path).name} to {dtype} safetensors (once; later loads reuse it)…"
    )
    folder, file = os.path.split(gguf_path)
    read_from = {"gguf_file": file}
    widest = converted_folder(gguf_path, "float32")
    if widest != target and problem(widest) is None:
        folder, read_from = str(widest), {}  # same values, without parsing the .gguf again
    tokenizer = AutoTokenizer.from_pretrained(folder, **read_from)
    # A .gguf is read at float32 (transformers warns that other dtypes cast every matmul),
    # then cast once for saving.
    read_as = torch.float32 if read_from else getattr(torch, dtype)
    # The status line says what this is; the reader's own bar would add one per tensor.
    with bar_dropped("Converting and de-quantizing GGUF tensors"):
        model: Any = AutoModelForCausalLM.from_pretrained(
            folder, **read_from, **{dtype_keyword(): read_as}
        )
    model.to(getattr(torch, dtype))
    # Dequantized weights are plain tensors, but the model is still marked quantized and
    # save_pretrained refuses it: clear the marking.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    st = os.stat(gguf_path)
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        files = {f.name: f.stat().st_size for f in partial.iterdir() if f.is_file()}
        mark = {
            "gguf": gguf_path,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "dtype": dtype,
            "converted": time.time(),
            "files": files,
        }
        (partial / MARK).write_text(json.dumps(mark))
        del model
        try:
            os.replace(partial, target)  # atomic: another kernel sees all of it or nothing
        except OSError:
            if problem(target) is not None:  # not another kernel's finished copy
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
