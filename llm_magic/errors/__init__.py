"""Exception -> diagnosis (what failed, likely cause, fixes), and its short rendering.

`card` holds the types and the card, `rules` the rule engine, `wording` what the
catalogues share, and `load`, `generation`, `server` one catalogue per stage.
"""

from .card import (
    MAX_DETAILS,
    MAX_FIXES,
    Diagnosis,
    GenerationError,
    LLMError,
    LoadError,
    original_line,
    quiet_interrupt,
)
from .generation import GENERATION_RULES, diagnose_generation
from .load import LOAD_RULES, PROBE_NOTE, diagnose_load
from .rules import Context, Rule, chain, find_rule, is_type
from .server import SERVER_RULES, diagnose_server
from .wording import fmt_bytes

__all__ = [
    "GENERATION_RULES",
    "LOAD_RULES",
    "MAX_DETAILS",
    "MAX_FIXES",
    "PROBE_NOTE",
    "SERVER_RULES",
    "Context",
    "Diagnosis",
    "GenerationError",
    "LLMError",
    "LoadError",
    "Rule",
    "chain",
    "diagnose_generation",
    "diagnose_load",
    "diagnose_server",
    "find_rule",
    "fmt_bytes",
    "is_type",
    "original_line",
    "quiet_interrupt",
]
