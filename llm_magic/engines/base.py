"""The engine interface and the plain data that cross it: what every engine is asked to do
(load, render, run, run many), what it may offer beyond that (its `Capabilities`), and the
values going in (`LoadOptions`, `Settings`, `Request`) and out (`ModelInfo`, `Rendered`,
`Completion`, `Run`). No heavy import here."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from ..errors import LLMError, LoadError
from ..logprobs import DISTRIBUTION_SHORT, TokenLogprob
from ..settings import Settings
from ..units import format_bytes

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from ..sources.adapter import AdapterSource
    from ..sources.resolve import Source
    from ..sources.sizing import Estimate

TextCallback = Callable[[str], None]
ProgressCallback = Callable[[int, int], None]  # (groups done, groups in all): batches, or requests
Progress = Callable[[str], None]  # a status line while loading
# rows -> (max_new_tokens, notes): the context budget of one group of rows
Budget = Callable[[Sequence["Rendered"]], "tuple[int, tuple[str, ...]]"]


# --- loading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadOptions:
    """How to load: the `%llm_load` options as one value (`llm_magic.load`'s keywords).

    The engine is `server` when `server` is given, else `engine`. Which of these name the
    weights and how they are held is the engine's to say: it makes the `CacheKey`."""

    model: str | None = None
    engine: str = "transformers"
    dtype: str = "auto"
    device_map: str | Mapping[str, Any] = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    max_memory: Mapping[str | int, str] | None = None
    quantize: str | None = None
    server: str | None = None
    api_key_env: str | None = None
    timeout: float | None = None  # seconds to wait for a server's reply
    # How this one call behaves; not part of what is cached.
    alias: str | None = None
    reload: bool = False
    force: bool = False
    quiet: bool = False
    # Adapters to put on the model, as (name, path) pairs (a served adapter: (name, its id)).
    # Not part of the cache key: the base model is loaded once, the adapters ride on it.
    adapters: tuple[tuple[str, str], ...] = ()

    @property
    def engine_name(self) -> str:
        return "server" if self.server else self.engine

    def check(self) -> None:
        """Refuse what no engine can do, before anything is read."""
        if self.alias is not None and not self.alias.isidentifier():
            raise LoadError(
                f"--as {self.alias!r}: an alias must be a plain name (letters, digits, _)"
            )
        if self.api_key_env and not self.server:
            raise LoadError(
                f"--api-key-env {self.api_key_env}: a key is for a server model (--server URL)",
                "without --server the model runs here, and no key is sent anywhere",
                [
                    f"%llm_load MODEL --server URL --api-key-env {self.api_key_env}",
                    "leave out --api-key-env",
                ],
            )
        for device, size in (self.max_memory or {}).items():
            _check_memory_cap(device, size)
        if self.timeout is not None and not (0 < self.timeout < float("inf")):
            raise LoadError(f"timeout {self.timeout}: seconds to wait must be above 0")

    def unused(self, *names: str) -> tuple[str, ...]:
        """The flags among `names` (fields) set away from their defaults: what an engine
        that does not use them says it leaves out."""
        default = LoadOptions()
        return tuple(
            "--" + name.replace("_", "-")
            for name in names
            if getattr(self, name) != getattr(default, name)
        )


def _check_memory_cap(device: str | int, size: object) -> None:
    """One --max-memory cap: a size above 0 (accelerate refuses others with a message
    about its own format)."""
    from ..sources.sizing import parse_bytes

    example = "--max-memory 0=20GB,cpu=30GB"
    try:
        parsed = parse_bytes(size)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise LoadError(
            f"--max-memory {device}={size}: not a size",
            "a cap is a size such as 20GB, 512MB or 8GiB, or a number of bytes",
            [example],
        ) from None
    if parsed <= 0:
        raise LoadError(
            f"--max-memory {device}={size}: a cap must be above 0",
            f"a cap of 0 leaves no room for any weights on {device}",
            [example, "leave a device out to let the model use what is free there"],
        )


class LoadKeywords(TypedDict, total=False):
    """The keywords `llm_magic.load` takes for a `LoadOptions` (every field but `model`)."""

    engine: str
    dtype: str
    device_map: str | Mapping[str, Any]
    revision: str | None
    trust_remote_code: bool
    max_memory: Mapping[str | int, str] | None
    quantize: str | None
    server: str | None
    api_key_env: str | None
    timeout: float | None
    alias: str | None
    reload: bool
    force: bool
    quiet: bool
    adapters: Mapping[str, str] | Sequence[str | tuple[str, str]] | str


@dataclass(frozen=True)
class CacheKey:
    """What makes two loads the same cached model: the engine, the weights (a Hub snapshot,
    a file with its size and time, a model at a server's URL) and how they are held."""

    engine: str
    weights: str
    dtype: str | None = None
    device_map: str = "auto"
    quantize: str | None = None
    trust_remote_code: bool = False
    max_memory: tuple[tuple[str, str], ...] = ()
    api_key_env: str | None = None  # a server model reached with another key is another entry

    @staticmethod
    def pairs(value: Mapping[Any, Any] | None) -> tuple[tuple[str, str], ...]:
        """A mapping as sorted (str, str) pairs: hashable, order-free."""
        return tuple(sorted((str(k), str(v)) for k, v in (value or {}).items()))


@dataclass(frozen=True)
class ModelInfo:
    """Plain facts about a loaded model: what the cards, `%llm_models` and each result's
    metadata show. Holds no tensor or model."""

    name: str
    kind: str  # what MODEL was: "hub", "folder", "gguf", "server"
    class_name: str
    num_params: int
    memory_bytes: int
    device: str
    dtype: str
    dtype_reason: str
    source: str
    revision: str | None
    load_seconds: float
    engine: str = "transformers"
    trust_remote_code: bool = False
    converted_from: str | None = None  # the .gguf file, for a converted model
    warnings: tuple[str, ...] = ()
    chat_template: bool | None = None  # whether the tokenizer has one (None: not known)
    details: tuple[tuple[str, str], ...] = ()  # more card rows (quantization, context, threads)
    # How the weights are quantized, where they are: "nf4", "fp4", "int8" (bitsandbytes),
    # a GGUF file type such as "Q4_1" (llama.cpp); None: held at `dtype`.
    quantization: str | None = None

    @property
    def held_as(self) -> str:
        """The engine and how the weights are held, in one label: "transformers bfloat16",
        "transformers nf4 (bfloat16 compute)", "llama.cpp Q4_1". Wherever a model's dtype
        is shown (footers, results' metadata, %llm_models, unload cards) this is, so that
        a 4-bit answer is never credited to the 16-bit model."""
        weights = self.quantization or self.dtype
        if self.quantization and self.quantization != self.dtype:
            weights += f" ({self.dtype} compute)"
        return f"{self.engine} {weights}"


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter riding on a loaded model: plain facts for the cards, `%llm_models` and
    the results. Holds no tensor."""

    name: str  # what `-m MODEL:NAME` calls it
    path: str  # the folder or file it was read from; a served adapter: its id on the server
    format: str  # "peft", "gguf" or "served"
    method: str = "LORA"
    rank: int | None = None
    alpha: float | None = None
    kinds: tuple[str, ...] = ()  # the kinds of module it adapts (c_attn, q_proj, ...)
    modules: int = 0  # how many modules it adapts
    memory_bytes: int = 0  # what it added to the model's memory
    base_model: str | None = None  # the base model it names
    load_seconds: float = 0.0

    def summary(self) -> str:
        """`LoRA r 8, alpha 16 · c_attn, c_fc (4 modules)`: what the cards show."""
        if self.format == "served":
            return "served by the server (a model name of its own)"
        method = "LoRA" if self.method == "LORA" else self.method
        rank = f" r {self.rank}" if self.rank is not None else ""
        alpha = f", alpha {self.alpha:g}" if self.alpha is not None else ""
        where = ", ".join(self.kinds[:6]) + (" ..." if len(self.kinds) > 6 else "")
        count = f" ({self.modules} modules)" if self.modules else ""
        return f"{method}{rank}{alpha} · {where}{count} · {format_bytes(self.memory_bytes)}"


@dataclass
class Plan:
    """What a load will do, decided before any weights are read: the cache key, and what
    the fit check needs. `state` is the engine's own (a dtype choice, a server's answer)."""

    key: CacheKey
    name: str  # the model as the user named it
    estimate: Estimate | None = None  # the bytes it will take, from file headers
    target: str | None = None  # the device kind the estimate is checked against
    # The card's fit line when nothing was checked (None: no line, e.g. a server model).
    unchecked: str | None = None
    source: Source | None = None  # the files, where MODEL names files (failure facts need them)
    state: Any = None
    # Said on the card, cached or not: options this engine does not use ("--dtype does not
    # apply ..."), so that none is ignored silently.
    notes: tuple[str, ...] = ()


@dataclass
class Loaded:
    """A finished load: the objects, their facts, and how to make the engine once the cache
    entry exists (engines read the model through the entry, so unloading empties them)."""

    model: Any
    tokenizer: Any
    info: ModelInfo
    engine: Callable[[LoadedModel], Engine]
    notes: tuple[str, ...] = ()  # what this load did on the way, said on its card only
    # The request as the engine settled it (a server's MODEL and the URL that answered),
    # where it differs from the one given: what loads this entry again.
    options: LoadOptions | None = None


@dataclass(eq=False)
class LoadedModel:
    """A cached model: `.model`, `.tokenizer` and `.info` (plain metadata)."""

    key: CacheKey
    model: Any
    tokenizer: Any
    info: ModelInfo
    aliases: set[str] = field(default_factory=set)
    last_used: float = field(default_factory=time.time)
    packed: Any = None  # cpu_matmul.PackedWeights, made at the first batched run where it helps
    engine: Engine | None = None  # what generates with this model; None once unloaded
    # The adapters riding on the model, by name, in the order they were loaded, and the
    # one the model's name alone means (None: the base model).
    adapters: dict[str, AdapterInfo] = field(default_factory=dict)
    default_adapter: str | None = None
    # The request that made it (alias, reload and the like aside): to load it again, and
    # for `%llm_load` without MODEL to print back as the line that hits this entry again.
    options: LoadOptions | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def packed_bytes(self) -> int:
        return self.packed.nbytes if self.packed is not None else 0

    @property
    def adapter_bytes(self) -> int:
        return sum(a.memory_bytes for a in self.adapters.values())

    @property
    def memory_bytes(self) -> int:
        """The model's footprint, plus the weights packed for batches and its adapters."""
        return self.info.memory_bytes + self.packed_bytes + self.adapter_bytes

    def __repr__(self) -> str:
        info = self.info
        return f"<LoadedModel {info.name} {info.class_name} {info.held_as} on {info.device}>"


