"""Generation shared by every engine: the run of one prompt or many, seeds, the context
budget, and the results. The engine (`engines/`) makes the tokens; nothing here asks which
one it is.

On Ctrl-C an engine returns what it made so far; it becomes the partial result, carried
by the re-raised KeyboardInterrupt as `.result`.
"""

from __future__ import annotations

import platform
import secrets
import sys
import time
from collections.abc import Callable, Generator, Sequence

from . import prompts, structured
from .engines.base import Completion, Engine, Rendered, Request, Run, partial_run
from .errors import GenerationError
from .recorder import Recorder
from .results import NOT_RUN, GenerationResult, GenerationResults, carry_result
from .runlog import Origin
from .settings import Settings

TextCallback = Callable[[str], None]
# (the prompt as the model reads it, its token count if known)
PromptCallback = Callable[[str, "int | None"], None]
ProgressCallback = Callable[[int, int], None]  # (groups done, groups in all)


def request(prompt: str, settings: Settings, label: str = "the prompt") -> Request:
    """One prompt (already filled) as the request an engine takes."""
    return Request(prompts.messages(prompt, settings.system), raw=settings.raw, label=label)


def prepare(engine: Engine, req: Request, limit: int | None) -> Rendered:
    """The request rendered by the engine, refused when it cannot leave room for an answer."""
    rendered = engine.render(req)
    if rendered.tokens == 0:
        raise GenerationError(
            f"{req.label} is empty after tokenizing", fixes=["write some text in the cell"]
        )
    if limit is not None and rendered.tokens is not None and rendered.tokens >= limit:
        raise GenerationError(
            f"{req.label} is {rendered.tokens} tokens; the model reads at most {limit}",
            "the prompt is longer than the model's context window (no room for new tokens)",
            [
                "shorten the prompt, or the variables filled into it",
                "use a model with a longer context",
            ],
        )
    return rendered


def check_capabilities(engine: Engine, settings: Settings) -> None:
    """Refuse, before any token is made, what this engine cannot give."""
    if settings.logprobs is not None and not engine.capabilities.logprobs:
        raise GenerationError(
            f"--logprobs: {engine.info.name} cannot give log-probabilities with this engine",
            "this engine reports the text only, not the model's probabilities",
            [
                "leave out --logprobs",
                "load the model in the kernel (transformers or --engine llama.cpp) for them",
            ],
        )


