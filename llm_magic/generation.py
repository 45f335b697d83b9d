"""Prompts, chat templates, sampling, streaming and batching for one loaded model.

`generate` runs on the calling thread, streaming through a callback; Ctrl-C raises
KeyboardInterrupt inside it, between two operations, and the tokens made so far (noted
by a stopping criterion after every token) become the partial result before it is
re-raised.

torch and transformers are imported inside the functions: `import llm_magic` stays fast.
"""

from __future__ import annotations

import difflib
import platform
import re
import secrets
import string
import sys
import time
from collections import ChainMap
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import cpu_matmul
from .display import GenerationResult, GenerationResults
from .cache import clear_frames_of
from .errors import GenerationError, diagnose_generation

TextCallback = Callable[[str], None]
PromptCallback = Callable[[str, int], None]  # (prompt as the model reads it, its token count)
ProgressCallback = Callable[[int, int], None]  # (batches done, batches in all)


@dataclass(frozen=True)
class Settings:
    """How to generate. The defaults are those of `%%llm_generate` and `llm_magic.generate`."""

    max_new_tokens: int = 256
    greedy: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    seed: int | None = None
    stop: tuple[str, ...] = ()
    system: str | None = None
    raw: bool = False

    def check(self) -> None:
        """Refuse settings that cannot work, before any token is computed."""
        if self.max_new_tokens <= 0:
            raise GenerationError(
                f"--max-new-tokens {self.max_new_tokens}: at least 1 new token is needed",
                fixes=["--max-new-tokens 256", "%config LLMMagics.max_new_tokens = 256"],
            )
        if not self.greedy and not self.temperature > 0:
            raise GenerationError(
                f"--temperature {self.temperature}: sampling needs a temperature above 0",
                "temperature 0 would mean always taking the most likely token, which is greedy decoding",
                ["--greedy for deterministic output", "--temperature 0.7 to sample"],
            )
        if not self.greedy and not 0 < self.top_p <= 1:
            raise GenerationError(f"--top-p {self.top_p}: must be in (0, 1]", fixes=["--top-p 0.9", "--top-p 1 turns it off"])
        if not self.greedy and self.top_k < 0:
            raise GenerationError(f"--top-k {self.top_k}: must be 0 (off) or more", fixes=["--top-k 50", "--top-k 0 turns it off"])
        if any(s == "" for s in self.stop):
            raise GenerationError("--stop '': an empty stop string would stop at once", fixes=["--stop '\\n\\n'", "leave --stop out"])

    def recorded(self) -> dict:
        """The settings as the result records them (what decided the text)."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        d.pop("seed")  # recorded on its own
        if self.greedy:  # unused by greedy decoding: don't suggest they mattered
            for key in ("temperature", "top_p", "top_k"):
                d.pop(key)
        return d


# --- filling {name} from a namespace -------------------------------------------------

_PART = re.compile(r"\.([^.\[\]]+)|\[([^\[\]]+)\]")


class _Filler(string.Formatter):
    """str.format's syntax, resolving `{name}`, `{obj.attr}` and `{obj[key]}` from a
    namespace by lookup only: no expression is evaluated, no dunder attribute is read."""

    def __init__(self, namespace: Mapping[str, Any], where: str = "the prompt"):
        self.namespace = namespace
        self.where = where  # named in errors: "the prompt" or "--system"

    def get_field(self, field_name: str, args, kwargs):
        head = re.match(r"[^.\[]*", field_name).group(0)
        value = self._name(head, field_name)
        pos, rest = 0, field_name[len(head):]
        while pos < len(rest):
            m = _PART.match(rest, pos)
            if m is None:
                raise GenerationError(
                    f"{{{field_name}}} in {self.where}: not a name, attribute or item",
                    "fields are {name}, {obj.attr} or {obj[key]}; expressions are not evaluated",
                    ["compute the value in a variable first, then write {variable}", "write {{ and }} for literal braces"],
                )
            value = self._attr(value, m.group(1), field_name) if m.group(1) is not None else self._item(value, m.group(2), field_name)
            pos = m.end()
        return value, head

    def _name(self, name: str, field_name: str):
        if name == "" or name.isdigit():
            raise GenerationError(
                f"{{{field_name}}} in {self.where}: a field needs a variable name",
                "braces in the prompt name a variable to fill in",
                ["write a name: {topic}", "write {{ and }} for literal braces"],
            )
        if name not in self.namespace:
            near = difflib.get_close_matches(name, [k for k in self.namespace if isinstance(k, str) and not k.startswith("_")], 3)
            fixes = [f"define it first: {name} = ...", f"write {{{{{name}}}}} for the literal text {{{name}}}"]
            if near:
                fixes.insert(0, "did you mean: " + ", ".join("{" + n + "}" for n in near))
            raise GenerationError(f"{{{field_name}}} in {self.where}: no variable named {name!r}",
                                  "the prompt's {names} are filled from the notebook's variables", fixes)
        return self.namespace[name]

    def _attr(self, value, attr: str, field_name: str):
        if attr.startswith("__"):
            raise GenerationError(f"{{{field_name}}} in {self.where}: dunder attributes are not filled in",
                                  fixes=["put the value in a variable first, then write {variable}"])
        try:
            return getattr(value, attr)
        except AttributeError as e:
            raise GenerationError(f"{{{field_name}}} in {self.where}: {type(value).__name__} has no attribute {attr!r}",
                                  fixes=["check the attribute name", "write {{ and }} for literal braces"]) from e

    def _item(self, value, key: str, field_name: str):
        keys: list[Any] = [int(key), key] if key.isdigit() else [key]  # as str.format: [0] is an int
        for k in keys:
            try:
                return value[k]
            except (KeyError, IndexError, TypeError):
                continue
        raise GenerationError(f"{{{field_name}}} in {self.where}: {type(value).__name__} has no item [{key}]",
                              fixes=["check the key or index", "write {{ and }} for literal braces"])


def fill(template: str, namespace: Mapping[str, Any], where: str = "the prompt") -> str:
    """`template` with its `{fields}` filled from `namespace`; `{{` and `}}` are literal braces."""
    try:
        return _Filler(namespace, where).vformat(template, (), {})
    except ValueError as e:  # unmatched brace, bad format spec
        raise GenerationError(f"{where} could not be filled: {e}",
                              "single braces mark variables to fill in",
                              ["write {{ and }} for literal braces", "name a variable inside braces: {topic}"]) from None


def field_names(template: str) -> list[str]:
    """The variable each top-level `{field}` of `template` starts with."""
    try:
        return [re.match(r"[^.\[]*", f).group(0) for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError:
        return []


# --- prompts -----------------------------------------------------------------------

def render(tokenizer, text: str, system: str | None = None, raw: bool = False) -> tuple[str, bool]:
    """(the prompt as the model will read it, whether tokenizing adds special tokens).

    A tokenizer with a chat template (instruct models) gets the text as a user message,
    after an optional system message, with the assistant's turn opened; otherwise, or
    with raw=True, the text is used as is (a system text goes first, then a blank line).
    """
    if raw or not getattr(tokenizer, "chat_template", None):
        return (f"{system}\n\n{text}" if system else text), True
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    from jinja2 import TemplateError

    try:
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except TemplateError as e:
        fixes = ["--raw sends the text without the chat template"]
        if system:
            fixes.insert(0, "leave out --system: some templates take no system message")
        raise GenerationError("the model's chat template refused the prompt", str(e), fixes) from e
    return rendered, False  # the template writes the special tokens itself


def context_limit(model, tokenizer) -> int | None:
    """How many positions (prompt + new tokens) the model reads, if it says."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10**8 else None  # huge = "not set"


