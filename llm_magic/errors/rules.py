"""The rule engine: which catalogue entry recognises an exception.

Each rule names the exception types it recognises (by package and class name, so nothing
heavy is imported here) and, optionally, a message pattern. Rules keyed on a library's
own exception type come first in a catalogue, rules that read the message of a generic
builtin (ValueError, OSError, RuntimeError) after them: type first, message second. The
whole chain (`__cause__`, `__context__`) is searched, since transformers wraps
huggingface_hub's errors in OSError.

`context` is a plain dict of facts about the user's request and the machine, gathered by
the caller (`loading.failure_context`); every key is optional, so each rule says only
what it knows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .card import Diagnosis

Context = dict[str, Any]


def chain(exc: BaseException | None) -> list[BaseException]:
    """exc, its cause, the cause's cause... (`__cause__`, else `__context__`); no cycles."""
    links: list[BaseException] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        links.append(exc)
        exc = (
            exc.__cause__
            if exc.__cause__ is not None
            else (None if exc.__suppress_context__ else exc.__context__)
        )
    return links


def is_type(exc: BaseException, spec: str) -> bool:
    """Whether exc is an instance of the class `spec` = "package.ClassName" (by name, so
    that huggingface_hub, safetensors or torch need not be imported to ask)."""
    package, _, name = spec.rpartition(".")
    return any(
        cls.__name__ == name and cls.__module__.split(".")[0] == package
        for cls in type(exc).__mro__
    )


@dataclass(frozen=True)
class Rule:
    """One catalogue entry: which exceptions it recognises, and what to tell the user."""

    name: str
    types: tuple[str, ...]  # "package.ClassName"; one must match a link of the chain
    explain: Callable[[BaseException, Context], Diagnosis]
    message: re.Pattern | None = None  # and, if given, the link's message must match
    when: Callable[[BaseException], bool] | None = None  # an extra test on the link (errno...)

    def matches(self, exc: BaseException) -> bool:
        if not any(is_type(exc, t) for t in self.types):
            return False
        if self.message is not None and not self.message.search(str(exc)):
            return False
        return self.when is None or self.when(exc)


def find_rule(exc: BaseException, rules: list[Rule]) -> tuple[Rule, BaseException] | None:
    """The first rule (in table order) that matches any link of the chain."""
    links = chain(exc)
    for rule in rules:
        for link in links:
            if rule.matches(link):
                return rule, link
    return None


def pattern(regex: str) -> re.Pattern:
    return re.compile(regex, re.IGNORECASE)
