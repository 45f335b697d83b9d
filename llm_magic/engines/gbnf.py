"""Answer formats as llama.cpp grammars (GBNF), for the llama.cpp engine.

A JSON schema goes through llama-cpp-python's own converter (`json_schema_to_gbnf`, the
one its `response_format` uses); choices become alternatives; a regex goes through the
same converter's pattern translation, after \\d, \\w and \\s are spelled out as ASCII
classes (GBNF has no such escapes). What a converter cannot take is refused with a card
naming the part; schema keywords it passes over (minimum, uniqueItems, ...) are said in
the result's notes: the answer is still checked against them after.

A grammar is checked by llama.cpp's own parser before generating (an invalid one would
make llama-cpp-python add a null sampler). llama_cpp is imported inside the functions.
"""

from __future__ import annotations

import json
import re
import weakref
from functools import lru_cache
from typing import Any

from ..errors import GenerationError
from ..structured import AnswerFormat, ascii_pattern

NAME = "llama.cpp GBNF"

# What llama-cpp-python's converter reads (its SchemaConverter.visit), and the words that
# only describe. Any other keyword is passed over by the grammar.
_ENFORCED_KEYS = {
    "$ref", "$defs", "definitions", "type", "properties", "required",
    "additionalProperties", "items", "prefixItems", "minItems", "maxItems", "enum",
    "const", "anyOf", "oneOf", "allOf", "pattern", "format", "minLength", "maxLength",
}  # fmt: skip
_DESCRIPTIVE_KEYS = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly",
}  # fmt: skip
_ENFORCED_FORMATS = {"date", "time", "date-time", "uuid"}

# Llama objects -> the formats whose grammar its parser accepted.
_CHECKED: weakref.WeakKeyDictionary[Any, set[AnswerFormat]] = weakref.WeakKeyDictionary()


def grammar(llm: Any, fmt: AnswerFormat) -> tuple[str, tuple[str, ...]]:
    """(the GBNF text for `fmt`, notes on what it does not enforce), checked by llama.cpp's
    parser for `llm`'s vocabulary."""
    text, notes = convert(fmt)
    checked = _CHECKED.setdefault(llm, set())
    if fmt not in checked:
        _parse_check(llm, fmt, text)
        checked.add(fmt)
    return text, notes


@lru_cache(maxsize=64)
def convert(fmt: AnswerFormat) -> tuple[str, tuple[str, ...]]:
    """(the GBNF text for `fmt`, notes on what it does not enforce); not yet checked by a
    llama.cpp parser. Raises the card for what cannot be converted."""
    if fmt.kind == "choice":
        return "root ::= " + " | ".join(_literal(c) for c in fmt.choices), ()
    if fmt.kind == "regex":
        assert fmt.pattern is not None
        return _regex_grammar(fmt), ()
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = fmt.schema_dict
    try:
        text = json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # the converter asserts or raises on what it cannot take
        raise _refusal(fmt, f"{type(e).__name__}: {e}") from e
    passed_over = sorted(set(_unenforced(schema)))
    notes = (
        (
            f"llama.cpp's grammar does not enforce {', '.join(passed_over)} "
            "(the answer was checked against them after)",
        )
        if passed_over
        else ()
    )
    return text, notes


def _regex_grammar(fmt: AnswerFormat) -> str:
    from llama_cpp.llama_grammar import SchemaConverter

    assert fmt.pattern is not None
    pattern = ascii_pattern(fmt.pattern)
    pattern = pattern.removeprefix("^")
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1]
    pattern = pattern.replace("(?:", "(")  # a group is a group to a grammar
    if re.search(r"\(\?|\\[1-9bBAZz]", pattern):
        raise _refusal(
            fmt,
            "look-around, named or flagged groups, back-references and anchors such as \\b "
            "cannot be written as a grammar",
            beyond_grammars=True,
        )
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=True)
    try:
        converter._visit_pattern(f"^{pattern}$", "root")
    except Exception as e:  # AssertionError or ValueError, naming the part
        raise _refusal(fmt, f"{type(e).__name__}: {e}") from e
    return converter.format_grammar()


def _parse_check(llm: Any, fmt: AnswerFormat, text: str) -> None:
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, text.encode("utf-8"), b"root")
    if not sampler:
        raise _refusal(fmt, "llama.cpp's grammar parser refused the converted grammar")
    llama_cpp.llama_sampler_free(sampler)


def _unenforced(schema: Any, where: str = "") -> list[str]:
    """The keywords of `schema` the converter passes over, each with where it is."""
    found: list[str] = []
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            found += _unenforced(item, f"{where}[{i}]")
        return found
    if not isinstance(schema, dict):
        return found
    for key, value in schema.items():
        here = f"{where}.{key}" if where else key
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                found += _unenforced(sub, f"{here}.{name}")
        elif key in ("items", "prefixItems", "anyOf", "oneOf", "allOf"):
            found += _unenforced(value, here)
        elif key == "additionalProperties" and isinstance(value, dict):
            found += _unenforced(value, here)
        elif key == "format" and value not in _ENFORCED_FORMATS:
            found.append(f"format {value} (at {where or 'the top'})")
        elif key not in _ENFORCED_KEYS and key not in _DESCRIPTIVE_KEYS:
            found.append(f"{key} (at {where or 'the top'})")
    return found


def _literal(text: str) -> str:
    """A GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def _refusal(fmt: AnswerFormat, said: str, beyond_grammars: bool = False) -> GenerationError:
    """The card; `beyond_grammars`: no grammar backend can enforce it (no engine to
    suggest)."""
    fixes = {
        "json": [
            "rewrite that part of the schema",
            "leave out --engine llama.cpp: the transformers engine enforces with llguidance",
        ],
        "regex": [
            "rewrite the pattern with plain groups, classes and quantifiers",
            "leave out --engine llama.cpp: the transformers engine enforces with llguidance",
            "leave out --regex and check the text yourself",
        ],
        "choice": ["--choice with plain words"],
    }[fmt.kind]
    if beyond_grammars:
        fixes = [f for f in fixes if "transformers engine" not in f]
    return GenerationError(
        f"{fmt.describe()} cannot be enforced by llama.cpp: it cannot be written as its "
        "grammar (GBNF)",
        said.strip().splitlines()[0][:200] if said.strip() else said,
        fixes,
    )