@dataclass(frozen=True)
class Prepared:
    prompt: str  # after filling
    rendered: str  # as the model reads it
    ids: list[int]


def prepare(tokenizer, prompt: str, settings: Settings, limit: int | None, label: str = "the prompt") -> Prepared:
    rendered, special = render(tokenizer, prompt, settings.system, settings.raw)
    ids = tokenizer(rendered, add_special_tokens=special)["input_ids"]
    if not ids:
        raise GenerationError(f"{label} is empty after tokenizing", fixes=["write some text in the cell"])
    if limit is not None and len(ids) >= limit:
        raise GenerationError(
            f"{label} is {len(ids)} tokens; the model reads at most {limit}",
            "the prompt is longer than the model's context window (no room for new tokens)",
            ["shorten the prompt, or the variables filled into it", "use a model with a longer context"],
        )
    return Prepared(prompt, rendered, list(ids))


# --- running generate ------------------------------------------------------------------

@cache
def _watch_class():
    import torch
    from transformers import StoppingCriteria

    class Watch(StoppingCriteria):
        """Checked after every new token: the stop strings; it also notes the time of
        the first token and the tokens so far."""

        def __init__(self, tokenizer, prompt_width: int, stops: Sequence[str]):
            self.first_token_at: float | None = None
            self.latest = None
            self.tokenizer = tokenizer
            self.prompt_width = prompt_width
            self.stops = tuple(stops)
            # A stop string of n characters lies within its last 4n tokens (a token is at
            # least one byte): decoding that tail each step is enough.
            self.window = 4 * max((len(s) for s in self.stops), default=0) + 1

        def __call__(self, input_ids, scores, **kwargs):
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self.latest = input_ids  # what an interrupt keeps
            rows = input_ids.shape[0]
            if not self.stops:
                return torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
            tails = input_ids[:, self.prompt_width:][:, -self.window:].tolist()
            texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
            return torch.tensor([any(s in t for s in self.stops) for t in texts], dtype=torch.bool, device=input_ids.device)

    return Watch