@dataclass(frozen=True)
class LoadReport:
    """How a `%llm_load` went, for its card."""

    state: str  # "new", "cached" or "reloaded"
    seconds: float  # the load, or the cache lookup
    fit: str | None  # the fit check's verdict
    notes: tuple[str, ...]  # models the budget unloaded, what the load did on the way
    cache_models: int
    cache_bytes: int


class Card(Protocol):
    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any: ...


class Loader(Protocol):
    """How an engine loads: planned first (cheap: no weights read), then loaded when the
    cache does not hold the plan's key already."""

    def plan(self, options: LoadOptions, progress: Progress | None) -> Plan: ...

    def load(self, plan: Plan, options: LoadOptions, progress: Progress | None) -> Loaded: ...

    def card(self, entry: LoadedModel, report: LoadReport) -> Card: ...


# --- generating -------------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What an engine offers beyond the one question every engine answers. Callers ask
    here, never which engine it is."""

    # How run_many groups prompts, in the words of a results summary: "batch" (padded
    # batches in the kernel), "request" (concurrent requests) or "prompt" (one by one).
    group: str = "batch"
    # Whether `render` counts the prompt's tokens before anything is sent.
    counts_prompt_tokens: bool = True
    # The kinds of answer format (structured.KINDS: "json", "choice", "regex") the engine
    # enforces while decoding; any other is only checked after. A server's are learned
    # from the server at the first request that asks for a format.
    answer_formats: frozenset[str] = frozenset()
    # Settings.logprobs: each new token's log-probability and likeliest alternatives, from
    # the model's own distribution (logprobs.DISTRIBUTION), in `Completion.tokens`.
    logprobs: bool = False
    # `score`: the log-probabilities of a given text's tokens after a context, by one
    # teacher-forced pass (what %%llm_score needs).
    prompt_logprobs: bool = False
    # Which distribution those log-probabilities are of, in words (results and cards say it).
    distribution: str = DISTRIBUTION_SHORT
    # The adapters the engine puts on a loaded model (see `AdapterHost`), by format:
    # "peft" (folders), "gguf" (llama.cpp LoRA files), "served" (a server's model names).
    adapters: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    """What to generate from: chat messages ({"role", "content"} dicts, the format every
    chat API takes). With `raw`, no chat template: the messages' text is sent as it is."""

    messages: tuple[Mapping[str, str], ...]
    raw: bool = False
    label: str = "the prompt"  # named in errors: "the prompt", "prompt [3]"

    @property
    def text(self) -> str:
        """The last user message: the prompt as the user wrote it (after filling)."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def system(self) -> str | None:
        return next((m["content"] for m in self.messages if m["role"] == "system"), None)


@dataclass(frozen=True)
class Rendered:
    """A request in the engine's own form, before anything is generated."""

    request: Request
    shown: str  # what --show-prompt shows: the text the model reads, or the messages sent
    tokens: int | None  # prompt tokens, where the engine can count them before sending
    payload: Any = None  # the engine's own form (token ids, a JSON body, ...)
    notes: tuple[str, ...] = ()  # said with the result (e.g. how the prompt was sent)


