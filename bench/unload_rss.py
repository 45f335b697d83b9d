"""How much memory `llm_magic.unload` gives back: RSS returned over the weights' size.

    LLM_MAGIC_CACHE=... python bench/unload_rss.py [float32 bfloat16 ...]

Loads SmolLM2-135M-Instruct (the embedded .gguf; converted once) on cpu, runs one forward
pass so every weight page is resident (an fp32 checkpoint loaded at fp32 is memory-mapped
and only counts in RSS once touched), unloads it, and prints the ratio. Issue 5 asks for
at least 80%.
"""

from __future__ import annotations

import sys

import llm_magic


def measure(dtype: str) -> float:
    import torch

    handle = llm_magic.load(llm_magic.demo_model(), dtype=dtype, device_map="cpu")
    with torch.no_grad():
        handle.model(**handle.tokenizer("The capital of France is", return_tensors="pt"))
    weights = handle.info.memory_bytes
    del handle
    card = llm_magic.unload(all=True)
    returned = card.rss_before - card.rss_after
    print(
        f"{dtype:9s} weights {weights / 1e6:6.0f} MB  "
        f"RSS {card.rss_before / 1e6:6.0f} -> {card.rss_after / 1e6:6.0f} MB"
        f"  returned {returned / 1e6:6.0f} MB = {returned / weights:.0%} of the weights  "
        f"(model gone: {card.freed})"
    )
    return returned / weights


if __name__ == "__main__":
    ratios = [measure(d) for d in (sys.argv[1:] or ["float32", "bfloat16", "float32", "bfloat16"])]
    print(f"worst: {min(ratios):.0%}")
