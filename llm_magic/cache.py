"""The kernel-scoped model cache, and the release of a model's memory.

One cache per process (so, per kernel). An entry owns the only strong references to its
model and tokenizer: cards and results carry plain metadata, so dropping the entry frees
the weights.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any, Hashable


@dataclass(eq=False)
class LoadedModel:
    """A cached model: `.model`, `.tokenizer` and `.info` (plain metadata)."""

    key: Hashable
    model: Any
    tokenizer: Any
    info: Any  # loading.ModelInfo
    aliases: set[str] = field(default_factory=set)
    last_used: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.info.name

    def __repr__(self) -> str:
        return f"<LoadedModel {self.info.name} {self.info.class_name} {self.info.dtype} on {self.info.device}>"


class ModelCache:
    def __init__(self) -> None:
        self._entries: dict[Hashable, LoadedModel] = {}
        self._aliases: dict[str, Hashable] = {}
        self.last: Hashable | None = None  # the key of the model loaded or used last

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[LoadedModel]:
        return list(self._entries.values())

    def total_bytes(self) -> int:
        return sum(e.info.memory_bytes for e in self._entries.values())

    def get(self, key: Hashable) -> LoadedModel | None:
        entry = self._entries.get(key)
        if entry is not None:
            self.touch(entry)
        return entry

    def touch(self, entry: LoadedModel) -> None:
        entry.last_used = time.time()
        self.last = entry.key

    def put(self, entry: LoadedModel) -> None:
        old = self._entries.get(entry.key)
        if old is not None and old is not entry:
            entry.aliases |= old.aliases
            self._drop(old)
        self._entries[entry.key] = entry
        for alias in entry.aliases:
            self.alias(entry, alias)
        self.touch(entry)

    def alias(self, entry: LoadedModel, alias: str) -> None:
        previous = self._entries.get(self._aliases.get(alias))
        if previous is not None and previous is not entry:
            previous.aliases.discard(alias)
        self._aliases[alias] = entry.key
        entry.aliases.add(alias)

    def find(self, name: str) -> LoadedModel | None:
        """An entry by alias, by the name it was loaded with, or None."""
        key = self._aliases.get(name)
        if key in self._entries:
            return self._entries[key]
        matches = [e for e in self._entries.values() if e.info.name == name]
        return max(matches, key=lambda e: e.last_used) if matches else None

    def current(self) -> LoadedModel | None:
        return self._entries.get(self.last)

    def remove(self, entry: LoadedModel) -> None:
        self._drop(entry)
        release_memory()

    def clear(self) -> None:
        for entry in list(self._entries.values()):
            self._drop(entry)
        release_memory()

    def _drop(self, entry: LoadedModel) -> None:
        self._entries.pop(entry.key, None)
        for alias in list(entry.aliases):
            if self._aliases.get(alias) == entry.key:
                del self._aliases[alias]
        if self.last == entry.key:
            self.last = None
        # Callers may still hold the handle: empty it so it no longer pins the weights.
        entry.model = None
        entry.tokenizer = None


def release_memory() -> None:
    """Collect cycles and hand cached CUDA blocks back to the driver."""
    import sys

    gc.collect()
    torch = sys.modules.get("torch")  # never import torch just to free memory
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


MODEL_CACHE = ModelCache()
