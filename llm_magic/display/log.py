"""The cards of `%llm_log`: the latest runs as a table, one run whole (`--show ID`), and the
log's size (`--stats`). They hold copies of the rows (plain values), not the database."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..paths import short_name
from ..units import format_bytes, format_seconds
from .card import Card, Shown, plural
from .style import BOX, CARD_STYLE, DIM, FOOTER_STYLE, TEXT_STYLE

Row = Mapping[str, Any]  # a run as runlog.RunLog.query returns it

# The table's columns: (heading, the row's text, the most characters shown).
_COLUMNS: tuple[tuple[str, Any, int], ...] = (
    ("id", lambda r: str(r["id"]), 6),
    ("time", lambda r: r["when"], 19),
    ("kind", lambda r: r["kind"] or "", 8),
    ("model", lambda r: r["alias"] or short_name(r["model"] or "?"), 24),
    ("cell", lambda r: _cell(r), 14),
    ("prompt", lambda r: _line(r["prompt"]), 36),
    ("answer", lambda r: _answer(r), 48),
    ("tokens", lambda r: "" if r["new_tokens"] is None else str(r["new_tokens"]), 6),
)


def _line(text: str | None) -> str:
    return " ".join((text or "").split())


def _answer(row: Row) -> str:
    """The answer, the error, or for a scored text (no answer) its figures."""
    if row["error"]:
        return _line("✗ " + row["error"])
    figures = row.get("result") if row["kind"] == "score" and not row["answer"] else None
    if isinstance(figures, Mapping) and "logprob" in figures:
        return f"logprob {figures['logprob']:.3f} · perplexity {figures['perplexity']:.3f}"
    return _line(row["answer"])


def _cell(row: Row) -> str:
    count = row.get("execution_count")
    cell_id = row.get("cell_id")
    parts = ([f"[{count}]"] if count is not None else []) + ([cell_id[:8]] if cell_id else [])
    return " ".join(parts)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True, repr=False)
class RunsCard(Shown):
    """Runs as a table, oldest first (each row a dict with its time as `when`)."""

    title: str
    runs: tuple[Row, ...]
    notes: tuple[str, ...] = ()

    def cells(self) -> list[list[str]]:
        return [[_cut(get(r), width) for _, get, width in _COLUMNS] for r in self.runs]

    def text(self) -> str:
        lines = [self.title]
        if self.runs:
            table = [[h for h, _, _ in _COLUMNS]] + self.cells()
            widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
            lines += [
                "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                for row in table
            ]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(line.rstrip() for line in lines)

    def html(self) -> str:
        e = html.escape
        head = "".join(
            f"<th style='text-align:left;color:{DIM};padding-right:1em'>{e(h)}</th>"
            for h, _, _ in _COLUMNS
        )
        body = "".join(
            "<tr>"
            + "".join(
                f"<td style='text-align:left;vertical-align:top;padding-right:1em'>{e(c)}</td>"
                for c in row
            )
            + "</tr>"
            for row in self.cells()
        )
        table = f"<table style='border:none'><tr>{head}</tr>{body}</table>" if self.runs else ""
        notes = "".join(f"<div style='{FOOTER_STYLE}'>{e(n)}</div>" for n in self.notes)
        return f"<div style='{CARD_STYLE}'><div><b>{e(self.title)}</b></div>{table}{notes}</div>"


# --- one run whole ---------------------------------------------------------------------------

# (label, column) rows of `--show`, in order; empty values are left out.
_FACTS = (
    ("kind", "kind"),
    ("model", "model"),
    ("alias", "alias"),
    ("weights", "model_hash"),
    ("engine", "engine"),
    ("dtype", "dtype"),
    ("quantization", "quantization"),
    ("device", "device"),
    ("server", "server"),
    ("seed", "seed"),
    ("notebook", "notebook"),
    ("cell id", "cell_id"),
    ("In [n]", "execution_count"),
    ("conversation", "conversation"),
    ("turn", "turn"),
    ("--over item", "item"),
    ("stopped", "stop_reason"),
    ("error", "error"),
)
# The texts shown in full, each in a box.
_TEXTS = (
    ("cell", "cell"),
    ("prompt", "prompt"),
    ("what the model read", "rendered"),
    ("answer", "answer"),
)


@dataclass(frozen=True, repr=False)
class RunCard(Card):
    """One run as the log holds it: its facts, its texts in full, and the JSON columns."""

    run: Row

    def title(self) -> str:
        return f"run {self.run['id']} · {self.run['when']}"

    @property
    def ok(self) -> bool:
        return not self.run.get("error")

    def rows(self) -> list[tuple[str, str]]:
        run = self.run
        rows = [(label, str(run[c])) for label, c in _FACTS if run.get(c) not in (None, "")]
        if run.get("new_tokens") is not None:
            rows.append(
                (
                    "tokens",
                    f"{run.get('prompt_tokens') or 0} prompt · {run['new_tokens']} new"
                    + (f" · {format_seconds(run['seconds'])}" if run.get("seconds") else ""),
                )
            )
        rows.append(("settings", _json(run.get("settings"), None)))
        return rows

    def texts(self) -> list[tuple[str, str]]:
        shown = [(label, self.run[c]) for label, c in _TEXTS if self.run.get(c)]
        shown += [
            (name, _fields(self.run[name]))
            for name in ("provenance", "result")
            if self.run.get(name)
        ]
        return shown

    def text(self) -> str:
        parts = [super().text()]
        for label, body in self.texts():
            parts.append(f"── {label}\n{body.rstrip()}")
        return "\n".join(parts)

    def html(self) -> str:
        e = html.escape
        boxes = "".join(
            f"<div style='color:{DIM};margin-top:.5em'>{e(label)}</div>"
            f"<div style='{TEXT_STYLE};background:{BOX};padding:.3em'>{e(body.rstrip())}</div>"
            for label, body in self.texts()
        )
        return super().html() + f"<div>{boxes}</div>"


def _json(value: Any, indent: int | None) -> str:
    if value is None:
        return ""
    separators = (",", ": ") if indent else (", ", ": ")
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)


def _fields(value: Any) -> str:
    """A JSON column as 'name: value' lines, each value as compact JSON on its line."""
    if not isinstance(value, Mapping):
        return _json(value, None)
    return "\n".join(f"{name}: {_json(item, None)}" for name, item in value.items())


# --- the log's size ---------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class LogStatsCard(Card):
    """How many runs the log holds, how big it is, and where."""

    path: str
    runs: int
    size: int
    first: str | None
    last: str | None
    models: tuple[tuple[str, int], ...]
    kinds: tuple[tuple[str, int], ...]
    search: str  # how --search searches
    schema: int
    on: bool  # whether new runs are logged

    def title(self) -> str:
        return f"run log: {plural(self.runs, 'run')}, {format_bytes(self.size)}"

    def rows(self) -> list[tuple[str, str]]:
        top = ", ".join(f"{short_name(m)} ({n})" for m, n in self.models[:5])
        more = f" and {len(self.models) - 5} more" if len(self.models) > 5 else ""
        rows = [("file", self.path), ("logging", "on" if self.on else "off")]
        if self.first:
            rows.append(("runs", f"{self.first} → {self.last}"))
        if self.models:
            rows.append(("models", top + more))
        if self.kinds:
            rows.append(("kinds", ", ".join(f"{k} ({n})" for k, n in self.kinds)))
        rows += [("search", self.search), ("schema", f"version {self.schema}")]
        return rows


def runs_title(count: int, total: int, path: str, what: Sequence[str]) -> str:
    """'run log: the last 10 of 120 runs (model smol) · /path/runs.db'."""
    shown = f"the last {count} of {plural(total, 'run')}" if count < total else plural(count, "run")
    return f"run log: {shown}" + (f" ({'; '.join(what)})" if what else "") + f" · {path}"
