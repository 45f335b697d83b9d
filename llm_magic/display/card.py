"""The card base: a value that shows itself as text/plain for terminals and escaped
text/html for Jupyter. Cards hold plain values only, never a model or a tensor, so
keeping them in `Out` keeps no weights alive."""

from __future__ import annotations

import html
from typing import Any

from .style import CARD_STYLE, DIM, ERROR, OK, TEXT, WARN


def warning_html(note: str) -> str:
    """A warning line: the theme's text colour, the ⚠ and a left rule in the warn colour."""
    return (
        f"<div style='color:{TEXT};border-left:3px solid {WARN};padding-left:.4em'>"
        f"<span style='color:{WARN}'>⚠</span> {html.escape(note)}</div>"
    )


class Shown:
    """What every card shares: one mimebundle of its text and its HTML, and its text as
    its repr (a terminal, a log, a doctest)."""

    def text(self) -> str:
        raise NotImplementedError

    def html(self) -> str:
        raise NotImplementedError

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": self.text(), "text/html": self.html()}

    def __repr__(self) -> str:
        return self.text()


class Card(Shown):
    """A titled block of (label, value) rows and warnings; ✓ or ✗ before the title."""

    @property
    def ok(self) -> bool:
        return True

    def title(self) -> str:
        raise NotImplementedError

    def rows(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def notes(self) -> list[str]:
        return []

    def text(self) -> str:
        mark = "✓" if self.ok else "✗"
        rows = self.rows()
        width = max((len(label) for label, _ in rows), default=0)
        lines = [f"{mark} {self.title()}"]
        lines += [f"  {label.ljust(width)}  {value}" for label, value in rows]
        lines += [f"  ⚠ {note}" for note in self.notes()]
        return "\n".join(lines)

    def html(self) -> str:
        e = html.escape
        color = OK if self.ok else ERROR
        mark = "✓" if self.ok else "✗"
        body = "".join(
            f"<tr><td style='padding:0 1em 0 0;color:{DIM}'>{e(label)}</td>"
            f"<td style='text-align:left'>{e(value)}</td></tr>"
            for label, value in self.rows()
        )
        notes = "".join(warning_html(note) for note in self.notes())
        return (
            f"<div style='{CARD_STYLE}'>"
            f"<div><b style='color:{color}'>{mark}</b> <b>{e(self.title())}</b></div>"
            f"<table style='margin-left:1em;border:none'>{body}</table>{notes}</div>"
        )


def plural(n: int, word: str) -> str:
    """`1 model`, `2 models`."""
    return f"{n} {word}{'s' if n != 1 else ''}"
