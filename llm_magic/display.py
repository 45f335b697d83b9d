"""Cards: one object, one `_repr_mimebundle_`, text/plain for terminals and escaped
text/html for Jupyter. Cards hold plain values only, never a model or a tensor, so
keeping them in `Out` keeps no weights alive."""

from __future__ import annotations

import html
from dataclasses import dataclass

# Colours from JupyterLab's theme variables, so light and dark themes both read well;
# the fallbacks serve classic Notebook, VS Code and static HTML (a white page).
# Text keeps the theme's own colours; the accent colours mark only glyphs and borders,
# since no single orange or red reads as text on both a white and a near-black page.
DIM = "var(--jp-ui-font-color2, #666)"  # labels, footers, status lines
TEXT = "var(--jp-content-font-color1, inherit)"
BOX = "var(--jp-layout-color2, #f0f0f0)"  # the --show-prompt box
OK_MARK = "var(--jp-success-color0, #2e7d32)"
ERROR_MARK = "var(--jp-error-color1, #c62828)"
WARN_MARK = "#b26a00"  # JupyterLab's warn colours are too light on white; this one is 3.9:1 there, 4.9:1 on dark


def warning_html(note: str) -> str:
    """A warning line: the theme's text colour, the ⚠ and a left rule in the warn colour."""
    return (
        f"<div style='color:{TEXT};border-left:3px solid {WARN_MARK};padding-left:.4em'>"
        f"<span style='color:{WARN_MARK}'>⚠</span> {html.escape(note)}</div>"
    )


NO_TEMPLATE = "none — prompts are continued as plain text"


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
        color = OK_MARK if self.ok else ERROR_MARK
        mark = "✓" if self.ok else "✗"
        body = "".join(
            f"<tr><td style='padding:0 1em 0 0;color:{DIM}'>{e(label)}</td><td style='text-align:left'>{e(value)}</td></tr>"
            for label, value in self.rows()
        )
        notes = "".join(warning_html(note) for note in self.notes())
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
    extra_rows: tuple[tuple[str, str], ...] = ()  # engine, quantization, context, threads, hints

    def title(self) -> str:
        alias = f"  (as {', '.join(self.aliases)})" if self.aliases else ""
        name = (
            self.info.name
            if self.info.kind == "hub"
            else self.info.name.rstrip("/").rsplit("/", 1)[-1]
        )
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
        rows += list(self.extra_rows)
        what = "loaded in" if self.cache_state != "cached" else "cache hit"
        n = self.cache_models
        rows.append((what, format_seconds(self.seconds)))
        rows.append(
            (
                "cache",
                f"{self.cache_state} · {n} model{'s' if n != 1 else ''}, {format_bytes(self.cache_bytes)} in all",
            )
        )
        if self.fit:
            rows.append(("fit check", self.fit))
        return rows

    def notes(self) -> list[str]:
        template = (
            [f"chat template: {NO_TEMPLATE}"]
            if getattr(self.info, "chat_template", None) is False
            else []
        )
        return list(self.budget_notes) + list(self.info.warnings) + template


@dataclass(frozen=True, repr=False)
class ServerCard(Card):
    """What `%llm_load --server URL` did: the served model, the server and what it says
    about itself, the round trip, and the cache. Never the key: only its variable's name."""

    info: object  # serving.ServerInfo
    cache_state: str
    cache_models: int
    cache_bytes: int
    seconds: float
    aliases: tuple[str, ...] = ()
    concurrency: int = 16
    timeout: float = 300.0

    def title(self) -> str:
        alias = f"  (as {', '.join(self.aliases)})" if self.aliases else ""
        return f"{_short_name(self.info.name)}  →  served at {self.info.url}{alias}"

    def rows(self) -> list[tuple[str, str]]:
        i = self.info
        facts = [
            f"{k} {v}"
            for k, v in i.entry.items()
            if k not in ("id", "object", "created") and isinstance(v, (str, int, float))
        ]
        rows = [("model", i.name + (f"  ({', '.join(facts)})" if facts else ""))]
        others = [m.get("id") for m in i.served if m.get("id") != i.name]
        if others:
            rows.append(
                ("also served", ", ".join(others[:6]) + (" ..." if len(others) > 6 else ""))
            )
        rows.append(("server", i.url + (f"  ({i.server})" if i.server else "")))
        if i.context_length:
            rows.append(("context", f"{i.context_length} tokens"))
        rows.append(("api key", f"from ${i.api_key_env}" if i.api_key_env else "none sent"))
        rows.append(("round trip", format_seconds(i.latency) + "  (GET /models)"))
        rows.append(
            ("requests", f"--over sends {self.concurrency} at once · timeout {self.timeout:g} s")
        )
        n = self.cache_models
        rows.append(
            (
                "loaded in" if self.cache_state != "cached" else "cache hit",
                format_seconds(self.seconds),
            )
        )
        rows.append(
            (
                "cache",
                f"{self.cache_state} · {n} model{'s' if n != 1 else ''}, {format_bytes(self.cache_bytes)} in all",
            )
        )
        return rows

    def notes(self) -> list[str]:
        return list(self.info.warnings)


