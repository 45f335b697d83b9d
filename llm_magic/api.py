"""The plain-Python API: everything the magics do, without a shell."""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import errors, gguf_cache, hardware, loading, sizing
from . import quiet as quiet_output
from .cache import MODEL_CACHE, LoadedModel, Released, clear_frames_of, release_memory
from .discovery import available  # noqa: F401  (what `%llm_load` with no MODEL shows)
from .display import (
    GenerationResult,
    GenerationResults,
    LoadCard,
    ModelRow,
    ModelsCard,
    UnloadCard,
    format_bytes,
)
from .engines.transformers import TransformersEngine
from .errors import GenerationError, LLMError, LoadError

if TYPE_CHECKING:
    from .conversations import Conversation


def load(
    model: str | None = None,
    *,
    dtype: str = "auto",
    device_map: str | dict = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    alias: str | None = None,
    reload: bool = False,
    progress: Callable[[str], None] | None = None,
    max_memory: dict | None = None,
    force: bool = False,
    quiet: bool = False,
    server: str | None = None,
    api_key_env: str | None = None,
    timeout: float | None = None,
    engine: str = "transformers",
    quantize: str | None = None,
) -> LoadedModel:
    """Load MODEL (Hub id, `save_pretrained` folder or .gguf file) into the kernel's cache.

    With `server="http://host:8000/v1"`: MODEL as served by that OpenAI-compatible server
    (vLLM, SGLang, TGI, llama.cpp, Ollama, `transformers serve`), or the one it serves when
    MODEL is None; `api_key_env` names the variable holding its key (default
    OPENAI_API_KEY when set), `timeout` the seconds to wait for a reply.

    The same request again returns the same handle from the cache in milliseconds.
    `max_memory` ({"cpu": "2GB", 0: "20GB"}) caps what device_map="auto" puts on each device.
    `handle.model`, `handle.tokenizer`, `handle.info` (plain metadata); `load_card(handle)`
    describes it. A model that will not fit in free memory fails before any weights are
    read, unless `force=True`; past the cache's budget the least recently used model is
    unloaded first. `quiet=True`: nothing on stdout or stderr (no transformers bars or
    warnings); failures still raise.
    `engine="llama.cpp"` runs a .gguf as it is with llama-cpp-python
    (`handle.model` is then the `llama_cpp.Llama`); `quantize` ("nf4", "fp4", "int8")
    loads the linear layers quantized by bitsandbytes.
    """
    handle, _ = load_with_card(
        model,
        dtype=dtype,
        device_map=device_map,
        revision=revision,
        trust_remote_code=trust_remote_code,
        alias=alias,
        reload=reload,
        progress=progress,
        max_memory=max_memory,
        force=force,
        quiet=quiet,
        server=server,
        api_key_env=api_key_env,
        timeout=timeout,
        engine=engine,
        quantize=quantize,
    )
    return handle


