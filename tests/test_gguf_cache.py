"""The converted .gguf cache heals itself and cleans up after a killed kernel.

Each fault is produced for real: files truncated or deleted, a conversion killed with
SIGKILL while it saves, a PID that is gone, a disk that is full (a small tmpfs), two
processes converting the same file at once. Most tests use a tiny Llama written as a
.gguf here (converted in about a second); the ones marked slow use SmolLM2's .gguf.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output
from support.tiny_model import build_tiny_gguf

import llm_magic
from llm_magic import MODEL_CACHE
from llm_magic.errors import LLMError, LoadError
from llm_magic.sources import gguf_cache


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> str:
    """A tiny random Llama (2 layers, width 64) as a .gguf, with the tiny BPE tokenizer."""
    return str(build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", tiny_model_dir))


@pytest.fixture(scope="session")
def bigger_gguf(tiny_model_dir, tmp_path_factory) -> str:
    """A Llama of ~50 M float32 parameters: its conversion saves for long enough to be
    caught in the act."""
    return str(
        build_tiny_gguf(
            tmp_path_factory.mktemp("gguf") / "bigger-llama.gguf",
            tiny_model_dir,
            layers=8,
            width=1024,
            ffn=1536,
        )
    )


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty converted-copy cache for this test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LLM_MAGIC_CACHE", str(root))
    return root / "gguf"


def answer(handle) -> str:
    return llm_magic.generate(
        "Hello world", model=handle, greedy=True, max_new_tokens=8, raw=True
    ).text


def load(path: str, **kw):
    messages: list[str] = []
    kw.setdefault("dtype", "bfloat16")
    handle, card = llm_magic.load_with_card(path, device_map="cpu", progress=messages.append, **kw)
    return handle, card.text(), messages


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --------------------------------------------------------------- 1. a damaged copy heals


@pytest.mark.parametrize(
    "damage", ["truncated", "weights deleted", "marker deleted", "tokenizer deleted"]
)
def test_a_damaged_copy_is_converted_again_and_answers_as_before(tiny_gguf, cache, damage):
    handle, _, messages = load(tiny_gguf)
    before = answer(handle)
    folder = gguf_cache.converted_folder(tiny_gguf, handle.info.dtype)
    assert gguf_cache.problem(folder) is None and any("converting" in m for m in messages)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        os.truncate(weights, weights.stat().st_size // 2)
    elif damage == "weights deleted":
        weights.unlink()
    elif damage == "tokenizer deleted":
        (folder / "tokenizer_config.json").unlink()
    else:
        (folder / gguf_cache.MARK).unlink()
    assert gguf_cache.problem(folder) is not None
    MODEL_CACHE.clear()

    handle, text, messages = load(tiny_gguf)
    assert "the converted copy was damaged" in text and "converted again" in text
    assert any("converting" in m for m in messages)
    assert answer(handle) == before
    assert gguf_cache.problem(folder) is None and leftovers(cache) == []


def test_reload_converts_again(tiny_gguf, cache):
    load(tiny_gguf)
    weights = gguf_cache.converted_folder(tiny_gguf, "bfloat16") / "model.safetensors"
    first = weights.stat().st_ino
    _, text, messages = load(tiny_gguf, reload=True)
    assert any("converting" in m for m in messages) and "converted again" in text
    assert weights.stat().st_ino != first  # written again, not re-read
    _, text, messages = load(tiny_gguf)  # a plain load is a cache hit: no conversion
    assert not any("converting" in m for m in messages) and "converted again" not in text


def test_a_copy_is_checked_from_headers_only(tiny_gguf, cache):
    handle, _, _ = load(tiny_gguf)
    folder = gguf_cache.converted_folder(tiny_gguf, handle.info.dtype)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:  # same size, garbage data: not the check's business
        f.seek(size - 64)
        f.write(b"\xff" * 64)
    assert gguf_cache.problem(folder) is None
    with open(weights, "ab") as f:  # a longer file than its header says is damaged
        f.write(b"\0")
    assert "file not fully covered" in gguf_cache.problem(
        folder
    )  # the safetensors library's own reason


# ------------------------------------------------------------------ 2. no leftovers


def test_a_partial_folder_of_a_dead_process_is_removed_at_the_next_load(tiny_gguf, cache):
    load(tiny_gguf)
    MODEL_CACHE.clear()
    name = gguf_cache.converted_folder(tiny_gguf, "bfloat16").name
    stale = cache / f"{name}.partial-{dead_pid()}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 4096)
    deleting = cache / f"{name}.old-{dead_pid()}"  # a kernel killed while it deleted a copy
    deleting.mkdir()
    _, text, messages = load(tiny_gguf)  # the copy is sound: no conversion, and still swept
    assert not stale.exists() and not deleting.exists()
    assert not any("converting" in m for m in messages)
    assert f"removed {stale.name}, left by a conversion whose process is gone" in text


def test_a_partial_folder_of_a_live_process_is_left_alone(tiny_gguf, cache):
    load(tiny_gguf)
    MODEL_CACHE.clear()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(
            1.5
        )  # the folder is written after the process started, as a converting kernel's is
        busy = cache / f"other-0123456789abcdef-bfloat16.partial-{live.pid}"
        busy.mkdir()
        load(tiny_gguf, reload=True)
        assert busy.is_dir()
        # The same PID, but the folder was last written before that process started: the
        # PID was given to a new process after the converting one died.
        old = time.time() - 3600
        os.utime(busy, (old, old))
        load(tiny_gguf, reload=True)
        assert not busy.exists()
    finally:
        live.kill()
        live.wait()


def test_a_conversion_killed_while_saving_leaves_a_partial_folder_the_next_load_removes(
    bigger_gguf, cache
):
    target = gguf_cache.converted_folder(bigger_gguf, "bfloat16")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, llm_magic; "
            "llm_magic.load(sys.argv[1], dtype='bfloat16', device_map='cpu')",
            bigger_gguf,
        ],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial = target.with_name(f"{target.name}.partial-{child.pid}")
    deadline = time.monotonic() + 300
    try:
        while not partial.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert partial.exists(), (
            "the conversion finished (or failed) before it could be caught saving"
        )
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert (
        partial.is_dir() and not target.exists()
    )  # the rename is atomic: no half copy under the real name
    assert gguf_cache.converted_copies() == []

    handle, text, _ = load(bigger_gguf)
    assert not partial.exists() and leftovers(cache) == []
    assert f"removed {partial.name}" in text
    assert gguf_cache.problem(target) is None and handle.info.source == str(target)


def _mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A real small filesystem (tmpfs) as the cache's disk; `mount(options)` mounts it."""
    disk = tmp_path / "small"

    def mount(options: str) -> Path:
        _mount_tmpfs(disk, options)
        monkeypatch.setenv("LLM_MAGIC_CACHE", str(disk))
        return disk

    yield mount
    if os.path.ismount(disk):
        subprocess.run(["umount", str(disk)], check=True)


