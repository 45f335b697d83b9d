"""Exception -> diagnosis (what failed, likely cause, fixes), and its short rendering.

IPython calls `_render_traceback_()` on an exception that has it and prints those lines
instead of the traceback, so a failed cell shows a short card while the original
exception stays chained (`raise LLMError(...) from e`) for code and for `%tb`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Diagnosis:
    what: str  # what failed, naming the user's input
    cause: str | None = None  # the likely cause; None when we do not recognise the error
    fixes: list[str] = field(default_factory=list)


class LLMError(Exception):
    """A failure explained for the user: a short card, the original chained as __cause__."""

    def __init__(self, what: str, cause: str | None = None, fixes: list[str] | None = None):
        self.diagnosis = Diagnosis(what, cause, list(fixes or []))
        super().__init__(what if cause is None else f"{what}: {cause}")

    def card_lines(self) -> list[str]:
        d = self.diagnosis
        lines = [f"✗ {d.what}"]
        if d.cause:
            lines.append(f"  cause: {d.cause}")
        for fix in d.fixes[:4]:
            lines.append(f"  → {fix}")
        original = self.__cause__
        if original is not None:
            first = (str(original).strip().splitlines() or [""])[0]
            if len(first) > 200:
                first = first[:197] + "..."
            lines.append(f"  ({type(original).__name__}: {first})")
            lines.append("  full traceback: %tb")
        return lines

    def _render_traceback_(self) -> list[str]:
        return self.card_lines()


class LoadError(LLMError):
    """`%llm_load` / `llm_magic.load` failed."""


class GenerationError(LLMError):
    """`%%llm_generate` / `llm_magic.generate` failed."""