def load_with_card(
    model: str | None = None,
    *,
    dtype: str = "auto",
    device_map: str | dict = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    alias: str | None = None,
    reload: bool = False,
    progress: Callable[[str], None] | None = None,
    max_memory: dict | None = None,
    force: bool = False,
    quiet: bool = False,
    server: str | None = None,
    api_key_env: str | None = None,
    timeout: float | None = None,
    engine: str = "transformers",
    quantize: str | None = None,
) -> tuple[LoadedModel, LoadCard]:
    """`load`, plus the card that says what it did (what `%llm_load` shows).

    A failure raises LoadError (the original chained as __cause__), leaves the cache as
    it was and keeps no reference to a half-loaded model."""
    if server:
        from . import serving

        last = MODEL_CACHE.last
        try:
            return serving.load_with_card(
                model,
                server,
                api_key_env=api_key_env,
                alias=alias,
                reload=reload,
                timeout=timeout,
                progress=progress,
            )
        except BaseException:
            MODEL_CACHE.last = last
            raise
    if model is None:
        raise LoadError(
            "no model given",
            fixes=[
                "%llm_load HuggingFaceTB/SmolLM2-135M-Instruct",
                "%llm_load --server http://HOST:8000/v1  (a model on a server)",
            ],
        )
    attempt: dict = {}  # what was resolved before a failure, for the error card
    last = MODEL_CACHE.last
    try:
        with quiet_output.silenced() if quiet else contextlib.nullcontext():
            return _load_with_card(
                model,
                dtype=dtype,
                device_map=device_map,
                revision=revision,
                trust_remote_code=trust_remote_code,
                alias=alias,
                reload=reload,
                progress=None if quiet else progress,
                max_memory=max_memory,
                force=force,
                attempt=attempt,
                engine=engine,
                quantize=quantize,
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
    max_memory: dict | None,
    force: bool,
    attempt: dict,
    engine: str = "transformers",
    quantize: str | None = None,
) -> tuple[LoadedModel, LoadCard]:
    started = time.perf_counter()
    _check_engine(model, engine, quantize)
    try:
        requested = hardware.normalize_dtype(dtype)
    except ValueError as e:
        raise LoadError(f"{model}: {e}", fixes=["--dtype auto lets the hardware decide"]) from None
    if alias is not None and not alias.isidentifier():
        raise LoadError(f"--as {alias!r}: an alias must be a plain name (letters, digits, _)")
    source = attempt["source"] = loading.resolve_source(model, revision)
    if engine == "llama.cpp":
        return _load_llama_cpp(source, alias, reload, progress, force, started)
    choice = hardware.choose_dtype(
        hardware.probe(),
        loading.checkpoint_dtype(source.path if source.kind != "gguf" else None),
        requested,
        device_map,
    )
    attempt["dtype"] = choice.dtype
    settings = (
        choice.dtype,
        _hashable(device_map),
        bool(trust_remote_code),
        _hashable(max_memory or {}),
        quantize,
    )
    key = (source.identity, *settings)

    entry = None if reload else MODEL_CACHE.get(key)
    state = "cached"
    fit, notes = None, []
    if entry is None:
        state = "reloaded" if reload and MODEL_CACHE.get(key) is not None else "new"
        fit, notes = preflight(
            source, choice.dtype, device_map, key, force, progress, quantize=quantize
        )  # raises when it won't fit
        model_obj, tokenizer, info = loading.load_model(
            source,
            choice,
            device_map,
            trust_remote_code,
            progress,
            max_memory,
            reconvert=reload,
            quantize=quantize,
        )
        notes += info.load_notes
        if source.kind == "hub" and not source.cached:
            # Now downloaded: key it by its snapshot's commit, as the next request will be.
            key = (loading.resolve_source(model, revision).identity, *settings)
        entry = LoadedModel(key, model_obj, tokenizer, info)
        entry.engine = TransformersEngine(entry)
        del model_obj, tokenizer
        notes += [_budget_note(r) for r in MODEL_CACHE.put(entry)]
    if alias:
        MODEL_CACHE.alias(entry, alias)
    seconds = time.perf_counter() - started if state == "cached" else entry.info.load_seconds
    return entry, load_card(entry, state, seconds, fit, tuple(notes))


def _check_engine(model: str, engine: str, quantize: str | None) -> None:
    """Refuse an unknown engine or quantization, or a missing optional package, before anything is read."""
    if engine not in ("transformers", "llama.cpp"):
        raise LoadError(
            f"--engine {engine}: no such engine",
            fixes=[
                "--engine transformers (the default)",
                "--engine llama.cpp runs a .gguf file as it is",
            ],
        )
    if quantize is None:
        return
    if quantize not in loading.QUANTIZE_CHOICES:
        raise LoadError(
            f"--quantize {quantize}: not one of {', '.join(loading.QUANTIZE_CHOICES)}",
            fixes=["--quantize nf4 (4-bit, the smallest that keeps quality)", "--quantize int8"],
        )
    if engine == "llama.cpp":
        raise LoadError(
            f"--quantize {quantize} with --engine llama.cpp: llama.cpp runs the file as quantized in it",
            fixes=[
                "leave out --quantize: the .gguf is quantized already",
                "leave out --engine to quantize with bitsandbytes",
            ],
        )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise LoadError(
            f"could not load {model} with --quantize {quantize}",
            "the optional package bitsandbytes is not installed (it holds the 4-bit and 8-bit layers)",
            [
                'pip install "llm_magic[quantize]"  (or: pip install bitsandbytes)',
                "then restart the kernel and run %llm_load again",
                "or leave out --quantize",
            ],
        )