def test_a_conversion_that_will_not_fit_on_the_disk_is_refused_before_writing(
    tiny_gguf, small_disk, shell
):
    disk = small_disk("size=1m")
    result = shell.run_cell(f"%llm_load {tiny_gguf} --dtype bfloat16")
    error = result.error_in_exec
    assert isinstance(error, LoadError), repr(error)
    text = "\n".join(error.card_lines())
    target = gguf_cache.converted_folder(tiny_gguf, "bfloat16")
    assert "not enough disk space to convert it" in text and str(target) in text
    needed = gguf_cache.bytes_needed(tiny_gguf, "bfloat16")
    assert needed > shutil.disk_usage(disk).free
    from llm_magic.units import format_bytes

    assert (
        f"needs {format_bytes(needed)}, {format_bytes(shutil.disk_usage(disk).free)} free" in text
    )
    assert "LLM_MAGIC_CACHE" in text
    assert not any((disk / "gguf").glob("*")) if (disk / "gguf").exists() else True
    assert len(MODEL_CACHE) == 0


def test_a_disk_that_fills_while_saving_fails_with_the_disk_card_and_leaves_nothing(
    tiny_gguf, small_disk
):
    # Space enough by the check, but only a handful of inodes: creating the weights file
    # fails with the real ENOSPC, at the write.
    disk = small_disk("size=64m,nr_inodes=4")
    with pytest.raises(LoadError) as info:
        llm_magic.load(tiny_gguf, dtype="bfloat16", device_map="cpu")
    chain = [info.value.__cause__]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    assert any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain), chain
    assert "the disk is full" in "\n".join(info.value.card_lines())
    assert list((disk / "gguf").iterdir()) == []  # no partial folder left


