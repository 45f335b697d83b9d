"""The load card of a model that lives in the kernel (transformers, llama.cpp)."""

from __future__ import annotations

from ..cache import LoadedModel
from ..display import LoadCard
from .base import LoadReport


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
        extra_rows=entry.info.details + more,
    )
