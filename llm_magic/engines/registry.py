"""The engines by name. `%llm_load`'s `--engine` choices, the `LLMMagics.engine` trait and
`llm_magic.load(engine=...)` all read this table; an engine's module is imported when a
model is first loaded with it.

A new engine: its own module (a `LOADER` and an `Engine`), and one line here."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import LoadError
from .base import Loader, LoadOptions


@dataclass(frozen=True)
class EngineEntry:
    name: str
    module: str  # holds LOADER, the engine's Loader
    summary: str  # for --engine's help
    by_server: bool = False  # picked by --server URL rather than by --engine
    # Its load draws transformers' and huggingface_hub's progress bars (the status line
    # stands in for them); importing transformers only to hush them would cost seconds.
    library_bars: bool = False


ENGINES: tuple[EngineEntry, ...] = (
    EngineEntry(
        "transformers",
        "llm_magic.engines.transformers_load",
        "a torch module in the kernel",
        library_bars=True,
    ),
    EngineEntry(
        "llama.cpp",
        "llm_magic.engines.llama_cpp",
        "a .gguf run as it is, quantized; needs llm_magic[llama-cpp]",
    ),
    EngineEntry(
        "server",
        "llm_magic.engines.server_load",
        "an OpenAI-compatible server (--server URL)",
        by_server=True,
    ),
)

DEFAULT = "transformers"


def local_names() -> tuple[str, ...]:
    """The engines `--engine` picks from (a server's is picked by `--server`)."""
    return tuple(e.name for e in ENGINES if not e.by_server)


def entry(name: str) -> EngineEntry:
    found = next((e for e in ENGINES if e.name == name), None)
    if found is None or found.by_server:
        fixes = [f"--engine {e.name}: {e.summary}" for e in ENGINES if not e.by_server]
        if found is not None:
            fixes.append("a server model: %llm_load MODEL --server URL")
        raise LoadError(f"--engine {name}: no such engine", fixes=fixes)
    return found


def shows_library_bars(engine: str, server: str | None) -> bool:
    """Whether loading with this engine draws the libraries' own progress bars."""
    return not server and any(e.library_bars for e in ENGINES if e.name == engine)


def loader(options: LoadOptions) -> Loader:
    """The Loader of the engine `options` asks for."""
    chosen = next(e for e in ENGINES if e.by_server) if options.server else entry(options.engine)
    loader: Loader = importlib.import_module(chosen.module).LOADER
    return loader
