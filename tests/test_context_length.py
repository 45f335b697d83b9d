"""The context limit of every architecture, read as transformers reads it, and the
guard that keeps a prompt plus its new tokens inside it (issue 10, item 8).

Each model is built tiny from its own config class (random weights, the tiny GPT-2's
tokenizer), saved with save_pretrained and loaded with llm_magic.load like a user's folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import llm_magic

# (model_type, config fields giving a tiny model, the limit it must report)
ARCHITECTURES = [
    ("gpt2", dict(n_positions=128, n_embd=32, n_layer=1, n_head=2), 128),
    (
        "llama",
        dict(
            max_position_embeddings=96,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        ),
        96,
    ),
    ("mpt", dict(max_seq_len=512, d_model=32, n_layers=1, n_heads=2, expansion_ratio=2), 512),
    (
        "gpt_neox",
        dict(
            max_position_embeddings=80,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        80,
    ),
    (
        "opt",
        dict(
            max_position_embeddings=72,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            word_embed_proj_dim=32,
        ),
        72,
    ),
    ("gptj", dict(n_positions=64, n_embd=32, n_layer=1, n_head=2, rotary_dim=8), 64),
    ("bloom", dict(hidden_size=32, n_layer=1, n_head=2), None),  # ALiBi: no length in its config
]


def build_tiny(model_type: str, fields: dict, tokenizer_dir: Path, folder: Path) -> Path:
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **fields,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("architectures")
    return {t: build_tiny(t, fields, tiny_model_dir, root / t) for t, fields, _ in ARCHITECTURES}


@pytest.mark.parametrize("model_type, expected", [(t, limit) for t, _, limit in ARCHITECTURES])
def test_each_architecture_reports_its_context_length(tiny_models, model_type, expected):
    handle = llm_magic.load(str(tiny_models[model_type]), dtype="float32", quiet=True)
    limit = handle.engine.context_limit()
    if expected is None:  # nor does the tokenizer say (model_max_length not set): no limit
        assert handle.tokenizer.model_max_length >= 10**8
    assert limit == expected


def test_a_long_prompt_on_a_tiny_mpt_gets_the_guard_not_a_tensor_size_error(tiny_models):
    """MPT's ALiBi table has max_seq_len rows: past it, torch fails with 'The size of
    tensor a (513) must match the size of tensor b (512)'. The guard keeps inside it."""
    handle = llm_magic.load(str(tiny_models["mpt"]), dtype="float32", quiet=True)
    prompt = " ".join(["Paris"] * 600)
    ids = handle.tokenizer(prompt)["input_ids"]
    prompt = handle.tokenizer.decode(ids[:505])
    assert len(handle.tokenizer(prompt)["input_ids"]) == 505
    result = llm_magic.generate(prompt, model=handle, greedy=True, max_new_tokens=64, raw=True)
    assert result.prompt_tokens == 505 and result.new_tokens <= 7
    assert (
        "max_new_tokens lowered from 64 to 7: the prompt takes 505 of the model's 512 positions"
        in result.notes
    )
    with pytest.raises(llm_magic.GenerationError, match="the model reads at most 512"):
        llm_magic.generate(" ".join(["Paris"] * 600), model=handle, greedy=True, raw=True)