def _load_llama_cpp(
    source: loading.Source, alias: str | None, reload: bool, progress, force: bool, started: float
) -> tuple[LoadedModel, LoadCard]:
    """`--engine llama.cpp`: the .gguf opened by llama.cpp as it is (no conversion, no torch)."""
    from .engines import llama_cpp

    if source.kind != "gguf" or not llama_cpp.available():
        llama_cpp.load(source)  # raises the LoadError that says why
    key = (source.identity, "llama.cpp")
    entry = None if reload else MODEL_CACHE.get(key)
    state, fit, notes = "cached", None, []
    if entry is None:
        state = "reloaded" if reload and MODEL_CACHE.get(key) is not None else "new"
        size = os.path.getsize(source.path)  # the weights are mapped as they are in the file
        est = sizing.Estimate(size, 0, "gguf", "gguf", (source.path,), 0)
        fit, notes = preflight(source, "gguf", "cpu", key, force, progress, est=est, target="cpu")
        llm, info = llama_cpp.load(source, progress)
        entry = LoadedModel(key, llm, None, info)
        entry.engine = llama_cpp.LlamaCppEngine(entry)
        del llm
        notes += [_budget_note(r) for r in MODEL_CACHE.put(entry)]
    if alias:
        MODEL_CACHE.alias(entry, alias)
    seconds = time.perf_counter() - started if state == "cached" else entry.info.load_seconds
    return entry, load_card(entry, state, seconds, fit, tuple(notes))


def load_card(
    entry: LoadedModel,
    state: str = "cached",
    seconds: float = 0.0,
    fit: str | None = None,
    notes: tuple[str, ...] = (),
) -> LoadCard:
    return LoadCard(
        info=entry.info,
        cache_state=state,
        cache_models=len(MODEL_CACHE),
        cache_bytes=MODEL_CACHE.total_bytes(),
        seconds=seconds,
        aliases=tuple(sorted(entry.aliases)),
        fit=fit,
        budget_notes=notes,
        extra_rows=entry.info.details + _llama_cpp_hint(entry),
    )


def _llama_cpp_hint(entry: LoadedModel) -> tuple[tuple[str, str], ...]:
    """For a .gguf loaded with transformers while llama-cpp-python is installed: how much
    faster llama.cpp decodes it, as measured here (decode_speed), else that it can."""
    from . import decode_speed
    from .engines import llama_cpp

    if (
        entry.info.kind != "gguf"
        or entry.info.engine != "transformers"
        or not llama_cpp.available()
    ):
        return ()
    return (("llama.cpp", decode_speed.llama_cpp_hint(str(entry.key[0]), entry.info)),)


# ------------------------------------------------------------ before loading: size and room


def estimate(
    source: loading.Source, dtype: str, quantize: str | None = None
) -> sizing.Estimate | None:
    """The bytes `source` will take at `dtype`, from file headers only; None when no local
    file tells (a Hub id not downloaded yet) or a header is unreadable (the load itself
    then reports the broken file)."""
    converted = gguf_cache.usable_copy(source.path, dtype) if source.kind == "gguf" else None
    try:
        est = sizing.estimate(source, dtype, converted)
        return sizing.quantized(est, quantize) if est and quantize else est
    except (OSError, ValueError, KeyError, TypeError, ImportError):  # ImportError: no gguf package
        return None


