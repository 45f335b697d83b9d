"""What can this machine load? `%llm_load` with no MODEL / `llm_magic.available()`, on a
Hugging Face cache written by huggingface_hub itself (hf_hub_download from a loopback
stand-in for the Hub), converted .gguf copies, the demo model and the kernel's cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.hub_server import HOLDOUT, MAIN, PARTIAL, SHARDED, TWO_REVS, V1, LoopbackHub

import llm_magic
from llm_magic import MODEL_CACHE
from llm_magic.sources import discovery, gguf_cache, hub


def by_id(available, repo_id):
    return next(m for m in available.hub if m.repo_id == repo_id)


# ------------------------------------------------------------------------ the Hub cache


def test_hub_models_with_revisions_sizes_and_completeness(written_cache):
    found = llm_magic.available()
    two = by_id(found, TWO_REVS)
    main, v1 = two.revisions
    assert (main.commit, main.refs, v1.commit, v1.refs) == (MAIN, ("main",), V1, ("v1",))
    assert main.complete and main.line == f"%llm_load {TWO_REVS}"
    assert not v1.complete and v1.missing == ("weights (model.safetensors)",)
    assert v1.line == f"%llm_load {TWO_REVS} --revision v1"
    files = written_cache["files"]
    assert main.size_bytes == sum(len(b) for b in files.values())
    assert two.size_bytes == main.size_bytes + v1.size_bytes  # blobs counted once
    assert two.complete

    partial = by_id(found, PARTIAL)
    assert not partial.complete and partial.revisions[0].missing == ("weights (model.safetensors)",)
    assert by_id(found, SHARDED).revisions[0].missing == ("model-00002-of-00002.safetensors",)

    assert found.lines().index(main.line) + 1 == found.lines().index(v1.line)
    text = found.text()
    assert f" %llm_load {TWO_REVS} " in text and f"%llm_load {TWO_REVS} --revision v1" in text
    assert "incomplete: lacks weights (model.safetensors) (needs the network)" in text
    assert f"<code>%llm_load {TWO_REVS} --revision v1</code>" in found.html()


def test_the_listed_line_loads_the_listed_snapshot(written_cache):
    """The cache huggingface_hub wrote (blobs and snapshot links) loads by id, offline."""
    snapshot = written_cache["snapshots"][TWO_REVS]
    assert hub.cached_snapshot(TWO_REVS) == snapshot
    assert hub.cached_snapshot(TWO_REVS, "main") == hub.cached_snapshot(TWO_REVS, MAIN) == snapshot
    assert hub.cached_snapshot(TWO_REVS, "v1") == written_cache["snapshots"]["v1"]
    assert (
        hub.cached_snapshot(PARTIAL) is not None
    )  # config.json is there: the load names what is missing
    assert hub.cached_snapshot(TWO_REVS, "v2") is None and hub.cached_snapshot("not/cached") is None
    assert (
        hub.cached_snapshot("bad--id/x") is None
    )  # an invalid id: huggingface_hub's validation, no error

    handle = llm_magic.load(TWO_REVS, device_map="cpu")
    assert handle.info.source == str(snapshot) and handle.info.revision == MAIN


def test_an_empty_or_missing_hub_cache_lists_nothing(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "nowhere"))
    found = llm_magic.available()
    assert found.hub == () and "(none)" in found.text()


# -------------------------------------------------------------- converted .gguf copies


def fake_conversion(gguf: Path, dtype: str, tiny_model_dir: Path) -> Path:
    """The folder layout convert_gguf leaves (the tiny model stands in for the weights)."""
    folder = gguf_cache.converted_folder(str(gguf), dtype)
    shutil.copytree(tiny_model_dir, folder)
    (folder / gguf_cache.MARK).write_text(json.dumps({"gguf": str(gguf)}))
    return folder


def test_converted_copies_with_their_originals(shell, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_MAGIC_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "we<ird> name.gguf"  # a space to quote, markup to escape
    gguf.write_bytes(b"GGUF stand-in")
    folder = fake_conversion(gguf, "bfloat16", tiny_model_dir)
    (
        folder.with_name(folder.name + ".partial-123")
    ).mkdir()  # a conversion still running: not listed

    [copy] = llm_magic.available().converted
    assert (copy.gguf, copy.folder, copy.dtype, copy.state) == (
        str(gguf),
        str(folder),
        "bfloat16",
        "ready",
    )
    assert copy.line == f"%llm_load '{gguf}' --dtype bfloat16"
    assert copy.size_bytes == sum(
        f.stat().st_blocks * 512 for f in folder.iterdir()
    )  # on disk, as du counts it
    html = llm_magic.available().html()
    assert "we&lt;ird&gt; name.gguf" in html and "<ird>" not in html

    os.utime(gguf, ns=(1, 1))  # the original changed: its key no longer names this folder
    assert llm_magic.available().converted[0].state.startswith("original changed")
    gguf.unlink()
    [orphan] = llm_magic.available().converted
    assert orphan.state == "original missing" and orphan.line == f"%llm_load '{folder}'"
    # The quoted line works as it is: the copy loads as the safetensors folder it is.
    shell.run_line_magic(
        "llm_load", orphan.line.removeprefix("%llm_load ") + " --device-map cpu --quiet"
    )
    assert MODEL_CACHE.find(str(folder)) is not None


@pytest.mark.slow
def test_the_converted_line_reuses_the_copy(shell, smollm2_gguf):
    """A real conversion is listed with the line that loads it without converting again."""
    llm_magic.load(smollm2_gguf, device_map="cpu", dtype="bfloat16")
    MODEL_CACHE.clear()
    copy = next(
        c
        for c in llm_magic.available().converted
        if c.gguf == smollm2_gguf and c.dtype == "bfloat16"
    )
    assert copy.state == "ready" and copy.line == f"%llm_load {smollm2_gguf} --dtype bfloat16"
    card = shell.run_line_magic(
        "llm_load", copy.line.removeprefix("%llm_load ") + " --device-map cpu"
    )
    assert card.info.source == copy.folder


# ---------------------------------------------------------------- demo model and kernel


def test_demo_model_and_loaded_models_with_their_lines(shell, tiny_model_dir, smollm2_gguf):
    found = llm_magic.available()
    assert found.demo.path == smollm2_gguf and found.demo.line == f"%llm_load {smollm2_gguf}"
    assert found.demo.size_bytes == os.path.getsize(smollm2_gguf)

    shell.run_line_magic(
        "llm_load", f"{tiny_model_dir} --as tiny --dtype float32 --device-map cpu --quiet"
    )
    [entry] = llm_magic.available().loaded
    assert entry.aliases == ("tiny",) and entry.dtype == "transformers float32"
    assert entry.line == f"%llm_load {tiny_model_dir} --dtype float32 --device-map cpu --as tiny"
    card = shell.run_line_magic("llm_load", entry.line.removeprefix("%llm_load "))
    assert card.cache_state == "cached", "the listed line must hit the cache"


def test_the_demo_model_is_listed_once(shell, tiny_model_dir, smollm2_gguf, tmp_path, monkeypatch):
    """With a converted copy of the demo .gguf on disk, one row offers it (marked as the
    demo model), not a second one under "demo model" with another line."""
    monkeypatch.setenv("LLM_MAGIC_CACHE", str(tmp_path / "cache"))
    assert "demo model:" in llm_magic.available().text()  # no copy: its own section
    fake_conversion(Path(smollm2_gguf), "bfloat16", tiny_model_dir)
    found = llm_magic.available()
    text = found.text()
    assert "demo model:" not in text and text.count(smollm2_gguf + " --dtype bfloat16") == 1
    assert "SmolLM2-135M-Instruct.Q4_1.gguf (demo model)" in text
    assert found.lines().count(f"%llm_load {smollm2_gguf} --dtype bfloat16") == 1
    assert f"%llm_load {smollm2_gguf}" not in [line.rstrip() for line in found.lines()]


def test_llm_load_without_model_shows_the_card(shell, written_cache):
    card = shell.run_line_magic("llm_load", "")
    assert isinstance(card, discovery.Available)
    bundle = card._repr_mimebundle_()
    assert f"%llm_load {TWO_REVS}" in bundle["text/plain"] and "<table" in bundle["text/html"]


def test_fresh_kernel_lists_offline_without_torch(written_cache, smollm2_gguf):
    """A new process with the Hub endpoint on a loopback server: nothing may reach it,
    torch and transformers stay unimported, the listing and the completion answer."""
    script = textwrap.dedent("""
        import json, sys, time
        from IPython.core.interactiveshell import InteractiveShell
        from IPython.core.completer import provisionalcompleter
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "llm_magic")
        started = time.perf_counter()
        card = ip.run_line_magic("llm_load", "")
        seconds = time.perf_counter() - started
        with provisionalcompleter():
            offered = [c.text for c in ip.Completer.completions("%llm_load holdout-", 18)]
        print(json.dumps({"text": card.text(), "seconds": seconds, "offered": offered,
                          "heavy": sorted({"torch", "transformers"} & set(sys.modules))}))
    """)
    with LoopbackHub() as stand_in:
        env = {**os.environ, "HF_ENDPOINT": stand_in.endpoint}
        env.pop("HF_HUB_OFFLINE", None)
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert stand_in.requests == []
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (
        f"%llm_load {HOLDOUT}" in result["text"] and f"%llm_load {smollm2_gguf}" in result["text"]
    )
    assert result["offered"] == [HOLDOUT]
    assert result["heavy"] == []
    assert result["seconds"] < 5  # generous here; the figure (well under 1 s) is in the report
