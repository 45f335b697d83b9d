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
    bpe.train_from_iterator(_CORPUS, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
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
