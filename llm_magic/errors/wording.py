"""Wording the catalogues share: the model's name, the Hub's address, the cached models,
the memory facts of an out-of-memory card and its unload fix."""

from __future__ import annotations

import re

from ..units import format_bytes
from .rules import Context

# torch's CUDA out-of-memory message, which carries the numbers when the context has none.
_CUDA_OOM = re.compile(
    r"Tried to allocate ([\d.]+ \w+)\. GPU (\d+) has a total capacity of ([\d.]+ \w+) "
    r"of which ([\d.]+ \w+) is free"
)


def model_name(ctx: Context) -> str:
    return str(ctx.get("model") or "the model")


def hub_url(ctx: Context) -> str:
    return str(ctx.get("endpoint") or "https://huggingface.co").rstrip("/")


def cached_list(ctx: Context) -> str | None:
    """'a (538 MB), b (1.2 GB)' for the models in llm_magic's cache, or None."""
    loaded = ctx.get("loaded") or []
    return ", ".join(f"{name} ({format_bytes(size)})" for name, size in loaded) or None


def memory_facts(ctx: Context, device: str, message: str = "") -> list[str]:
    """What the card knows about the memory of the device that ran out, and the model.
    `message` is the error's: on CUDA without GPU facts in the context, its numbers."""
    facts = []
    if device == "cuda" and not ctx.get("gpus"):
        facts += _cuda_oom_numbers(message)
    size = ctx.get("weights_bytes")
    if size:
        dtype = ctx.get("dtype") or "its dtype"
        facts.append(f"the model needs about {format_bytes(size)} at {dtype}")
    if device == "cuda":
        for index, name, free, total in ctx.get("gpus") or []:
            facts.append(
                f"GPU {index} ({name}): {format_bytes(free)} free of {format_bytes(total)}"
            )
    if device == "cpu" and ctx.get("ram_total"):
        free, total = format_bytes(ctx.get("ram_free")), format_bytes(ctx["ram_total"])
        facts.append(f"RAM: {free} free of {total}")
    cached = cached_list(ctx)
    facts.append(f"cached models: {cached}" if cached else "no other model is cached")
    return facts


def unload_fixes(ctx: Context) -> list[str]:
    """The fix that frees memory by unloading the biggest cached model (none when the
    cache is empty)."""
    loaded = ctx.get("loaded") or []
    if not loaded:
        return []
    biggest = max(loaded, key=lambda item: item[1])
    return [f"free memory: %llm_unload {biggest[0]}  (or %llm_unload --all)"]


def _cuda_oom_numbers(message: str) -> list[str]:
    m = _CUDA_OOM.search(message)
    if not m:
        return []
    alloc, gpu, total, free = m.groups()
    return [f"GPU {gpu}: {free} free of {total}; it tried to allocate {alloc} more"]
