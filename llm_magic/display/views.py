"""What a running cell shows and updates in place: a status line, the text as it streams,
the prompt as the model reads it (`--show-prompt`), and the progress of a `--over` run."""

from __future__ import annotations

import html
from dataclasses import dataclass

from .card import Shown, warning_html
from .style import (
    BOX,
    COLUMN_STYLE,
    COLUMNS_STYLE,
    FOOTER_STYLE,
    HEAD_STYLE,
    STATUS_STYLE,
    TEXT,
    TEXT_STYLE,
)


@dataclass(frozen=True, repr=False)
class StatusLine(Shown):
    """A one-line progress message; a display updated in place shows the current one."""

    message: str

    def text(self) -> str:
        return f"… {self.message}"

    def html(self) -> str:
        return f"<div style='{STATUS_STYLE}'>… {html.escape(self.message)}</div>"


@dataclass(frozen=True, repr=False)
class StreamView(Shown):
    """The text so far, while a generation streams (a display updated in place)."""

    text_so_far: str
    notes: tuple[str, ...] = ()  # said before the text (max_new_tokens lowered, ...)

    def status(self) -> str:
        waiting = "… generating" if self.text_so_far else "… waiting for the first token"
        return waiting + " (Ctrl-C / interrupt stops it, keeping the text)"

    def text(self) -> str:
        shown = [self.text_so_far] if self.text_so_far else []
        return "\n".join([f"⚠ {n}" for n in self.notes] + shown + [self.status()])

    def html(self) -> str:
        return (
            "".join(warning_html(n) for n in self.notes)
            + f"<div><div style='{TEXT_STYLE}'>{html.escape(self.text_so_far)}</div>"
            f"<div style='{FOOTER_STYLE}'>{html.escape(self.status())}</div></div>"
        )


@dataclass(frozen=True, repr=False)
class PromptView(Shown):
    """The prompt exactly as the model reads it (`--show-prompt`)."""

    prompt: str
    tokens: int | None

    def head(self) -> str:
        if self.tokens is None:
            return "prompt (messages as sent; the server counts the tokens):"
        return f"prompt ({self.tokens} tokens):"

    def text(self) -> str:
        return f"{self.head()}\n{self.prompt}"

    def html(self) -> str:
        box = f"background:{BOX};color:{TEXT};padding:.4em;margin:0 0 .4em 0;white-space:pre-wrap"
        return (
            f"<div style='{FOOTER_STYLE}'>{html.escape(self.head())}</div>"
            f"<pre style='{box}'>{html.escape(self.prompt)}</pre>"
        )


@dataclass(frozen=True, repr=False)
class BatchProgress(Shown):
    """A progress bar over the batches of a `--over` run, with the time so far and an
    estimate of the time left (from the pace of the groups done)."""

    done: int
    total: int
    items: int
    elapsed: float | None = None  # seconds since the run started
    noun: str = "prompts"  # what the items are: prompts, texts scored

    def words(self) -> str:
        # A step per prompt: a server's requests, llama.cpp, batch size 1.
        if self.total == self.items:
            said = f"{self.done}/{self.items} {self.noun}"
        else:
            said = f"batch {self.done}/{self.total} · {self.items} {self.noun}"
        if self.elapsed is None:
            return said
        said += f" · {clock(self.elapsed)} elapsed"
        if 0 < self.done < self.total:
            said += f" · about {clock(self.elapsed / self.done * (self.total - self.done))} left"
        return said

    def text(self) -> str:
        width = 24
        filled = round(width * self.done / self.total) if self.total else width
        return f"[{'#' * filled}{'.' * (width - filled)}] {self.words()}"

    def html(self) -> str:
        return (
            f"<div style='{STATUS_STYLE}'>"
            f"<progress value='{self.done}' max='{self.total}'></progress> "
            f"{html.escape(self.words())}</div>"
        )


def clock(seconds: float) -> str:
    """A duration as a person reads it on a progress line: 7 s, 3 min 05 s, 1 h 02 min."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


@dataclass(frozen=True, repr=False)
class ColumnsView(Shown):
    """Models side by side while a `-m A B` cell runs (a display updated in place): per
    column the model's name, its text so far, and its footer or what it is doing."""

    columns: tuple[tuple[str, str, str], ...]  # (model, text, footer or status)

    def text(self) -> str:
        return "\n".join(
            f"══ {m}\n{t}\n── {f}" if t else f"══ {m}\n── {f}" for m, t, f in self.columns
        )

    def html(self) -> str:
        e = html.escape
        columns = "".join(
            f"<div style='{COLUMN_STYLE}'><div style='{HEAD_STYLE}'>{e(m)}</div>"
            f"<div style='{TEXT_STYLE}'>{e(t)}</div>"
            f"<div style='{FOOTER_STYLE}'>{e(f)}</div></div>"
            for m, t, f in self.columns
        )
        return f"<div style='{COLUMNS_STYLE}'>{columns}</div>"
