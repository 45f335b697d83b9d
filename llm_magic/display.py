"""Cards: one object, one `_repr_mimebundle_`, text/plain for terminals and escaped
text/html for Jupyter. Cards hold plain values only, never a model or a tensor, so
keeping them in `Out` keeps no weights alive."""

from __future__ import annotations

import html
from dataclasses import dataclass


def format_bytes(n: int | float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB", "MB") else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def format_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def format_seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.1f} s"


class Card:
    """A titled block of (label, value) pairs and warnings, shown as text or HTML."""

    ok = True

    def title(self) -> str:
        raise NotImplementedError

    def rows(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def notes(self) -> list[str]:
        return []

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return {"text/plain": self.text(), "text/html": self.html()}

    def __repr__(self) -> str:
        return self.text()

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
        color = "#2e7d32" if self.ok else "#c62828"
        mark = "✓" if self.ok else "✗"
        body = "".join(
            f"<tr><td style='padding:0 1em 0 0;color:#666'>{e(label)}</td><td style='text-align:left'>{e(value)}</td></tr>"
            for label, value in self.rows()
        )
        notes = "".join(f"<div style='color:#b26a00'>⚠ {e(note)}</div>" for note in self.notes())
        return (
            "<div style='font-family:monospace;font-size:90%;line-height:1.4'>"
            f"<div><b style='color:{color}'>{mark}</b> <b>{e(self.title())}</b></div>"
            f"<table style='margin-left:1em;border:none'>{body}</table>{notes}</div>"
        )


@dataclass(frozen=True, repr=False)
class LoadCard(Card):
    """What `%llm_load` did: model, size, device, dtype and why, source, time, cache."""

    info: object  # loading.ModelInfo
    cache_state: str  # "new", "cached" or "reloaded"
    cache_models: int
    cache_bytes: int
    seconds: float  # this call's time: the load, or the cache lookup
    aliases: tuple[str, ...] = ()
    fit: str | None = None  # the pre-flight verdict ("fits on cpu: needs ..."), new loads only
    budget_notes: tuple[str, ...] = ()  # models the budget unloaded to make room

    def title(self) -> str:
        alias = f"  (as {', '.join(self.aliases)})" if self.aliases else ""
        name = self.info.name if self.info.kind == "hub" else self.info.name.rstrip("/").rsplit("/", 1)[-1]
        return f"{name}  →  {self.info.class_name}{alias}"

    def rows(self) -> list[tuple[str, str]]:
        i = self.info
        rows = [
            ("parameters", format_count(i.num_params)),
            ("memory", format_bytes(i.memory_bytes)),
            ("device", i.device),
            ("dtype", f"{i.dtype}  ({i.dtype_reason})"),
            ("source", i.source),
        ]
        if i.converted_from:
            rows.append(("converted", f"from {i.converted_from}"))
        if i.revision:
            rows.append(("revision", i.revision[:12]))
        if i.trust_remote_code:
            rows.append(("remote code", "trusted (--trust-remote-code)"))
        what = "loaded in" if self.cache_state != "cached" else "cache hit"
        n = self.cache_models
        rows.append((what, format_seconds(self.seconds)))
        rows.append(("cache", f"{self.cache_state} · {n} model{'s' if n != 1 else ''}, {format_bytes(self.cache_bytes)} in all"))
        if self.fit:
            rows.append(("fit check", self.fit))
        return rows

    def notes(self) -> list[str]:
        return list(self.budget_notes) + list(self.info.warnings)


@dataclass(frozen=True, repr=False)
class StatusLine:
    """A one-line progress message; a display updated in place shows the current one."""

    message: str

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return {"text/plain": f"… {self.message}", "text/html": f"<div style='font-family:monospace;color:#666'>… {html.escape(self.message)}</div>"}


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
    dtype: str
    device: str
    memory_bytes: int
    idle_seconds: float  # since it was last used
    current: bool  # the default for %%llm_generate


@dataclass(frozen=True, repr=False)
class ModelsCard:
    """What `%llm_models` shows: the cached models, their total, free memory and the budget.
    Plain values only: keeping it in `Out` keeps no model alive."""

    models: tuple[ModelRow, ...]
    total_bytes: int
    free_ram: int | None
    gpus: tuple[tuple[str, int, int], ...] = ()  # (device, free, total)
    max_models: int = 0
    memory_budget: int = 0

    _HEADER = ("", "alias", "model", "revision", "dtype", "device", "memory", "last used")

    def table(self) -> list[tuple[str, ...]]:
        return [
            ("*" if m.current else "", m.alias or "-", m.name, m.revision or "-", m.dtype, m.device,
             format_bytes(m.memory_bytes), format_ago(m.idle_seconds))
            for m in self.models
        ]

    def summary(self) -> list[str]:
        n = len(self.models)
        lines = [f"{n} model{'s' if n != 1 else ''} cached, {format_bytes(self.total_bytes)} in all"
                 + ("  (* = default for %%llm_generate)" if n else "")]
        if self.max_models or self.memory_budget:
            limits = [f"{self.max_models} model{'s' if self.max_models != 1 else ''}" if self.max_models else "",
                      format_bytes(self.memory_budget) if self.memory_budget else ""]
            lines.append("budget: " + ", ".join(x for x in limits if x) + " (least recently used unloaded first)")
        free = [f"RAM {format_bytes(self.free_ram)}"] if self.free_ram is not None else []
        free += [f"{dev} {format_bytes(f)} of {format_bytes(t)}" for dev, f, t in self.gpus]
        if free:
            lines.append("free: " + " · ".join(free))
        return lines

    def text(self) -> str:
        rows = [self._HEADER] + self.table() if self.models else []
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEADER))] if rows else []
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines + self.summary())

    def html(self) -> str:
        e = html.escape
        cell = "<td style='padding:0 1em 0 0;text-align:left'>{}</td>"
        head = "".join(f"<th style='padding:0 1em 0 0;text-align:left;color:#666'>{e(h)}</th>" for h in self._HEADER)
        body = "".join("<tr>" + "".join(cell.format(e(c)) for c in r) + "</tr>" for r in self.table())
        table = f"<table style='border:none'><tr>{head}</tr>{body}</table>" if self.models else ""
        summary = "".join(f"<div>{e(line)}</div>" for line in self.summary())
        return f"<div style='font-family:monospace;font-size:90%;line-height:1.4'>{table}{summary}</div>"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return {"text/plain": self.text(), "text/html": self.html()}

    def __repr__(self) -> str:
        return self.text()


