"""The plain-Python API: everything the magics do, without a shell.

`load` takes its options as a `LoadOptions` or as keywords, `generate` and `chat` a
`Settings` or keywords: the magics build those values once and pass them down."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from . import adapters, hardware, loader, runlog, side_by_side, structured
from . import settings as settings_module
from .cache import MODEL_CACHE, LoadedModel
from .display import DiskCard, ModelRow, ModelsCard, UnloadCard
from .display.adapters import AdapterCard
from .engines.base import Card, Engine, LoadOptions, Progress
from .errors import GenerationError, LLMError
from .logprobs import DEFAULT_TOP
from .results import (
    Comparison,
    GenerationResult,
    GenerationResults,
    carried_result,
    carry_result,
)
from .runlog import Origin
from .scores import ChoiceScores, ScoreResult, ScoreResults
from .settings import Settings
from .sources import discovery
from .sources.adapter import adapter_pairs

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .conversations import Conversation
    from .display.log import LogStatsCard
    from .engines.base import LoadKeywords
    from .prompts import Over
    from .settings import SamplingKeywords, ScoreKeywords, SettingsKeywords


def available(defaults: LoadOptions | None = None) -> discovery.Available:
    """What this machine can load now, offline, each with its `%llm_load` line (what
    `%llm_load` with no MODEL shows): cached Hub models, converted .gguf copies, the demo
    model, and the models already loaded (`defaults`: the options a line's missing flags
    stand for, `LLMMagics`' defaults in a notebook)."""
    return discovery.available(loader.loaded_entries(defaults))


def load(
    model: str | None = None,
    *,
    options: LoadOptions | None = None,
    progress: Progress | None = None,
    **keywords: Unpack[LoadKeywords],
) -> LoadedModel:
    """Load MODEL (Hub id, `save_pretrained` folder or .gguf file) into the kernel's cache.

    Options, as keywords or as one `LoadOptions` (`options=`; keywords override it):
    dtype ("auto": the hardware decides), device_map, revision, trust_remote_code,
    max_memory ({"cpu": "2GB", 0: "20GB"}: what device_map="auto" puts on each device),
    quantize ("nf4", "fp4", "int8": linear layers quantized by bitsandbytes), engine
    ("llama.cpp" runs a .gguf as it is; `handle.model` is then the `llama_cpp.Llama`),
    alias, reload, force, quiet (nothing on stdout or stderr; failures still raise),
    adapters (PEFT adapter folders, or GGUF LoRA files with engine="llama.cpp": a path, a
    list of paths or "NAME=PATH" strings, or {name: path}; they ride on the model, which
    is not loaded again when cached, and the first is the one its name alone means: see
    `load_adapter`).

    With `server="http://host:8000/v1"`: MODEL as served by that OpenAI-compatible server
    (vLLM, SGLang, TGI, llama.cpp, Ollama, `transformers serve`), or the one it serves when
    MODEL is None; `api_key_env` names the variable holding its key (default
    OPENAI_API_KEY when set), `timeout` the seconds to wait for a reply.

    The same request again returns the same handle from the cache in milliseconds.
    `handle.model`, `handle.tokenizer`, `handle.info` (plain metadata). A model that will
    not fit in free memory fails before any weights are read, unless `force=True`; past
    the cache's budget the least recently used model is unloaded first.
    """
    handle, _ = load_with_card(model, options=options, progress=progress, **keywords)
    return handle


def load_with_card(
    model: str | None = None,
    *,
    options: LoadOptions | None = None,
    progress: Progress | None = None,
    **keywords: Unpack[LoadKeywords],
) -> tuple[LoadedModel, Card]:
    """`load`, plus the card that says what it did (what `%llm_load` shows).

    A failure raises LoadError (the original chained as __cause__), leaves the cache as
    it was and keeps no reference to a half-loaded model."""
    return loader.load_with_card(load_options(model, options, **keywords), progress)


def load_options(
    model: str | None = None, options: LoadOptions | None = None, **keywords: Any
) -> LoadOptions:
    """`options` (default: the defaults) with MODEL and the keywords given; a misspelt
    keyword fails with the names it could be."""
    known = {f.name for f in fields(LoadOptions)} - {"model"}
    settings_module.refuse_unknown(keywords, known, "load option")
    if "adapters" in keywords:
        keywords["adapters"] = adapter_pairs(keywords["adapters"])
    base = options or LoadOptions()
    return replace(base, model=model if model is not None else base.model, **keywords)


# ------------------------------------------------------------------------------ adapters


def load_adapter(
    adapters_: Any, *, model: str | LoadedModel | None = None, default: bool = False
) -> AdapterCard:
    """Put adapters on a loaded model without loading it again (`%llm_adapter load`): a PEFT
    folder (transformers), a GGUF LoRA file (llama.cpp), a served adapter's id (a server
    model); several as a list or {name: path}; "NAME=PATH" names one (default: its folder's
    or file's name). Each is then `-m MODEL:NAME` (`-m MODEL:base`: adapters off); with
    `default`, the first is the one the model's name alone means. The card lists the
    model's adapters (rank, modules, size) and the memory they added. A failure (an
    adapter for another base model, a missing adapter_config.json, a rank the weights do
    not have, peft missing) raises LoadError and leaves the model as it was."""
    entry = _generation_model(model)
    pairs = adapter_pairs(adapters_)
    attached = adapters.attach(entry, pairs, default=pairs[0][0] if default and pairs else None)
    return adapters.card(
        entry,
        "loaded",
        attached.names,
        attached.bytes,
        attached.rss_before,
        attached.rss_after,
        notes=tuple(loader.budget_note(r) for r in attached.released),
    )


def list_adapters(model: str | LoadedModel | None = None) -> AdapterCard:
    """The adapters on a loaded model, and a server model's adapters its server lists
    (`%llm_adapter list`)."""
    return adapters.card(_generation_model(model), "listed")


def unload_adapter(
    names: str | Sequence[str], *, model: str | LoadedModel | None = None
) -> AdapterCard:
    """Take adapters off their model and free their memory (`%llm_adapter unload`): NAME or
    MODEL:NAME (or several); "all" takes every one off. The card says what came back."""
    wanted: list[str] = []
    for name in [names] if isinstance(names, str) else list(names):
        base, colon, adapter = name.rpartition(":")
        if colon and base:
            if model is not None and base != model:
                raise LLMError(f"{name}: names another model than -m {model}")
            model, name = base, adapter
        wanted.append(name)
    entry = _generation_model(model)
    if "all" in wanted and "all" not in entry.adapters:
        wanted = list(entry.adapters)
    return adapters.detach(entry, tuple(dict.fromkeys(wanted)))


# ------------------------------------------------------------------- list and unload


def models() -> ModelsCard:
    """The cached models, their total, free memory and the budget (what `%llm_models` shows)."""
    now = time.time()
    current = _default_entry()  # the one marked *: what %%llm_generate uses without -m
    rows = tuple(
        ModelRow(
            ", ".join(sorted(e.aliases)),
            e.name,
            (e.info.revision or "")[:12],
            e.info.held_as,
            e.info.device,
            e.memory_bytes,
            now - e.last_used,
            e is current,
            e.packed_bytes,
            tuple((a.name, a.memory_bytes) for a in e.adapters.values()),
            e.default_adapter,
        )
        for e in sorted(MODEL_CACHE.entries(), key=lambda e: -e.last_used)
    )
    gpus: tuple[tuple[str, int, int], ...] = ()
    # No torch import just to list.
    hw_gpus = hardware.probe().gpus if "torch" in sys.modules else ()
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
        MODEL_CACHE.set_aside.clear()  # nothing to load again for a later cell
    else:
        _refuse_ambiguous(name, "%llm_unload", LLMError)
        entry = MODEL_CACHE.find(name) if name else None
        if entry is None:
            cached = sorted(
                {a for e in MODEL_CACHE.entries() for a in e.aliases}
                | {e.name for e in MODEL_CACHE.entries()}
            )
            entries = sorted(MODEL_CACHE.entries(), key=lambda e: -e.last_used)
            raise LLMError(
                f"no cached model named {name!r}" if name else "which model? give a NAME or --all",
                "cached: " + ", ".join(cached) if cached else "the cache is empty",
                [loader.unload_command(entries[0]), "%llm_unload --all"]
                if entries
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


def delete_copies(name: str | None = None, *, all: bool = False) -> DiskCard:  # noqa: A002
    """Delete converted .gguf copies (as `%llm_unload --disk` does): the copy NAME, every
    copy of the .gguf NAME, or with `all=True` all of them. The card says what went, and
    which loaded models were read from a deleted copy (they stay loaded)."""
    from .sources import gguf_cache

    deleted = gguf_cache.delete_copies(name, all=all)
    folders = {c.folder: c.name for c in deleted}
    said = tuple(
        f"{e.name} ({e.info.held_as}) was read from {folders[e.info.source]}: it stays"
        " loaded; loading its .gguf again converts it again"
        for e in MODEL_CACHE.entries()
        if e.info.source in folders
    )
    return gguf_cache.disk_card(tuple(deleted), said)


def _refuse_ambiguous(name: str | None, what: str, error: type[LLMError]) -> None:
    """Ask, rather than pick one silently, when NAME means several cached models."""
    several = MODEL_CACHE.ambiguous(name) if name else []
    if not several:
        return
    described = [
        f"{e.info.held_as} on {e.info.device}"
        + (f" (as {', '.join(sorted(e.aliases))})" if e.aliases else "")
        for e in several
    ]
    aliased = next((min(e.aliases) for e in several if e.aliases), None)
    fixes = [f"{what} {aliased}  (an alias names one)"] if aliased else []
    unnamed = next((e for e in several if not e.aliases), None)
    if unnamed is not None:
        fixes.append(f"give each an alias: {loader.loaded_line(unnamed)} --as NAME")
    if what == "%llm_unload":
        fixes.append("%llm_unload --all unloads every one")
    raise error(
        f"{what} {name}: {len(several)} cached models have that name", "; ".join(described), fixes
    )


# --- generation ------------------------------------------------------------------------


def generate(
    prompt: str,
    *,
    model: str | LoadedModel | None = None,
    settings: Settings | None = None,
    namespace: Mapping[str, Any] | None = None,
    over: Iterable[Any] | Over | None = None,
    stream: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_prompt: Callable[[str, int | None], None] | None = None,
    on_start: Callable[[tuple[str, ...]], None] | None = None,
    schema: Any = None,
    choice: Iterable[Any] | None = None,
    regex: str | re.Pattern[str] | None = None,
    **keywords: Unpack[SettingsKeywords],
) -> GenerationResult | GenerationResults:
    """Generate from PROMPT with a cached model; returns the result (`.text` and stats).

    model: an alias or the name a model was loaded with (`MODEL:ADAPTER` for one of its
    adapters, `MODEL:base` for none), a handle from `load`, or None for the model loaded
    (or used) last. How to generate: a `Settings` (`settings=`)
    and/or its fields as keywords (max_new_tokens, greedy, temperature, top_p, top_k,
    seed, stop, system, raw, batch_size, concurrency); unset ones take `Settings`'
    defaults (256 new tokens, sampling at temperature 0.7, top-p 0.9, top-k 50).
    namespace: fills `{name}`, `{obj.attr}`, `{obj[key]}` in the prompt and the system
    text (`{{`/`}}` are literal braces); without it the prompt is used verbatim.
    over: run the prompt as a template once per item (`{item}`), in batches of
    `batch_size` (server models: `concurrency` requests at once); returns one result per
    item, in order, which keep the items (`to_pandas()`; a Series keeps its index). A list,
    tuple, Series, dict (its values) or any iterable of at most 100,000 items.
    stream: called with each new piece of text as it is generated (single prompts).
    Ctrl-C stops generating and raises KeyboardInterrupt carrying the
    partial result as `.result`.
    The answer's format (one of): schema (a pydantic model class, a JSON Schema dict, or
    the inline form 'name, age int, mood happy|sad'), choice (a list of strings), regex
    (a pattern). Enforced while decoding where the engine can, always checked:
    `result.data`, `result.valid`; `results.to_pandas()` gets typed columns.
    """
    target = _generation_target(model)
    chosen = _with_format(settings_module.make(settings, **keywords), schema, choice, regex)
    return _generate(target, prompt, chosen, namespace, over, stream, progress, on_prompt, on_start)


def _generate(
    target: adapters.Target,
    prompt: str,
    chosen: Settings,
    namespace: Mapping[str, Any] | None,
    over: Iterable[Any] | Over | None,
    stream: Callable[[str], None] | None,
    progress: Callable[[int, int], None] | None,
    on_prompt: Callable[[str, int | None], None] | None,
    on_start: Callable[[tuple[str, ...]], None] | None,
) -> GenerationResult | GenerationResults:
    from . import generation, prompts
    from .engines import decode_speed

    entry = target.entry
    if not prompt or not prompt.strip():
        raise GenerationError(
            "the prompt is empty: nothing to send to the model",
            fixes=[
                "write the prompt in the cell, under the %%llm_generate line",
                "llm_magic.generate('What is the capital of France?')",
            ],
        )
    if namespace is not None and chosen.system:
        chosen = chosen.with_(system=prompts.fill(chosen.system, namespace, "--system"))
    engine = _engine(entry)
    origin = _origin(entry)
    if over is not None:
        items = prompts.items_of(over, "over=")
        texts = prompts.fill_over(prompt, items.items, namespace or {})
        with adapters.using(target):
            return generation.generate_many(
                engine,
                texts,
                chosen,
                on_progress=progress,
                on_prompt=on_prompt,
                over=items,
                origin=origin,
            )
    text = prompt if namespace is None else prompts.fill(prompt, namespace)
    with adapters.using(target):
        result = generation.generate(
            engine,
            text,
            chosen,
            on_text=stream,
            on_prompt=on_prompt,
            on_start=on_start,
            origin=origin,
        )
    decode_speed.note_result(entry, result)  # for the card's engine comparison
    return result


def _with_format(settings: Settings, schema: Any, choice: Any, regex: Any) -> Settings:
    """`settings` with the answer's format the keywords ask for (if any)."""
    fmt = structured.from_keywords(schema, choice, regex)
    return settings if fmt is None else replace(settings, answer_format=fmt)


def _default_entry() -> LoadedModel | None:
    """The model a generation without `model` uses: the one used last, else (after it was
    unloaded) the most recently used of those left."""
    return MODEL_CACHE.current() or max(
        MODEL_CACHE.entries(), key=lambda e: e.last_used, default=None
    )


def compare(
    prompt: str,
    models: Sequence[str | LoadedModel],
    *,
    settings: Settings | None = None,
    namespace: Mapping[str, Any] | None = None,
    over: Iterable[Any] | Over | None = None,
    stream: Callable[[str], Callable[[str], None] | None] | None = None,
    on_result: Callable[[str, Any], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_prompt: Callable[[str, int | None], None] | None = None,
    **keywords: Unpack[SettingsKeywords],
) -> Comparison:
    """PROMPT through several models, one after another, with the same settings and seed
    (`%%llm_generate -m A B`); returns a `Comparison`: one result per model, by name, in
    the order given (`comparison["tiny:lora"]`; with `over`, each model's results, and
    `comparison.to_pandas()` in long form, `comparison.pivot()` items × models).

    models: names as `generate`'s `model` takes them (aliases, `MODEL:ADAPTER`,
    `MODEL:base`, server models, any engine), or handles; a model the cache's budget
    unloaded earlier is loaded again for its turn, within the budget (said in `.notes`).
    Sampling without a seed draws one, given to every model. stream: called with a model's
    name as its turn starts; returns where its text streams (or None). on_result: called
    with each model's name and result as its turn ends. Ctrl-C stops the current model
    and raises KeyboardInterrupt carrying the comparison so far as `.result`."""
    import secrets

    from . import prompts

    chosen = settings_module.make(settings, **keywords)
    if not chosen.greedy and chosen.seed is None:
        chosen = chosen.with_(seed=secrets.randbelow(2**31))  # one seed for every model
    if over is not None:  # read once: an iterator would be used up by the first model
        over = prompts.items_of(over, "over=")
    names = [m if isinstance(m, str) else adapters.model_label(m) for m in models]
    if len(names) < 1:
        raise GenerationError("no model named", fixes=["-m A B  (two or more names)"])
    turns = side_by_side.plan(names)
    comparison = Comparison()
    comparison.seed = chosen.seed

    def one(target: adapters.Target) -> Any:
        MODEL_CACHE.touch(target.entry)
        sink = stream(target.label) if stream is not None else None
        try:
            result = _generate(
                target, prompt, chosen, namespace, over, sink, progress, on_prompt, None
            )
        except (KeyboardInterrupt, Exception) as e:
            partial = carried_result(e)
            if partial is not None:
                comparison[target.label] = partial
            raise
        if on_result is not None:
            on_result(target.label, result)
        return result

    results: dict[str, Any] = {}
    try:
        comparison.notes = side_by_side.run(turns, one, results)
    except (KeyboardInterrupt, Exception) as e:
        # What was made stays: the models done, and the one stopped part-way (Ctrl-C, a
        # server dropping its stream) where its error carries its text.
        stopped = carried_result(e)
        partial = dict(comparison)
        comparison.clear()
        comparison.update(
            {n: results.get(n, partial.get(n)) for n in names if n in results or n in partial}
        )
        if isinstance(e, KeyboardInterrupt) or comparison or stopped is not None:
            carry_result(e, comparison)
        raise
    comparison.update((n, results[n]) for n in names)
    return comparison


def _origin(entry: LoadedModel) -> Origin:
    """What the run log records of the model beyond its engine: the name(s) it goes by."""
    return Origin(alias=", ".join(sorted(entry.aliases)) or None)


def _engine(entry: LoadedModel) -> Engine:
    """What generates with `entry`; an unloaded one is refused."""
    if entry.engine is None:
        raise GenerationError(f"{entry.name} was unloaded", fixes=[f"%llm_load {entry.name}"])
    return entry.engine


def _generation_target(model: str | LoadedModel | None) -> adapters.Target:
    """The cached model to generate with, and its adapter (touched: it becomes the current
    one)."""
    if isinstance(model, LoadedModel):
        target = adapters.Target(model, model.default_adapter, adapters.model_label(model))
    elif model is None:
        entry = _default_entry()
        if entry is None:
            raise GenerationError(
                "no model is loaded",
                "%%llm_generate and llm_magic.generate use a model loaded with %llm_load first",
                [
                    "%llm_load HuggingFaceTB/SmolLM2-135M-Instruct",
                    "%llm_load $path  (path = llm_magic.demo_model(), offline)",
                ],
            )
        target = adapters.Target(entry, entry.default_adapter, adapters.model_label(entry))
    else:
        _refuse_ambiguous(model, "-m", GenerationError)
        found = adapters.find(model)
        if found is None:
            raise adapters.unknown_model(model)
        target = found
    entry = target.entry
    _engine(entry)  # refuses an unloaded one
    MODEL_CACHE.touch(entry)
    return target


def _generation_model(model: str | LoadedModel | None) -> LoadedModel:
    """The cached model to generate with (touched: it becomes the current one)."""
    return _generation_target(model).entry


# --- scoring -----------------------------------------------------------------------------


def score(
    text: str | None = None,
    *,
    context: str | None = None,
    choices: Iterable[str] | None = None,
    answer: int | str | None = None,
    model: str | LoadedModel | None = None,
    raw: bool = False,
    over: Iterable[Any] | None = None,
    namespace: Mapping[str, Any] | None = None,
    delimiter: str | None = None,
    settings: Settings | None = None,
    progress: Callable[[int, int], None] | None = None,
    **keywords: Unpack[ScoreKeywords],
) -> ScoreResult | ChoiceScores | ScoreResults:
    """Score TEXT with a cached model by one teacher-forced pass: the log-probability of
    each of its tokens, as lm-evaluation-harness's `loglikelihood` computes it. Returns a
    result with `.logprob` (the total), `.tokens`, `.token_count`, `.perplexity`.

    context: score TEXT as the continuation of this text (a chat model reads it as the
    user's turn and TEXT as its answer, unless `raw=True`: then plain text). choices: score
    each choice as the continuation of TEXT (the question); returns `.probabilities`
    (choice → probability, normalised over the choices), `.best`, `.best_norm` (per
    character: lm-evaluation-harness's acc_norm) and a row per choice (`.frame()`);
    answer: the right choice (index or text), for acc / acc_norm. delimiter: put before
    each choice (default: a space after plain text, none after a chat template). over:
    TEXT is a template filled once per item (`{item}`); an item that is a dict may hold
    its own "choices" and "answer"; returns one result per item (`.to_pandas()`,
    `.accuracy`). Keywords: system, batch_size, logprobs (alternatives kept per token,
    default 5). Ctrl-C keeps the items scored: KeyboardInterrupt carries them as `.result`.
    """
    from . import prompts, scoring

    entry = _generation_model(model)
    if settings is None or settings.logprobs is None:
        keywords.setdefault("logprobs", DEFAULT_TOP)
    chosen = settings_module.make(settings, raw=raw or None, **keywords)
    if text is None or (not text.strip() and choices is None and over is None):
        raise GenerationError(
            "nothing to score: the text is empty",
            fixes=[
                "write the text to score in the cell, under the %%llm_score line",
                "llm_magic.score('The capital of France is Paris.')",
            ],
        )
    shared = tuple(choices) if choices is not None else None
    if over is None:
        filled = text if namespace is None else prompts.fill(text, namespace)
        question = (
            context
            if context is None or namespace is None
            else prompts.fill(context, namespace, "--context")
        )
        items = [scoring.ScoreItem(filled, question, shared, _answer(answer, shared, "answer"))]
    else:
        items = _score_items(text, context, shared, over, namespace or {})
    results = scoring.score(
        _engine(entry),
        items,
        chosen,
        delimiter=delimiter,
        on_progress=progress,
        origin=_origin(entry),
        over=over is not None,
    )
    return results if over is not None else results[0]


def _score_items(
    template: str,
    context: str | None,
    shared: tuple[str, ...] | None,
    over: Iterable[Any],
    namespace: Mapping[str, Any],
) -> list:
    """One ScoreItem per --over item: the template (and context) filled with it, its own
    choices and answer where it is a dict holding them."""
    from collections import ChainMap

    from . import prompts, scoring

    values = prompts.items_of(over, "over=").items
    texts = prompts.fill_over(template, values, namespace)
    variables = dict(namespace)  # read under each item's {item}, never written
    items = []
    for index, (value, text) in enumerate(zip(values, texts, strict=True)):
        label = f"item [{index}]"
        own = value.get("choices") if isinstance(value, Mapping) else None
        choices = tuple(own) if own is not None else shared
        answer = value.get("answer") if isinstance(value, Mapping) else None
        filled_context = (
            prompts.fill(context, ChainMap({"item": value}, variables), "--context")
            if context is not None
            else None
        )
        items.append(
            scoring.ScoreItem(text, filled_context, choices, _answer(answer, choices, label), label)
        )
    return items


def _answer(answer: int | str | None, choices: tuple[str, ...] | None, label: str) -> int | None:
    """The right choice's index, from an index or the choice's text."""
    if answer is None or choices is None:
        return None
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return answer
    if isinstance(answer, str) and answer in choices:
        return choices.index(answer)
    raise GenerationError(
        f"{label}: the answer {answer!r} is not one of the choices",
        "an answer is a choice's index (0 for the first) or its text",
        [f"choices: {', '.join(repr(c) for c in choices)}"],
    )


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
    settings: Settings | None = None,
    namespace: Mapping[str, Any] | None = None,
    stream: Callable[[str], None] | None = None,
    on_prompt: Callable[[str, int | None], None] | None = None,
    schema: Any = None,
    choice: Iterable[Any] | None = None,
    regex: str | re.Pattern[str] | None = None,
    **keywords: Unpack[SamplingKeywords],
) -> GenerationResult:
    """The next turn of a conversation: TEXT answered with the history before it; returns
    the answer (a result like `generate`'s, with `.conversation` and `.messages`).

    conversation: a name (made when new), a Conversation (e.g. `Conversation.load(path)`),
    or None for the model's own conversation (one per model, named after it). model: as
    in `generate`; None: the conversation's model, else the current one. system: set the
    conversation's system message; default_system: the one a conversation starting with
    this turn gets when `system` is not given. new: start the conversation over. retry:
    ask the last question again (TEXT unused; default: the conversation used last), with
    that turn's own settings unless `settings` is given (keywords change single ones),
    replacing its answer. cell_id: the notebook
    cell the turn comes from: a later turn from the same cell replaces it and drops the
    turns after it. max_history: send at most this many earlier turns (0: as many as the
    context holds, oldest left out first). How to generate: a `Settings` and/or its
    sampling fields as keywords, as in `generate`; schema, choice, regex: the answer's
    format, as in `generate`. Ctrl-C: the partial answer is kept in the conversation
    (marked interrupted) and carried by the KeyboardInterrupt as `.result`.
    """
    from . import conversations, prompts

    if retry and conversation is None and model is None:
        conversation = conversations.CONVERSATIONS.current()  # the one used last
    conv, target = _chat_target(conversation, model)
    # A retry answers again as the turn was answered: its own settings, unless given here.
    base = settings
    if retry and settings is None and conv.turns and conv.turns[-1].settings is not None:
        base = conv.turns[-1].settings
    # The conversation's own system message is sent, not a Settings' one.
    chosen = replace(
        _with_format(settings_module.make(base, **keywords), schema, choice, regex),
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
    with adapters.using(target):
        return conversations.ask(
            conv,
            _engine(target.entry),
            text or "",
            chosen,
            cell_id=cell_id,
            retry=retry,
            max_history=max_history,
            on_text=stream,
            on_prompt=on_prompt,
            origin=_origin(target.entry),
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
    return adapters.model_label(entry)


def _chat_target(conversation, model) -> tuple[Conversation, adapters.Target]:
    """(the conversation, the model to answer with and its adapter)."""
    from .conversations import CONVERSATIONS, Conversation

    if isinstance(conversation, Conversation):
        conv: Conversation | None = CONVERSATIONS.add(conversation)
    else:
        conv = CONVERSATIONS.get(conversation) if conversation is not None else None
    if model is None and conv is not None and conv.model is not None:
        if adapters.find(conv.model) is None:
            raise GenerationError(
                f"conversation {conv.name!r} was with {conv.model}, which is not loaded",
                fixes=[
                    f"%llm_load MODEL --as {conv.model}",
                    "-m NAME answers it with another loaded model",
                ],
            )
        target = _generation_target(conv.model)
    else:
        target = _generation_target(model)
    entry, label = target.entry, model_label(target.entry)
    if target.adapter != entry.default_adapter:  # a conversation of its own per adapter
        label = f"{label}:{target.adapter or 'base'}"
    if conv is None:
        conv = CONVERSATIONS.open(conversation or label)
    conv.model = label
    return conv, target


# --- the run log -------------------------------------------------------------------------------


def _log_store(path: str | None) -> runlog.RunLog:
    """The log to read: `path`, else the configured one (read even while logging is off)."""
    found = runlog.store(path or runlog.log_path())
    assert found is not None
    return found


def _filters(
    model: str | None, search: str | None, since: str | None, cell: str | None, kind: str | None
) -> dict[str, Any]:
    return {
        "model": model,
        "search": search,
        "since": runlog.since(since) if since else None,
        "cell_id": cell,
        "kind": kind,
    }


def log(
    *,
    last: int | None = None,
    model: str | None = None,
    search: str | None = None,
    since: str | None = None,
    cell: str | None = None,
    kind: str | None = None,
    path: str | None = None,
) -> Any:
    """The run log as a pandas DataFrame, one row per run (oldest first): every generation,
    chat turn, --over item and score, with its model (model, alias, model_hash, engine,
    dtype, quantization, device, server), cell (notebook, cell_id, execution_count, cell),
    prompt, rendered, answer, counts, seed, and the JSON columns settings, provenance
    and result as dicts.

    last: only the latest N. model: a part of the model's name or alias. search: words
    in the cell, prompt or answer (full-text). since: a date ('2025-06-01'), a date and
    time, a span back from now ('2h', '3d'), today or yesterday. cell: a cell id (or its
    start). kind: generate, chat, over or score. path: another log file."""
    try:
        import pandas as pd
    except ImportError:
        raise LLMError("llm_magic.log() needs pandas", fixes=["pip install pandas"]) from None
    rows = _log_store(path).query(last=last, **_filters(model, search, since, cell, kind))
    frame = pd.DataFrame(rows, columns=["id", *runlog.COLUMNS])
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    frame["greedy"] = frame["greedy"].astype("boolean")
    return frame


def log_card(
    *,
    last: int | None = 10,
    model: str | None = None,
    search: str | None = None,
    since: str | None = None,
    cell: str | None = None,
    kind: str | None = None,
    path: str | None = None,
    notes: tuple[str, ...] = (),
) -> Card:
    """The latest runs as a card (what `%llm_log` shows)."""
    from .display.log import RunsCard, runs_title

    store = _log_store(path)
    filters = _filters(model, search, since, cell, kind)
    rows = store.query(last=last, **filters)
    total = store.count(**filters)
    what = [
        f"{name} {value}"
        for name, value in (("model", model), ("search", search), ("since", since), ("kind", kind))
        if value
    ] + ([f"cell {cell[:8]}"] if cell else [])
    extra = list(notes)
    if search and not store.fts:
        extra.append("this Python's SQLite has no full-text search (FTS5): searched as text")
    if not rows:
        extra.append("no runs" + (" match" if what else " logged yet"))
    if not runlog.enabled() and path is None:
        extra.append("logging is off (LLM_MAGIC_LOG=0 or LLMMagics.log = False)")
    return RunsCard(
        runs_title(len(rows), total, str(store.path), what),
        tuple(_shown_row(r) for r in rows),
        tuple(extra),
    )


def _shown_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "when": runlog.local_time(row["time"]).strftime("%Y-%m-%d %H:%M:%S")}


def log_run(run_id: int, *, path: str | None = None) -> Card:
    """One run whole, as the log holds it (what `%llm_log --show ID` shows)."""
    from .display.log import RunCard

    store = _log_store(path)
    rows = store.query(ids=[run_id])
    if not rows:
        raise LLMError(
            f"no run {run_id} in the log",
            f"{store.path} holds {store.count()} runs",
            ["%llm_log lists the latest, with their ids"],
        )
    return RunCard(_shown_row(rows[0]))


def log_stats(*, path: str | None = None) -> LogStatsCard:
    """How many runs the log holds, its size and where it is (`%llm_log --stats`)."""
    from .display.log import LogStatsCard

    store = _log_store(path)
    facts = store.stats()
    search = (
        "full-text (SQLite FTS5)" if store.fts else "plain text: this Python's SQLite has no FTS5"
    )

    def local(stored: str | None) -> str | None:
        return runlog.local_time(stored).strftime("%Y-%m-%d %H:%M") if stored else None

    return LogStatsCard(
        path=facts["path"],
        runs=facts["runs"],
        size=facts["bytes"],
        first=local(facts["first"]),
        last=local(facts["last"]),
        models=tuple(facts["models"]),
        kinds=tuple(facts["kinds"]),
        search=search,
        schema=facts["schema"],
        on=runlog.enabled() or path is not None,
    )


def forget(
    ids: Iterable[int] = (),
    *,
    model: str | None = None,
    search: str | None = None,
    since: str | None = None,
    cell: str | None = None,
    all: bool = False,  # noqa: A002 (mirrors --all)
    path: str | None = None,
) -> int:
    """Delete runs from the log for good (their text does not stay in the file); returns
    how many. Runs are named by id, or by model, search, since or cell (as in `log`);
    `all=True` deletes every one."""
    chosen = [int(i) for i in ids]
    return _log_store(path).forget(
        ids=chosen or None,
        model=model,
        search=search,
        since=runlog.since(since) if since else None,
        cell_id=cell,
        everything=all,
    )
