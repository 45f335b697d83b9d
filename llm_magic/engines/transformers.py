"""The transformers engine: the model lives in the kernel, `model.generate` makes the tokens.

Chat templates and tokenizing, the context limit, stop strings, streaming through a
`TextStreamer`, and `--over` as left-padded batches (with packed weights where the CPU
emulates the dtype). `generate` runs on the calling thread: Ctrl-C raises
KeyboardInterrupt inside it, and the tokens made so far (noted by a stopping criterion
after every token) become the partial completion.

torch and transformers are imported inside the functions: `import llm_magic` stays fast.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

from .. import hardware
from ..cache import MODEL_CACHE, clear_frames_of
from ..errors import GENERATION, GenerationError, diagnose
from ..settings import Settings
from ..structured import KINDS
from . import (
    cpu_matmul,
    grammar,
    prompt_tokens,
    score_tokens,
    transformers_logprobs,
    transformers_score,
)
from .base import (
    Budget,
    Capabilities,
    Completion,
    ProgressCallback,
    Rendered,
    Request,
    Run,
    Scored,
    ScorePair,
    TextCallback,
)


class TransformersEngine:
    """Generation with a cached transformers model. It reads the model and tokenizer
    through the cache entry, so unloading the entry leaves it holding nothing."""

    kind = "transformers"
    # Answer formats: a grammar-constrained logits processor (engines/grammar.py).
    capabilities = Capabilities(
        group="batch",
        adapters=("peft",),
        logprobs=True,
        prompt_logprobs=True,
        answer_formats=frozenset(KINDS),
    )

    def __init__(self, entry) -> None:
        self.entry = entry  # cache.LoadedModel
        self._active: str | None = None  # the adapter switched on in the model

    @property
    def info(self):
        return self.entry.info

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"engine": self.kind}
        if self.entry.adapters:  # which adapter made the text ("base": none)
            described["adapter"] = self._active or "base"
        return described

    # --- adapters (transformers_adapters: peft's functions on the loaded model) ---------

    @property
    def active_adapter(self) -> str | None:
        return self._active

    def attach_adapter(self, source):
        from . import transformers_adapters

        info = transformers_adapters.attach(self.entry.model, source, self.info.name)
        self.entry.packed = None  # packed for the layers before the adapter's were put in
        self.settle()
        return info

    def detach_adapter(self, name: str) -> list[Any]:
        import weakref

        from . import transformers_adapters

        model = self.entry.model
        refs = [weakref.ref(p) for n, p in model.named_parameters() if f".{name}." in f"{n}."]
        method = self.entry.adapters[name].method if name in self.entry.adapters else "LORA"
        transformers_adapters.remove(model, name, method)
        self.entry.packed = None
        if self._active == name:
            self._active = None
        return refs

    def offered_adapters(self) -> tuple[str, ...]:
        return ()

    @contextmanager
    def use_adapter(self, name: str | None) -> Iterator[None]:
        from . import transformers_adapters

        transformers_adapters.switch(self.entry.model, name)
        self._active = name
        try:
            yield
        finally:
            self.settle()

    def settle(self) -> None:
        """The model at rest: its default adapter on, or none."""
        from . import transformers_adapters

        default = self.entry.default_adapter
        transformers_adapters.switch(self.entry.model, default)
        self._active = default

    def context_limit(self) -> int | None:
        return context_limit(self.entry.model, self.entry.tokenizer)

    def render(self, request: Request) -> Rendered:
        tokenizer = self.entry.tokenizer
        templated = bool(getattr(tokenizer, "chat_template", None))
        text, special = render_text(tokenizer, request)
        ids, notes = self._tokens(request, text, special, templated)
        if not (templated or request.raw):
            notes = (NO_TEMPLATE_NOTE,) + (NO_SYSTEM_ROLE_NOTE,) * bool(request.system) + notes
        return Rendered(request, text, len(ids), list(ids), notes=notes)

    def _tokens(
        self, request: Request, text: str, special: bool, templated: bool
    ) -> tuple[list[int], tuple[str, ...]]:
        """The prompt's ids. Outside --raw, special-token text in the messages is read as
        plain text (the tokenizer's split of special tokens): only the template's own
        markers are markers."""
        tokenizer = self.entry.tokenizer

        def encode(piece: str, markers: bool) -> list[int]:
            return list(
                tokenizer(piece, add_special_tokens=False, split_special_tokens=not markers)[
                    "input_ids"
                ]
            )

        def name(token: int) -> str:
            return str(tokenizer.convert_ids_to_tokens(token))

        if request.raw:
            return list(tokenizer(text, add_special_tokens=special)["input_ids"]), ()
        if not templated:  # the text is the messages' own, all of it
            markers = prompt_tokens.markers_in(encode, name, [text])
            ids = tokenizer(text, add_special_tokens=special, split_special_tokens=bool(markers))
            notes = (prompt_tokens.marker_note(markers),) if markers else ()
            return list(ids["input_ids"]), notes

        def render(texts) -> str:
            messages = tuple(
                {**m, "content": t} for m, t in zip(request.messages, texts, strict=True)
            )
            return render_text(tokenizer, Request(messages, label=request.label))[0]

        contents = [m["content"] for m in request.messages]
        split = prompt_tokens.encode_template(encode, name, text, contents, render)
        return split if split is not None else (encode(text, True), ())

    def run(
        self,
        rows: Sequence[Rendered],
        seed: int | None,
        max_new: int,
        settings,
        on_text: TextCallback | None = None,
    ) -> Run:
        model, tokenizer = self.entry.model, self.entry.tokenizer
        eos_ids, pad_id = _special_ids(model, tokenizer)
        fmt = settings.answer_format
        enforcing = (
            grammar.processor(fmt, tokenizer, _output_width(model), eos_ids, len(rows))
            if fmt is not None
            else None
        )
        generated = _generate(
            model,
            tokenizer,
            [r.payload for r in rows],
            settings,
            seed,
            max_new,
            pad_id,
            self.info.name,
            on_text,
            enforcing,
        )
        interrupted = generated.interrupt is not None
        completions = [
            _finish(tokenizer, ids, eos_ids, settings.stop, max_new, interrupted)
            for ids in generated.new_ids
        ]
        format_note = ""
        if enforcing is not None:
            format_note = grammar.BACKEND + (
                f"; a row left the grammar: {enforcing.errors[0]}" if enforcing.errors else ""
            )
        if generated.logprobs is not None:
            _attach_logprobs(tokenizer, rows, completions, generated.logprobs)
        return Run(
            completions,
            generated.started,
            generated.ended,
            generated.first_token_at,
            generated.interrupt,
            format_note=format_note,
        )

    def run_many(
        self,
        rows: Sequence[Rendered],
        seed: int | None,
        settings: Settings,
        budget: Budget,
        on_progress: ProgressCallback | None,
    ) -> Generator[tuple[list[int], Run], None, None]:
        """Left-padded batches of `settings.batch_size` rows (default: 8 on a CPU, 32 on a
        GPU)."""
        size = settings.batch_size or auto_batch_size(self.entry.model)
        starts = range(0, len(rows), size)
        if on_progress is not None:
            on_progress(0, len(starts))
        # After the progress bar appeared: packing takes a while.
        packed = self._batch_weights() if size > 1 and len(rows) > 1 else None
        products = packed.note() if packed is not None else None
        with cpu_matmul.packed_products(self.entry.model, packed):
            for index, start in enumerate(starts):
                chunk = rows[start : start + size]
                max_new, notes = budget(chunk)
                # One seed per batch (seed + index): a batch's samples do not depend on the
                # batches before it.
                run = self.run(chunk, None if seed is None else seed + index, max_new, settings)
                run.notes, run.products = notes, products
                yield list(range(start, start + len(chunk))), run
                if run.interrupt is None and on_progress is not None:
                    on_progress(index + 1, len(starts))

    def score(
        self,
        pairs: Sequence[ScorePair],
        settings: Settings,
        on_progress: ProgressCallback | None,
    ) -> Generator[tuple[list[int], list[Scored]], None, None]:
        """Each pair scored by one teacher-forced pass, as lm-evaluation-harness's HFLM
        tokenizes and scores it (transformers_score), in right-padded batches."""
        tokenizer = self.entry.tokenizer
        encoded = [self._encoded(pair) for pair in pairs]
        size = settings.batch_size or auto_batch_size(self.entry.model)
        top = settings.logprobs if settings.logprobs is not None else 0
        try:
            yield from transformers_score.score(
                self.entry.model, tokenizer, encoded, top, size, self.context_limit(), on_progress
            )
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except Exception as e:
            width = max(len(p.context) + len(p.continuation) for p in encoded)
            raise _explain(
                e, self.entry.model, self.info.name, size, width, 0, self.context_limit()
            ) from None

    def _encoded(self, pair: ScorePair) -> score_tokens.Encoded:
        tokenizer = self.entry.tokenizer
        context, templated = "", False
        if pair.context is not None:
            context, _ = render_text(tokenizer, pair.context)
            templated = not pair.context.raw and bool(getattr(tokenizer, "chat_template", None))
        return score_tokens.encoded(
            pair, context, templated, transformers_score.pair_tokenizer(tokenizer)
        )

    def _batch_weights(self):
        """The weights packed for batched products (cpu_matmul) where the CPU emulates the
        model's dtype: made at the first batched run, then kept with the entry and counted
        in its memory; None where they don't help or don't fit (RAM, the cache's budget)."""
        entry, model = self.entry, self.entry.model
        dtype = str(model.dtype).removeprefix("torch.")
        if not cpu_matmul.emulated(hardware.probe(), model.device.type, dtype):
            return None
        if entry.packed is not None and not entry.packed.current(model):
            entry.packed = None  # the weights changed since they were packed
        if entry.packed is None:
            budget = MODEL_CACHE.memory_budget
            entry.packed = cpu_matmul.pack(
                model, budget - MODEL_CACHE.total_bytes() if budget else None
            )
        return entry.packed


# --- prompts -----------------------------------------------------------------------

NO_TEMPLATE_NOTE = (
    "no chat template: the prompt was continued as plain text "
    "(a base model completes text, it does not answer)"
)
NO_SYSTEM_ROLE_NOTE = (
    "no system role without a chat template: the --system text went first, as plain text "
    "the model continues (write the instruction into the prompt, or use --raw to say you mean it)"
)


def render_text(tokenizer, request: Request) -> tuple[str, bool]:
    """(the prompt as the model will read it, whether tokenizing adds special tokens).

    A tokenizer with a chat template (instruct models) gets the messages with the
    assistant's turn opened; otherwise, or with `raw`, the text is used as is (a system
    text goes first, then a blank line).
    """
    system = request.system
    if request.raw or not getattr(tokenizer, "chat_template", None):
        text = "\n\n".join(m["content"] for m in request.messages)
        return text, True
    from jinja2 import TemplateError

    try:
        rendered = tokenizer.apply_chat_template(
            list(request.messages), add_generation_prompt=True, tokenize=False
        )
    except TemplateError as e:
        fixes = ["--raw sends the text without the chat template"]
        if system:
            fixes.insert(0, "leave out --system: some templates take no system message")
        raise GenerationError("the model's chat template refused the prompt", str(e), fixes) from e
    return rendered, False  # the template writes the special tokens itself


# How a config names the positions its model reads. transformers itself asks for
# `max_position_embeddings` (generation clamps max_length to it), which most configs answer
# through their attribute_map (GPT-2's n_positions, GPT-J's n_positions, ...); the others
# name it their own way: MPT's max_seq_len (the size of its ALiBi bias table), a decoder's
# max_target_positions (Whisper), ChatGLM's seq_length. Configs with none (BLOOM's ALiBi,
# Mamba's state) set no limit.
_LENGTH_FIELDS = (
    "max_position_embeddings",
    "max_seq_len",
    "max_target_positions",
    "max_sequence_length",
    "seq_length",
    "n_positions",
    "n_ctx",
)


def context_limit(model, tokenizer) -> int | None:
    """How many positions (prompt + new tokens) the model reads, if it says: from its
    (text, decoder) config as transformers reads it, else the tokenizer's model_max_length."""
    config = getattr(model, "config", None)
    configs = [config]
    try:  # multimodal and encoder-decoder configs keep the text decoder's length inside
        if config is not None:
            configs.insert(0, config.get_text_config(decoder=True))
    except (AttributeError, TypeError, ValueError):
        pass
    for cfg in configs:
        for name in _LENGTH_FIELDS:
            value = getattr(cfg, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10**8 else None  # huge = "not set"


def auto_batch_size(model) -> int:
    """Rows per generate call when not given: a CPU gains little past 8, a GPU more."""
    return 8 if getattr(model.device, "type", "cpu") == "cpu" else 32


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
            tails = input_ids[:, self.prompt_width :][:, -self.window :].tolist()
            texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
            return torch.tensor(
                [any(s in t for s in self.stops) for t in texts],
                dtype=torch.bool,
                device=input_ids.device,
            )

    return Watch


class _Generated:
    def __init__(
        self,
        new_ids: list[list[int]],
        first_token_at: float | None,
        started: float,
        ended: float,
        interrupt: KeyboardInterrupt | None,
        logprobs: tuple | None = None,
    ):
        self.new_ids = new_ids  # per row, everything generated (finished rows padded)
        self.first_token_at, self.started, self.ended, self.interrupt = (
            first_token_at,
            started,
            ended,
            interrupt,
        )
        self.logprobs = logprobs  # Recorder.rows(): per row, per step (with --logprobs)


def _attach_logprobs(tokenizer, rows: Sequence[Rendered], completions, recorded) -> None:
    """Each completion's token records: the figures of as many steps as it kept tokens."""
    chosen, values, ids = recorded
    vocabulary = transformers_logprobs.Vocabulary(tokenizer)
    for index, (row, done) in enumerate(zip(rows, completions, strict=False)):
        if index >= len(chosen):
            break
        kept = list(done.token_ids)
        texts = transformers_logprobs.token_texts(tokenizer, kept, before=row.payload)
        done.tokens = transformers_logprobs.records(
            texts, kept, chosen[index], values[index], ids[index], vocabulary
        )


def _output_width(model) -> int:
    """The scores per step: the output layer's rows (config.vocab_size, which may exceed
    the tokenizer's vocabulary)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


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


def _generate(
    model,
    tokenizer,
    rows: list[list[int]],
    settings,
    seed: int | None,
    max_new: int,
    pad_id: int,
    name: str,
    on_text: TextCallback | None = None,
    enforcing: Any = None,
) -> _Generated:
    """One generate call over left-padded rows; streams row 0's text to `on_text` when
    given (batches of one only).

    generate runs on the calling thread: on a fresh worker thread it measured 5-8% slower
    here (a new OpenMP team per call), and Ctrl-C raises KeyboardInterrupt right inside
    it. The tokens made before the interrupt are the ones the stopping criterion saw last.
    """
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    width = max(len(r) for r in rows)
    device = model.device
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    attention_mask = torch.tensor(
        [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device
    )
    watch = _watch_class()(tokenizer, width, settings.stop)
    criteria = [watch]
    recorder = hook = None
    if settings.logprobs is not None:
        # First: on Ctrl-C it has seen at least the steps the watch has.
        recorder = transformers_logprobs.recorder_class()(settings.logprobs)
        criteria.insert(0, recorder)
    kwargs: dict[str, Any] = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pad_token_id=pad_id,
        max_new_tokens=max_new,
        do_sample=not settings.greedy,
        stopping_criteria=StoppingCriteriaList(criteria),
    )
    if not settings.greedy:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    if enforcing is not None:  # before sampling's warpers: they see only what the format allows
        kwargs["logits_processor"] = LogitsProcessorList([enforcing])
    if on_text is not None:
        kwargs["streamer"] = _streamer_class()(tokenizer, on_text)
    seeded_devices = [device.index or 0] if device.type == "cuda" else []
    out = error = interrupt = None
    started = time.perf_counter()
    try:
        if recorder is not None:
            hook = model.register_forward_hook(recorder.hook)
        # A private RNG state: seeding here leaves the user's own torch RNG as it was.
        with torch.random.fork_rng(devices=seeded_devices):
            if seed is not None:
                torch.manual_seed(seed)
            out = model.generate(**kwargs)
    except KeyboardInterrupt as e:
        interrupt = e
    except Exception as e:  # explained below, outside this handler's context
        error = e
    finally:
        if hook is not None:
            hook.remove()
    ended = time.perf_counter()
    if error is not None:
        raise _explain(
            error, model, name, len(rows), width, max_new, context_limit(model, tokenizer)
        )
    done = out if out is not None else watch.latest
    new_ids = done[:, width:].tolist() if done is not None else [[] for _ in rows]
    recorded = recorder.rows() if recorder is not None else None
    return _Generated(new_ids, watch.first_token_at, started, ended, interrupt, recorded)


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


def _explain(
    error: BaseException, model, name: str, rows: int, width: int, max_new: int, limit: int | None
) -> BaseException:
    """The GenerationError for a failed generate (out of memory gets its fixes; one no
    rule recognises is shown plainly). Its frames are cleared first: they hold the
    model, and the exception outlives the cell (`sys.last_value`, `%llm_tb`)."""
    clear_frames_of(error)
    context = {
        "model": name,
        "prompt_tokens": width,
        "max_new_tokens": max_new,
        "batch_size": rows,
        "context_length": limit,
        "dtype": str(getattr(model, "dtype", "")).removeprefix("torch."),
    }
    wrapped = diagnose(error, context, GENERATION)
    if wrapped is not error:
        wrapped.__cause__ = error
    return wrapped


def _finish(
    tokenizer,
    ids: list[int],
    eos_ids: Sequence[int],
    stops: Sequence[str],
    max_new: int,
    interrupted: bool,
) -> Completion:
    """One row's completion: text, the tokens it came from, and why it stopped."""
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
        return Completion(text[:pos], len(ids), "stop string", stop, tuple(ids))
    if reason is None:
        reason = "interrupted" if interrupted and len(ids) < max_new else "length"
    return Completion(text, len(ids), reason, None, tuple(ids))
