"""The prompt side shared by every engine: `{name}` filling from a namespace (by lookup,
never `eval`), the items of an `--over` list, and the chat messages a prompt becomes."""

from __future__ import annotations

import difflib
import itertools
import re
import string
from collections import ChainMap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import GenerationError

_PART = re.compile(r"\.([^.\[\]]+)|\[([^\[\]]+)\]")


def _head(field: str) -> str:
    """The variable a field starts with: `obj` of `obj.attr[key]` (maybe empty)."""
    return field.split(".", 1)[0].split("[", 1)[0]


class _Filler(string.Formatter):
    """str.format's syntax, resolving `{name}`, `{obj.attr}` and `{obj[key]}` from a
    namespace by lookup only: no expression is evaluated, no dunder attribute is read."""

    def __init__(self, namespace: Mapping[str, Any], where: str = "the prompt"):
        self.namespace = namespace
        self.where = where  # named in errors: "the prompt" or "--system"

    def get_field(self, field_name: str, args, kwargs):
        head = _head(field_name)
        value = self._name(head, field_name)
        pos, rest = 0, field_name[len(head) :]
        while pos < len(rest):
            m = _PART.match(rest, pos)
            if m is None:
                raise GenerationError(
                    f"{{{field_name}}} in {self.where}: not a name, attribute or item",
                    "fields are {name}, {obj.attr} or {obj[key]}; expressions are not evaluated",
                    [
                        "compute the value in a variable first, then write {variable}",
                        "write {{ and }} for literal braces",
                    ],
                )
            value = (
                self._attr(value, m.group(1), field_name)
                if m.group(1) is not None
                else self._item(value, m.group(2), field_name)
            )
            pos = m.end()
        return value, head

    def _name(self, name: str, field_name: str):
        if name == "" or name.isdigit():
            raise GenerationError(
                f"{{{field_name}}} in {self.where}: a field needs a variable name",
                "braces in the prompt name a variable to fill in",
                ["write a name: {topic}", "write {{ and }} for literal braces"],
            )
        if name not in self.namespace:
            near = difflib.get_close_matches(
                name, [k for k in self.namespace if isinstance(k, str) and not k.startswith("_")], 3
            )
            fixes = [
                f"define it first: {name} = ...",
                f"write {{{{{name}}}}} for the literal text {{{name}}}",
            ]
            if near:
                fixes.insert(0, "did you mean: " + ", ".join("{" + n + "}" for n in near))
            raise GenerationError(
                f"{{{field_name}}} in {self.where}: no variable named {name!r}",
                "the prompt's {names} are filled from the notebook's variables",
                fixes,
            )
        return self.namespace[name]

    def _attr(self, value, attr: str, field_name: str):
        if attr.startswith("__"):
            raise GenerationError(
                f"{{{field_name}}} in {self.where}: dunder attributes are not filled in",
                fixes=["put the value in a variable first, then write {variable}"],
            )
        try:
            return getattr(value, attr)
        except AttributeError as e:
            raise GenerationError(
                f"{{{field_name}}} in {self.where}: "
                f"{type(value).__name__} has no attribute {attr!r}",
                fixes=["check the attribute name", "write {{ and }} for literal braces"],
            ) from e

    def _item(self, value, key: str, field_name: str):
        keys: list[Any] = (
            [int(key), key] if key.isdigit() else [key]
        )  # as str.format: [0] is an int
        for k in keys:
            try:
                return value[k]
            except (KeyError, IndexError, TypeError):
                continue
        raise GenerationError(
            f"{{{field_name}}} in {self.where}: {type(value).__name__} has no item [{key}]",
            fixes=["check the key or index", "write {{ and }} for literal braces"],
        )


def fill(template: str, namespace: Mapping[str, Any], where: str = "the prompt") -> str:
    """`template` with its `{fields}` filled from `namespace`; `{{` and `}}` are literal braces."""
    try:
        return _Filler(namespace, where).vformat(template, (), {})
    except ValueError as e:  # unmatched brace, bad format spec
        raise GenerationError(
            f"{where} could not be filled: {e}",
            "single braces mark variables to fill in",
            ["write {{ and }} for literal braces", "name a variable inside braces: {topic}"],
        ) from None


