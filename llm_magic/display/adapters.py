"""What `%llm_adapter` shows: the adapters riding on a loaded model (rank, modules, size,
where from), what loading or unloading one did to the memory, and how to name each in `-m`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..paths import short_name
from ..units import format_bytes
from .card import Card, plural


class AdapterFacts(Protocol):
    """What the card reads of an adapter's facts (engines.base.AdapterInfo)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def base_model(self) -> str | None: ...
    @property
    def memory_bytes(self) -> int: ...

    def summary(self) -> str: ...


def adapter_rows(
    adapters: tuple[AdapterFacts, ...], default: str | None, label: str
) -> list[tuple[str, str]]:
    """One row per adapter and where it came from, then how `-m` names them: shared by
    this card and the load card."""
    rows: list[tuple[str, str]] = []
    for a in adapters:
        mark = "  (default: -m " + label + " alone)" if a.name == default else ""
        rows.append((f"adapter {a.name}", a.summary() + mark))
        if a.format != "served":
            rows.append(
                ("  from", a.path + (f"  (made for {a.base_model})" if a.base_model else ""))
            )
    if adapters:
        names = " · ".join(f"-m {label}:{a.name}" for a in adapters)
        rows.append(("use", f"{names} · -m {label}:base (adapters off)"))
    return rows


@dataclass(frozen=True, repr=False)
class AdapterCard(Card):
    """`%llm_adapter load|list|unload`: the model's adapters after the call, and what the
    call did (the memory before and after, the adapter freed or still held)."""

    model: str  # the base model's name
    label: str  # what -m calls the model (its alias, else its short name)
    action: str  # "loaded", "unloaded" or "listed"
    adapters: tuple[AdapterFacts, ...]  # on the model after the call
    default: str | None = None
    changed: tuple[str, ...] = ()  # the adapters this call loaded or unloaded
    changed_bytes: int = 0
    rss_before: int | None = None
    rss_after: int | None = None
    model_bytes: int = 0  # the base model's own
    freed: bool = True
    served: tuple[str, ...] = ()  # a server model's adapters the server lists, not yet named
    budget_notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.freed

    def title(self) -> str:
        names = ", ".join(self.changed)
        model = short_name(self.model)
        if self.action == "loaded":
            return f"adapter {names} on {model}" if names else f"{model}: nothing new to load"
        if self.action == "unloaded":
            gone = "unloaded" if self.freed else "took off, but it is still in memory:"
            return f"{gone} adapter {names} from {model}"
        return f"{model}: {plural(len(self.adapters), 'adapter')}"

    def rows(self) -> list[tuple[str, str]]:
        rows = adapter_rows(self.adapters, self.default, self.label)
        if self.served:
            rows.append(("served", ", ".join(self.served) + "  (the server's adapters of it)"))
        if self.action != "listed" and self.changed:
            size = format_bytes(self.changed_bytes)
            what = "added" if self.action == "loaded" else "freed"
            line = f"{size} {what}"
            if self.model_bytes and self.action == "loaded":
                line += f" (the model's own {format_bytes(self.model_bytes)} not read again)"
            rows.append(("memory", line))
            if self.rss_before is not None and self.rss_after is not None:
                delta = self.rss_after - self.rss_before
                sign = "+" if delta >= 0 else "−"
                rows.append(
                    (
                        "RSS",
                        f"{format_bytes(self.rss_before)} → {format_bytes(self.rss_after)}"
                        f"  ({sign}{format_bytes(abs(delta))})",
                    )
                )
        if not self.adapters and not self.served:
            rows.append(("load one", f"%llm_adapter load PATH -m {self.label}"))
        return rows

    def notes(self) -> list[str]:
        notes = list(self.budget_notes)
        if not self.freed:
            notes.append(
                "something still refers to the adapter's weights: delete that "
                "reference to free them"
            )
        return notes