@dataclass
class _Run:
    new_ids: list[list[int]]  # per row, everything generated (finished rows padded)
    first_token_at: float | None
    started: float
    ended: float
    interrupt: KeyboardInterrupt | None


def _special_ids(model, tokenizer) -> tuple[list[int], int]:
    """(eos ids, pad id). The pad id is always passed to generate (no warning), falling
    back to eos for tokenizers that have no pad token (GPT-2)."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else [int(e) for e in (eos or [])]
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = eos_ids[0] if eos_ids else 0
    return eos_ids, int(pad)


def _run(model, tokenizer, rows: list[list[int]], settings: Settings, seed: int | None, max_new: int,
         pad_id: int, name: str, on_text: TextCallback | None = None) -> _Run:
    """One generate call over left-padded rows; streams row 0's text to `on_text` when
    given (batches of one only).

    generate runs on the calling thread: on a fresh worker thread it measured 5-8% slower
    here (a new OpenMP team per call), and Ctrl-C raises KeyboardInterrupt right inside
    it. The tokens made before the interrupt are the ones the stopping criterion saw last.
    """
    import torch
    from transformers import StoppingCriteriaList

    width = max(len(r) for r in rows)
    device = model.device
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    watch = _watch_class()(tokenizer, width, settings.stop)
    kwargs: dict[str, Any] = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pad_token_id=pad_id,
        max_new_tokens=max_new,
        do_sample=not settings.greedy,
        stopping_criteria=StoppingCriteriaList([watch]),
    )
    if not settings.greedy:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    if on_text is not None:
        kwargs["streamer"] = _streamer_class()(tokenizer, on_text)
    seeded_devices = [device.index or 0] if device.type == "cuda" else []
    out = error = interrupt = None
    started = time.perf_counter()
    try:
        # A private RNG state: seeding here leaves the user's own torch RNG as it was.
        with torch.random.fork_rng(devices=seeded_devices):
            if seed is not None:
                torch.manual_seed(seed)
            out = model.generate(**kwargs)
    except KeyboardInterrupt as e:
        interrupt = e
    except Exception as e:  # explained below, outside this handler's context
        error = e
    ended = time.perf_counter()
    if error is not None:
        raise _explain(error, model, name, len(rows), width, max_new, context_limit(model, tokenizer))
    done = out if out is not None else watch.latest
    new_ids = done[:, width:].tolist() if done is not None else [[] for _ in rows]
    return _Run(new_ids, watch.first_token_at, started, ended, interrupt)


def _streamer_class():
    from transformers import TextStreamer

    class Sink(TextStreamer):
        """Hands each finished piece of text to a callback (TextStreamer prints it)."""

        def __init__(self, tokenizer, on_text: TextCallback):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.on_text = on_text

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:  # empty while a word is still incomplete
                self.on_text(text)

    return Sink


def _explain(error: BaseException, model, name: str, rows: int, width: int, max_new: int, limit: int | None) -> BaseException:
    """The GenerationError for a failure on the worker (out of memory gets its fixes;
    one no rule recognises is shown plainly). Its frames are cleared first: they hold
    the model, and the exception outlives the cell (`sys.last_value`, `%llm_tb`)."""
    clear_frames_of(error)
    context = {
        "model": name,
        "prompt_tokens": width,
        "max_new_tokens": max_new,
        "batch_size": rows,
        "context_length": limit,
        "dtype": str(getattr(model, "dtype", "")).removeprefix("torch."),
    }
    wrapped = diagnose_generation(error, context)
    if wrapped is not error:
        wrapped.__cause__ = error
    return wrapped


# --- results -----------------------------------------------------------------------------

def _finish(tokenizer, ids: list[int], eos_ids: Sequence[int], stops: Sequence[str], max_new: int,
            interrupted: bool) -> tuple[str, list[int], str, str | None]:
    """(text, the tokens it came from, stop reason, stop string) for one row."""
    reason = None
    for i, t in enumerate(ids):
        if t in eos_ids:
            ids, reason = ids[: i + 1], "eos"
            break
    text = tokenizer.decode(ids, skip_special_tokens=True)
    hits = [(text.find(s), s) for s in stops if s in text]
    if hits:
        pos, stop = min(hits)
        # The row ended on the token that completed the stop string; drop what followed
        # (padding, or an eos that padding stands for).
        while len(ids) > 1 and stop in tokenizer.decode(ids[:-1], skip_special_tokens=True):
            ids = ids[:-1]
        return text[:pos], ids, "stop string", stop
    if reason is None:
        reason = "interrupted" if interrupted and len(ids) < max_new else "length"
    return text, ids, reason, None


def _versions() -> dict:
    from . import __version__

    versions = {"python": platform.python_version(), "llm_magic": __version__}
    for name in ("torch", "transformers"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = module.__version__
    return versions


def _results(tokenizer, info, run: _Run, prepared: Sequence[Prepared], settings: Settings, seed, max_new: int,
             eos_ids, notes: tuple[str, ...], batch: tuple[int, int] | None,
             products: str | None = None) -> list[GenerationResult]:
    seconds = max(run.ended - run.started, 1e-9)
    ttft = None if run.first_token_at is None else run.first_token_at - run.started
    recorded, versions = settings.recorded(), _versions()
    results = []
    for p, ids in zip(prepared, run.new_ids):
        text, ids, reason, stop = _finish(tokenizer, ids, eos_ids, settings.stop, max_new, run.interrupt is not None)
        results.append(GenerationResult(
            text=text, prompt=p.prompt, rendered_prompt=p.rendered, token_ids=tuple(ids),
            prompt_tokens=len(p.ids), new_tokens=len(ids), time_to_first_token=ttft if ids else None,
            seconds=seconds, tokens_per_second=len(ids) / seconds, stop_reason=reason, settings=recorded,
            seed=seed, model_id=info.name, revision=info.revision, dtype=info.dtype, device=info.device,
            versions=versions, stop_string=stop, notes=notes, batch=batch, products=products,
        ))
    return results


def _budget(limit: int | None, width: int, settings: Settings) -> tuple[int, tuple[str, ...]]:
    """max_new_tokens, lowered when prompt + new tokens would pass the context window."""
    if limit is not None and width + settings.max_new_tokens > limit:
        room = limit - width
        return room, (f"max_new_tokens lowered from {settings.max_new_tokens} to {room}: "
                      f"the prompt takes {width} of the model's {limit} positions",)
    return settings.max_new_tokens, ()


def _seed(settings: Settings) -> int | None:
    """The seed to use: the given one, or for sampling a fresh one (recorded, so any
    sampled text can be reproduced)."""
    if settings.seed is not None or settings.greedy:
        return settings.seed
    return secrets.randbelow(2**31)


def generate(model, tokenizer, info, prompt: str, settings: Settings, *, on_text: TextCallback | None = None,
             on_prompt: PromptCallback | None = None) -> GenerationResult:
    """One prompt (already filled) → one result, streamed to `on_text` chunk by chunk.

    On Ctrl-C: the worker stops, and KeyboardInterrupt is raised with the partial
    result as its `.result`.
    """
    settings.check()
    limit = context_limit(model, tokenizer)
    p = prepare(tokenizer, prompt, settings, limit)
    if on_prompt is not None:
        on_prompt(p.rendered, len(p.ids))
    eos_ids, pad_id = _special_ids(model, tokenizer)
    max_new, notes = _budget(limit, len(p.ids), settings)
    seed = _seed(settings)
    run = _run(model, tokenizer, [p.ids], settings, seed, max_new, pad_id, info.name, on_text)
    (result,) = _results(tokenizer, info, run, [p], settings, seed, max_new, eos_ids, notes, None)
    if run.interrupt is not None:
        run.interrupt.result = result
        raise run.interrupt
    return result


def auto_batch_size(model) -> int:
    """Rows per generate call when not given: a CPU gains little past 8, a GPU more."""
    return 8 if getattr(model.device, "type", "cpu") == "cpu" else 32


def generate_many(model, tokenizer, info, prompts: Sequence[str], settings: Settings, *, batch_size: int | None = None,
                  on_progress: ProgressCallback | None = None, on_prompt: PromptCallback | None = None,
                  batch_weights: Callable[[], Any] | None = None) -> GenerationResults:
    """Many prompts (already filled) → one result each, in order, in left-padded batches.
    `batch_weights` gives the weights packed for batched products (cpu_matmul), or None.

    On Ctrl-C: the current batch stops; KeyboardInterrupt is raised with the results so
    far (finished batches, and the partial current one) as its `.result`.
    """
    settings.check()
    size = batch_size or auto_batch_size(model)
    if size < 1:
        raise GenerationError(f"--batch-size {size}: must be at least 1", fixes=["--batch-size 8", "leave it out to choose one"])
    limit = context_limit(model, tokenizer)
    prepared = [prepare(tokenizer, text, settings, limit, f"prompt [{i}]") for i, text in enumerate(prompts)]
    if on_prompt is not None:
        for p in prepared:
            on_prompt(p.rendered, len(p.ids))
    eos_ids, pad_id = _special_ids(model, tokenizer)
    seed = _seed(settings)
    chunks = [prepared[i: i + size] for i in range(0, len(prepared), size)]
    results = GenerationResults()
    if on_progress is not None:
        on_progress(0, len(chunks))
    try:
        batched = batch_weights is not None and size > 1 and len(prepared) > 1
        packed = batch_weights() if batched else None  # after the progress bar appeared: packing takes a while
        products = packed.note() if packed is not None else None
        with cpu_matmul.packed_products(model, packed):
            for index, chunk in enumerate(chunks):
                max_new, notes = _budget(limit, max(len(p.ids) for p in chunk), settings)
                # One seed per batch (seed + index): a batch's samples do not depend on the batches before it.
                batch_seed = None if seed is None else seed + index
                run = _run(model, tokenizer, [p.ids for p in chunk], settings, batch_seed, max_new, pad_id, info.name)
                results.extend(_results(tokenizer, info, run, chunk, settings, seed, max_new, eos_ids, notes,
                                        (index, len(chunk)), products))
                if run.interrupt is not None:
                    raise run.interrupt
                if on_progress is not None:
                    on_progress(index + 1, len(chunks))
    except KeyboardInterrupt as e:  # also while packing, before the first batch
        e.result = results
        raise
    return results


def items_of(value: Any, label: str = "over") -> list:
    """The items of an `--over` variable: a list, tuple, pandas Series, any iterable.
    `label` names it in errors (`--over docs`)."""
    if isinstance(value, (str, bytes)):
        raise GenerationError(f"{label}: a single string, not a list of them",
                              fixes=["wrap it in a list to run it once: [text]", "--over takes a list, a tuple or a pandas Series"])
    if isinstance(value, Mapping):
        value = value.values()
    try:
        items = list(value)
    except TypeError:
        raise GenerationError(f"{label}: a {type(value).__name__} has no items to go over",
                              fixes=["--over takes a list, a tuple or a pandas Series of strings"]) from None
    if not items:
        raise GenerationError(f"{label}: the list is empty", fixes=["give it at least one item"])
    return items


def fill_over(template: str, items: Iterable, namespace: Mapping[str, Any]) -> list[str]:
    """The template filled once per item, `{item}` standing for it."""
    if "item" not in field_names(template):
        raise GenerationError("--over: the prompt never uses {item}",
                              "each item of the list is put where {item} stands in the prompt",
                              ["write {item} in the cell, e.g.: Translate to French: {item}"])
    return [fill(template, ChainMap({"item": item}, namespace)) for item in items]
