"""The types of a failure explained for the user, and the short card they render as.

IPython calls `_render_traceback_()` on an exception that has it and prints those lines
instead of the traceback, so a failed cell shows a short card while the original
exception stays chained (`raise LoadError(...) from e`) for code and for `%llm_tb`.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..redact import redact

# A card stays short: what, cause, these many details and fixes, the original, the hint.
MAX_DETAILS = 4
MAX_FIXES = 4
MAX_ORIGINAL = 110  # characters of the original message's first line, cut at a word


@dataclass
class Diagnosis:
    # What failed, naming the user's input.
    what: str
    # The likely cause; None when no rule recognises the error.
    cause: str | None = None
    fixes: list[str] = field(default_factory=list)
    # Facts that support the cause (sizes, memory, files).
    details: list[str] = field(default_factory=list)


class LLMError(Exception):
    """A failure explained for the user: a short card, the original chained as __cause__."""

    # Where the full traceback is, said on the card (subclasses add their own way).
    traceback_hint = "full traceback: %llm_tb"

    def __init__(
        self,
        what: str,
        cause: str | None = None,
        fixes: list[str] | None = None,
        details: list[str] | None = None,
    ) -> None:
        self.diagnosis = Diagnosis(what, cause, list(fixes or []), list(details or []))
        # Set by `--verbose`: the card is followed by the full traceback.
        self.verbose = False
        # The type in the chain a rule recognised, when not the top one.
        self.matched: str | None = None
        super().__init__(what if cause is None else f"{what}: {cause}")

    def card_lines(self) -> list[str]:
        """At most 12 lines: what, cause, 4 details, 4 fixes, the original, the traceback hint."""
        d = self.diagnosis
        lines = [f"✗ {d.what}"]
        if d.cause:
            lines.append(f"  cause: {d.cause}")
        lines += [f"  · {fact}" for fact in d.details[:MAX_DETAILS]]
        lines += [f"  → {fix}" for fix in d.fixes[:MAX_FIXES]]
        original = self.__cause__
        if original is not None:
            recognised = (
                f"  (recognised: {self.matched})"
                if self.matched and self.matched != type(original).__name__
                else ""
            )
            lines.append(f"  {original_line(original)}{recognised}")
            lines.append(f"  {self.traceback_hint}")
        return [redact(line) for line in lines]

    def full_traceback(self) -> list[str]:
        """The chained traceback, original first, as lines (what `%llm_tb` prints), with
        credentials cut out: it quotes the cell's line, which may hold a URL's password."""
        return full_traceback(self).splitlines()

    def _render_traceback_(self) -> list[str]:
        lines = self.card_lines()
        if self.verbose:
            lines += [""] + self.full_traceback()
        return lines


class LoadError(LLMError):
    """`%llm_load` / `llm_magic.load` failed."""

    traceback_hint = "full traceback: %llm_tb  (or add --verbose to %llm_load)"


class GenerationError(LLMError):
    """`%%llm_generate` / `llm_magic.generate` failed."""


# IPython's hook: an exception with this method is shown as the lines it returns.
_RENDER_TRACEBACK = "_render_traceback_"


def quiet_interrupt(interrupt: KeyboardInterrupt, message: str) -> KeyboardInterrupt:
    """Make IPython show one line for this Ctrl-C instead of a traceback through torch
    and transformers (hundreds of lines). It stays a KeyboardInterrupt, so the cell still
    fails as interrupted and the cells queued after it do not run; `%llm_tb` still
    prints the full traceback."""
    line = f"KeyboardInterrupt: {message}"
    # IPython asks the instance (showtraceback), so the method is set on this one only.
    setattr(interrupt, _RENDER_TRACEBACK, lambda: [line])
    return interrupt


def full_traceback(error: BaseException, secrets: Iterable[str | None] = ()) -> str:
    """The chained traceback of any exception as text, with credentials (and `secrets`)
    cut out."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return redact(text, secrets)


def original_line(exc: BaseException) -> str:
    """`Type: first line of the message` (the message cut at a word, near MAX_ORIGINAL
    characters)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    if len(first) > MAX_ORIGINAL:
        first = first[:MAX_ORIGINAL].rsplit(" ", 1)[0].rstrip(" ,.;:") + " …"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
