"""Engines: where the tokens come from.

A cached model is served by an engine. Everything around it — prompt filling, settings,
the streaming display, Ctrl-C, results, error cards, the cache — is shared
(`generation.py`, `api.py`, `magics/`) and never asks which engine it has. An engine
answers one question: given the prompt (chat messages, or raw text) and the settings,
stream text pieces, then report the tokens and why it stopped; and it can be interrupted.

- `transformers`: the model lives in the kernel (`handle.model` is a torch module).
- more engines (an OpenAI-compatible server, llama.cpp) implement the same `Engine`.

This module holds only the interface and the plain data crossing it: no heavy import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

TextCallback = Callable[[str], None]
ProgressCallback = Callable[[int, int], None]  # (groups done, groups in all): batches, or requests
Budget = Callable[
    [Sequence["Rendered"]], "tuple[int, tuple[str, ...]]"
]  # rows -> (max_new_tokens, notes)


@dataclass(frozen=True)
class Request:
    """What to generate from: chat messages ({"role", "content"} dicts, the format every
    chat API takes). With `raw`, no chat template: the messages' text is sent as it is."""

    messages: tuple[Mapping[str, str], ...]
    raw: bool = False
    label: str = "the prompt"  # named in errors: "the prompt", "prompt [3]"

    @property
    def text(self) -> str:
        """The last user message: the prompt as the user wrote it (after filling)."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def system(self) -> str | None:
        return next((m["content"] for m in self.messages if m["role"] == "system"), None)


@dataclass(frozen=True)
class Rendered:
    """A request in the engine's own form, before anything is generated."""

    request: Request
    shown: str  # what --show-prompt shows: the text the model reads, or the messages sent
    tokens: int | None  # prompt tokens, where the engine can count them before sending
    payload: Any = None  # the engine's own form (token ids, a JSON body, ...)
    notes: tuple[str, ...] = ()  # said with the result (e.g. how the prompt was sent)


@dataclass
class Completion:
    """One row's answer."""

    text: str  # stop strings cut off
    new_tokens: int
    stop_reason: str  # "eos", "length", "stop string", "interrupted" or "error"
    stop_string: str | None = None
    token_ids: tuple[int, ...] = ()  # where the engine has them
    prompt_tokens: int | None = None  # the engine's own count, where it reports one
    error: str | None = None  # for a row that failed on its own (the others stand)


@dataclass
class Run:
    """One generation call over one or more rows."""

    completions: list[Completion]
    started: float
    ended: float
    first_token_at: float | None = None
    interrupt: KeyboardInterrupt | None = None  # Ctrl-C arrived: completions are partial
    notes: tuple[str, ...] = ()  # e.g. max_new_tokens lowered to fit the context
    products: str | None = None  # which faster matrix products ran (transformers batches)


class Engine(Protocol):
    """What a cached model's engine does for generation."""

    kind: str  # "transformers", "server", ...

    @property
    def info(self) -> Any:  # loading.ModelInfo: name, revision, dtype, device for results
        ...

    def describe(self) -> dict[str, Any]:
        """Plain facts recorded in each result's metadata (engine, server, versions)."""
        ...

    def context_limit(self) -> int | None:
        """Positions the model reads (prompt + new tokens), where known."""
        ...

    def render(self, request: Request) -> Rendered:
        """The request in the engine's form; raises GenerationError for one it refuses."""
        ...

    def run(
        self,
        rows: Sequence[Rendered],
        seed: int | None,
        max_new: int,
        settings: Any,
        on_text: TextCallback | None = None,
    ) -> Run:
        """Generate for `rows` (one, when streaming to `on_text`). Ctrl-C is caught and
        returned as `Run.interrupt` with the partial completions."""
        ...

    def run_many(
        self,
        rows: Sequence[Rendered],
        seed: int | None,
        settings: Any,
        budget: Budget,
        batch_size: int | None,
        on_progress: ProgressCallback | None,
    ) -> Iterator[tuple[list[int], Run]]:
        """Many rows, as the engine does them best (padded batches, concurrent requests):
        yields (the rows' indices, their run) as each group finishes."""
        ...
