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
        return rows

    def notes(self) -> list[str]:
        return list(self.info.warnings)


@dataclass(frozen=True, repr=False)
class StatusLine:
    """A one-line progress message; a display updated in place shows the current one."""

    message: str

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return {"text/plain": f"… {self.message}", "text/html": f"<div style='font-family:monospace;color:#666'>… {html.escape(self.message)}</div>"}
