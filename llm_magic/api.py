"""The plain-Python API: everything the magics do, without a shell."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import hardware, loading
from .cache import MODEL_CACHE, LoadedModel
from .display import GenerationResult, GenerationResults, LoadCard
from .errors import GenerationError, LoadError


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
    """`load`, plus the card that says what it did (what `%llm_load` shows)."""
    started = time.perf_counter()
    try:
        requested = hardware.normalize_dtype(dtype)
    except ValueError as e:
        raise LoadError(f"{model}: {e}", fixes=["--dtype auto lets the hardware decide"]) from None
    if alias is not None and not alias.isidentifier():
        raise LoadError(f"--as {alias!r}: an alias must be a plain name (letters, digits, _)")
    source = loading.resolve_source(model, revision)
    if progress:
        progress(f"resolved {model} → {source.path or 'the Hub'}")
    choice = hardware.choose_dtype(
        hardware.probe(), loading.checkpoint_dtype(source.path if source.kind != "gguf" else None), requested, device_map
    )
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


# --- generation ------------------------------------------------------------------------

def generate(
    prompt: str,
    *,
    model: str | LoadedModel | None = None,
    max_new_tokens: int | None = None,
    greedy: bool | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    system: str | None = None,
    raw: bool = False,
    stop: str | Sequence[str] = (),
    namespace: Mapping[str, Any] | None = None,
    over: Iterable | None = None,
    batch_size: int | None = None,
    stream: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_prompt: Callable[[str, int], None] | None = None,
) -> GenerationResult | GenerationResults:
    """Generate from PROMPT with a cached model; returns the result (`.text` and stats).

    model: an alias or the name a model was loaded with, a handle from `load`, or None
    for the model loaded (or used) last. Unset settings take `generation.Settings`'
    defaults (256 new tokens, sampling at temperature 0.7, top-p 0.9, top-k 50).
    namespace: fills `{name}`, `{obj.attr}`, `{obj[key]}` in the prompt and the system
    text (`{{`/`}}` are literal braces); without it the prompt is used verbatim.
    over: run the prompt as a template once per item (`{item}`), in batches of
    `batch_size`; returns one result per item, in order. stream: called with each new
    piece of text as it is generated (single prompts). Ctrl-C stops generating and raises
    KeyboardInterrupt carrying the partial result as `.result`.
    """
    from . import generation

    entry = _generation_model(model)
    given = dict(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, top_p=top_p, top_k=top_k)
    settings = generation.Settings(
        **{k: v for k, v in given.items() if v is not None},
        seed=seed,
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        system=system or None,
        raw=raw,
    )
    settings.check()
    if not prompt or not prompt.strip():
        raise GenerationError(
            "the prompt is empty: nothing to send to the model",
            fixes=["write the prompt in the cell, under the %%llm_generate line", "llm_magic.generate('What is the capital of France?')"],
        )
    if namespace is not None and settings.system:
        settings = replace(settings, system=generation.fill(settings.system, namespace))
    args = (entry.model, entry.tokenizer, entry.info)
    if over is not None:
        prompts = generation.fill_over(prompt, generation.items_of(over, "over="), namespace or {})
        return generation.generate_many(*args, prompts, settings, batch_size=batch_size, on_progress=progress, on_prompt=on_prompt)
    text = prompt if namespace is None else generation.fill(prompt, namespace)
    return generation.generate(*args, text, settings, on_text=stream, on_prompt=on_prompt)


def _generation_model(model: str | LoadedModel | None) -> LoadedModel:
    """The cached model to generate with (touched: it becomes the current one)."""
    if isinstance(model, LoadedModel):
        entry = model
    elif model is None:
        entry = MODEL_CACHE.current() or max(MODEL_CACHE.entries(), key=lambda e: e.last_used, default=None)
        if entry is None:
            raise GenerationError(
                "no model is loaded",
                "%%llm_generate and llm_magic.generate use a model loaded with %llm_load first",
                ["%llm_load HuggingFaceTB/SmolLM2-135M-Instruct", "%llm_load $path  (path = llm_magic.demo_model(), offline)"],
            )
    else:
        entry = MODEL_CACHE.find(model)
        if entry is None:
            loaded = [", ".join(sorted(e.aliases) + [e.name]) for e in MODEL_CACHE.entries()]
            raise GenerationError(
                f"-m {model}: no loaded model has that name",
                "-m takes an alias (--as NAME) or the name a model was loaded with",
                ["loaded: " + "; ".join(loaded) if loaded else "no model is loaded yet",
                 f"%llm_load {model} --as NAME loads it"],
            )
    if entry.model is None:
        raise GenerationError(f"{entry.name} was unloaded", fixes=[f"%llm_load {entry.name}"])
    MODEL_CACHE.touch(entry)
    return entry
