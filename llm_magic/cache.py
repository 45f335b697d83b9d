"""The kernel-scoped model cache, and the release of a model's memory.

One cache per process (so, per kernel). An entry owns the only strong references to its
model and tokenizer: cards and results carry plain metadata, so dropping the entry frees
the weights.
"""

from __future__ import annotations

import gc
import re
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .engines.base import CacheKey, LoadedModel, LoadOptions
from .sources.discovery import quote


class ModelCache:
    def __init__(self) -> None:
        self._entries: dict[CacheKey, LoadedModel] = {}
        self._aliases: dict[str, CacheKey] = {}
        self.last: CacheKey | None = None  # the key of the model loaded or used last
        # The budget (0: no limit). Loading past it unloads the least recently used first.
        self.max_models = 0
        self.memory_budget = 0  # bytes
        # Where else a model may be referenced from, registered by the extension: namespaces
        # holding output history (Out, _, _N), and callables that drop what a shell keeps
        # (given a test "is this part of an unloaded model?") and return the exceptions
        # and tracebacks it keeps, whose frames may hold the model.
        self.namespaces: list[dict] = []
        self.holders: list[Callable[[Callable[[Any], bool]], Iterable[Any]]] = []
        # The models the budget unloaded, and how to load them again: a cell naming one
        # (`-m A B`) loads it again for its turn, within the budget.
        self.set_aside: dict[CacheKey, SetAside] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: CacheKey) -> bool:
        return key in self._entries

    def entries(self) -> list[LoadedModel]:
        return list(self._entries.values())

    def total_bytes(self) -> int:
        return sum(e.memory_bytes for e in self._entries.values())

    def get(self, key: CacheKey) -> LoadedModel | None:
        entry = self._entries.get(key)
        if entry is not None:
            self.touch(entry)
        return entry

    def peek(self, key: CacheKey) -> LoadedModel | None:
        """`get` without marking the entry used."""
        return self._entries.get(key)

    def touch(self, entry: LoadedModel) -> None:
        entry.last_used = time.time()
        self.last = entry.key

    def put(self, entry: LoadedModel) -> list[Released]:
        """Cache `entry`; returns what the budget unloaded to make room (least recently
        used first), usually nothing since `load` makes room before it loads."""
        old = self._entries.get(entry.key)
        if old is not None and old is not entry:
            entry.aliases |= old.aliases
            self._drop(old)
        self._entries[entry.key] = entry
        self.set_aside.pop(entry.key, None)
        for alias in entry.aliases:
            self.alias(entry, alias)
        self.touch(entry)
        victims = self.over_budget(adding=False, keep=entry)
        return [self.unload(victims, by_budget=True)] if victims else []

    def alias(self, entry: LoadedModel, alias: str) -> None:
        key = self._aliases.get(alias)
        previous = self._entries.get(key) if key is not None else None
        if previous is not None and previous is not entry:
            previous.aliases.discard(alias)
        self._aliases[alias] = entry.key
        entry.aliases.add(alias)

    def aliased(self, alias: str) -> LoadedModel | None:
        """The entry `alias` names, if any."""
        key = self._aliases.get(alias)
        return self._entries.get(key) if key is not None else None

    def find(self, name: str) -> LoadedModel | None:
        """An entry by alias, by the name it was loaded with, by the last part of that
        name (a file or folder of a path, the model of a Hub id: what the cards show),
        or None. Among several, the one used last."""
        key = self._aliases.get(name)
        if key in self._entries:
            return self._entries[key]
        for same in (
            lambda e: e.info.name == name,
            lambda e: e.info.name.rstrip("/").rsplit("/", 1)[-1] == name,
        ):
            matches = [e for e in self._entries.values() if same(e)]
            if matches:
                return max(matches, key=lambda e: e.last_used)
        return None

    def ambiguous(self, name: str) -> list[LoadedModel]:
        """The entries NAME could mean when it is no alias and names more than one (the
        same file at two dtypes, two folders with one last part); else []."""
        if self._aliases.get(name) in self._entries:
            return []
        for same in (
            lambda e: e.info.name == name,
            lambda e: e.info.name.rstrip("/").rsplit("/", 1)[-1] == name,
        ):
            matches = [e for e in self._entries.values() if same(e)]
            if matches:
                return matches if len(matches) > 1 else []
        return []

    def aside(self, name: str) -> SetAside | None:
        """The model the budget unloaded that NAME names (an alias, the name it was loaded
        with, or its last part), the one unloaded last first."""
        for same in (
            lambda a: name in a.aliases,
            lambda a: a.options.model == name,
            lambda a: (a.options.model or "").rstrip("/").rsplit("/", 1)[-1] == name,
        ):
            for aside in reversed(list(self.set_aside.values())):
                if same(aside):
                    return aside
        return None

    def current(self) -> LoadedModel | None:
        return self._entries.get(self.last) if self.last is not None else None

    def set_budget(self, max_models: int | None = None, memory_budget: int | None = None) -> None:
        """Limit the cache to `max_models` models and/or `memory_budget` bytes (0: no limit)."""
        if max_models is not None:
            self.max_models = max(int(max_models), 0)
        if memory_budget is not None:
            self.memory_budget = max(int(memory_budget), 0)

    def over_budget(
        self, incoming_bytes: int = 0, adding: bool = True, keep: LoadedModel | None = None
    ) -> list[LoadedModel]:
        """The entries to unload, least recently used first, so that the cache plus one more
        model of `incoming_bytes` (`adding`) stays within the budget. Never `keep`."""
        count = len(self._entries) + (1 if adding else 0)
        total = self.total_bytes() + incoming_bytes
        victims = []
        for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
            if (not self.max_models or count <= self.max_models) and (
                not self.memory_budget or total <= self.memory_budget
            ):
                break
            if entry is keep:
                continue
            victims.append(entry)
            count -= 1
            total -= entry.memory_bytes
        return victims

    def unload(self, entries: Iterable[LoadedModel], by_budget: bool = False) -> Released:
        """Drop `entries` and free their memory for real: the cache's references, output
        history (`Out`, `_`, `_N`) and exception tracebacks that hold the model, then gc
        and the CUDA cache. Says whether the models are gone and, if not, what holds them.
        `by_budget`: the budget made room; how to load them again is kept (`set_aside`)."""
        entries = list(entries)
        if not entries:
            # Nothing to free: a full collection costs a second on a large heap.
            return Released((), True)
        for e in entries if by_budget else ():
            if e.options is not None:
                adapters = tuple((n, a.path) for n, a in e.adapters.items())
                self.set_aside[e.key] = SetAside(
                    e.options, tuple(sorted(e.aliases)), adapters, e.default_adapter
                )
        models = [
            (e.name, tuple(sorted(e.aliases)), e.memory_bytes, e.info.held_as) for e in entries
        ]
        refs = [weakref.ref(e.model) for e in entries if e.model is not None]
        targets = _owned(entries)
        for entry in entries:
            self._drop(entry)
        del entries
        _scrub_history(targets, self.namespaces)
        _clear_tracebacks(targets, self._exceptions(_holds_one_of(targets)))
        del targets
        release_memory()
        alive = [m for m in (r() for r in refs) if m is not None]
        held_by = _user_names(_parts(alive), self.namespaces) if alive else ()
        del alive
        return Released(tuple(models), all(r() is None for r in refs), held_by)

    def _exceptions(self, is_target: Callable[[Any], bool]) -> list[BaseException | Any]:
        found = [getattr(sys, name, None) for name in ("last_value", "last_exc", "last_traceback")]
        for holder in self.holders:
            found.extend(holder(is_target))
        return [x for x in found if x is not None]

    def clear(self) -> Released:
        """Unload every model (as `unload(entries())`), and forget the ones set aside."""
        self.set_aside.clear()
        return self.unload(self.entries())

    def _drop(self, entry: LoadedModel) -> None:
        self._entries.pop(entry.key, None)
        for alias in list(entry.aliases):
            if self._aliases.get(alias) == entry.key:
                del self._aliases[alias]
        if self.last == entry.key:
            self.last = None
        # An engine holding memory outside Python (llama.cpp) frees it now, whoever still
        # refers to its objects.
        close = getattr(entry.engine, "close", None)
        if close is not None:
            close()
        # Callers may still hold the handle: empty it so it no longer pins the weights.
        entry.model = None
        entry.tokenizer = None
        entry.engine = None


