"""The plain-Python API: everything the magics do, without a shell."""

from __future__ import annotations

import time
from typing import Callable

from . import hardware, loading
from .cache import MODEL_CACHE, LoadedModel
from .display import LoadCard
from .errors import LoadError


def load(
    model: str,
    *,
    dtype: str = "auto",
    device_map: str | dict = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    alias: str | None = None,
    reload: bool = False,
    progress: Callable[[str], None] | None = None,
    max_memory: dict | None = None,
) -> LoadedModel:
    """Load MODEL (Hub id, `save_pretrained` folder or .gguf file) into the kernel's cache.

    The same request again returns the same handle from the cache in milliseconds.
    `max_memory` ({"cpu": "2GB", 0: "20GB"}) caps what device_map="auto" puts on each device.
    `handle.model`, `handle.tokenizer`, `handle.info` (plain metadata); `load_card(handle)`
    describes it.
    """
    handle, _ = load_with_card(
        model, dtype=dtype, device_map=device_map, revision=revision,
        trust_remote_code=trust_remote_code, alias=alias, reload=reload, progress=progress,
        max_memory=max_memory,
    )
    return handle


def load_with_card(
    model: str,
    *,
    dtype: str = "auto",
    device_map: str | dict = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    alias: str | None = None,
    reload: bool = False,
    progress: Callable[[str], None] | None = None,
    max_memory: dict | None = None,
) -> tuple[LoadedModel, LoadCard]:
    """`load`, plus the card that says what it did (what `%llm_load` shows)."""
    started = time.perf_counter()
    try:
        requested = hardware.normalize_dtype(dtype)
    except ValueError as e:
        raise LoadError(f"{model}: {e}", fixes=["--dtype auto lets the hardware decide"]) from None
    if alias is not None and not alias.isidentifier():
        raise LoadError(f"--as {alias!r}: an alias must be a plain name (letters, digits, _)")
    source = loading.resolve_source(model, revision)
    choice = hardware.choose_dtype(
        hardware.probe(), loading.checkpoint_dtype(source.path if source.kind != "gguf" else None), requested, device_map
    )
    settings = (choice.dtype, _hashable(device_map), bool(trust_remote_code), _hashable(max_memory or {}))
    key = (source.identity, *settings)

    entry = None if reload else MODEL_CACHE.get(key)
    state = "cached"
    if entry is None:
        state = "reloaded" if reload and MODEL_CACHE.get(key) is not None else "new"
        model_obj, tokenizer, info = loading.load_model(
            source, choice, device_map, trust_remote_code, progress, max_memory
        )
        if source.kind == "hub" and not source.cached:
            # Now downloaded: key it by its snapshot's commit, as the next request will be.
            key = (loading.resolve_source(model, revision).identity, *settings)
        entry = LoadedModel(key, model_obj, tokenizer, info)
        del model_obj, tokenizer
        MODEL_CACHE.put(entry)
    if alias:
        MODEL_CACHE.alias(entry, alias)
    seconds = time.perf_counter() - started if state == "cached" else entry.info.load_seconds
    return entry, load_card(entry, state, seconds)


def load_card(entry: LoadedModel, state: str = "cached", seconds: float = 0.0) -> LoadCard:
    return LoadCard(
        info=entry.info,
        cache_state=state,
        cache_models=len(MODEL_CACHE),
        cache_bytes=MODEL_CACHE.total_bytes(),
        seconds=seconds,
        aliases=tuple(sorted(entry.aliases)),
    )


def _hashable(value):
    return tuple(sorted((str(k), str(v)) for k, v in value.items())) if isinstance(value, dict) else str(value)
