"""`--quantize nf4|fp4|int8`: bitsandbytes' 4-bit and 8-bit layers, on this CPU.

The tiny GPT-2 for the flags, the card, the cache key, the size estimate and the missing
package; the real SmolLM2 .gguf (slow) for the footprint and an answer that still holds.
"""

from __future__ import annotations

import sys

import pytest

import llm_magic
from llm_magic import MODEL_CACHE, LoadError
from llm_magic.engines import transformers_load
from llm_magic.sources import resolve

bitsandbytes = pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantized_tiny_model_loads_smaller_and_generates(shell, tiny_model_dir, kind):
    plain = shell.run_line_magic("llm_load", f"{tiny_model_dir} --dtype bfloat16 --as plain").text()
    card = shell.run_line_magic(
        "llm_load", f"{tiny_model_dir} --dtype bfloat16 --quantize {kind} --as q"
    ).text()
    full, small = MODEL_CACHE.find("plain"), MODEL_CACHE.find("q")
    assert full is not small  # the quantization is part of the cache key
    assert small.info.memory_bytes == small.model.get_memory_footprint() < full.info.memory_bytes
    assert small.info.num_params == full.info.num_params  # counted unpacked
    assert f"quantization  {kind}:" in card and "bitsandbytes" in card
    assert "quantization" not in plain
    # The same request again is a cache hit on the quantized entry.
    again = shell.run_line_magic(
        "llm_load", f"{tiny_model_dir} --dtype bfloat16 --quantize {kind}"
    ).text()
    assert "cache hit" in again and len(MODEL_CACHE) == 2
    result = shell.run_cell_magic(
        "llm_generate", "-m q --greedy --max-new-tokens 4 --no-stream", "The capital"
    )
    assert result.new_tokens == 4


def test_int8_generation_does_not_flood_the_output(shell, tiny_model_dir, caplog):
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --dtype bfloat16 --quantize int8 --quiet")
    with caplog.at_level("WARNING"):
        shell.run_cell_magic(
            "llm_generate", "--greedy --max-new-tokens 4 --no-stream", "The capital"
        )
    # bitsandbytes logs this at every 8-bit product; the card says it once instead.
    assert not [r for r in caplog.records if "inputs will be cast" in r.getMessage()]


def test_the_fit_check_estimates_the_quantized_size_from_headers(tiny_model_dir):
    source = resolve.resolve_source(str(tiny_model_dir))
    full = transformers_load.estimate(source, "bfloat16")
    for kind in ("nf4", "int8"):
        est = transformers_load.estimate(source, "bfloat16", kind)
        handle = llm_magic.load(str(tiny_model_dir), dtype="bfloat16", quantize=kind)
        real = handle.info.memory_bytes
        assert est.bytes < full.bytes
        assert abs(est.bytes - real) <= 0.1 * real, (kind, est.bytes, real)


def test_missing_bitsandbytes_gives_the_install_line(shell, tiny_model_dir, monkeypatch):
    # None in sys.modules is how Python itself marks a package as not importable.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(LoadError) as info:
        llm_magic.load(str(tiny_model_dir), quantize="nf4")
    card = "\n".join(info.value.card_lines())
    assert "bitsandbytes is not installed" in card and 'pip install "llm_magic[quantize]"' in card
    assert len(MODEL_CACHE) == 0


def test_bad_quantize_values_are_refused(tiny_model_dir, smollm2_gguf):
    with pytest.raises(LoadError, match="not one of nf4, fp4, int8"):
        llm_magic.load(str(tiny_model_dir), quantize="q3")
    with pytest.raises(LoadError, match="llama.cpp runs the file as quantized"):
        llm_magic.load(smollm2_gguf, quantize="nf4", engine="llama.cpp")