def test_two_processes_converting_the_same_file_at_once_both_succeed(bigger_gguf, cache, tmp_path):
    go = tmp_path / "go"
    script = (
        "import json, os, sys, time, llm_magic\n"
        "import torch, transformers\n"  # imported before the start line, so both convert together
        "while not os.path.exists(sys.argv[2]): time.sleep(0.01)\n"
        "messages = []\n"
        "h = llm_magic.load("
        "sys.argv[1], dtype='bfloat16', device_map='cpu', progress=messages.append)\n"
        "print(json.dumps({'source': h.info.source, "
        "'converted': any('converting' in m for m in messages),\n"
        "                  'answer': "
        "llm_magic.generate('Hello', greedy=True, max_new_tokens=4, raw=True).text}))\n"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, bigger_gguf, str(go)],
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(1)
    go.touch()
    outs = [c.communicate(timeout=600) for c in children]
    assert [c.returncode for c in children] == [0, 0], [err[-2000:] for _, err in outs]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    target = gguf_cache.converted_folder(bigger_gguf, "bfloat16")
    assert all(r["source"] == str(target) for r in reports)
    assert all(r["converted"] for r in reports), "the two conversions did not overlap"
    assert reports[0]["answer"] == reports[1]["answer"]
    assert gguf_cache.problem(target) is None and leftovers(cache) == []


# ----------------------------------------------------------- 3. visible and bounded


def test_a_changed_gguf_gets_a_new_copy_and_the_old_one_is_removed(tiny_gguf, cache, tmp_path):
    gguf = str(tmp_path / "model.gguf")
    shutil.copy(tiny_gguf, gguf)
    load(gguf)
    old = gguf_cache.converted_folder(gguf, "bfloat16")
    later = time.time() + 10
    os.utime(gguf, (later, later))  # a new version of the file: new mtime
    new = gguf_cache.converted_folder(gguf, "bfloat16")
    assert new != old
    [listed] = gguf_cache.converted_copies()
    assert listed.name == old.name and listed.source_exists and not listed.source_matches
    _, text, messages = load(gguf)
    assert any("converting" in m for m in messages)
    assert not old.exists() and gguf_cache.problem(new) is None
    assert "model.gguf changed: removed 1 converted copy of its earlier version" in text


def test_llm_models_disk_lists_copies_and_llm_unload_disk_deletes_them(
    tiny_gguf, cache, tmp_path, shell
):
    second = str(tmp_path / "second.gguf")
    shutil.copy(tiny_gguf, second)
    load(tiny_gguf)
    load(tiny_gguf, dtype="float32")
    load(second)
    card = shell.run_line_magic("llm_models", "--disk")
    text = card.text()
    copies = gguf_cache.converted_copies()
    assert len(copies) == 3 and text.startswith("✓ 3 converted .gguf copies")
    for c in copies:
        assert c.name in text and f"from {c.gguf}" in text and c.size_bytes > 0
    assert str(cache) in text
    assert "<script" not in card.html()

    name = gguf_cache.converted_folder(second, "bfloat16").name
    card = shell.run_line_magic("llm_unload", f"--disk {name}")
    assert card.text().startswith(f"✓ deleted {name}")
    assert sorted(c.name for c in gguf_cache.converted_copies()) == sorted(
        gguf_cache.converted_folder(tiny_gguf, d).name for d in ("bfloat16", "float32")
    )
    card = shell.run_line_magic(
        "llm_unload", f"--disk {Path(tiny_gguf).name}"
    )  # a .gguf's name: all its copies
    assert gguf_cache.converted_copies() == [] and len(card.deleted) == 2

    result = shell.run_cell("%llm_unload --disk nothing-like-this")
    assert isinstance(result.error_in_exec, LLMError)
    assert "no converted copy named 'nothing-like-this'" in str(result.error_in_exec)
    load(second)
    shell.run_line_magic("llm_unload", "--disk --all")
    assert gguf_cache.converted_copies() == [] and list(cache.iterdir()) == []


def test_a_gguf_that_is_gone_says_so_and_points_at_its_copy(tiny_gguf, cache, tmp_path):
    gguf = str(tmp_path / "gone.gguf")
    shutil.copy(tiny_gguf, gguf)
    load(gguf)
    folder = gguf_cache.converted_folder(gguf, "bfloat16")
    MODEL_CACHE.clear()
    os.unlink(gguf)
    [copy] = gguf_cache.converted_copies()
    assert not copy.source_exists and "(the .gguf is gone)" in gguf_cache.disk_card().text()
    with pytest.raises(LoadError) as info:
        llm_magic.load(gguf)
    text = "\n".join(info.value.card_lines())
    assert "gone.gguf: the .gguf file is gone" in text
    assert f"put the .gguf back at {gguf}" in text and f"%llm_load {folder}" in text
    handle = llm_magic.load(str(folder), device_map="cpu")  # the fix given works
    assert handle.info.class_name == "LlamaForCausalLM"


# ------------------------------------------------- a cache that cannot take a copy