def preflight(
    source: loading.Source,
    dtype: str,
    device_map,
    key,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    *,
    quantize: str | None = None,
    est: sizing.Estimate | None = None,
    target: str | None = None,
) -> tuple[str | None, list[str]]:
    """The fit verdict for the card, after making room within the budget. Raises LoadError,
    before anything is unloaded or read, when the model will not fit (unless `force`).
    `est` and `target` given: no estimate from headers, no hardware probe (no torch import)."""
    est = est or estimate(source, dtype, quantize)
    adding = key not in MODEL_CACHE
    victims = MODEL_CACHE.over_budget(
        est.bytes if est else 0, adding=adding, keep=MODEL_CACHE.peek(key)
    )
    verdict = None
    if est is None:
        verdict = (
            "not checked: no local files give the size before download"
            if source.path is None
            else ("not checked: no safetensors headers to read the size from")
        )
    else:
        target = target or hardware.target_kind(hardware.probe(), device_map)
        reclaim: dict[str, int] = {}
        for v in victims:  # what the budget will unload first counts as free
            device = v.info.device.split(",")[0].strip()
            reclaim[device] = reclaim.get(device, 0) + v.memory_bytes
        fit = sizing.check_fit(
            est,
            target,
            hardware.free_ram_bytes(),
            hardware.free_gpu_bytes() if target == "cuda" else None,
            device_map,
            reclaim,
        )
        verdict = fit.message
        if not fit.fits:
            if not force:
                raise LoadError(
                    f"{source.name}: will not fit in memory",
                    fit.message,
                    _fit_fixes(est, target, device_map, victims),
                )
            verdict += " — loading anyway (--force)"
    notes = []
    if victims:
        if progress:
            progress(
                "unloading " + ", ".join(v.name for v in victims) + " to stay within the budget…"
            )
        notes.append(_budget_note(MODEL_CACHE.unload(victims)))
    return verdict, notes


def _fit_fixes(
    est: sizing.Estimate, target: str, device_map, victims: list[LoadedModel]
) -> list[str]:
    fixes = []
    if est.dtype == "float32":
        fixes.append(f"--dtype bfloat16 halves it to {format_bytes(est.bytes // 2)}")
    others = [e for e in MODEL_CACHE.entries() if e not in victims]
    if others:
        each = ", ".join(
            f"%llm_unload {min(e.aliases) if e.aliases else e.name} frees {format_bytes(e.memory_bytes)}"
            for e in others
        )
        fixes.append(each + (" (or --all)" if len(others) > 1 else ""))
    if target == "cuda" and device_map != "auto":
        fixes.append(
            "--device-map auto offloads the layers that do not fit to cpu (slower generation)"
        )
    else:
        fixes.append(
            "--quantize nf4 loads the linear layers in 4 bits (bitsandbytes), or a smaller model"
        )
    fixes.append("--force loads anyway (the system may swap, or kill the kernel)")
    return fixes


def _budget_note(released: Released) -> str:
    names = ", ".join(
        f"{aliases[0] if aliases else n} ({d}, {format_bytes(b)})"
        for n, aliases, b, d in released.models
    )
    limits = [
        f"{MODEL_CACHE.max_models} model{'s' if MODEL_CACHE.max_models != 1 else ''}"
        if MODEL_CACHE.max_models
        else "",
        format_bytes(MODEL_CACHE.memory_budget) if MODEL_CACHE.memory_budget else "",
    ]
    note = f"unloaded {names}, least recently used, to stay within the budget of {' and '.join(x for x in limits if x)}"
    if not released.freed:
        note += " — but it is still in memory" + (
            f", held by {', '.join(released.held_by)}" if released.held_by else ""
        )
    return note


# ------------------------------------------------------------------- list and unload


def models() -> ModelsCard:
    """The cached models, their total, free memory and the budget (what `%llm_models` shows)."""
    now = time.time()
    current = MODEL_CACHE.current()
    rows = tuple(
        ModelRow(
            ", ".join(sorted(e.aliases)),
            e.name,
            (e.info.revision or "")[:12],
            e.info.dtype,
            e.info.device,
            e.memory_bytes,
            now - e.last_used,
            e is current,
            e.packed_bytes,
        )
        for e in sorted(MODEL_CACHE.entries(), key=lambda e: -e.last_used)
    )
    gpus = ()
    hw_gpus = (
        hardware.probe().gpus if "torch" in sys.modules else ()
    )  # no torch import just to list
    if hw_gpus:
        free = hardware.free_gpu_bytes()
        gpus = tuple(
            (f"cuda:{g.index}", free.get(f"cuda:{g.index}", 0), g.total_bytes) for g in hw_gpus
        )
    return ModelsCard(
        rows,
        MODEL_CACHE.total_bytes(),
        hardware.free_ram_bytes(),
        gpus,
        MODEL_CACHE.max_models,
        MODEL_CACHE.memory_budget,
    )