@pytest.mark.slow
def test_nf4_smollm2_is_under_half_of_bf16_and_still_answers_paris(shell, smollm2_gguf):
    shell.run_line_magic("llm_load", f"{smollm2_gguf} --dtype bfloat16 --as bf16 --quiet")
    card = shell.run_line_magic(
        "llm_load", f"{smollm2_gguf} --dtype bfloat16 --quantize nf4 --as nf4"
    ).text()
    bf16, nf4 = MODEL_CACHE.find("bf16"), MODEL_CACHE.find("nf4")
    assert nf4.model.get_memory_footprint() <= 0.5 * bf16.model.get_memory_footprint()
    assert "quantization  nf4: 4-bit NF4" in card
    source = resolve.resolve_source(smollm2_gguf)
    est = transformers_load.estimate(source, "bfloat16", "nf4")  # the converted copy's headers
    assert abs(est.bytes - nf4.info.memory_bytes) <= 0.1 * nf4.info.memory_bytes
    result = shell.run_cell_magic(
        "llm_generate",
        "-m nf4 --greedy --max-new-tokens 24 --no-stream",
        "What is the capital of France?",
    )
    assert "Paris" in result.text


# What a CPU with AVX512-BF16 makes bitsandbytes do at import: this machine may lack the
# instruction set, so the subprocess tells bitsandbytes it has it (its own probe,
# `functional.has_avx512bf16`, answers True), and records whether bitsandbytes then asked
# `kernels` for the Hub kernel.
_AVX512_BF16_LOAD = """
import importlib.abc, json, sys

class SaysAvx512Bf16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "bitsandbytes.backends.cpu.ops":  # about to ask the CPU what it has
            sys.modules["bitsandbytes.functional"].has_avx512bf16 = lambda: True
        return None

sys.meta_path.insert(0, SaysAvx512Bf16())
import kernels
asked = []
real_get_kernel = kernels.get_kernel
def get_kernel(repo_id, **kw):
    asked.append(repo_id)
    return real_get_kernel(repo_id, **kw)
kernels.get_kernel = get_kernel

import llm_magic
handle = llm_magic.load(sys.argv[1], dtype="bfloat16", quantize="nf4")
print(json.dumps({"asked": asked, "quantization": handle.info.quantization}))
"""


def test_nf4_on_an_avx512_bf16_cpu_stays_offline_and_quiet(tiny_model_dir):
    """bitsandbytes' Hub kernel lookup makes no connection (the subprocess's network guard
    would fail this test: HF_ENDPOINT is the real Hub's here) and prints nothing."""
    import json
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "LOCAL_KERNELS")}
    done = subprocess.run(
        [sys.executable, "-c", _AVX512_BF16_LOAD, str(tiny_model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # bitsandbytes did look for the kernel (the CPU said it could use one) ...
    assert report == {
        "asked": ["kernels-community/quantization-bitsandbytes"],
        "quantization": "nf4",
    }
    # ... and said nothing about it: no warning, no advice to trust remote code.
    assert "kernels-community" not in done.stderr and "trust_remote_code" not in done.stderr
    assert "gemm_4bit_forward" not in done.stderr


def test_an_nf4_model_is_labelled_nf4_wherever_its_dtype_shows(shell, tiny_model_dir):
    """Footer, the metadata saved into the notebook, %llm_models, a budget's unload note
    and the unload card: each says nf4 and the engine, never bfloat16 alone."""
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --dtype bfloat16 --quantize nf4 --as q")
    label = "transformers nf4 (bfloat16 compute)"
    assert MODEL_CACHE.find("q").info.held_as == label
    result = shell.run_cell_magic(
        "llm_generate", "-m q --greedy --max-new-tokens 2 --no-stream", "The capital"
    )
    assert result.footer().endswith(f"tiny-gpt2 {label}")
    bundle, metadata = result._repr_mimebundle_()
    meta = metadata["llm_magic"]
    assert (meta["quantization"], meta["held_as"], meta["dtype"]) == ("nf4", label, "bfloat16")
    assert label in bundle["text/plain"] and label in bundle["text/html"]
    row = next(
        line for line in shell.run_line_magic("llm_models", "").text().splitlines() if " q " in line
    )
    assert label in row
    unloaded = shell.run_line_magic("llm_unload", "q")
    assert unloaded.title() == f"unloaded tiny-gpt2 ({label}, as q)"
