"""One cell, several models (`-m A B ...`): which model each name means, the order they
run in, and the models that are not in memory together.

Each name is a cached model (an alias, the name it was loaded with, `MODEL:ADAPTER`,
`MODEL:base`), on any engine, or a model the cache's budget unloaded earlier in this
kernel. The models run one after another on the calling thread, the ones in memory first;
one the budget unloaded is loaded again for its turn through the one cached-load path,
which makes room within the budget (unloading the least recently used: models not in the
cell, then the ones whose turn is over) and refuses, before reading anything, a model that
free memory cannot hold. Memory stays bounded: never more than the budget at once."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from . import adapters, loader
from .cache import MODEL_CACHE, SetAside
from .errors import GenerationError
from .units import format_seconds

R = TypeVar("R")


@dataclass(frozen=True)
class Turn:
    """One name of the cell, and how its model is had."""

    label: str  # the name as given
    aside: SetAside | None = None  # the budget unloaded it: loaded again for its turn


def plan(names: Sequence[str]) -> list[Turn]:
    """The cell's turns, in the order named; a name that means no model fails here, before
    anything runs."""
    turns: list[Turn] = []
    for name in names:
        if any(t.label == name for t in turns):
            raise GenerationError(
                f"-m {name} is named twice", fixes=["name each model once: -m A B"]
            )
        if adapters.find(name) is not None:
            turns.append(Turn(name))
            continue
        base, colon, _ = name.rpartition(":")
        aside = MODEL_CACHE.aside(name) or (MODEL_CACHE.aside(base) if colon and base else None)
        if aside is None:
            raise adapters.unknown_model(name)
        turns.append(Turn(name, aside))
    return turns


def run(
    turns: Sequence[Turn],
    run_one: Callable[[adapters.Target], R],
    results: dict[str, R],
) -> tuple[str, ...]:
    """`run_one` for each turn's model, filling `results` by name (in the order named, so
    that a Ctrl-C leaves the ones done in it); the models in memory run first. Returns what
    was done to fit them in memory, to be said with the results."""
    order = [t for t in turns if t.aside is None] + [t for t in turns if t.aside is not None]
    done: dict[str, R] = {}
    notes: list[str] = []
    try:
        for turn in order:
            target = adapters.find(turn.label)
            if target is None:  # unloaded by the budget, before this cell or during it
                target, said = _load_again(turn)
                notes += said
            done[turn.label] = run_one(target)
    finally:
        results.update((t.label, done[t.label]) for t in turns if t.label in done)
    return tuple(notes)


def _load_again(turn: Turn) -> tuple[adapters.Target, list[str]]:
    base, colon, _ = turn.label.rpartition(":")
    aside = MODEL_CACHE.aside(turn.label) or (MODEL_CACHE.aside(base) if colon else None)
    aside = aside or turn.aside
    assert aside is not None
    started = time.perf_counter()
    entry, card = loader.load_with_card(replace(aside.options, quiet=True))
    for alias in aside.aliases:
        MODEL_CACHE.alias(entry, alias)
    if aside.adapters:
        attached = adapters.attach(entry, aside.adapters, default=aside.default_adapter)
        del attached
    target = adapters.find(turn.label)
    if target is None:  # the model came back without that adapter
        raise adapters.unknown_model(turn.label)
    said = [
        f"{turn.label} was not in memory (the budget unloaded it): loaded again for its turn "
        f"in {format_seconds(time.perf_counter() - started)}, the models run one after another"
    ]
    said += list(getattr(card, "budget_notes", ()))
    return target, said