def unload(name: str | None = None, *, all: bool = False) -> UnloadCard:  # noqa: A002 (mirrors --all)
    """Unload the model cached as NAME (alias or the name it was loaded with), or every one
    with `all=True`, and free its memory for real. The card says how much came back."""
    if all:
        entries = MODEL_CACHE.entries()
    else:
        _refuse_ambiguous(name, "%llm_unload", LLMError)
        entry = MODEL_CACHE.find(name) if name else None
        if entry is None:
            cached = sorted(
                {a for e in MODEL_CACHE.entries() for a in e.aliases}
                | {e.name for e in MODEL_CACHE.entries()}
            )
            raise LLMError(
                f"no cached model named {name!r}" if name else "which model? give a NAME or --all",
                "cached: " + ", ".join(cached) if cached else "the cache is empty",
                [f"%llm_unload {cached[0]}", "%llm_unload --all"]
                if cached
                else ["%llm_models lists what is cached"],
            )
        entries = [entry]
        del entry
    rss, cuda = hardware.process_rss_bytes(), hardware.cuda_memory()
    released = MODEL_CACHE.unload(entries)
    del entries
    rss_after, cuda_after = hardware.process_rss_bytes(), hardware.cuda_memory()
    return UnloadCard(
        models=released.models,
        freed=released.freed,
        rss_before=rss,
        rss_after=rss_after,
        cuda=tuple(
            (d, a, cuda_after.get(d, (0, 0))[0], r, cuda_after.get(d, (0, 0))[1])
            for d, (a, r) in cuda.items()
        ),
        held_by=released.held_by,
        cache_models=len(MODEL_CACHE),
        cache_bytes=MODEL_CACHE.total_bytes(),
    )


def _refuse_ambiguous(name: str | None, what: str, error: type[LLMError]) -> None:
    """Ask, rather than pick one silently, when NAME means several cached models."""
    several = MODEL_CACHE.ambiguous(name) if name else []
    if not several:
        return
    described = [
        f"{e.info.dtype} on {e.info.device}"
        + (f" (as {', '.join(sorted(e.aliases))})" if e.aliases else "")
        for e in several
    ]
    aliased = next((min(e.aliases) for e in several if e.aliases), None)
    fixes = [f"{what} {aliased}  (an alias names one)"] if aliased else []
    fixes.append(
        f"give each an alias: %llm_load {several[0].name} --dtype {several[0].info.dtype} --as NAME"
    )
    if what == "%llm_unload":
        fixes.append("%llm_unload --all unloads every one")
    raise error(
        f"{what} {name}: {len(several)} cached models have that name", "; ".join(described), fixes
    )


def _hashable(value):
    return (
        tuple(sorted((str(k), str(v)) for k, v in value.items()))
        if isinstance(value, dict)
        else str(value)
    )


