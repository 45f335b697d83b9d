"""Exception -> diagnosis (what failed, likely cause, fixes), and its short rendering.

`card` holds the types and the card, `rules` the rule engine and `diagnose`, `wording`
what the catalogues share, and `load`, `adapter`, `generation`, `server` one catalogue per stage:
`diagnose(e, context, LOAD)` is the LoadError to raise `from e`.
"""

from .adapter import ADAPTER
from .card import (
    MAX_DETAILS,
    MAX_FIXES,
    MAX_ORIGINAL,
    Diagnosis,
    GenerationError,
    LLMError,
    LoadError,
    full_traceback,
    original_line,
    quiet_interrupt,
)
from .generation import GENERATION
from .load import LOAD, PROBE_NOTE
from .rules import Catalogue, Context, Explain, Rule, chain, diagnose, find_rule, is_type
from .server import SERVER, IncompleteStream

__all__ = [
    "ADAPTER",
    "GENERATION",
    "LOAD",
    "MAX_DETAILS",
    "MAX_FIXES",
    "MAX_ORIGINAL",
    "PROBE_NOTE",
    "SERVER",
    "Catalogue",
    "Context",
    "Diagnosis",
    "Explain",
    "GenerationError",
    "IncompleteStream",
    "LLMError",
    "LoadError",
    "Rule",
    "chain",
    "diagnose",
    "find_rule",
    "full_traceback",
    "is_type",
    "original_line",
    "quiet_interrupt",
]