@dataclass(frozen=True)
class SetAside:
    """A model the budget unloaded: how it was loaded, its aliases, its adapters."""

    options: LoadOptions
    aliases: tuple[str, ...]
    adapters: tuple[tuple[str, str], ...]  # (name, path), as they were put on
    default_adapter: str | None


@dataclass(frozen=True)
class Released:
    """What `ModelCache.unload` did: plain data, safe to keep in `Out`."""

    # (name, aliases, bytes, how it was held: ModelInfo.held_as)
    models: tuple[tuple[str, tuple[str, ...], int, str], ...]
    freed: bool  # every unloaded model object is gone
    held_by: tuple[str, ...] = ()  # user variables that still hold one, when not freed


def _owned(entries: Iterable[LoadedModel]) -> dict[int, Any]:
    """id -> object for the entries, their tokenizers, models and the models' parts.
    The objects are kept alive while ids are compared, so no id is reused meanwhile."""
    owned: dict[int, Any] = {}
    for e in entries:
        owned[id(e)] = e
        if e.engine is not None:
            owned[id(e.engine)] = e.engine
        if e.tokenizer is not None:
            owned[id(e.tokenizer)] = e.tokenizer
        if e.model is not None:
            owned.update(_parts([e.model]))
    return owned


def _holds_one_of(ids: dict[int, Any]) -> Callable[[Any], bool]:
    """A test: is this object one of `ids`' objects?"""
    return lambda obj: id(obj) in ids