@dataclass
class Completion:
    """One row's answer."""

    text: str  # stop strings cut off
    new_tokens: int
    stop_reason: str  # "eos", "length", "stop string", "interrupted" or "error"
    stop_string: str | None = None
    token_ids: tuple[int, ...] = ()  # where the engine has them
    prompt_tokens: int | None = None  # the engine's own count, where it reports one
    error: str | None = None  # for a row that failed on its own (the others stand)
    tokens: tuple[TokenLogprob, ...] = ()  # with Settings.logprobs, where the engine can


@dataclass
class Run:
    """One generation call over one or more rows."""

    completions: list[Completion]
    started: float
    ended: float
    first_token_at: float | None = None
    interrupt: KeyboardInterrupt | None = None  # Ctrl-C arrived: completions are partial
    notes: tuple[str, ...] = ()  # e.g. max_new_tokens lowered to fit the context
    products: str | None = None  # which faster matrix products ran (transformers batches)
    # How the answer's format was treated, in a few words: the grammar backend that
    # enforced it, or why it could not be enforced.
    format_note: str = ""


@dataclass(frozen=True)
class ScorePair:
    """A text to score after a context. Without a context the text is scored on its own,
    after the model's start token (as lm-evaluation-harness scores an empty context). The
    context is a request: rendered as the engine renders a prompt (a chat template opens
    the assistant's turn, unless `raw`), and the continuation follows it verbatim."""

    continuation: str
    context: Request | None = None
    label: str = "the text"  # named in errors: "the text", "item [3], choice 'B'"
    # Put before the continuation where the context is read as plain text, not after a
    # chat template (lm-evaluation-harness's target_delimiter for choices).
    plain_delimiter: str = ""


