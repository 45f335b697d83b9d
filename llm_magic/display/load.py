"""What `%llm_load` shows: the load card of a model in the kernel, the server card of a
model served elsewhere."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..paths import short_name
from ..units import format_bytes, format_count, format_seconds
from .card import Card, plural

NO_TEMPLATE = "none — prompts are continued as plain text"


class ModelFacts(Protocol):
    """What a load card reads of a loaded model's facts (the engines' ModelInfo)."""

    @property
    def name(self) -> str: ...
    @property
    def class_name(self) -> str: ...
    @property
    def num_params(self) -> int: ...
    @property
    def memory_bytes(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def dtype_reason(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def revision(self) -> str | None: ...
    @property
    def trust_remote_code(self) -> bool: ...
    @property
    def converted_from(self) -> str | None: ...
    @property
    def warnings(self) -> tuple[str, ...]: ...


class ServerFacts(Protocol):
    """What a server card reads of a served model's facts (serving.ServerInfo)."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def served(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def entry(self) -> Mapping[str, Any]: ...
    @property
    def server(self) -> str | None: ...
    @property
    def context_length(self) -> int | None: ...
    @property
    def api_key_env(self) -> str | None: ...
    @property
    def latency(self) -> float: ...
    @property
    def warnings(self) -> tuple[str, ...]: ...


def _cache_rows(state: str, seconds: float, models: int, size: int) -> list[tuple[str, str]]:
    """This call's time and the cache after it: the last rows of either card."""
    what = "loaded in" if state != "cached" else "cache hit"
    return [
        (what, format_seconds(seconds)),
        ("cache", f"{state} · {plural(models, 'model')}, {format_bytes(size)} in all"),
    ]


def _as(aliases: tuple[str, ...]) -> str:
    return f"  (as {', '.join(aliases)})" if aliases else ""


@dataclass(frozen=True, repr=False)
class LoadCard(Card):
    """What `%llm_load` did: model, size, device, dtype and why, source, time, cache."""

    info: ModelFacts
    cache_state: str  # "new", "cached" or "reloaded"
    cache_models: int
    cache_bytes: int
    seconds: float  # this call's time: the load, or the cache lookup
    aliases: tuple[str, ...] = ()
    fit: str | None = None  # the pre-flight verdict ("fits on cpu: needs ..."), new loads only
    budget_notes: tuple[str, ...] = ()  # models the budget unloaded to make room
    extra_rows: tuple[tuple[str, str], ...] = ()  # engine, quantization, context, threads, hints

    def title(self) -> str:
        return f"{short_name(self.info.name)}  →  {self.info.class_name}{_as(self.aliases)}"

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
        rows += _cache_rows(self.cache_state, self.seconds, self.cache_models, self.cache_bytes)
        if self.fit:
            rows.append(("fit check", self.fit))
        return rows

    def notes(self) -> list[str]:
        # A served model's facts have no chat_template: the server applies its own.
        no_template = getattr(self.info, "chat_template", None) is False
        template = [f"chat template: {NO_TEMPLATE}"] if no_template else []
        return list(self.budget_notes) + list(self.info.warnings) + template


@dataclass(frozen=True, repr=False)
class ServerCard(Card):
    """What `%llm_load --server URL` did: the served model, the server and what it says
    about itself, the round trip, and the cache. Never the key: only its variable's name."""

    info: ServerFacts
    cache_state: str
    cache_models: int
    cache_bytes: int
    seconds: float
    aliases: tuple[str, ...] = ()
    concurrency: int = 16
    timeout: float = 300.0
    budget_notes: tuple[str, ...] = ()  # models the budget unloaded to make room
    extra_rows: tuple[tuple[str, str], ...] = ()  # the adapters named, and the server's own

    def title(self) -> str:
        return f"{short_name(self.info.name)}  →  served at {self.info.url}{_as(self.aliases)}"

    def rows(self) -> list[tuple[str, str]]:
        i = self.info
        facts = [
            f"{k} {v}"
            for k, v in i.entry.items()
            if k not in ("id", "object", "created") and isinstance(v, (str, int, float))
        ]
        rows = [("model", i.name + (f"  ({', '.join(facts)})" if facts else ""))]
        others = [str(m["id"]) for m in i.served if m.get("id") not in (None, i.name)]
        if others:
            more = " ..." if len(others) > 6 else ""
            rows.append(("also served", ", ".join(others[:6]) + more))
        rows.append(("server", i.url + (f"  ({i.server})" if i.server else "")))
        if i.context_length:
            rows.append(("context", f"{i.context_length} tokens"))
        rows.append(("api key", f"from ${i.api_key_env}" if i.api_key_env else "none sent"))
        rows.append(("round trip", format_seconds(i.latency) + "  (GET /models)"))
        rows.append(
            ("requests", f"--over sends {self.concurrency} at once · timeout {self.timeout:g} s")
        )
        rows += list(self.extra_rows)
        rows += _cache_rows(self.cache_state, self.seconds, self.cache_models, self.cache_bytes)
        return rows

    def notes(self) -> list[str]:
        return list(self.budget_notes) + list(self.info.warnings)
