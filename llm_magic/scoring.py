"""Scoring shared by every engine: texts, contexts and choices become (context,
continuation) pairs, the engine scores each pair's tokens by one teacher-forced pass
(`Engine.score`), and the pairs' tokens become results. Nothing here asks which engine it
is: an engine without `Capabilities.prompt_logprobs` gets a card saying what to use.

A plain function of (engine, items, settings): the same call scores the same items with
another model. On Ctrl-C the items scored so far are kept: KeyboardInterrupt is raised
with them as its `.result`. Every scored item is a row of the run log (`recorder.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import generation
from .engines.base import Engine, Scored, ScorePair
from .errors import GenerationError
from .recorder import Recorder
from .results import carry_result
from .runlog import Origin
from .scores import ChoiceScores, ScoreResult, ScoreResults
from .settings import Settings

ProgressCallback = Callable[[int, int], None]  # (groups done, groups in all)

# Put between a plain-text context and each choice, as lm-evaluation-harness's
# multiple-choice tasks do (their target_delimiter); none after a chat template, where a
# choice is the assistant's answer.
CHOICE_DELIMITER = " "


@dataclass(frozen=True)
class ScoreItem:
    """What to score: `text` after `context` (None: on its own), or with `choices`, each
    choice after `text` (the question; with `context` before it)."""

    text: str
    context: str | None = None
    choices: tuple[str, ...] | None = None
    answer: int | None = None  # the right choice's index, where known
    label: str = "the text"


def check(engine: Engine, items: Sequence[ScoreItem]) -> None:
    """Refuse, before any work, what this engine or these items cannot do."""
    if not engine.capabilities.prompt_logprobs:
        raise GenerationError(
            f"%%llm_score: {engine.info.name} cannot score text with this engine",
            "scoring needs the model's log-probabilities of a given text, which this engine "
            "does not give",
            [
                "load the model in the kernel: %llm_load MODEL (transformers) or "
                "--engine llama.cpp for a .gguf",
                "a vLLM server gives them: %llm_load MODEL --server http://HOST:8000/v1",
            ],
        )
    for item in items:
        if item.choices is None and not item.text.strip():
            raise GenerationError(
                f"{item.label}: nothing to score", fixes=["write the text to score in the cell"]
            )
        if item.choices is not None:
            if len(item.choices) < 2:
                raise GenerationError(
                    f"{item.label}: --choices needs at least two choices",
                    fixes=["--choices Paris London Rome", "--choices VAR (a list variable)"],
                )
            if len(set(item.choices)) != len(item.choices):
                raise GenerationError(
                    f"{item.label}: a choice is given twice", fixes=["give each choice once"]
                )
            if any(not c for c in item.choices):
                raise GenerationError(f"{item.label}: an empty choice has nothing to score")


def pairs_of(item: ScoreItem, settings: Settings, delimiter: str | None) -> list[ScorePair]:
    """The (context, continuation) pairs one item is scored as."""
    if item.choices is None:
        context = None
        if item.context is not None and item.context != "":
            context = generation.request(item.context, settings, f"{item.label}'s context")
        return [ScorePair(item.text, context, item.label)]
    question = item.text if item.context is None else item.context + item.text
    context = generation.request(question, settings, item.label) if question else None
    auto = CHOICE_DELIMITER if delimiter is None else ""
    return [
        ScorePair((delimiter or "") + choice, context, f"{item.label}, choice {choice!r}", auto)
        for choice in item.choices
    ]


def score(
    engine: Engine,
    items: Sequence[ScoreItem],
    settings: Settings,
    *,
    delimiter: str | None = None,
    on_progress: ProgressCallback | None = None,
    origin: Origin | None = None,
    over: bool = False,
) -> ScoreResults:
    """Each item scored; one result per item, in order. `delimiter`: put before each
    choice (None: a space after a plain-text context, none after a chat template).

    Each item is written to the run log (kind 'score'; `origin`: where it comes from;
    `over`: the items are an --over list, each row holding its item's index) as soon as
    its last pair is scored, in few transactions: the finished ones at least every second,
    and the rest at the end or on Ctrl-C."""
    settings.check()
    check(engine, items)
    pairs, owners = [], []
    for index, item in enumerate(items):
        for pair in pairs_of(item, settings, delimiter):
            pairs.append(pair)
            owners.append(index)
    waiting = [owners.count(i) for i in range(len(items))]  # each item's pairs not yet scored
    scored: dict[int, tuple[Scored, float]] = {}
    made: dict[int, ScoreResult | ChoiceScores] = {}
    shared = _Shared(engine)
    record = Recorder(engine, settings, origin, "score")
    results = ScoreResults()
    results.items = len(items)
    started = time.perf_counter()
    groups = engine.score(pairs, settings, on_progress)
    try:
        last = started
        for indices, done in groups:
            now = time.perf_counter()
            for i, one in zip(indices, done, strict=True):
                scored[i] = (one, now - last)
                waiting[owners[i]] -= 1
                if waiting[owners[i]] == 0:
                    index = owners[i]
                    made[index] = _result(shared, items[index], pairs, owners, index, scored)
                    record.add_score(
                        made[index], index if over else None, shared.versions, at_once=False
                    )
            last = now
    except KeyboardInterrupt as e:
        carry_result(e, _in_order(made, results, started))
        raise
    finally:
        groups.close()
        record.flush()  # what is scored is on disk before Ctrl-C or an error reaches the user
    return _in_order(made, results, started)


@dataclass
class _Shared:
    """What every result of one call shares, asked of the engine once."""

    engine: Engine

    def __post_init__(self) -> None:
        self.info = self.engine.info
        self.described = self.engine.describe()
        self.distribution = self.engine.capabilities.distribution
        self.versions = generation.library_versions()


def _result(
    shared: _Shared,
    item: ScoreItem,
    pairs: Sequence[ScorePair],
    owners: Sequence[int],
    index: int,
    scored: dict[int, tuple[Scored, float]],
) -> ScoreResult | ChoiceScores:
    """Item `index`'s result, from its pairs' scores (all of them done)."""
    done = [scored[i] for i in range(len(pairs)) if owners[i] == index]
    texts = item.choices if item.choices is not None else (item.text,)
    made = [
        ScoreResult(
            text=text,
            context=_context_given(item),
            context_shown=one.context_shown,
            tokens=one.tokens,
            context_tokens=one.context_tokens,
            greedy=one.greedy,
            model_id=shared.info.name,
            dtype=shared.info.dtype,
            seconds=seconds,
            distribution=shared.distribution,
            templated=one.templated,
            engine=shared.described,
            notes=one.notes,
            label=item.label,
        )
        for text, (one, seconds) in zip(texts, done, strict=True)
    ]
    if item.choices is not None:
        return ChoiceScores(item.text, item.choices, tuple(made), item.answer)
    return made[0]


def _in_order(
    made: dict[int, ScoreResult | ChoiceScores], results: ScoreResults, started: float
) -> ScoreResults:
    """The items whose pairs are all scored, in order (an interrupted run: some)."""
    for index in sorted(made):
        results.append(made[index])
        results.indices.append(index)
    results.wall_seconds = time.perf_counter() - started
    return results


def _context_given(item: ScoreItem) -> str | None:
    if item.choices is None:
        return item.context or None
    question = item.text if item.context is None else item.context + item.text
    return question or None
