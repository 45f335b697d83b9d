"""Build the tiny offline test model: a random GPT-2 and a BPE tokenizer trained here.

Used by the tests and by bench/ (for the overhead rows); needs no network.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

_CORPUS = [
    "The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog.",
    "Language models predict the next token from the ones before it.",
    "A notebook cell holds code, text or a prompt for a model.",
    "Hello world! Numbers like 0 1 2 3 4 5 6 7 8 9 appear too.",
] * 20

# The id under which the `tiny_hub_id` fixture lays the tiny model out in the Hub cache.
TINY_HUB_ID = "llm-magic-tests/tiny-gpt2"


def build_tiny_gpt2(folder: Path, layers: int = 2, width: int = 64, init_std: float = 0.02) -> Path:
    """Write a tiny GPT-2 with `save_pretrained` (safetensors + tokenizer) into `folder`.

    init_std: the spread of the random weights. GPT-2's own 0.02 makes a model whose greedy
    output is one or two ids repeated; 0.2 makes one whose greedy path wanders (20-30
    distinct ids in 40 tokens), so a changed generation setting changes its output."""
    folder = Path(folder)
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _CORPUS, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"]
    )
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bpe.save(str(tmp / "tokenizer.json"))
    tokenizer = GPT2TokenizerFast(
        tokenizer_file=str(tmp / "tokenizer.json"),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=width,
        n_layer=layers,
        n_head=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=init_std,
    )
    model = GPT2LMHeadModel(config)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def lay_out_as_hub_cache(model_dir: Path, hub_cache: Path, repo_id: str) -> Path:
    """Copy a model folder into a Hugging Face hub cache as snapshot + refs/main."""
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    digest = hashlib.sha1()
    for f in sorted(Path(model_dir).iterdir()):
        digest.update(f.name.encode() + f.read_bytes())
    commit = digest.hexdigest()
    snapshot = repo / "snapshots" / commit
    if not snapshot.is_dir():
        shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def copy_model(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of a model folder without the files named in `skip` (for broken-folder tests)."""
    shutil.copytree(src, dst, ignore=lambda _d, names: [n for n in names if n in skip])
    return dst


def build_tiny_gguf(
    path: Path, tokenizer_dir: Path, layers: int = 2, width: int = 64, ffn: int = 128
) -> Path:
    """Write a tiny random Llama as a .gguf (float32 tensors) with the GGUF writer of the
    `gguf` package, its BPE tokenizer taken from `tokenizer_dir` (tokenizer.json).

    transformers reads it as it reads a real .gguf (config, tokenizer and tensors from the
    file) in a fraction of a second: conversion tests need not dequantize SmolLM2.
    `width` and `ffn` make it bigger where a test needs a conversion that takes a while."""
    path = Path(path)
    if path.is_file():
        return path
    import json

    import gguf
    import numpy as np

    spec = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())["model"]
    tokens = [t for t, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    heads, kv_heads, vocab = 4, 2, len(tokens)
    kv_width = width // heads * kv_heads
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_rope_dimension_count(width // heads)
    writer.add_file_type(0)  # all float32
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * vocab)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_add_bos_token(False)
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    tensor("token_embd.weight", vocab, width)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(width, np.float32))
        tensor(f"blk.{i}.attn_q.weight", width, width)
        tensor(f"blk.{i}.attn_k.weight", kv_width, width)
        tensor(f"blk.{i}.attn_v.weight", kv_width, width)
        tensor(f"blk.{i}.attn_output.weight", width, width)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(width, np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", ffn, width)
        tensor(f"blk.{i}.ffn_up.weight", ffn, width)
        tensor(f"blk.{i}.ffn_down.weight", width, ffn)
    writer.add_tensor("output_norm.weight", np.ones(width, np.float32))
    tensor("output.weight", vocab, width)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(path)
    return path


def build_tiny_lora(
    base_dir: Path,
    folder: Path,
    seed: int = 1,
    rank: int = 4,
    targets: tuple[str, ...] = ("c_attn", "c_fc"),
    scale: float = 1.0,
) -> Path:
    """A LoRA adapter for the model at `base_dir`, built with peft and saved with
    `PeftModel.save_pretrained` (adapter_config.json + adapter_model.safetensors).

    Its A and B weights are drawn at random from `seed` (peft's init_lora_weights=False),
    times `scale`, rather than B left at zero: the adapted model's greedy text differs from
    the base model's, deterministically, with no training."""
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        return folder
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(targets),
        init_lora_weights=False,
        fan_in_fan_out=base.config.model_type == "gpt2",  # GPT-2's Conv1D stores (in, out)
    )
    model = get_peft_model(base, config)
    if scale != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.mul_(scale)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def build_tiny_gguf_lora(
    path: Path,
    layers: int = 2,
    width: int = 64,
    kv_width: int = 32,
    rank: int = 4,
    seed: int = 1,
) -> Path:
    """A LoRA for `build_tiny_gguf`'s model as llama.cpp reads one (general.type adapter,
    adapter.type lora, `<tensor>.lora_a` (rank × in) and `.lora_b` (out × rank) on its
    attention's q and v), written with the gguf package's writer; random weights from
    `seed`, large enough to change the greedy text."""
    path = Path(path)
    if path.is_file():
        return path
    import gguf
    import numpy as np

    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(2 * rank))
    rng = np.random.default_rng(seed)
    for i in range(layers):
        for name, out in (("attn_q", width), ("attn_v", kv_width)):
            a = rng.standard_normal((rank, width)) * 0.5
            b = rng.standard_normal((out, rank)) * 0.5
            writer.add_tensor(f"blk.{i}.{name}.weight.lora_a", a.astype(np.float32))
            writer.add_tensor(f"blk.{i}.{name}.weight.lora_b", b.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(path)
    return path
