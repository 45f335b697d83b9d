"""`%llm_load` and `llm_magic.load` on real models: folder, Hub id from the local cache,
the kernel-scoped cache, the card, options and bad input."""

from __future__ import annotations

import gc
import os
import socket
import time
import warnings
import weakref

import pytest
from IPython.utils.capture import capture_output

import llm_magic
from llm_magic import MODEL_CACHE, LoadError, hardware
from llm_magic.display import LoadCard
from llm_magic.hardware import Hardware
from llm_magic.sources import resolve


def run(shell, line):
    """Run one cell; return (result, captured output)."""
    with capture_output() as captured:
        result = shell.run_cell(line)
    return result, captured


CPU_KINDS = {  # the CPU kinds the dtype policy tells apart, as data
    "avx512_bf16": (Hardware(cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"})), "bfloat16"),
    "avx2": (Hardware(cpu_flags=frozenset({"avx2", "fma"})), "bfloat16"),
    "sse4": (Hardware(cpu_flags=frozenset({"sse4_2"})), "float32"),
}


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_load_folder_shows_card(shell, tiny_model_dir, kind):
    facts, expected_dtype = CPU_KINDS[kind]
    with hardware.assume(facts):
        result, captured = run(shell, f"%llm_load {tiny_model_dir}")
    assert result.success
    card = result.result
    assert isinstance(card, LoadCard)
    text = card.text()
    assert "tiny-gpt2  →  GPT2LMHeadModel" in text
    for label in ("parameters", "memory", "device", "dtype", "source", "loaded in", "cache"):
        assert label in text
    assert "device      cpu" in text
    # The card states the policy's choice for these facts, and its reason; the model has that dtype.
    choice = hardware.choose_dtype(facts, resolve.checkpoint_dtype(str(tiny_model_dir)))
    assert choice.dtype == expected_dtype
    assert f"dtype       {expected_dtype}  ({choice.reason})" in text
    assert (
        card.info.dtype
        == expected_dtype
        == str(MODEL_CACHE.current().model.dtype).removeprefix("torch.")
    )
    assert "new · 1 model" in text
    assert card.info.num_params == sum(p.numel() for p in MODEL_CACHE.current().model.parameters())
    assert "reading weights" in captured.stderr  # progress while loading


def test_same_request_is_a_cache_hit_in_milliseconds(shell, tiny_model_dir):
    first = llm_magic.load(str(tiny_model_dir))
    timings = []
    for _ in range(5):  # best of five: the magic's own time, not a busy machine's
        started = time.perf_counter()
        card = shell.run_line_magic("llm_load", str(tiny_model_dir))
        timings.append(time.perf_counter() - started)
    assert MODEL_CACHE.current() is first
    assert llm_magic.load(str(tiny_model_dir)) is first
    assert "cache hit" in card.text() and "cached · 1 model" in card.text()
    assert min(timings) <= 0.010, f"cache hit took {min(timings) * 1000:.1f} ms"


def test_cache_key_holds_dtype_and_reload_bypasses_cache(tiny_model_dir):
    bf16 = llm_magic.load(str(tiny_model_dir))
    fp32 = llm_magic.load(str(tiny_model_dir), dtype="fp32")
    assert fp32 is not bf16 and str(fp32.model.dtype) == "torch.float32"
    again, card = llm_magic.load_with_card(str(tiny_model_dir), dtype="float32", reload=True)
    assert again is not fp32
    assert card.cache_state == "reloaded"
    assert fp32.model is None  # the replaced entry let go of its weights
    assert len(MODEL_CACHE) == 2


def test_alias_names_the_cached_model(shell, tiny_model_dir):
    result, _ = run(shell, f"%llm_load {tiny_model_dir} --as tiny")
    assert result.success and "(as tiny)" in result.result.text()
    assert MODEL_CACHE.find("tiny") is MODEL_CACHE.current()


def test_hub_id_loads_from_local_cache_without_network(tiny_hub_id, tiny_model_dir, monkeypatch):
    assert "HF_HUB_OFFLINE" not in os.environ
    attempts = []

    def no_network(self, address, *args):
        attempts.append(address)
        raise OSError("network touched")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    handle, card = llm_magic.load_with_card(tiny_hub_id)
    assert attempts == []
    assert handle.info.kind == "hub"
    assert "/snapshots/" in handle.info.source
    assert card.info.revision and len(card.info.revision) == 40
    assert tiny_hub_id in card.text() and "revision" in card.text()


def test_hub_id_not_cached_goes_to_the_hub(tiny_hub_id, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    from llm_magic.sources import hub
    from llm_magic.sources.resolve import resolve_source

    # The session's Hub is a closed port on 127.0.0.1 (conftest): an id that is not cached
    # fails at once.
    with pytest.raises(LocalEntryNotFoundError):
        resolve_source("llm-magic-tests/not-cached-anywhere")
    # Where the Hub answers, the id is left for from_pretrained to download.
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=2.0: True)
    source = resolve_source("llm-magic-tests/not-cached-anywhere")
    assert (source.kind, source.cached, source.path) == ("hub", False, None)
    cached = resolve_source(tiny_hub_id)
    assert cached.cached and cached.path.endswith(cached.revision)
    assert resolve_source(tiny_hub_id, revision=cached.revision).path == cached.path
    assert not resolve_source(tiny_hub_id, revision="some-branch").cached


def test_configured_default_dtype(shell, tiny_model_dir):
    shell.run_line_magic("config", "LLMMagics.dtype = 'float32'")
    result, _ = run(shell, f"%llm_load {tiny_model_dir} --quiet")
    assert result.success and result.result is None
    assert str(MODEL_CACHE.current().model.dtype) == "torch.float32"


def test_no_deprecation_warning_for_dtype_keyword(tiny_model_dir, capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm_magic.load(str(tiny_model_dir), dtype="float32")
    messages = [str(w.message) for w in caught] + [capfd.readouterr().err]
    assert not any("torch_dtype" in m for m in messages)


def test_card_html_escapes_names(shell, tiny_model_dir, tmp_path):
    import shutil

    odd = tmp_path / "<b>model&co"
    shutil.copytree(tiny_model_dir, odd)
    card = llm_magic.load_with_card(str(odd))[1]
    bundle = card._repr_mimebundle_()
    assert "&lt;b&gt;model&amp;co" in bundle["text/html"]
    assert "<b>model" not in bundle["text/html"]
    assert "<b>model&co" in bundle["text/plain"]


def test_unknown_dtype_is_a_usage_error(shell, tiny_model_dir):
    result, captured = run(shell, f"%llm_load {tiny_model_dir} --dtype fp8")
    assert not result.success
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert "fp8" in captured.stderr + captured.stdout
    assert len(MODEL_CACHE) == 0


def test_missing_path_fails_with_a_short_card(shell, tmp_path):
    missing = tmp_path / "models" / "nope"
    result, captured = run(shell, f"%llm_load {missing}")
    assert not result.success
    assert isinstance(result.error_in_exec, LoadError)
    shown = captured.stdout + captured.stderr
    assert f"✗ {missing}: no such file or folder" in shown.splitlines()
    # The nearest folder that exists, named on its own line: tmp_path, not the missing path.
    assert f"  → nearest existing folder: {tmp_path}" in shown.splitlines()
    assert "Traceback" not in shown
    assert len(MODEL_CACHE) == 0


def test_folder_without_tokenizer_fails_clearly(shell, tiny_model_dir, tmp_path):
    from support.tiny_model import copy_model

    folder = copy_model(
        tiny_model_dir,
        tmp_path / "no-tokenizer",
        skip=(
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.json",
            "merges.txt",
        ),
    )
    result, captured = run(shell, f"%llm_load {folder}")
    assert not result.success
    assert isinstance(result.error_in_exec, LoadError)
    assert "tokenizer is empty" in captured.stdout + captured.stderr
    assert len(MODEL_CACHE) == 0


def test_load_ext_twice_says_already_loaded_and_reload_ext_works(shell, tiny_model_dir):
    with capture_output() as captured:
        shell.run_line_magic("load_ext", "llm_magic")
    assert "already loaded" in captured.stdout
    shell.run_line_magic("reload_ext", "llm_magic")
    result, _ = run(shell, f"%llm_load {tiny_model_dir} --quiet")
    assert result.success


def test_unload_ext_releases_every_model(shell, tiny_model_dir):
    run(shell, f"%llm_load {tiny_model_dir}")
    run(shell, f"%llm_load {tiny_model_dir} --dtype float32")
    refs = [weakref.ref(e.model) for e in MODEL_CACHE.entries()]
    assert len(refs) == 2
    shell.run_line_magic("unload_ext", "llm_magic")
    gc.collect()
    assert len(MODEL_CACHE) == 0
    assert all(r() is None for r in refs)  # the cards in Out hold no model


def test_help_lists_options(shell):
    doc = shell.find_line_magic("llm_load").__doc__
    for option in (
        "--dtype",
        "--device-map",
        "--revision",
        "--trust-remote-code",
        "--as",
        "--reload",
        "--quiet",
    ):
        assert option in doc


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_model_name(bad):
    with pytest.raises(LoadError, match="no model given"):
        llm_magic.load(bad)


def test_offload_to_disk_is_warned_on_the_card(shell, tiny_model_dir):
    # A small max_memory makes accelerate put the layers that do not fit on disk, silently.
    # (Every layer on disk cannot run: that is refused, tests/test_bad_values.py.)
    result, _ = run(shell, f"%llm_load {tiny_model_dir} --dtype float32 --max-memory cpu=450KB")
    assert result.success
    text = result.result.text()
    assert "device      cpu, disk" in text
    assert "offloaded to disk" in text and "slower" in text


def test_bad_max_memory_is_a_usage_error(shell, tiny_model_dir):
    result, _ = run(shell, f"%llm_load {tiny_model_dir} --max-memory lots")
    assert type(result.error_in_exec).__name__ == "UsageError"


def test_quiet_writes_nothing_to_stdout_or_stderr(shell, tiny_model_dir, capfd):
    import llm_magic

    capfd.readouterr()
    result = shell.run_cell(f"%llm_load {tiny_model_dir} --quiet")
    handle = llm_magic.load(str(tiny_model_dir), dtype="float32", quiet=True)  # a second, new load
    out, err = capfd.readouterr()
    assert result.success and handle.info.dtype == "float32"
    assert out == "" and err == ""  # no "Loading weights" bar, no warnings


def test_a_gpu_left_unused_is_warned_on_the_card(shell, tiny_model_dir):
    # A machine with a GPU, as data: the model asked onto the CPU, the card says the GPU sits idle.
    a100 = hardware.GPU(0, "NVIDIA A100-SXM4-40GB", (8, 0), 40 * 2**30)
    with hardware.assume(Hardware(gpus=(a100,), cuda_built=True, cpu_flags=frozenset({"avx2"}))):
        result, _ = run(shell, f"%llm_load {tiny_model_dir} --device-map cpu")
    assert result.success, result.error_in_exec
    warning = (
        "a GPU is present (NVIDIA A100-SXM4-40GB) but the model is on cpu: "
        "--device-map auto uses it"
    )
    assert warning in result.result.info.warnings and f"⚠ {warning}" in result.result.text()
    with hardware.assume(Hardware(cpu_flags=frozenset({"avx2"}))):  # the same machine without a GPU
        result, _ = run(shell, f"%llm_load {tiny_model_dir} --device-map cpu --reload")
    assert not any("GPU is present" in w for w in result.result.info.warnings)