def _read_only(folder: Path) -> Path:
    """`folder`, made read-only; as root (whom permissions do not stop) a folder of the
    read-only sysfs instead, where even root cannot write."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        return Path("/sys/llm_magic_cache")
    return folder


@pytest.mark.parametrize("kind", ["a file", "read-only"])
def test_a_cache_that_cannot_take_the_copy_is_refused_before_converting(
    tiny_gguf, tmp_path, monkeypatch, kind
):
    if kind == "a file":
        root = tmp_path / "cache"
        root.write_text("")
    else:
        root = _read_only(tmp_path / "cache")
    monkeypatch.setenv("LLM_MAGIC_CACHE", str(root))
    messages: list[str] = []
    with pytest.raises(LoadError) as info:
        llm_magic.load(tiny_gguf, progress=messages.append)
    text = "\n".join(info.value.card_lines())
    assert "tiny-llama.gguf: cannot convert it: the converted copy cannot be written" in text
    assert ("is a file, not a folder" if kind == "a file" else "is not writable") in text
    assert "LLM_MAGIC_CACHE" in text and messages == []  # nothing converted, nothing read
    assert len(MODEL_CACHE) == 0


def test_llm_unload_disk_on_a_read_only_cache_is_a_card(tiny_gguf, cache, shell, monkeypatch):
    load(tiny_gguf)
    MODEL_CACHE.clear()
    folder = cache
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root: the folder's mode stops nobody

            def refused(src, dst):
                raise PermissionError(errno.EACCES, "Permission denied", str(src))

            monkeypatch.setattr(gguf_cache.os, "rename", refused)
        with capture_output() as out:
            result = shell.run_cell("%llm_unload --disk --all")
    finally:
        folder.chmod(0o755)
    assert isinstance(result.error_in_exec, LLMError)
    assert "Traceback" not in out.stdout + out.stderr
    card = "\n".join(result.error_in_exec.card_lines())
    assert "could not delete tiny-llama-" in card and "is not writable (Permission denied)" in card
    assert len(gguf_cache.converted_copies()) == 1  # still there, as said


def test_deleting_the_copy_a_loaded_model_was_read_from_says_so(tiny_gguf, cache, shell):
    shell.run_line_magic("llm_load", f"{tiny_gguf} --dtype bfloat16 --as t --quiet")
    card = shell.run_line_magic("llm_unload", f"--disk {Path(tiny_gguf).name}")
    [said] = [n for n in card.notes() if "was read from" in n]
    assert said.startswith(f"{tiny_gguf} (transformers bfloat16) was read from tiny-llama-")
    assert "it stays loaded" in said and MODEL_CACHE.find("t").engine is not None


def test_a_terminal_load_shows_status_lines_and_no_library_bars(tiny_gguf, tmp_path):
    """A fresh terminal IPython: the first line says what the first seconds do, and the
    libraries draw none of their bars (the .gguf reader's, "Loading weights", "Writing
    model shards") across a conversion and a load."""
    script = (
        "import sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'llm_magic')\n"
        "ip.run_line_magic('llm_load', sys.argv[1] + ' --dtype bfloat16 --device-map cpu')\n"
        "ip.run_line_magic('llm_load', sys.argv[1] + ' --dtype bfloat16 --reload')\n"
    )
    env = {**os.environ, "LLM_MAGIC_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", script, tiny_gguf],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert lines[0] == "… importing torch and transformers (once per kernel)…", lines
    assert sum("… converting tiny-llama.gguf" in line for line in lines) == 2
    for bar in ("de-quantizing", "Loading weights", "Writing model shards", "it/s]", "%|"):
        assert bar not in done.stderr, done.stderr
    assert all(line.startswith("… ") for line in lines), lines


# ------------------------------------------------------------- the real SmolLM2 .gguf


@pytest.mark.slow
def test_truncated_smollm2_copy_heals_and_answers_paris(smollm2_gguf, shell, tmp_path, monkeypatch):
    # The session's converted copy (LLM_MAGIC_TEST_CACHE) is copied into a private cache,
    # then damaged there: the next %llm_load must convert again and answer as before.
    shared = llm_magic.load(smollm2_gguf, device_map="cpu")
    folder = Path(shared.info.source)
    del shared
    MODEL_CACHE.clear()
    monkeypatch.setenv("LLM_MAGIC_CACHE", str(tmp_path / "cache"))
    mine = gguf_cache.converted_folder(smollm2_gguf, folder.name.rsplit("-", 1)[1])
    shutil.copytree(folder, mine)
    os.truncate(mine / "model.safetensors", 100_000_000)
    stale = mine.with_name(f"{mine.name}.partial-{dead_pid()}")
    stale.mkdir()

    card = shell.run_line_magic("llm_load", smollm2_gguf)
    text = card.text()
    assert "the converted copy was damaged" in text and "converted again" in text
    assert not stale.exists()
    shell.run_cell("%%llm_generate --greedy --out r\nWhat is the capital of France?")
    assert "Paris" in shell.user_ns["r"].text
