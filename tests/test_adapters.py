"""Adapters on a loaded model: `%llm_load BASE --adapter`, `%llm_adapter load|list|unload`,
`-m MODEL:ADAPTER` and `-m MODEL:base`, on transformers (PEFT LoRA built with peft on the
tiny GPT-2) and llama.cpp (a GGUF LoRA on the tiny .gguf); the cards of the failures."""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output
from support.tiny_model import (
    build_tiny_gguf,
    build_tiny_gguf_lora,
    build_tiny_gpt2,
    build_tiny_lora,
)

import llm_magic
from llm_magic import MODEL_CACHE
from llm_magic.errors import LoadError

PROMPTS = ["The capital of France", "Hello world! Numbers like", "A notebook cell holds"]
NEW = 24


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_varied_dir) -> dict[str, Path]:
    """The adapters: two for the varied tiny GPT-2, one for a GPT-2 of another width."""
    root = tmp_path_factory.mktemp("adapters")
    other = build_tiny_gpt2(root / "other-gpt2", width=32)
    return {
        "lora": build_tiny_lora(tiny_varied_dir, root / "lora", seed=1),
        "proj": build_tiny_lora(tiny_varied_dir, root / "proj", seed=2, targets=("c_proj",)),
        "other": build_tiny_lora(other, root / "other-lora", seed=3),
    }


@pytest.fixture(scope="module", autouse=True)
def _drop_references():
    yield
    _reference_model.cache_clear()  # no model of this module's outlives it


def run(shell, cell):
    with capture_output() as captured:
        result = shell.run_cell(cell, store_history=True)
    return result, captured


def greedy(shell, model: str, prompt: str) -> list[int]:
    result, _ = run(shell, f"%%llm_generate -m {model} --greedy --max-new-tokens {NEW}\n{prompt}")
    assert result.success, result.error_in_exec
    return list(result.result.token_ids)