@dataclass(frozen=True, repr=False)
class UnloadCard(Card):
    """What `%llm_unload` did: which models, the memory returned, and whether they are gone."""

    models: tuple[tuple[str, tuple[str, ...], int], ...]  # (name, aliases, bytes)
    freed: bool
    rss_before: int | None
    rss_after: int | None
    cuda: tuple[tuple[str, int, int, int, int], ...] = ()  # (device, alloc before, after, reserved before, after)
    held_by: tuple[str, ...] = ()
    cache_models: int = 0
    cache_bytes: int = 0

    @property
    def ok(self) -> bool:  # type: ignore[override]
        return self.freed

    def title(self) -> str:
        if not self.models:
            return "nothing to unload: the cache is empty"
        names = ", ".join(_short(n) + (f" (as {', '.join(a)})" if a else "") for n, a, _ in self.models)
        return f"unloaded {names}" if self.freed else f"removed {names} from the cache, but it is still in memory"

    def rows(self) -> list[tuple[str, str]]:
        if not self.models:
            return []
        rows = [("weights", format_bytes(sum(b for _, _, b in self.models)))]
        if self.rss_before is not None and self.rss_after is not None:
            back = self.rss_before - self.rss_after
            rows.append(("RSS", f"{format_bytes(self.rss_before)} → {format_bytes(self.rss_after)}  ({format_bytes(back)} returned)"))
        for dev, a0, a1, r0, r1 in self.cuda:
            rows.append((dev, f"allocated {format_bytes(a0)} → {format_bytes(a1)}, reserved {format_bytes(r0)} → {format_bytes(r1)}"))
        n = self.cache_models
        rows.append(("cache", f"{n} model{'s' if n != 1 else ''} left, {format_bytes(self.cache_bytes)}"))
        return rows

    def notes(self) -> list[str]:
        if self.freed or not self.models:
            return []
        if self.held_by:
            names = ", ".join(self.held_by)
            return [f"still referenced by {names} in your namespace: `del {names}` to free it"]
        return ["still referenced from somewhere else (a variable in another scope, a list, a closure): "
                "delete that reference to free it"]


def _short(name: str) -> str:
    """A Hub id as is; a path by its last part."""
    return name if "/" not in name or not name.startswith(("/", ".", "~")) else name.rstrip("/").rsplit("/", 1)[-1]
