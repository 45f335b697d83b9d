"""Adapters on loaded models: what `-m MODEL:ADAPTER` names, putting adapters on a cached
model (within the cache's budget, the model not loaded again), taking them off (their
memory freed), and the card that lists them.

An engine declares the adapters it takes (`Capabilities.adapters`: "peft" folders,
"gguf" LoRA files, "served" model names) and does the work (`engines.base.AdapterHost`);
nothing here asks which engine it is. A failure leaves the model and the cache as they
were."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from . import errors, hardware
from .cache import (
    MODEL_CACHE,
    LoadedModel,
    Released,
    clear_frames_of,
    handle_name,
    release_memory,
)
from .display.adapters import AdapterCard
from .engines.base import AdapterHost, AdapterInfo
from .errors import GenerationError, LLMError, LoadError
from .sources.adapter import BASE, AdapterSource, resolve_adapter
from .units import format_bytes

# How each format is said in a card.
_FORMATS = {
    "peft": "PEFT adapter folder",
    "gguf": "GGUF LoRA file",
    "served": "served adapter",
}


def model_label(entry: LoadedModel) -> str:
    """What `-m` calls a cached model in cards: its alias, else the last part of its name."""
    return min(entry.aliases) if entry.aliases else entry.name.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Target:
    """What one `-m` name means: a cached model and the adapter to generate with."""

    entry: LoadedModel
    adapter: str | None  # None: the base model
    label: str  # the name as given


def find(name: str) -> Target | None:
    """The cached model NAME names, with its default adapter; `MODEL:ADAPTER` for one of its
    adapters, `MODEL:base` for none. None when no cached model has the name.

    The whole name is tried first: a served model's own id may hold a colon."""
    entry = MODEL_CACHE.find(name)
    if entry is not None:
        return Target(entry, entry.default_adapter, name)
    base, colon, adapter = name.rpartition(":")
    entry = MODEL_CACHE.find(base) if colon and base else None
    if entry is None:
        return None
    if adapter == BASE:
        return Target(entry, None, name)
    if adapter not in entry.adapters and adapter in _offered(entry):
        attach(entry, ((adapter, adapter),))  # a server's own adapter: named, not loaded
    if adapter not in entry.adapters:
        raise no_such_adapter(entry, adapter, base)
    return Target(entry, adapter, name)


def unknown_model(name: str) -> GenerationError:
    """`-m NAME` where no cached model has the name: what is loaded, what it may have meant."""
    import difflib

    entries = MODEL_CACHE.entries()
    loaded = [", ".join(sorted(e.aliases) + [e.name]) for e in entries]
    # Names that reach one model each (an alias before a short name two share).
    names = sorted(
        {a for e in entries for a in e.aliases}
        | {n for e in entries if (n := handle_name(e))}
        | {f"{model_label(e)}:{a}" for e in entries for a in e.adapters}
    )
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    fixes = [f"did you mean: -m {close[0]}"] if close else []
    fixes.append("loaded: " + "; ".join(loaded) if loaded else "no model is loaded yet")
    fixes.append(
        f"to load a model under that name: %llm_load MODEL --as {name}"
        if name.isidentifier()
        else f"if {name} is a model to load: %llm_load {name}"
    )
    return GenerationError(
        f"-m {name}: no loaded model has that name",
        "-m takes an alias (--as NAME) or the name a model was loaded with "
        "(MODEL:ADAPTER for one of its adapters)",
        fixes,
    )


def no_such_adapter(entry: LoadedModel, adapter: str, base: str) -> GenerationError:
    held = list(entry.adapters) + [a for a in _offered(entry) if a not in entry.adapters]
    return GenerationError(
        f"-m {base}:{adapter}: {base} has no adapter {adapter!r}",
        f"its adapters: {', '.join(held)}" if held else f"{base} has no adapters",
        ([f"-m {base}:{held[0]}"] if held else [])
        + [
            f"-m {base}:{BASE} for the model without adapters",
            f"%llm_adapter load {adapter}=PATH -m {base}",
        ],
    )


@contextlib.contextmanager
def using(target: Target) -> Iterator[None]:
    """The block generates with the target's adapter (or none); the model is at rest after."""
    entry = target.entry
    if not entry.adapters:
        yield
        return
    with _host(entry).use_adapter(target.adapter):
        yield


def _host(entry: LoadedModel) -> AdapterHost:
    return cast(AdapterHost, entry.engine)


def _offered(entry: LoadedModel) -> tuple[str, ...]:
    engine = entry.engine
    if engine is None or not engine.capabilities.adapters:
        return ()
    return tuple(_host(entry).offered_adapters())


# --- putting adapters on -----------------------------------------------------------------


@dataclass
class Attached:
    """What `attach` did: the adapters it put on, what the budget unloaded for them, and the
    process's memory before and after."""

    infos: list[AdapterInfo] = field(default_factory=list)
    released: list[Released] = field(default_factory=list)
    rss_before: int | None = None
    rss_after: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.infos)

    @property
    def bytes(self) -> int:
        return sum(i.memory_bytes for i in self.infos)