def library_versions() -> dict:
    """The versions a result records: Python, llm_magic, and torch / transformers if loaded."""
    from ._version import __version__

    versions = {"python": platform.python_version(), "llm_magic": __version__}
    for name in ("torch", "transformers"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = module.__version__
    return versions


def _results(
    engine: Engine,
    run: Run,
    rows: Sequence[Rendered],
    settings: Settings,
    seed,
    batch: tuple[int, int] | None,
) -> list[GenerationResult]:
    seconds = max(run.ended - run.started, 1e-9)
    ttft = None if run.first_token_at is None else run.first_token_at - run.started
    recorded, versions, info, described = (
        settings.recorded(),
        library_versions(),
        engine.info,
        engine.describe(),
    )
    results = []
    fmt = settings.answer_format
    # Asked after the run: a server's are learned at its first request with a format.
    enforced = fmt is not None and fmt.kind in engine.capabilities.answer_formats
    # An interrupted run may hold fewer completions than rows.
    for rendered, done in zip(rows, run.completions, strict=False):
        answer = None
        if fmt is not None and done.error is None:
            answer = structured.check(fmt, done.text, done.stop_reason, enforced, run.format_note)
        prompt_tokens = done.prompt_tokens if done.prompt_tokens is not None else rendered.tokens
        results.append(
            GenerationResult(
                text=done.text,
                prompt=rendered.request.text,
                rendered_prompt=rendered.shown,
                token_ids=done.token_ids,
                prompt_tokens=prompt_tokens,
                new_tokens=done.new_tokens,
                time_to_first_token=ttft if done.new_tokens else None,
                seconds=seconds,
                tokens_per_second=done.new_tokens / seconds,
                stop_reason=done.stop_reason,
                settings=recorded,
                seed=seed,
                model_id=info.name,
                revision=info.revision,
                dtype=info.dtype,
                device=info.device,
                versions=versions,
                stop_string=done.stop_string,
                notes=rendered.notes + run.notes,
                batch=batch,
                products=run.products,
                engine=described,
                error=done.error,
                answer=answer,
                quantization=info.quantization,
                held_as=info.held_as,
                tokens=done.tokens,
                distribution=engine.capabilities.distribution if done.tokens else None,
            )
        )
    return results


def _refuse_cut_answer(result: GenerationResult, max_new: int) -> None:
    """An answer that --max-new-tokens cut off before its format closed is no data: a card
    that says how many tokens it had (the result, text kept, rides on the error)."""
    answer = result.answer
    if answer is None or not answer.incomplete or result.stop_reason != "length":
        return
    more = max(2 * max_new, max_new + 64)
    error = GenerationError(
        f"the answer was cut off after {result.new_tokens} new tokens, before its "
        f"{answer.format.describe()} was complete",
        f"it needed more than the {max_new} new tokens --max-new-tokens allowed: "
        "result.data is None",
        [
            f"--max-new-tokens {more}",
            "ask for a shorter answer (fewer or shorter fields)",
            "the text so far is in --out VAR, or e.result in Python",
        ],
        [f"text so far: {result.text[:80]!r}" + ("…" if len(result.text) > 80 else "")],
    )
    error.result = result  # type: ignore[attr-defined]
    raise error


def _budget(
    limit: int | None, rows: Sequence[Rendered], settings: Settings
) -> tuple[int, tuple[str, ...]]:
    """max_new_tokens, lowered when prompt + new tokens would pass the context window."""
    width = max((r.tokens or 0) for r in rows)
    if limit is not None and width + settings.max_new_tokens > limit:
        room = limit - width
        return room, (
            f"max_new_tokens lowered from {settings.max_new_tokens} to {room}: "
            f"the prompt takes {width} of the model's {limit} positions",
        )
    return settings.max_new_tokens, ()


def _unused_seed(settings: Settings) -> tuple[str, ...]:
    """Greedy decoding makes no random choice: a seed given with it changes nothing."""
    if settings.greedy and settings.seed is not None:
        return (f"--seed {settings.seed} is unused: greedy decoding makes no random choices",)
    return ()


class _StopHeldBack:
    """Streams text as the result will store it: with --stop, the tail that may be the
    start of a stop string is held back until it is known not to be one, and nothing
    from a stop string on is shown (the engine still sees the whole text to stop on)."""

    def __init__(self, on_text: TextCallback, stops: Sequence[str]):
        self.on_text, self.stops = on_text, tuple(stops)
        self.seen, self.shown, self.stopped = "", 0, False
        self.hold = max(len(s) for s in self.stops) - 1

    def __call__(self, chunk: str) -> None:
        if self.stopped:
            return
        self.seen += chunk
        hits = [self.seen.find(s) for s in self.stops if s in self.seen]
        if hits:
            self.stopped = True
            self._show(min(hits))
        else:
            self._show(max(len(self.seen) - self.hold, self.shown))

    def _show(self, upto: int) -> None:
        if upto > self.shown:
            self.on_text(self.seen[self.shown : upto])
            self.shown = upto

    def finish(self, text: str) -> None:
        """The end: show what the stored text has beyond what was shown (the held tail)."""
        if text.startswith(self.seen[: self.shown]) and len(text) > self.shown:
            self.on_text(text[self.shown :])
            self.shown = len(text)


def _format_notes(settings: Settings) -> tuple[str, ...]:
    """What the answer's format has to say (a --regex that looks mangled)."""
    return settings.answer_format.notes if settings.answer_format is not None else ()


def _seed(settings: Settings) -> int | None:
    """The seed to use: the given one, or for sampling a fresh one (recorded, so any
    sampled text can be reproduced)."""
    if settings.seed is not None or settings.greedy:
        return settings.seed
    return secrets.randbelow(2**31)


def generate(
    engine: Engine,
    prompt: str | Request,
    settings: Settings,
    *,
    on_text: TextCallback | None = None,
    on_prompt: PromptCallback | None = None,
    on_start: Callable[[tuple[str, ...]], None] | None = None,
    origin: Origin | None = None,
) -> GenerationResult:
    """One prompt (already filled, or a Request of chat messages) → one result, streamed
    to `on_text` chunk by chunk. The run is written to the run log (`origin`: where it
    comes from); with `settings.reuse`, an identical deterministic request logged before
    is answered from the log instead.

    On Ctrl-C: KeyboardInterrupt is raised with the partial result as its `.result`.
    """
    settings.check()
    check_capabilities(engine, settings)
    limit = engine.context_limit()
    rendered = prepare(
        engine, prompt if isinstance(prompt, Request) else request(prompt, settings), limit
    )
    if on_prompt is not None:
        on_prompt(rendered.shown, rendered.tokens)
    record = Recorder(engine, settings, origin, "generate")
    if settings.reuse:
        (replayed,) = record.replayed([rendered], settings.seed)
        if replayed is not None:
            return replayed
    max_new, notes = _budget(limit, [rendered], settings)
    if on_start is not None:  # before the first token: a status line, and the notes said first
        on_start(notes + _unused_seed(settings))
    seed = _seed(settings)
    shown = (
        _StopHeldBack(on_text, settings.stop) if on_text is not None and settings.stop else on_text
    )
    try:
        run = engine.run([rendered], seed, max_new, settings, shown)
    except GenerationError as e:
        # An engine failing part-way (a server dropping the stream) hands over its text.
        partial = partial_run(e)
        if partial is not None:
            (made,) = _results(engine, partial, [rendered], settings, seed, None)
            record.add(made, error=e)
            carry_result(e, record.with_id(made))
        else:
            record.failed(rendered, e, seed)
        raise
    run.notes = notes + _unused_seed(settings) + run.notes + _format_notes(settings)
    (result,) = _results(engine, run, [rendered], settings, seed, None)
    record.add(result)
    result = record.with_id(result)
    if isinstance(shown, _StopHeldBack):
        shown.finish(result.text)
    if run.interrupt is not None:
        carry_result(run.interrupt, result)
        raise run.interrupt
    _refuse_cut_answer(result, max_new)
    return result


def _no_groups() -> Generator[tuple[list[int], Run], None, None]:
    """What an engine's run_many yields when every item was answered from the log."""
    yield from ()


def generate_many(
    engine: Engine,
    texts: Sequence[str],
    settings: Settings,
    *,
    on_progress: ProgressCallback | None = None,
    on_prompt: PromptCallback | None = None,
    over: prompts.Over | None = None,
    origin: Origin | None = None,
) -> GenerationResults:
    """Many prompts (already filled) → one result each, in order, grouped as the engine
    does best (padded batches, concurrent requests). `over`: the items the prompts were
    filled from, kept with the results (`to_pandas()`). Each is written to the run log, the
    finished ones at least every second (so a crash loses at most the last second); with
    `settings.reuse`, the items whose identical deterministic request is logged already
    are answered from the log and only the others generated (an interrupted run resumes).

    On Ctrl-C: the current group stops; KeyboardInterrupt is raised with one result per
    prompt as its `.result`: the finished groups, the partial current one, and the rest
    marked "not run".
    """
    settings.check()
    check_capabilities(engine, settings)
    limit = engine.context_limit()
    rows = [
        prepare(engine, request(text, settings, f"prompt [{i}]"), limit)
        for i, text in enumerate(texts)
    ]
    if on_prompt is not None:
        for r in rows:
            on_prompt(r.shown, r.tokens)
    seed = _seed(settings)
    record = Recorder(engine, settings, origin, "over")
    slots: list[GenerationResult | None] = (
        list(record.replayed(rows, seed)) if settings.reuse else [None] * len(rows)
    )
    todo = [i for i, slot in enumerate(slots) if slot is None]  # the items to generate
    started = time.perf_counter()
    groups = (
        engine.run_many(
            [rows[i] for i in todo],
            seed,
            settings,
            lambda chunk: _budget(limit, chunk, settings),
            on_progress,
        )
        if todo
        else _no_groups()
    )
    try:
        for index, (indices, run) in enumerate(groups):
            run.notes = _unused_seed(settings) + run.notes + _format_notes(settings)
            done = _results(
                engine,
                run,
                [rows[todo[i]] for i in indices],
                settings,
                seed,
                (index, len(indices)),
            )
            for i, result in zip(indices, done, strict=True):
                slots[todo[i]] = result
                record.add(result, item=todo[i], at_once=False)
            if run.interrupt is not None:
                raise run.interrupt
    except KeyboardInterrupt as e:  # also before the first group (packing weights)
        record.flush()
        carry_result(e, _collected(engine, rows, slots, settings, seed, started, over, record))
        raise
    finally:
        groups.close()  # leaves the engine's batch set-up (packed products) at once
        record.flush()
    finished = sum(slot is not None for slot in slots)
    if finished != len(slots):  # run_many must yield every row once
        raise GenerationError(f"the engine returned {finished} results for {len(slots)} prompts")
    return _collected(engine, rows, slots, settings, seed, started, over, record)


def _collected(
    engine: Engine,
    rows: Sequence[Rendered],
    slots: list[GenerationResult | None],
    settings: Settings,
    seed: int | None,
    started: float,
    over: prompts.Over | None,
    record: Recorder,
) -> GenerationResults:
    """One result per row, in order, each with its run-log id; a row an interrupt left
    unrun is marked "not run"."""
    now = time.perf_counter()
    unrun = Run([Completion("", 0, NOT_RUN)], now, now)
    results = GenerationResults(
        record.with_id(slot, i)
        if slot is not None
        else _results(engine, unrun, [row], settings, seed, None)[0]
        for i, (row, slot) in enumerate(zip(rows, slots, strict=True))
    )
    results.group = engine.capabilities.group
    results.wall_seconds = now - started
    if over is not None:
        results.items, results.labels, results.notes = over.items, over.labels, over.notes
    return results