@functools.cache
def _reference_model(folder: Path, adapter: Path | None):
    """A fresh copy of the base model, or `PeftModel.from_pretrained(base, adapter)`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return tokenizer, model


def reference(folder: Path, adapter: Path | None, prompt: str) -> list[int]:
    """Plain `model.generate` on a fresh copy of the base model, or on
    `PeftModel.from_pretrained(base, adapter)`: greedy new token ids."""
    import torch

    tokenizer, model = _reference_model(folder, adapter)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW,
        do_sample=False,
        pad_token_id=tokenizer.eos_token_id,
    )
    return out[0, ids.shape[1] :].tolist()


def lora_modules(model) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


# --- the base and the adapter, token for token -------------------------------------------


def test_base_is_plain_generate_and_the_adapter_is_peft_model_generate(
    shell, tiny_varied_dir, built
):
    result, captured = run(
        shell,
        f"%llm_load {tiny_varied_dir} --dtype float32 --as tiny --adapter lora={built['lora']}",
    )
    assert result.success, captured.stdout
    card = captured.stdout + str(result.result)
    assert "adapter lora" in card and "LoRA r 4, alpha 8 · c_attn, c_fc (4 modules)" in card
    assert "-m tiny:lora · -m tiny:base (adapters off)" in card
    for prompt in PROMPTS:
        plain = reference(tiny_varied_dir, None, prompt)
        peft = reference(tiny_varied_dir, built["lora"], prompt)
        assert plain != peft  # the adapter measurably changes the answer
        assert len(set(plain)) >= 8 and len(set(peft)) >= 8
        assert greedy(shell, "tiny:base", prompt) == plain
        assert greedy(shell, "tiny:lora", prompt) == peft
        assert greedy(shell, "tiny", prompt) == peft  # --adapter's first: the default
    # The result records which adapter made it; the footer says so.
    result, _ = run(shell, "%%llm_generate -m tiny:base --greedy --max-new-tokens 3\nHi")
    assert result.result.adapter == "base" and "tiny-gpt2-varied:base" in result.result.footer()
    result, _ = run(shell, "%%llm_generate -m tiny:lora --greedy --max-new-tokens 3\nHi")
    assert result.result.metadata()["adapter"] == "lora"
    assert result.result.metadata()["engine"]["adapter"] == "lora"
    # After each call the model is at rest with its default adapter on.
    entry = MODEL_CACHE.find("tiny")
    ids = entry.tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    out = entry.model.generate(input_ids=ids, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    assert out[0, ids.shape[1] :].tolist() == reference(tiny_varied_dir, built["lora"], PROMPTS[0])


def test_a_second_adapter_is_loaded_without_the_base_and_switches(shell, tiny_varied_dir, built):
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --dtype float32 --as tiny --quiet")
    entry = MODEL_CACHE.find("tiny")
    weights = {n: p.data_ptr() for n, p in entry.model.named_parameters()}
    before = entry.memory_bytes
    result, captured = run(shell, f"%llm_adapter load {built['lora']} proj={built['proj']}")
    assert result.success, captured.stdout
    card = str(result.result)
    assert "adapter lora, proj on tiny-gpt2-varied" in card
    assert "not read again" in card
    # The base weights are the same tensors: nothing of the base was loaded again.
    after = {
        n.replace(".base_layer.", "."): p.data_ptr() for n, p in entry.model.named_parameters()
    }
    assert all(after[n] == ptr for n, ptr in weights.items())
    added = entry.memory_bytes - before
    assert added == sum(a.memory_bytes for a in entry.adapters.values())
    files = sum((built[k] / "adapter_model.safetensors").stat().st_size for k in ("lora", "proj"))
    assert 0.8 * files <= added <= files  # about the adapters' size: their tensors, no header
    # Loaded by %llm_adapter: the name alone still means the base model.
    prompt = PROMPTS[1]
    assert greedy(shell, "tiny", prompt) == reference(tiny_varied_dir, None, prompt)
    assert greedy(shell, "tiny:proj", prompt) == reference(tiny_varied_dir, built["proj"], prompt)
    assert greedy(shell, "tiny:lora", prompt) == reference(tiny_varied_dir, built["lora"], prompt)
    listed, _ = run(shell, "%llm_adapter list -m tiny")
    assert "tiny-gpt2-varied: 2 adapters" in str(listed.result)
    models, _ = run(shell, "%llm_models")
    assert "↳ tiny:lora" in str(models.result) and "↳ tiny:proj" in str(models.result)
    # The same again is no new load; the same name from another path is refused.
    again, _ = run(shell, f"%llm_adapter load lora={built['lora']}")
    assert "nothing new to load" in str(again.result)
    clash, captured = run(shell, f"%llm_adapter load lora={built['proj']}")
    assert isinstance(clash.error_in_exec, LoadError)
    assert "adapter lora is on tiny already" in captured.stdout


def test_memory_grows_by_the_adapter_not_the_base(shell, tmp_path):
    """A base of ~7 M parameters (28 MB in float32): putting a LoRA of ~0.2 MB on it grows
    the process by far less than another copy of the base would."""
    big = build_tiny_gpt2(tmp_path / "big", layers=4, width=384)
    lora = build_tiny_lora(big, tmp_path / "big-lora", rank=8, targets=("c_attn",))
    shell.run_line_magic("llm_load", f"{big} --dtype float32 --as big --quiet")
    entry = MODEL_CACHE.find("big")
    base = entry.info.memory_bytes
    assert base > 25e6
    card = llm_magic.load_adapter(str(lora), model="big")
    size = (lora / "adapter_model.safetensors").stat().st_size
    assert entry.memory_bytes - base == entry.adapters["big-lora"].memory_bytes
    assert abs(entry.adapters["big-lora"].memory_bytes - size) < 0.05 * size
    grown = card.rss_after - card.rss_before
    assert grown < 0.25 * base, f"RSS grew {grown} bytes for a {size}-byte adapter"
    assert "RSS" in str(card)


# --- unloading ---------------------------------------------------------------------------


def test_unloading_an_adapter_frees_it_and_gives_the_model_back(shell, tiny_varied_dir, built):
    shell.run_line_magic(
        "llm_load", f"{tiny_varied_dir} --dtype float32 --as tiny --adapter {built['lora']} --quiet"
    )
    entry = MODEL_CACHE.find("tiny")
    assert len(lora_modules(entry.model)) == 4 and entry.default_adapter == "lora"
    names = {n for n, _ in entry.model.named_parameters() if "lora_" not in n}
    result, captured = run(shell, "%llm_adapter unload tiny:lora")
    assert result.success, captured.stdout
    card = str(result.result)
    assert card.startswith("✓ unloaded adapter lora from tiny-gpt2-varied") and "freed" in card
    assert result.result.freed
    # No peft layer is left: the model is the one that was loaded.
    assert lora_modules(entry.model) == [] and entry.adapters == {}
    plain_names = {n.replace(".base_layer", "") for n in names}
    assert {n for n, _ in entry.model.named_parameters()} == plain_names
    assert entry.memory_bytes == entry.info.memory_bytes
    assert greedy(shell, "tiny", PROMPTS[0]) == reference(tiny_varied_dir, None, PROMPTS[0])
    missing, captured = run(shell, "%llm_adapter unload lora -m tiny")
    assert isinstance(missing.error_in_exec, llm_magic.LLMError) and "no adapter" in captured.stdout


def test_unloading_the_model_frees_its_adapters(shell, tiny_varied_dir, built):
    import gc
    import weakref

    shell.run_line_magic(
        "llm_load", f"{tiny_varied_dir} --as tiny --adapter {built['lora']} --quiet"
    )
    entry = MODEL_CACHE.find("tiny")
    refs = [weakref.ref(p) for n, p in entry.model.named_parameters() if "lora_" in n]
    assert refs
    del entry
    result, _ = run(shell, "%llm_unload tiny")
    assert result.result.freed
    gc.collect()
    assert all(r() is None for r in refs)


# --- failures: cards with fixes, the cache as it was -------------------------------------


def cache_state():
    return [
        (e.key, e.memory_bytes, tuple(e.adapters), e.default_adapter, len(lora_modules(e.model)))
        for e in MODEL_CACHE.entries()
    ]


def test_an_adapter_for_another_base_model_gives_its_card(shell, tiny_varied_dir, built):
    shell.run_line_magic(
        "llm_load", f"{tiny_varied_dir} --dtype float32 --as tiny --adapter {built['lora']} --quiet"
    )
    before = cache_state()
    result, captured = run(shell, f"%llm_adapter load {built['other']} -m tiny")
    assert isinstance(result.error_in_exec, LoadError)
    out = captured.stdout
    assert "✗ other-lora: an adapter for another base model than tiny-gpt2-varied" in out
    assert "takes 32 inputs" in out and "the model's takes 64" in out
    assert "other-gpt2" in out  # the base it names, in the fix
    assert "Traceback" not in out
    assert cache_state() == before  # the cache unchanged, the model untouched
    # The kernel lives: the model still answers as before.
    assert greedy(shell, "tiny:base", PROMPTS[0]) == reference(tiny_varied_dir, None, PROMPTS[0])
    # On a model this very %llm_load read, the failure unloads it again: the cache as it was.
    result, captured = run(shell, f"%llm_load {tiny_varied_dir} --adapter {built['other']}")
    assert isinstance(result.error_in_exec, LoadError)
    assert cache_state() == before


def test_a_folder_without_adapter_config_json(shell, tiny_varied_dir, built, tmp_path):
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --as tiny --quiet")
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    shutil.copy(built["lora"] / "adapter_model.safetensors", weights_only)
    result, captured = run(shell, f"%llm_adapter load {weights_only}")
    assert isinstance(result.error_in_exec, LoadError)
    assert "✗ weights-only: no adapter_config.json" in captured.stdout
    assert "PeftModel.save_pretrained" in captured.stdout
    result, captured = run(shell, f"%llm_adapter load {tiny_varied_dir}")
    assert "a model folder, not an adapter" in captured.stdout
    assert f"%llm_load {tiny_varied_dir}" in captured.stdout
    assert MODEL_CACHE.find("tiny").adapters == {}


def test_a_rank_the_weights_do_not_have(shell, tiny_varied_dir, built, tmp_path):
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --as tiny --quiet")
    edited = shutil.copytree(built["lora"], tmp_path / "edited")
    config = json.loads((edited / "adapter_config.json").read_text())
    config["r"] = 8
    (edited / "adapter_config.json").write_text(json.dumps(config))
    result, captured = run(shell, f"%llm_adapter load {edited}")
    assert isinstance(result.error_in_exec, LoadError)
    assert "rank mismatch — adapter_config.json says r=8, the weights have rank 4" in (
        captured.stdout
    )
    assert '"r": 4' in captured.stdout
    assert lora_modules(MODEL_CACHE.find("tiny").model) == []


def test_peft_missing_gives_the_install_line(shell, tiny_varied_dir, built, monkeypatch):
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --as tiny --quiet")
    # This machine has peft: an import that fails as it does where it is not installed.
    for name in [n for n in sys.modules if n == "peft" or n.startswith("peft.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "peft", None)
    result, captured = run(shell, f"%llm_adapter load {built['lora']}")
    assert isinstance(result.error_in_exec, LoadError)
    assert "peft is not installed" in captured.stdout
    assert 'pip install "llm_magic[adapters]"' in captured.stdout
    assert MODEL_CACHE.find("tiny").adapters == {}


def test_names_an_adapter_cannot_take(shell, tiny_varied_dir, built):
    result, captured = run(shell, f"%llm_load {tiny_varied_dir} --adapter base={built['lora']}")
    assert isinstance(result.error_in_exec, LoadError) and "'base' is taken" in captured.stdout
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --as tiny --quiet")
    result, captured = run(shell, "%%llm_generate -m tiny:nope --max-new-tokens 2\nHi")
    assert "tiny has no adapter 'nope'" in captured.stdout
    assert "%llm_adapter load nope=PATH -m tiny" in captured.stdout


def test_a_gguf_lora_does_not_go_on_a_transformers_model(shell, tiny_varied_dir, tmp_path):
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --as tiny --quiet")
    lora = build_tiny_gguf_lora(tmp_path / "lora.gguf")
    result, captured = run(shell, f"%llm_adapter load {lora}")
    assert isinstance(result.error_in_exec, LoadError)
    assert "a GGUF LoRA file does not go on tiny (transformers)" in captured.stdout
    assert "--engine llama.cpp" in captured.stdout


# --- llama.cpp: a GGUF LoRA on the open model --------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_model_dir) -> Path:
    pytest.importorskip("llama_cpp")
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_model_dir)


def llama_greedy(path: Path, prompt: str, lora: Path | None = None) -> list[int]:
    """llama-cpp-python by itself (`Llama(lora_path=...)`): greedy new token ids."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=256,
        lora_path=str(lora) if lora else None,
        verbose=False,
    )
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    out = []
    for token in llm.generate(tokens, temp=0.0, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(out) >= NEW:
            break
        out.append(token)
    llm.close()
    return out


def test_llama_cpp_lora_switches_on_the_open_model(shell, tiny_gguf, tmp_path):
    lora = build_tiny_gguf_lora(tmp_path / "lora.gguf")
    result, captured = run(
        shell, f"%llm_load {tiny_gguf} --engine llama.cpp --as g --adapter q={lora}"
    )
    assert result.success, captured.stdout
    card = str(result.result)
    assert "adapter q" in card and "LoRA r 4, alpha 8 · attn_q, attn_v (4 modules)" in card
    llm = MODEL_CACHE.find("g").model
    prompt = "The capital of France"
    plain, adapted = llama_greedy(tiny_gguf, prompt), llama_greedy(tiny_gguf, prompt, lora)
    assert plain != adapted
    for _ in range(2):  # switching back and forth, the context started over each time
        assert greedy(shell, "g:base", prompt)[: len(plain)] == plain
        assert greedy(shell, "g:q", prompt)[: len(adapted)] == adapted
    assert MODEL_CACHE.find("g").model is llm  # the file was not opened again
    result, _ = run(shell, "%llm_adapter unload q -m g")
    assert result.success and MODEL_CACHE.find("g").adapters == {}
    assert greedy(shell, "g", prompt)[: len(plain)] == plain


def test_llama_cpp_lora_for_another_model_gives_llama_cpps_reason(shell, tiny_gguf, tmp_path):
    lora = build_tiny_gguf_lora(tmp_path / "wide.gguf", width=128, kv_width=64)
    shell.run_line_magic("llm_load", f"{tiny_gguf} --engine llama.cpp --as g --quiet")
    result, captured = run(shell, f"%llm_adapter load {lora} -m g")
    assert isinstance(result.error_in_exec, LoadError)
    assert "an adapter for another base model than tiny.gguf" in captured.stdout
    assert "incorrect shape" in captured.stdout  # llama.cpp's own words
    assert MODEL_CACHE.find("g").adapters == {}
    assert result.error_in_exec is not None and shell.run_cell("1 + 1").result == 2