def attach(
    entry: LoadedModel, pairs: tuple[tuple[str, str], ...], default: str | None = None
) -> Attached:
    """Put the adapters (name, path) on the cached model, the ones it holds already (same
    name, same path) left as they are; `default` becomes the adapter the model's name alone
    means. All or none: a failure takes off the ones this call put on, and raises LoadError."""
    engine = entry.engine
    label = model_label(entry)
    if engine is None:
        raise LoadError(f"{entry.name} was unloaded", fixes=[f"%llm_load {entry.name}"])
    formats = engine.capabilities.adapters
    if not formats:
        raise LoadError(
            f"{label}: the {engine.kind} engine takes no adapters",
            "adapters ride on transformers models (PEFT folders), llama.cpp models (GGUF "
            "LoRA files) and server models (the adapters the server serves)",
            [f"%llm_load {entry.name} --engine transformers --adapter PATH"],
        )
    sources = []
    for name, path in pairs:
        held = entry.adapters.get(name)
        if held is not None:
            if _same(held.path, path):
                continue
            raise LoadError(
                f"adapter {name} is on {label} already, from {held.path}",
                fixes=[
                    f"%llm_adapter unload {name} -m {label}  (then load the other)",
                    f"give it another name: %llm_adapter load OTHER={path} -m {label}",
                ],
            )
        sources.append(_source(name, path, formats, entry, label))
    done = Attached()
    done.released = _make_room(entry, sum(s.size_bytes for s in sources))
    done.rss_before = hardware.process_rss_bytes()
    previous = entry.default_adapter
    if default is not None:
        entry.default_adapter = default  # the engine puts the model at rest with it on
    try:
        for source in sources:
            done.infos.append(_attach_one(entry, source, label))
        _host(entry).settle()
    except BaseException:
        entry.default_adapter = previous
        for info in done.infos:
            _detach(entry, info.name)
        raise
    done.rss_after = hardware.process_rss_bytes()
    return done


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(os.path.expanduser(a), os.path.expanduser(b))
    except OSError:
        return a == b


def _source(
    name: str, path: str, formats: tuple[str, ...], entry: LoadedModel, label: str
) -> AdapterSource:
    if "served" in formats:
        return AdapterSource(name, path, "served", "served", None, None, (), None, None, 0)
    source = resolve_adapter(name, path)
    if source.format in formats:
        return source
    engine = entry.engine.kind if entry.engine is not None else "?"
    if source.format == "peft":
        fixes = [
            "convert it with llama.cpp's convert_lora_to_gguf.py FOLDER --base BASE_FOLDER, "
            "then --adapter FILE.gguf",
            f"or load the model with transformers: %llm_load MODEL --adapter {path}",
        ]
    else:
        fixes = [
            f"a GGUF LoRA goes on a .gguf opened by llama.cpp: %llm_load BASE.gguf "
            f"--engine llama.cpp --adapter {path}",
            "for transformers, give the PEFT folder the GGUF was converted from",
        ]
    raise LoadError(
        f"{source.name}: a {_FORMATS[source.format]} does not go on {label} ({engine})",
        f"the {engine} engine takes " + " or ".join(_FORMATS[f] + "s" for f in formats),
        fixes,
    )


def _make_room(entry: LoadedModel, incoming: int) -> list[Released]:
    """Unload other models, least recently used first, so that the cache stays within its
    budget with `incoming` more bytes on `entry`; refuse what free RAM cannot hold."""
    free = hardware.free_ram_bytes()
    if incoming and free is not None and incoming > free:
        raise LoadError(
            f"the adapters need {format_bytes(incoming)}; {format_bytes(free)} of RAM is free",
            fixes=["%llm_unload NAME frees a model's memory", "load fewer adapters at once"],
        )
    victims = MODEL_CACHE.over_budget(incoming, adding=False, keep=entry)
    return [MODEL_CACHE.unload(victims, by_budget=True)] if victims else []


def _attach_one(entry: LoadedModel, source: AdapterSource, label: str) -> AdapterInfo:
    try:
        info = _host(entry).attach_adapter(source)
    except BaseException as e:
        clear_frames_of(e)
        release_memory()
        if isinstance(e, LLMError) or not isinstance(e, Exception):
            raise
        context = {"model": label, "adapter": source.name, "path": source.path}
        raise errors.diagnose(e, context, errors.ADAPTER) from e
    entry.adapters[source.name] = info
    return info


def _detach(entry: LoadedModel, name: str) -> list[Any]:
    refs = list(_host(entry).detach_adapter(name))
    entry.adapters.pop(name, None)
    if entry.default_adapter == name:
        entry.default_adapter = None
    return refs


# --- taking them off, listing them --------------------------------------------------------


def detach(entry: LoadedModel, names: tuple[str, ...]) -> AdapterCard:
    """Take the adapters off the model and free them (`%llm_adapter unload`): the card
    says how much memory came back and whether they are gone."""
    label = model_label(entry)
    for name in names:
        if name not in entry.adapters:
            raise LLMError(
                f"{label} has no adapter {name!r}",
                f"its adapters: {', '.join(entry.adapters)}"
                if entry.adapters
                else f"{label} has no adapters",
                [f"%llm_adapter unload {next(iter(entry.adapters))} -m {label}"]
                if entry.adapters
                else [f"%llm_adapter list -m {label}"],
            )
    size = sum(entry.adapters[n].memory_bytes for n in names)
    rss = hardware.process_rss_bytes()
    refs = [r for name in names for r in _detach(entry, name)]
    _host(entry).settle()
    release_memory()
    freed = all(r() is None for r in refs)
    return card(entry, "unloaded", names, size, rss, hardware.process_rss_bytes(), freed)


def card(
    entry: LoadedModel,
    action: str,
    changed: tuple[str, ...] = (),
    changed_bytes: int = 0,
    rss_before: int | None = None,
    rss_after: int | None = None,
    freed: bool = True,
    notes: tuple[str, ...] = (),
) -> AdapterCard:
    return AdapterCard(
        model=entry.name,
        label=model_label(entry),
        action=action,
        adapters=tuple(entry.adapters.values()),
        default=entry.default_adapter,
        changed=changed,
        changed_bytes=changed_bytes,
        rss_before=rss_before,
        rss_after=rss_after,
        model_bytes=entry.info.memory_bytes,
        freed=freed,
        served=tuple(a for a in _offered(entry) if a not in entry.adapters),
        budget_notes=notes,
    )