def field_names(template: str) -> list[str]:
    """The variable each top-level `{field}` of `template` starts with."""
    try:
        return [_head(f) for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError:
        return []


# The most items one `--over` takes. An iterator without a length is read up to one more
# than this, so an endless one (itertools.count()) is refused at once, in bounded memory.
MAX_OVER_ITEMS = 100_000


@dataclass(frozen=True)
class Over:
    """The items of an `--over` run, and what labels them in the results: a pandas Series'
    index, a dict's keys, or (None) their positions."""

    items: list[Any]
    labels: Any = None
    notes: tuple[str, ...] = ()  # said with the results (a dict's values, None items)


def items_of(value: Any, label: str = "over") -> Over:
    """The items of an `--over` variable: a list, tuple, pandas Series, dict (its values),
    any iterable of at most MAX_OVER_ITEMS items. `label` names it in errors (`--over docs`)."""
    if isinstance(value, Over):
        return value
    if isinstance(value, (str, bytes)):
        raise GenerationError(
            f"{label}: a single string, not a list of them",
            fixes=[
                "wrap it in a list to run it once: [text]",
                "--over takes a list, a tuple or a pandas Series",
            ],
        )
    if _is_pandas(value, "DataFrame"):
        column = next(iter(value.columns), "text")
        raise GenerationError(
            f"{label}: a DataFrame, not one column of it",
            "--over goes over the items of one sequence; a DataFrame's would be its column names",
            [
                f"texts = {label.split()[-1] if ' ' in label else 'df'}[{column!r}]  "
                "(then --over texts)"
            ],
        )
    labels: Any = None
    notes: tuple[str, ...] = ()
    if isinstance(value, Mapping):
        labels, value = list(value.keys()), value.values()
        notes = (f"{label} is a dict: it runs over its values (its keys label the results)",)
    elif _is_pandas(value, "Series"):
        labels = value.index
    items = _bounded_list(value, label)
    if not items:
        raise GenerationError(f"{label}: the list is empty", fixes=["give it at least one item"])
    nones = [i for i, item in enumerate(items) if item is None]
    if nones:
        which = ", ".join(f"[{i}]" for i in nones[:8]) + (" ..." if len(nones) > 8 else "")
        notes += (
            f"item{'s' if len(nones) > 1 else ''} {which} of {label} "
            f"{'are' if len(nones) > 1 else 'is'} None: the prompt got the text 'None' there",
        )
    return Over(items, labels, notes)


def _is_pandas(value: Any, name: str) -> bool:
    """Whether `value` is pandas' `name` (asked by type name: pandas is not imported)."""
    return type(value).__name__ == name and type(value).__module__.startswith("pandas")


def _bounded_list(value: Any, label: str) -> list[Any]:
    """`value`'s items as a list, refused past MAX_OVER_ITEMS before they are all read."""
    too_many = GenerationError(
        f"{label}: more than {MAX_OVER_ITEMS:,} items",
        f"--over takes at most {MAX_OVER_ITEMS:,} items in one cell; an iterator without a "
        f"length (a generator, itertools.count()) is read only that far",
        [
            f"take a slice: itertools.islice(it, 1000) or a list's [:{MAX_OVER_ITEMS}]",
            "run the rest in further cells, a slice each",
        ],
    )
    try:
        size = len(value)
    except TypeError:
        size = None
    if size is not None and size > MAX_OVER_ITEMS:
        raise too_many
    try:
        iterator = iter(value)
    except TypeError:
        raise GenerationError(
            f"{label}: a {type(value).__name__} has no items to go over",
            fixes=["--over takes a list, a tuple or a pandas Series of strings"],
        ) from None
    items = list(itertools.islice(iterator, MAX_OVER_ITEMS + 1))
    if len(items) > MAX_OVER_ITEMS:
        raise too_many
    return items


def fill_over(template: str, items: Iterable, namespace: Mapping[str, Any]) -> list[str]:
    """The template filled once per item, `{item}` standing for it."""
    if "item" not in field_names(template):
        raise GenerationError(
            "--over: the prompt never uses {item}",
            "each item of the list is put where {item} stands in the prompt",
            ["write {item} in the cell, e.g.: Translate to French: {item}"],
        )
    names = dict(namespace)  # ChainMap's maps are mutable mappings; it writes only to the first
    return [fill(template, ChainMap({"item": item}, names)) for item in items]


def messages(text: str, system: str | None = None) -> tuple[dict[str, str], ...]:
    """One prompt as chat messages: an optional system message, then the user's text."""
    return (({"role": "system", "content": system},) if system else ()) + (
        {"role": "user", "content": text},
    )
