"""What `%llm_models`, `%llm_unload` and `%llm_load` without MODEL show: the cached models,
what an unload returned, the converted copies on disk, and the commands to act on."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Protocol

from ..paths import short_name
from ..units import format_bytes
from .card import Card, Shown, plural, warning_html
from .style import CARD_STYLE, DIM


def format_ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


@dataclass(frozen=True)
class ModelRow:
    """One cached model, as plain values."""

    alias: str
    name: str
    revision: str
    dtype: str  # how it is held: engine, quantization and dtype (ModelInfo.held_as)
    device: str
    memory_bytes: int
    idle_seconds: float  # since it was last used
    current: bool  # the default for %%llm_generate
    packed_bytes: int = 0  # of memory_bytes: weights packed for batches (cpu_matmul)
    adapters: tuple[tuple[str, int], ...] = ()  # (name, bytes) of the adapters riding on it
    default_adapter: str | None = None  # the one the model's name alone means


@dataclass(frozen=True, repr=False)
class ModelsCard(Shown):
    """What `%llm_models` shows: the cached models, their total, free memory and the budget.
    Plain values only: keeping it in `Out` keeps no model alive."""

    models: tuple[ModelRow, ...]
    total_bytes: int
    free_ram: int | None
    gpus: tuple[tuple[str, int, int], ...] = ()  # (device, free, total)
    max_models: int = 0
    memory_budget: int = 0

    _HEADER = ("", "alias", "model", "revision", "engine, dtype", "device", "memory", "last used")

    def table(self) -> list[tuple[str, ...]]:
        return [cells for _, cells in self._lines()]

    def _lines(self) -> list[tuple[str | None, tuple[str, ...]]]:
        """(the model's full name for a tooltip, the cells) per row: a model, then one row
        per adapter riding on it (`-m ALIAS:NAME`)."""
        lines: list[tuple[str | None, tuple[str, ...]]] = []
        for m, cells in zip(self.models, self._model_cells(), strict=True):
            lines.append((m.name, cells))
            label = m.alias.split(", ")[0] if m.alias else short_name(m.name)
            for name, size in m.adapters:
                mark = " (default)" if name == m.default_adapter else ""
                lines.append(
                    (
                        None,
                        (
                            "",
                            "",
                            f"↳ {label}:{name}{mark}",
                            "",
                            "adapter",
                            "",
                            format_bytes(size),
                            "",
                        ),
                    )
                )
        return lines

    def _model_cells(self) -> list[tuple[str, ...]]:
        return [
            (
                "*" if m.current else "",
                m.alias or "-",
                short_name(m.name),
                m.revision or "-",
                m.dtype,
                m.device,
                (format_bytes(m.memory_bytes) if m.memory_bytes else "–")
                + (
                    f" ({format_bytes(m.packed_bytes)} packed for batches)"
                    if m.packed_bytes
                    else ""
                ),
                format_ago(m.idle_seconds),
            )
            for m in self.models
        ]

    def summary(self) -> list[str]:
        marked = any(m.current for m in self.models)
        lines = [
            f"{plural(len(self.models), 'model')} cached, {format_bytes(self.total_bytes)} in all"
            + ("  (* = default for %%llm_generate)" if marked else "")
        ]
        if self.max_models or self.memory_budget:
            limits = [
                plural(self.max_models, "model") if self.max_models else "",
                format_bytes(self.memory_budget) if self.memory_budget else "",
            ]
            lines.append(
                "budget: "
                + ", ".join(x for x in limits if x)
                + " (least recently used unloaded first)"
            )
        free = [f"RAM {format_bytes(self.free_ram)}"] if self.free_ram is not None else []
        free += [f"{dev} {format_bytes(f)} of {format_bytes(t)}" for dev, f, t in self.gpus]
        if free:
            lines.append("free: " + " · ".join(free))
        return lines

    def paths(self) -> list[str]:
        """Where the models whose short name hides a path come from (under the table,
        which stays narrow)."""
        return [
            f"{short_name(m.name)}: {m.name}" for m in self.models if short_name(m.name) != m.name
        ]

    def text(self) -> str:
        rows = [self._HEADER] + self.table() if self.models else []
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEADER))] if rows else []
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        return "\n".join(lines + self.summary() + ["from " + p for p in self.paths()])

    def html(self) -> str:
        e = html.escape
        # No wrapping inside a cell (a name cut mid-word, "last / used"); the full path is
        # the short name's tooltip.
        cell = "<td style='padding:0 1em 0 0;text-align:left;white-space:nowrap'{}>{}</td>"
        head = "".join(
            "<th style='padding:0 1em 0 0;text-align:left;"
            f"color:{DIM};white-space:nowrap'>{e(h)}</th>"
            for h in self._HEADER
        )
        body = "".join(
            "<tr>"
            + "".join(
                cell.format(f" title='{e(name, quote=True)}'" if i == 2 and name else "", e(c))
                for i, c in enumerate(r)
            )
            + "</tr>"
            for name, r in self._lines()
        )
        table = f"<table style='border:none'><tr>{head}</tr>{body}</table>" if self.models else ""
        summary = "".join(f"<div>{e(line)}</div>" for line in self.summary())
        return f"<div style='{CARD_STYLE}'>{table}{summary}</div>"


@dataclass(frozen=True, repr=False)
class UnloadCard(Card):
    """What `%llm_unload` did: which models, the memory returned, and whether they are gone."""

    # (name, aliases, bytes, how it was held: engine, quantization, dtype)
    models: tuple[tuple[str, tuple[str, ...], int, str], ...]
    freed: bool
    rss_before: int | None
    rss_after: int | None
    # (device, allocated before, after, reserved before, after)
    cuda: tuple[tuple[str, int, int, int, int], ...] = ()
    held_by: tuple[str, ...] = ()
    cache_models: int = 0
    cache_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.freed

    def title(self) -> str:
        if not self.models:
            return "nothing to unload: the cache is empty"
        names = ", ".join(_unloaded_name(*m) for m in self.models)
        return (
            f"unloaded {names}"
            if self.freed
            else f"removed {names} from the cache, but it is still in memory"
        )

    def rows(self) -> list[tuple[str, str]]:
        if not self.models:
            return []
        fb = format_bytes
        rows = [("weights", fb(sum(m[2] for m in self.models)))]
        if self.rss_before is not None and self.rss_after is not None:
            back = self.rss_before - self.rss_after
            rows.append(
                ("RSS", f"{fb(self.rss_before)} → {fb(self.rss_after)}  ({fb(back)} returned)")
            )
        for dev, a0, a1, r0, r1 in self.cuda:
            rows.append((dev, f"allocated {fb(a0)} → {fb(a1)}, reserved {fb(r0)} → {fb(r1)}"))
        rows.append(("cache", f"{plural(self.cache_models, 'model')} left, {fb(self.cache_bytes)}"))
        return rows

    def notes(self) -> list[str]:
        if self.freed or not self.models:
            return []
        if self.held_by:
            names = ", ".join(self.held_by)
            return [f"still referenced by {names} in your namespace: `del {names}` to free it"]
        return [
            "still referenced from somewhere else (a variable in another scope, a list, "
            "a closure): delete that reference to free it"
        ]


def _unloaded_name(name: str, aliases: tuple[str, ...], size: int, held_as: str) -> str:
    """'SmolLM2 (transformers nf4 (bfloat16 compute), as sm)': how it was held tells apart
    one file cached twice."""
    said = [held_as] + ([f"as {', '.join(aliases)}"] if aliases else [])
    return f"{short_name(name)} ({', '.join(said)})"


class CopyFacts(Protocol):
    """What the disk card reads of a converted copy (gguf_cache.ConvertedCopy)."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def gguf(self) -> str | None: ...
    @property
    def source_exists(self) -> bool: ...
    @property
    def source_matches(self) -> bool: ...
    @property
    def problem(self) -> str | None: ...


@dataclass(frozen=True, repr=False)
class DiskCard(Card):
    """`%llm_models --disk` / `%llm_unload --disk`: the converted copies of .gguf files on
    disk, their sizes and sources; what was deleted."""

    folder: str  # where the copies live
    copies: tuple[CopyFacts, ...] = ()  # what is there now
    deleted: tuple[CopyFacts, ...] = ()  # what this call deleted
    free_bytes: int | None = None  # on the copies' disk
    said: tuple[str, ...] = ()  # more to say (a loaded model read from a deleted copy)

    def title(self) -> str:
        if self.deleted:
            names = ", ".join(c.name for c in self.deleted)
            freed = format_bytes(sum(c.size_bytes for c in self.deleted))
            return f"deleted {names} ({freed} freed)"
        n = len(self.copies)
        size = format_bytes(sum(c.size_bytes for c in self.copies))
        return f"{n} converted .gguf cop{'y' if n == 1 else 'ies'}, {size} on disk"

    def rows(self) -> list[tuple[str, str]]:
        rows = [
            (
                c.name,
                f"{format_bytes(c.size_bytes)}  {c.dtype}  from {c.gguf or '?'}" + _source_state(c),
            )
            for c in self.copies
        ]
        free = f"  ({format_bytes(self.free_bytes)} free)" if self.free_bytes is not None else ""
        return rows + [("folder", self.folder + free)]

    def notes(self) -> list[str]:
        return list(self.said) + [
            f"{c.name}: damaged ({c.problem}); the next load converts it again"
            for c in self.copies
            if c.problem
        ]


def _source_state(copy: CopyFacts) -> str:
    if not copy.gguf:
        return ""
    if not copy.source_exists:
        return "  (the .gguf is gone)"
    if not copy.source_matches:
        return "  (the .gguf changed since: the next load converts it again)"
    return ""


@dataclass(frozen=True, repr=False)
class CommandsCard(Shown):
    """Sections of things to act on, each row (what, facts, the command that does it):
    what `%llm_load` with no MODEL shows, as one table whose columns line up across the
    sections (what, the command, then the facts, which run long)."""

    title: str
    sections: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...]  # (heading, rows)
    warnings: tuple[str, ...] = ()

    def text(self) -> str:
        rows = [r for _, section in self.sections for r in section]
        what = max((len(r[0]) for r in rows), default=0)
        command = max((len(r[2]) for r in rows), default=0)
        lines = [self.title]
        for heading, section in self.sections:
            lines.append(f"{heading}:")
            if not section:
                lines.append("  (none)")
            lines += [f"  {w.ljust(what)}  {c.ljust(command)}  {f}".rstrip() for w, f, c in section]
        return "\n".join(lines + [f"⚠ {w}" for w in self.warnings])

    def html(self) -> str:
        e = html.escape
        cell = "<td style='padding:0 1em 0 {};text-align:left;white-space:nowrap{}'>{}</td>"
        body = []
        for heading, rows in self.sections:
            # The heading runs on over the row's other cells without widening its column.
            body.append(
                "<tr><td style='padding-top:.4em;text-align:left;white-space:nowrap;"
                f"max-width:0;overflow:visible;color:{DIM}'>{e(heading)}</td></tr>"
            )
            body += [
                "<tr>"
                + cell.format("1em", "", e(what))
                + cell.format("0", "", f"<code>{e(command)}</code>")
                + cell.format("0", f";color:{DIM}", e(facts))
                + "</tr>"
                for what, facts, command in rows
            ] or ["<tr><td style='padding:0 1em'>(none)</td></tr>"]
        parts = [f"<div><b>{e(self.title)}</b></div>"]
        parts.append(f"<table style='border:none'>{''.join(body)}</table>")
        parts += [warning_html(w) for w in self.warnings]
        return f"<div style='{CARD_STYLE}'>" + "".join(parts) + "</div>"
