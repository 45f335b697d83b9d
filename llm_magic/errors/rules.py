"""The rule engine: which entry of a stage's catalogue explains an exception.

Each rule names the exception types it recognises (by package and class name, so nothing
heavy is imported here) and, optionally, a message pattern. Rules keyed on a library's
own exception type come first in a catalogue, rules that read the message of a generic
builtin (ValueError, OSError, RuntimeError) after them: type first, message second. The
whole chain (`__cause__`, `__context__`) is searched, since transformers wraps
huggingface_hub's errors in OSError.

`context` is a plain dict of facts about the user's request and the machine, gathered by
the caller (`sources.facts.failure_context`); every key is optional, so each rule says only
what it knows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .card import Diagnosis, LLMError

Context = dict[str, Any]
Explain = Callable[[BaseException, Context], Diagnosis]


def chain(exc: BaseException | None, *, suppressed: bool = False) -> list[BaseException]:
    """exc, its cause, the cause's cause... (`__cause__`, else `__context__`); no cycles.

    A context hidden by `raise ... from None` ends the chain, as in a traceback, unless
    `suppressed`: httpcore raises its ConnectError `from None`, and the
    ConnectionRefusedError that says why is that hidden context.
    """
    links: list[BaseException] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        links.append(exc)
        if exc.__cause__ is not None:
            exc = exc.__cause__
        elif exc.__suppress_context__ and not suppressed:
            exc = None
        else:
            exc = exc.__context__
    return links


def is_type(exc: BaseException, spec: str) -> bool:
    """Whether exc is an instance of the class `spec` = "package.ClassName" (by name, so
    that huggingface_hub, safetensors or torch need not be imported to ask)."""
    package, _, name = spec.rpartition(".")
    return any(
        cls.__name__ == name and cls.__module__.split(".")[0] == package
        for cls in type(exc).__mro__
    )


def pattern(regex: str) -> re.Pattern[str]:
    """A message pattern, matched case-blind anywhere in the message."""
    return re.compile(regex, re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    """One catalogue entry: which exceptions it recognises, and what to tell the user."""

    name: str
    types: tuple[str, ...]  # "package.ClassName"; one must match a link of the chain
    explain: Explain
    message: re.Pattern[str] | None = None  # and, if given, the link's message must match
    when: Callable[[BaseException], bool] | None = None  # an extra test on the link (errno...)

    def matches(self, exc: BaseException) -> bool:
        if not any(is_type(exc, t) for t in self.types):
            return False
        if self.message is not None and not self.message.search(str(exc)):
            return False
        return self.when is None or self.when(exc)


@dataclass(frozen=True)
class Catalogue:
    """One stage's rules, in the order they are tried, and what to say when none matches."""

    rules: tuple[Rule, ...]
    error_class: type[LLMError]  # what `diagnose` returns unless the caller names another
    what: Callable[[Context], str]  # "what failed", the card's first line when no rule matches
    suppressed: bool = False  # whether the chain walk enters contexts hidden by `from None`


def find_rule(
    exc: BaseException, rules: tuple[Rule, ...] | list[Rule], *, suppressed: bool = False
) -> tuple[Rule, BaseException] | None:
    """The first rule (in table order) that matches any link of the chain, and that link."""
    links = chain(exc, suppressed=suppressed)
    for rule in rules:
        for link in links:
            if rule.matches(link):
                return rule, link
    return None


def diagnose(
    exc: BaseException,
    context: Context | None,
    catalogue: Catalogue,
    error_class: type[LLMError] | None = None,
) -> LLMError:
    """The error to raise (`from exc`) for `exc`, explained by the catalogue's first rule
    that recognises a link of its chain; `error_class` overrides the catalogue's.

    An LLMError is returned as is (it already explains itself). An error no rule
    recognises is still wrapped, with `cause=None`: its card shows what failed and the
    original type and message, never a guessed cause. The caller raises the result
    `from exc`, after `cache.clear_frames_of(exc)` dropped the frames of a half-built model.
    """
    if isinstance(exc, LLMError):
        return exc
    ctx = context or {}
    found = find_rule(exc, catalogue.rules, suppressed=catalogue.suppressed)
    d = found[0].explain(found[1], ctx) if found else Diagnosis(catalogue.what(ctx))
    error = (error_class or catalogue.error_class)(d.what, d.cause, d.fixes, d.details)
    error.matched = type(found[1]).__name__ if found else None
    return error
