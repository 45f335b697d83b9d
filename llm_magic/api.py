"""The plain-Python API: everything the magics do, without a shell.

`load` takes its options as a `LoadOptions` or as keywords, `generate` and `chat` a
`Settings` or keywords: the magics build those values once and pass them down."""

from __future__ import annotations

import difflib
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from . import hardware, loader
from . import settings as settings_module
from .cache import MODEL_CACHE, LoadedModel
from .display import ModelRow, ModelsCard, UnloadCard
from .engines.base import Card, Engine, LoadOptions, Progress
from .errors import GenerationError, LLMError
from .results import GenerationResult, GenerationResults
from .settings import Settings
from .sources import discovery

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .conversations import Conversation
    from .engines.base import LoadKeywords
    from .prompts import Over
    from .settings import SamplingKeywords, SettingsKeywords


def available() -> discovery.Available:
    """What this machine can load now, offline, each with its `%llm_load` line (what
    `%llm_load` with no MODEL shows): cached Hub models, converted .gguf copies, the demo
    model, and the models already loaded."""
    return discovery.available(loader.loaded_entries())


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
    alias, reload, force, quiet (nothing on stdout or stderr; failures still raise).

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
    unknown = sorted(set(keywords) - known)
    if unknown:
        near = [m for u in unknown for m in difflib.get_close_matches(u, known, 1)]
        raise TypeError(
            f"unknown load option {', '.join(unknown)}"
            + (f" (did you mean {', '.join(near)}?)" if near else "")
        )
    base = options or LoadOptions()
    return replace(base, model=model if model is not None else base.model, **keywords)


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
            e.info.dtype,
            e.info.device,
            e.memory_bytes,
            now - e.last_used,
            e is current,
            e.packed_bytes,
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
    **keywords: Unpack[SettingsKeywords],
) -> GenerationResult | GenerationResults:
    """Generate from PROMPT with a cached model; returns the result (`.text` and stats).

    model: an alias or the name a model was loaded with, a handle from `load`, or None
    for the model loaded (or used) last. How to generate: a `Settings` (`settings=`)
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
    """
    from . import generation, prompts
    from .engines import decode_speed

    entry = _generation_model(model)
    chosen = settings_module.make(settings, **keywords)
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
    if over is not None:
        items = prompts.items_of(over, "over=")
        texts = prompts.fill_over(prompt, items.items, namespace or {})
        return generation.generate_many(
            engine, texts, chosen, on_progress=progress, on_prompt=on_prompt, over=items
        )
    text = prompt if namespace is None else prompts.fill(prompt, namespace)
    result = generation.generate(
        engine, text, chosen, on_text=stream, on_prompt=on_prompt, on_start=on_start
    )
    decode_speed.note_result(entry, result)  # for the card's engine comparison
    return result


def _default_entry() -> LoadedModel | None:
    """The model a generation without `model` uses: the one used last, else (after it was
    unloaded) the most recently used of those left."""
    return MODEL_CACHE.current() or max(
        MODEL_CACHE.entries(), key=lambda e: e.last_used, default=None
    )


def _engine(entry: LoadedModel) -> Engine:
    """What generates with `entry`; an unloaded one is refused."""
    if entry.engine is None:
        raise GenerationError(f"{entry.name} was unloaded", fixes=[f"%llm_load {entry.name}"])
    return entry.engine


def _generation_model(model: str | LoadedModel | None) -> LoadedModel:
    """The cached model to generate with (touched: it becomes the current one)."""
    entry: LoadedModel | None
    if isinstance(model, LoadedModel):
        entry = model
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
    _engine(entry)  # refuses an unloaded one
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
    settings: Settings | None = None,
    namespace: Mapping[str, Any] | None = None,
    stream: Callable[[str], None] | None = None,
    on_prompt: Callable[[str, int | None], None] | None = None,
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
    sampling fields as keywords, as in `generate`. Ctrl-C: the partial answer is kept in
    the conversation (marked interrupted) and carried by the KeyboardInterrupt as `.result`.
    """
    from . import conversations, prompts

    if retry and conversation is None and model is None:
        conversation = conversations.CONVERSATIONS.current()  # the one used last
    conv, entry = _chat_target(conversation, model)
    # A retry answers again as the turn was answered: its own settings, unless given here.
    base = settings
    if retry and settings is None and conv.turns and conv.turns[-1].settings is not None:
        base = conv.turns[-1].settings
    # The conversation's own system message is sent, not a Settings' one.
    chosen = replace(settings_module.make(base, **keywords), system=None, raw=False)
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
        _engine(entry),
        text or "",
        chosen,
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
        conv: Conversation | None = CONVERSATIONS.add(conversation)
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
