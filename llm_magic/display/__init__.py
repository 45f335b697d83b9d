"""Cards: values that show themselves as text/plain for terminals and escaped text/html for
Jupyter, on one `Card` base and one style table (`style`) of theme variables. Cards hold
plain values only, never a model or a tensor, so keeping them in `Out` keeps no weights
alive. What `generate` and `chat` return lives in `llm_magic.results`."""

from __future__ import annotations

from .card import Card, Shown, warning_html
from .chat import ConversationsCard, ConversationView
from .load import LoadCard, ServerCard
from .models import CommandsCard, DiskCard, ModelRow, ModelsCard, UnloadCard
from .views import BatchProgress, ColumnsView, PromptView, StatusLine, StreamView

__all__ = [
    "BatchProgress",
    "Card",
    "ColumnsView",
    "CommandsCard",
    "ConversationView",
    "ConversationsCard",
    "DiskCard",
    "LoadCard",
    "ModelRow",
    "ModelsCard",
    "PromptView",
    "ServerCard",
    "Shown",
    "StatusLine",
    "StreamView",
    "UnloadCard",
    "warning_html",
]