def _load_failure(
    e: BaseException, model: str, attempt: dict, dtype: str, device_map, revision
) -> BaseException:
    """The exception to raise for a failed load: a LoadError explaining `e`, or `e`
    itself when it already explains itself (an LLMError) or is no error (Ctrl-C).

    Either way the frames of e's traceback are cleared first, and the memory released:
    they hold the half-built model as a local, and the exception outlives the cell
    (`sys.last_value`, `%llm_tb`).
    """
    clear_frames_of(e)
    release_memory()
    if isinstance(e, errors.LLMError) or not isinstance(e, Exception):
        return e
    context = loading.failure_context(
        model, attempt.get("source"), attempt.get("dtype", dtype), device_map, revision
    )
    context["loaded"] = [(entry.info.name, entry.memory_bytes) for entry in MODEL_CACHE.entries()]
    return errors.diagnose(e, context, errors.LOAD)


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
    on_start: Callable[[tuple[str, ...]], None] | None = None,
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
    from . import generation, prompts

    entry = _generation_model(model)
    settings = _settings(
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=stop,
        system=system,
        raw=raw,
    )
    if not prompt or not prompt.strip():
        raise GenerationError(
            "the prompt is empty: nothing to send to the model",
            fixes=[
                "write the prompt in the cell, under the %%llm_generate line",
                "llm_magic.generate('What is the capital of France?')",
            ],
        )
    if namespace is not None and settings.system:
        settings = replace(settings, system=prompts.fill(settings.system, namespace, "--system"))
    if over is not None:
        texts = prompts.fill_over(prompt, prompts.items_of(over, "over="), namespace or {})
        return generation.generate_many(
            entry.engine,
            texts,
            settings,
            batch_size=batch_size,
            on_progress=progress,
            on_prompt=on_prompt,
        )
    text = prompt if namespace is None else prompts.fill(prompt, namespace)
    result = generation.generate(
        entry.engine, text, settings, on_text=stream, on_prompt=on_prompt, on_start=on_start
    )
    if entry.info.kind == "gguf":
        from . import decode_speed

        decode_speed.note_result(entry, result)  # for the card's engine comparison
    return result


def _settings(*, max_new_tokens, greedy, temperature, top_p, top_k, seed, stop, system, raw):
    """Settings from the given values, the unset ones (None) taking Settings' defaults; checked."""
    from . import generation

    given = dict(
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
    )
    settings = generation.Settings(
        **{k: v for k, v in given.items() if v is not None},
        seed=seed,
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        system=system or None,
        raw=raw,
    )
    settings.check()
    return settings


def _generation_model(model: str | LoadedModel | None) -> LoadedModel:
    """The cached model to generate with (touched: it becomes the current one)."""
    if isinstance(model, LoadedModel):
        entry = model
    elif model is None:
        entry = MODEL_CACHE.current() or max(
            MODEL_CACHE.entries(), key=lambda e: e.last_used, default=None
        )
        if entry is None:
            raise GenerationError(
                "no model is loaded",
                "%%llm_generate and llm_magic.generate use a model loaded with %llm_load first",
                [
                    "%llm_load HuggingFaceTB/SmolLM2-135M-Instruct",
                    "%llm_load $path  (path = llm_magic.demo_model(), offline)",
                ],
            )
    else:
        _refuse_ambiguous(model, "-m", GenerationError)
        entry = MODEL_CACHE.find(model)
        if entry is None:
            loaded = [", ".join(sorted(e.aliases) + [e.name]) for e in MODEL_CACHE.entries()]
            names = sorted(
                {a for e in MODEL_CACHE.entries() for a in e.aliases}
                | {e.name.rstrip("/").rsplit("/", 1)[-1] for e in MODEL_CACHE.entries()}
            )
            close = difflib.get_close_matches(model, names, n=1, cutoff=0.6)
            fixes = [f"did you mean: -m {close[0]}"] if close else []
            fixes.append("loaded: " + "; ".join(loaded) if loaded else "no model is loaded yet")
            fixes.append(
                f"to load a model under that name: %llm_load MODEL --as {model}"
                if model.isidentifier()
                else f"if {model} is a model to load: %llm_load {model}"
            )
            raise GenerationError(
                f"-m {model}: no loaded model has that name",
                "-m takes an alias (--as NAME) or the name a model was loaded with",
                fixes,
            )
    if entry.engine is None:
        raise GenerationError(f"{entry.name} was unloaded", fixes=[f"%llm_load {entry.name}"])
    MODEL_CACHE.touch(entry)
    return entry


# --- conversations -----------------------------------------------------------------------