def _parts(models: Iterable[Any]) -> dict[int, Any]:
    """A model, its submodules, parameters and buffers: any of them pins the weights."""
    parts: dict[int, Any] = {}
    for model in models:
        parts[id(model)] = model
        for attr in ("modules", "parameters", "buffers"):
            method = getattr(model, attr, None)
            if callable(method):
                parts.update((id(x), x) for x in method())
    return parts


_OUTPUT_NAME = re.compile(r"^_{1,3}$|^_\d+$")


def _scrub_history(ids: dict[int, Any], namespaces: list[dict]) -> None:
    """Drop output-history entries (`Out[n]`, `_n`, `_`, `__`, `___`) that hold a target.
    The user's own variables are left alone (reported instead): deleting them would be
    a surprise."""
    for ns in namespaces:
        for history in {
            id(h): h for h in (ns.get("Out"), ns.get("_oh")) if isinstance(h, dict)
        }.values():
            for n in [n for n, v in history.items() if id(v) in ids]:
                del history[n]
        for name in [n for n, v in list(ns.items()) if id(v) in ids and _OUTPUT_NAME.match(n)]:
            if name.strip("_"):
                del ns[name]
            else:
                ns[name] = ""  # IPython's own starting value for _, __ and ___


def _user_names(ids: dict[int, Any], namespaces: list[dict]) -> tuple[str, ...]:
    return tuple(
        sorted(
            {
                n
                for ns in namespaces
                for n, v in list(ns.items())
                if id(v) in ids and not _OUTPUT_NAME.match(n)
            }
        )
    )


def _clear_tracebacks(ids: dict[int, Any], roots: list[Any]) -> None:
    """Clear the frames of tracebacks (and chained exceptions) whose locals hold a target:
    a failed generation's traceback keeps the model alive through `self` otherwise. The
    traceback stays printable (file, line, code); only the frames' locals go."""
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, BaseException):
            todo += [item.__cause__, item.__context__, item.__traceback__]
            continue
        tb = item
        if not hasattr(tb, "tb_frame"):
            continue
        if any(
            any(id(v) in ids for v in list(frame.f_locals.values()))
            for frame, _ in traceback.walk_tb(tb)
        ):
            _clear(tb)


def _clear(tb) -> None:
    traceback.clear_frames(tb)  # skips frames still running
    # Python < 3.13 keeps a snapshot dict of a frame's locals once `f_locals` was read, and
    # clear() leaves it filled: reading f_locals again syncs it, dropping the cleared names.
    for frame, _ in traceback.walk_tb(tb):
        _ = frame.f_locals
    # An exception caught in one frame and raised again from a caller (Ctrl-C kept by
    # the engine, re-raised with the partial result) keeps the catching frame's callers
    # alive through f_back, finished but not in the traceback: clear them too, up to
    # the first one still running.
    in_tb = {id(frame) for frame, _ in traceback.walk_tb(tb)}
    for frame, _ in traceback.walk_tb(tb):
        back = frame.f_back
        while back is not None and id(back) not in in_tb:
            try:
                back.clear()
            except RuntimeError:  # still running: it and its callers are live
                break
            _ = back.f_locals
            in_tb.add(id(back))
            back = back.f_back


def clear_frames_of(error: BaseException) -> None:
    """Clear the locals of every finished frame in `error`'s traceback and chain."""
    seen: set[int] = set()
    todo: list[Any] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if e.__traceback__ is not None:
            _clear(e.__traceback__)
        todo += [e.__cause__, e.__context__]


def release_memory() -> None:
    """Collect cycles and hand cached CUDA blocks back to the driver."""
    gc.collect()
    torch = sys.modules.get("torch")  # never import torch just to free memory
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    _trim_heap()


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS. glibc keeps freed blocks for reuse (its mmap
    threshold grows after large frees, so later tensors land on the heap), so RSS stays
    high after the weights are gone unless asked with malloc_trim."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux"):
            import ctypes
            import ctypes.util

            try:
                _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
                pass
    if callable(_malloc_trim):
        _malloc_trim(0)


# glibc's malloc_trim once looked up; False where there is none (not Linux, not glibc).
_malloc_trim: Callable[[int], int] | bool | None = None


MODEL_CACHE = ModelCache()


def handle_name(entry: LoadedModel) -> str | None:
    """The name that reaches `entry` alone (for -m and %llm_unload): an alias, else its
    short name or its name where no other cached model has it; None where only an alias
    would tell it apart (the same file at two dtypes)."""
    if entry.aliases:
        return min(entry.aliases)
    short = entry.name.rstrip("/").rsplit("/", 1)[-1]
    for name in (short, entry.name):
        if MODEL_CACHE.find(name) is entry and not MODEL_CACHE.ambiguous(name):
            return quote(name)
    return None
