"""The plain-Python API: everything the magics do, without a shell."""

from __future__ import annotations

import time
from typing import Callable

from . import hardware, loading
from .cache import MODEL_CACHE, LoadedModel
from .display import LoadCard
from . import errors
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
) -> LoadedModel:
    """Load MODEL (Hub id, `save_pretrained` folder or .gguf file) into the kernel's cache.

    The same request again returns the same handle from the cache in milliseconds.
    `handle.model`, `handle.tokenizer`, `handle.info` (plain metadata); `load_card(handle)`
    describes it.
    """
    handle, _ = load_with_card(
        model, dtype=dtype, device_map=device_map, revision=revision,
        trust_remote_code=trust_remote_code, alias=alias, reload=reload, progress=progress,
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
) -> tuple[LoadedModel, LoadCard]:
    """`load`, plus the card that says what it did (what `%llm_load` shows).

    A failure raises LoadError (the original chained as __cause__), leaves the cache as
    it was and keeps no reference to a half-loaded model."""
    attempt: dict = {}  # what was resolved before a failure, for the error card
    last = MODEL_CACHE.last
    try:
        return _load_with_card(
            model, dtype=dtype, device_map=device_map, revision=revision, trust_remote_code=trust_remote_code,
            alias=alias, reload=reload, progress=progress, attempt=attempt,
        )
    except BaseException as e:
        MODEL_CACHE.last = last
        failure = _load_failure(e, model, attempt, dtype, device_map, revision)
        if failure is e:
            raise
        raise failure from e


def _load_with_card(
    model: str,
    *,
    dtype: str,
    device_map: str | dict,
    revision: str | None,
    trust_remote_code: bool,
    alias: str | None,
    reload: bool,
    progress: Callable[[str], None] | None,
    attempt: dict,
) -> tuple[LoadedModel, LoadCard]:
    started = time.perf_counter()
    try:
        requested = hardware.normalize_dtype(dtype)
    except ValueError as e:
        raise LoadError(f"{model}: {e}", fixes=["--dtype auto lets the hardware decide"]) from None
    if alias is not None and not alias.isidentifier():
        raise LoadError(f"--as {alias!r}: an alias must be a plain name (letters, digits, _)")
    source = attempt["source"] = loading.resolve_source(model, revision)
    if progress:
        progress(f"resolved {model} → {source.path or 'the Hub'}")
    choice = hardware.choose_dtype(
        hardware.probe(), loading.checkpoint_dtype(source.path if source.kind != "gguf" else None), requested, device_map
    )
    attempt["dtype"] = choice.dtype
    key = (source.identity, choice.dtype, _hashable(device_map), bool(trust_remote_code))

    entry = None if reload else MODEL_CACHE.get(key)
    state = "cached"
    if entry is None:
        state = "reloaded" if reload and MODEL_CACHE.get(key) is not None else "new"
        model_obj, tokenizer, info = loading.load_model(source, choice, device_map, trust_remote_code, progress)
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


def _load_failure(e: BaseException, model: str, attempt: dict, dtype: str, device_map, revision) -> BaseException:
    """The exception to raise for a failed load: a LoadError explaining `e`, or `e`
    itself when it already explains itself (an LLMError) or is no error (Ctrl-C).

    Either way the frames of e's traceback are cleared first: they hold the half-built
    model as a local, and the exception outlives the cell (`sys.last_value`, `%llm_tb`).
    """
    errors.release_frames(e)
    if isinstance(e, errors.LLMError) or not isinstance(e, Exception):
        return e
    context = loading.failure_context(model, attempt.get("source"), attempt.get("dtype", dtype), device_map, revision)
    context["loaded"] = [(entry.info.name, entry.info.memory_bytes) for entry in MODEL_CACHE.entries()]
    return errors.diagnose_load(e, context)
