"""The load card of a model that lives in the kernel (transformers, llama.cpp)."""

from __future__ import annotations

from ..cache import LoadedModel
from ..display import LoadCard
from ..display.adapters import adapter_rows
from .base import LoadReport


def adapters_rows(entry: LoadedModel) -> tuple[tuple[str, str], ...]:
    """The card's rows for the adapters on the model, and how `-m` names them."""
    if not entry.adapters:
        return ()
    label = min(entry.aliases) if entry.aliases else entry.name.rstrip("/").rsplit("/", 1)[-1]
    return tuple(adapter_rows(tuple(entry.adapters.values()), entry.default_adapter, label))


def load_card(
    entry: LoadedModel, report: LoadReport, more: tuple[tuple[str, str], ...] = ()
) -> LoadCard:
    """The card: the entry's facts and the engine's rows (`info.details`), then `more`."""
    return LoadCard(
        info=entry.info,
        cache_state=report.state,
        cache_models=report.cache_models,
        cache_bytes=report.cache_bytes,
        seconds=report.seconds,
        aliases=tuple(sorted(entry.aliases)),
        fit=report.fit,
        budget_notes=report.notes,
        extra_rows=entry.info.details + more + adapters_rows(entry),
    )
