"""Wording several catalogues share: sizes, names, memory facts, the unload fix."""

from __future__ import annotations

import re

from .rules import Context


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit != "GB" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def model_name(ctx: Context) -> str:
    return str(ctx.get("model") or "the model")


def hub_url(ctx: Context) -> str:
    return str(ctx.get("endpoint") or "https://huggingface.co").rstrip("/")


def cached_list(ctx: Context) -> str | None:
    """'a (538 MB), b (1.2 GB)' for the models in llm_magic's cache, or None."""
    loaded = ctx.get("loaded") or []
    return ", ".join(f"{name} ({fmt_bytes(size)})" for name, size in loaded) or None


def memory_facts(ctx: Context, device: str) -> list[str]:
    """What the card knows about the memory of the device that ran out, and the model."""
    facts = []
    size = ctx.get("weights_bytes")
    if size:
        facts.append(
            f"the model needs about {fmt_bytes(size)} at {ctx.get('dtype') or 'its dtype'}"
        )
    if device == "cuda":
        for index, name, free, total in ctx.get("gpus") or []:
            facts.append(f"GPU {index} ({name}): {fmt_bytes(free)} free of {fmt_bytes(total)}")
    if device == "cpu":
        if ctx.get("ram_total"):
            facts.append(
                f"RAM: {fmt_bytes(ctx.get('ram_free'))} free of {fmt_bytes(ctx['ram_total'])}"
            )
    cached = cached_list(ctx)
    facts.append(f"cached models: {cached}" if cached else "no other model is cached")
    return facts


def unload_fix(ctx: Context) -> str | None:
    loaded = ctx.get("loaded") or []
    if not loaded:
        return None
    biggest = max(loaded, key=lambda item: item[1])
    return f"free memory: %llm_unload {biggest[0]}  (or %llm_unload --all)"


def parse_cuda_oom(message: str) -> list[str]:
    """torch's CUDA OOM message carries the numbers when the context has none."""
    m = re.search(
        r"Tried to allocate ([\d.]+ \w+)\. GPU (\d+) has a total capacity of ([\d.]+ \w+) of which ([\d.]+ \w+) is free",
        message,
    )
    if not m:
        return []
    alloc, gpu, total, free = m.groups()
    return [f"GPU {gpu}: {free} free of {total}; it tried to allocate {alloc} more"]