@dataclass(frozen=True, repr=False)
class StatusLine:
    """A one-line progress message; a display updated in place shows the current one."""

    message: str

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return {
            "text/plain": f"… {self.message}",
            "text/html": f"<div style='font-family:monospace;color:{DIM}'>… {html.escape(self.message)}</div>",
        }


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
    packed_bytes: int = 0  # of memory_bytes: weights packed for batches (cpu_matmul)


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
            (
                "*" if m.current else "",
                m.alias or "-",
                _short(m.name),
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
        n = len(self.models)
        marked = any(m.current for m in self.models)
        lines = [
            f"{n} model{'s' if n != 1 else ''} cached, {format_bytes(self.total_bytes)} in all"
            + ("  (* = default for %%llm_generate)" if marked else "")
        ]
        if self.max_models or self.memory_budget:
            limits = [
                f"{self.max_models} model{'s' if self.max_models != 1 else ''}"
                if self.max_models
                else "",
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
        return [f"{_short(m.name)}: {m.name}" for m in self.models if _short(m.name) != m.name]

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
            f"<th style='padding:0 1em 0 0;text-align:left;color:{DIM};white-space:nowrap'>{e(h)}</th>"
            for h in self._HEADER
        )
        body = "".join(
            "<tr>"
            + "".join(
                cell.format(f" title='{e(m.name, quote=True)}'" if i == 2 else "", e(c))
                for i, c in enumerate(r)
            )
            + "</tr>"
            for m, r in zip(self.models, self.table(), strict=True)
        )
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

    models: tuple[tuple[str, tuple[str, ...], int, str], ...]  # (name, aliases, bytes, dtype)
    freed: bool
    rss_before: int | None
    rss_after: int | None
    cuda: tuple[
        tuple[str, int, int, int, int], ...
    ] = ()  # (device, alloc before, after, reserved before, after)
    held_by: tuple[str, ...] = ()
    cache_models: int = 0
    cache_bytes: int = 0

    @property
    def ok(self) -> bool:  # type: ignore[override]
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
        rows = [("weights", format_bytes(sum(m[2] for m in self.models)))]
        if self.rss_before is not None and self.rss_after is not None:
            back = self.rss_before - self.rss_after
            rows.append(
                (
                    "RSS",
                    f"{format_bytes(self.rss_before)} → {format_bytes(self.rss_after)}  ({format_bytes(back)} returned)",
                )
            )
        for dev, a0, a1, r0, r1 in self.cuda:
            rows.append(
                (
                    dev,
                    f"allocated {format_bytes(a0)} → {format_bytes(a1)}, reserved {format_bytes(r0)} → {format_bytes(r1)}",
                )
            )
        n = self.cache_models
        rows.append(
            ("cache", f"{n} model{'s' if n != 1 else ''} left, {format_bytes(self.cache_bytes)}")
        )
        return rows

    def notes(self) -> list[str]:
        if self.freed or not self.models:
            return []
        if self.held_by:
            names = ", ".join(self.held_by)
            return [f"still referenced by {names} in your namespace: `del {names}` to free it"]
        return [
            "still referenced from somewhere else (a variable in another scope, a list, a closure): "
            "delete that reference to free it"
        ]


def _unloaded_name(name: str, aliases: tuple[str, ...], size: int, dtype: str) -> str:
    """'SmolLM2 (bfloat16, as sm)': the dtype tells apart one file cached twice (bf16 and fp32)."""
    said = [dtype] + ([f"as {', '.join(aliases)}"] if aliases else [])
    return f"{_short(name)} ({', '.join(said)})"


@dataclass(frozen=True, repr=False)
class DiskCard(Card):
    """`%llm_models --disk` / `%llm_unload --disk`: the converted copies of .gguf files on
    disk (gguf_cache.ConvertedCopy values), their sizes and sources; what was deleted."""

    folder: str  # where the copies live
    copies: tuple = ()  # what is there now
    deleted: tuple = ()  # what this call deleted
    free_bytes: int | None = None  # on the copies' disk

    def title(self) -> str:
        if self.deleted:
            names = ", ".join(c.name for c in self.deleted)
            return (
                f"deleted {names} ({format_bytes(sum(c.size_bytes for c in self.deleted))} freed)"
            )
        n = len(self.copies)
        return f"{n} converted .gguf cop{'y' if n == 1 else 'ies'}, {format_bytes(sum(c.size_bytes for c in self.copies))} on disk"

    def rows(self) -> list[tuple[str, str]]:
        rows = [
            (
                c.name,
                f"{format_bytes(c.size_bytes)}  {c.dtype}  from {c.gguf or '?'}{_source_state(c)}",
            )
            for c in self.copies
        ]
        free = f"  ({format_bytes(self.free_bytes)} free)" if self.free_bytes is not None else ""
        return rows + [("folder", self.folder + free)]

    def notes(self) -> list[str]:
        return [
            f"{c.name}: damaged ({c.problem}); the next load converts it again"
            for c in self.copies
            if c.problem
        ]


def _source_state(copy) -> str:
    if not copy.gguf:
        return ""
    if not copy.source_exists:
        return "  (the .gguf is gone)"
    return (
        ""
        if copy.source_matches
        else "  (the .gguf changed since: the next load converts it again)"
    )


@dataclass(frozen=True, repr=False)
class CommandsCard:
    """Sections of things to act on, each row (what, facts, the command that does it):
    what `%llm_load` with no MODEL shows."""

    title: str
    sections: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...]  # (heading, rows)
    warnings: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.title]
        for heading, rows in self.sections:
            lines.append(f"{heading}:")
            if not rows:
                lines.append("  (none)")
            for what, facts, command in rows:
                lines += [f"  {what}  ·  {facts}", f"      {command}"]
        return "\n".join(lines + [f"⚠ {w}" for w in self.warnings])

    def html(self) -> str:
        e = html.escape
        parts = [f"<div><b>{e(self.title)}</b></div>"]
        for heading, rows in self.sections:
            parts.append(f"<div style='margin-top:.4em;color:#666'>{e(heading)}</div>")
            body = (
                "".join(
                    f"<tr><td style='padding:0 1em 0 1em;text-align:left'>{e(what)}</td>"
                    f"<td style='padding:0 1em 0 0;text-align:left;color:#666'>{e(facts)}</td>"
                    f"<td style='text-align:left'><code>{e(command)}</code></td></tr>"
                    for what, facts, command in rows
                )
                or "<tr><td style='padding:0 1em'>(none)</td></tr>"
            )
            parts.append(f"<table style='border:none'>{body}</table>")
        parts += [f"<div style='color:#b26a00'>⚠ {e(w)}</div>" for w in self.warnings]
        return (
            "<div style='font-family:monospace;font-size:90%;line-height:1.4'>"
            + "".join(parts)
            + "</div>"
        )

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return {"text/plain": self.text(), "text/html": self.html()}

    def __repr__(self) -> str:
        return self.text()


