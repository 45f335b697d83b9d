"""`--quantize nf4|fp4|int8`: bitsandbytes' 4-bit and 8-bit layers, on this CPU.

The tiny GPT-2 for the flags, the card, the cache key, the size estimate and the missing
package; the real SmolLM2 .gguf (slow) for the footprint and an answer that still holds.
"""

from __future__ import annotations

import sys

import pytest

import llm_magic
from llm_magic import MODEL_CACHE, LoadError, loading
from llm_magic.engines import transformers_load

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
    source = loading.resolve_source(str(tiny_model_dir))
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
    source = loading.resolve_source(smollm2_gguf)
    est = transformers_load.estimate(source, "bfloat16", "nf4")  # the converted copy's headers
    assert abs(est.bytes - nf4.info.memory_bytes) <= 0.1 * nf4.info.memory_bytes
    result = shell.run_cell_magic(
        "llm_generate",
        "-m nf4 --greedy --max-new-tokens 24 --no-stream",
        "What is the capital of France?",
    )
    assert "Paris" in result.text