@dataclass
class Scored:
    """One pair's continuation, scored: its tokens with their log-probabilities."""

    tokens: tuple[TokenLogprob, ...]
    context_tokens: int  # the tokens read before them (the start token, when no context)
    context_shown: str  # the context as the model read it ("" for the text on its own)
    greedy: bool | None  # whether each token was the model's likeliest (None: not known)
    notes: tuple[str, ...] = ()  # e.g. the boundary fell inside a token; tokens cut off
    templated: bool = False  # the context went through the model's chat template


# The attribute that carries the run so far on an error raised after text was made.
_PARTIAL_RUN = "partial_run"


def failed_midway(error: LLMError, run: Run) -> LLMError:
    """Mark `error` as a failure after text was made: `run` holds that text, which the
    result keeps (see `Engine.run`)."""
    setattr(error, _PARTIAL_RUN, run)
    return error


def partial_run(error: BaseException) -> Run | None:
    """The text an engine made before failing, if `failed_midway` marked the error."""
    run = getattr(error, _PARTIAL_RUN, None)
    return run if isinstance(run, Run) else None


class Engine(Protocol):
    """What a cached model's engine does for generation."""

    kind: str  # the registry's name for it: recorded in results, never branched on
    capabilities: Capabilities

    @property
    def info(self) -> ModelInfo: ...

    def describe(self) -> dict[str, Any]:
        """Plain facts recorded in each result's metadata (engine, server, versions)."""
        ...

    def context_limit(self) -> int | None:
        """Positions the model reads (prompt + new tokens), where known."""
        ...

    def render(self, request: Request) -> Rendered:
        """The request in the engine's form; raises GenerationError for one it refuses."""
        ...

    def run(
        self,
        rows: Sequence[Rendered],
        seed: int | None,
        max_new: int,
        settings: Settings,
        on_text: TextCallback | None = None,
    ) -> Run:
        """Generate for `rows` (one, when streaming to `on_text`).

        Ctrl-C is caught and returned as `Run.interrupt` with the partial completions. A
        failure after some text was made (a server dropping the stream) raises the
        GenerationError marked by `failed_midway` with the run so far: the text is kept."""
        ...

    def run_many(
        self,
        rows: Sequence[Rendered],
        seed: int | None,
        settings: Settings,
        budget: Budget,
        on_progress: ProgressCallback | None,
    ) -> Generator[tuple[list[int], Run], None, None]:
        """Many rows, as the engine does them best (padded batches of `settings.batch_size`,
        `settings.concurrency` requests at once): yields (the rows' indices, their run) as
        each group finishes."""
        ...

    def score(
        self,
        pairs: Sequence[ScorePair],
        settings: Settings,
        on_progress: ProgressCallback | None,
    ) -> Generator[tuple[list[int], list[Scored]], None, None]:
        """Where `capabilities.prompt_logprobs`: each pair's continuation scored by one
        teacher-forced pass (`settings.logprobs` alternatives per token, `settings.batch_size`
        pairs per batch); yields (the pairs' indices, their scores) as each group finishes.
        An engine that cannot raises GenerationError saying so and what to use instead."""
        ...


class AdapterHost(Protocol):
    """What an engine whose `capabilities.adapters` is not empty does with adapters on its
    loaded model, without loading the model again. The model at rest has its entry's
    `default_adapter` switched on (none: the base model)."""

    def attach_adapter(self, source: AdapterSource) -> AdapterInfo:
        """Put the adapter on the model (switched off unless it is the default); raises
        LoadError, leaving the model as it was, for one that does not fit it."""
        ...

    def detach_adapter(self, name: str) -> list[Any]:
        """Take the adapter off and free it; returns weak references to the objects that
        held its weights (all dead once it is freed; none where it lived outside Python)."""
        ...

    def settle(self) -> None:
        """Put the model at rest: its entry's default adapter on (none: the base model)."""
        ...

    def offered_adapters(self) -> tuple[str, ...]:
        """Adapters the engine can name without a path: a server's own adapters of the model."""
        ...

    def use_adapter(self, name: str | None) -> AbstractContextManager[None]:
        """Within the block the model generates with adapter `name` (None: the base model);
        after it, the model is at rest again."""
        ...

    @property
    def active_adapter(self) -> str | None:
        """The adapter generating now (None: the base model)."""
        ...