def _short(name: str) -> str:
    """A Hub id as is; a path by its last part."""
    return (
        name
        if "/" not in name or not name.startswith(("/", ".", "~"))
        else name.rstrip("/").rsplit("/", 1)[-1]
    )


# What is shown while a generation runs (the results themselves are in results.py).

_TEXT_STYLE = "white-space:pre-wrap;font-family:inherit;margin:0"
_FOOTER_STYLE = f"font-family:monospace;font-size:85%;color:{DIM};margin-top:.4em"


@dataclass(frozen=True, repr=False)
class StreamView:
    """The text so far, while a generation streams (a display updated in place)."""

    text: str
    notes: tuple[str, ...] = ()  # said before the text (max_new_tokens lowered, ...)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        status = (
            "… generating" if self.text else "… waiting for the first token"
        ) + " (Ctrl-C / interrupt stops it, keeping the text)"
        return {
            "text/plain": "\n".join(
                [f"⚠ {n}" for n in self.notes] + [self.text, status]
                if self.text
                else [f"⚠ {n}" for n in self.notes] + [status]
            ),
            "text/html": "".join(warning_html(n) for n in self.notes)
            + f"<div><div style='{_TEXT_STYLE}'>{html.escape(self.text)}</div>"
            f"<div style='{_FOOTER_STYLE}'>{html.escape(status)}</div></div>",
        }


@dataclass(frozen=True, repr=False)
class PromptView:
    """The prompt exactly as the model reads it (`--show-prompt`)."""

    text: str
    tokens: int | None

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        head = (
            f"prompt ({self.tokens} tokens):"
            if self.tokens is not None
            else "prompt (messages as sent; the server counts the tokens):"
        )
        return {
            "text/plain": f"{head}\n{self.text}",
            "text/html": f"<div style='{_FOOTER_STYLE}'>{html.escape(head)}</div>"
            f"<pre style='background:{BOX};color:{TEXT};padding:.4em;margin:0 0 .4em 0;white-space:pre-wrap'>"
            f"{html.escape(self.text)}</pre>",
        }


@dataclass(frozen=True, repr=False)
class BatchProgress:
    """A progress bar over the batches of a `--over` run."""

    done: int
    total: int
    items: int

    def words(self) -> str:
        if (
            self.total == self.items
        ):  # a step per prompt (a server's requests, llama.cpp, batch size 1)
            return f"{self.done}/{self.items} prompts"
        return f"batch {self.done}/{self.total} · {self.items} prompts"

    def plain(self) -> str:
        width = 24
        filled = round(width * self.done / self.total) if self.total else width
        return f"[{'#' * filled}{'.' * (width - filled)}] {self.words()}"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return {
            "text/plain": self.plain(),
            "text/html": f"<div style='font-family:monospace;color:{DIM}'><progress value='{self.done}' max='{self.total}'></progress>"
            f" {self.words()}</div>",
        }


def _short_name(model_id: str) -> str:
    """A Hub id as is; a path shortened to its last part."""
    if (
        "/" in model_id
        and not any(model_id.startswith(p) for p in ("/", ".", "~"))
        and model_id.count("/") == 1
    ):
        return model_id
    return model_id.rstrip("/").rsplit("/", 1)[-1]