def chat(
    text: str | None = None,
    *,
    conversation: str | Conversation | None = None,
    model: str | LoadedModel | None = None,
    system: str | None = None,
    default_system: str | None = None,
    new: bool = False,
    retry: bool = False,
    cell_id: str | None = None,
    max_history: int = 0,
    max_new_tokens: int | None = None,
    greedy: bool | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] = (),
    namespace: Mapping[str, Any] | None = None,
    stream: Callable[[str], None] | None = None,
    on_prompt: Callable[[str, int], None] | None = None,
):
    """The next turn of a conversation: TEXT answered with the history before it; returns
    the answer (a result like `generate`'s, with `.conversation` and `.messages`).

    conversation: a name (made when new), a Conversation (e.g. `Conversation.load(path)`),
    or None for the model's own conversation (one per model, named after it). model: as
    in `generate`; None: the conversation's model, else the current one. system: set the
    conversation's system message; default_system: the one a conversation starting with
    this turn gets when `system` is not given. new: start the conversation over. retry: ask the last
    question again (TEXT unused), replacing its answer. cell_id: the notebook cell the
    turn comes from: a later turn from the same cell replaces it and drops the turns after
    it. max_history: send at most this many earlier turns (0: as many as the context
    holds, oldest left out first). Ctrl-C: the partial answer is kept in the conversation
    (marked interrupted) and carried by the KeyboardInterrupt as `.result`.
    """
    from . import conversations, prompts

    conv, entry = _chat_target(conversation, model)
    settings = _settings(
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=stop,
        system=None,
        raw=False,
    )
    if system is None and default_system and (new or not conv.turns and not conv.system):
        system = default_system
    if system is not None and namespace is not None:
        system = prompts.fill(system, namespace, "--system")
    if not retry and text is not None and namespace is not None:
        text = prompts.fill(text, namespace)
    if new:
        conv.reset()
    if system is not None:
        conv.system = system or None
    conversations.CONVERSATIONS.last = conv.name
    return conversations.ask(
        conv,
        entry.engine,
        text or "",
        settings,
        cell_id=cell_id,
        retry=retry,
        max_history=max_history,
        on_text=stream,
        on_prompt=on_prompt,
    )


def conversation(name: str | None = None) -> Conversation:
    """The conversation called NAME (or the model of that name's own conversation); None:
    the one used last. Its `.messages` are the {"role", "content"} dicts chat APIs take;
    `.save(path)` writes it as JSON, `Conversation.load(path)` reads it back."""
    from .conversations import CONVERSATIONS

    found = CONVERSATIONS.current() if name is None else CONVERSATIONS.get(name)
    if found is None and name is not None:
        entry = MODEL_CACHE.find(name)
        found = CONVERSATIONS.get(model_label(entry)) if entry is not None else None
    if found is None:
        names = CONVERSATIONS.names()
        raise LLMError(
            f"no conversation named {name!r}" if name else "no conversation yet",
            "conversations: " + ", ".join(names)
            if names
            else "%%llm_chat or llm_magic.chat starts one",
            ["%llm_chat --list"]
            if names
            else ["llm_magic.chat('Hello!')", "%%llm_chat (then the message in the cell)"],
        )
    return found


def model_label(entry: LoadedModel) -> str:
    """The name a model's own conversation takes: its alias, else the last part of its name
    (what the cards show; `-m` accepts both)."""
    return min(entry.aliases) if entry.aliases else entry.name.rstrip("/").rsplit("/", 1)[-1]


def _chat_target(conversation, model) -> tuple[Conversation, LoadedModel]:
    """(the conversation, the model to answer with)."""
    from .conversations import CONVERSATIONS, Conversation

    if isinstance(conversation, Conversation):
        conv = CONVERSATIONS.add(conversation)
    else:
        conv = CONVERSATIONS.get(conversation) if conversation is not None else None
    if model is None and conv is not None and conv.model is not None:
        entry = MODEL_CACHE.find(conv.model)
        if entry is None:
            raise GenerationError(
                f"conversation {conv.name!r} was with {conv.model}, which is not loaded",
                fixes=[
                    f"%llm_load MODEL --as {conv.model}",
                    "-m NAME answers it with another loaded model",
                ],
            )
        entry = _generation_model(entry)
    else:
        entry = _generation_model(model)
    if conv is None:
        conv = CONVERSATIONS.open(conversation or model_label(entry))
    conv.model = model_label(entry)
    return conv, entry
