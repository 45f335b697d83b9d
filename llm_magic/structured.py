"""Typed answers: the format an answer must take — a JSON schema, one of a few choices, or
a regular expression — as one frozen value (`AnswerFormat`) that travels in `Settings`,
and the answer checked against it (`Answer`: the parsed data, whether it is valid, why
not).

A format comes from what the user gave: a pydantic model class, a JSON Schema dict (or its
JSON text), a short inline form (`'name, age int, mood happy|sad, hobbies list'`: fields
are strings unless typed), a list of choices, or a pattern. `from_flags` reads the cells'
`--schema`, `--choice` and `--regex` words, naming a notebook variable with `$name` (or a
bare name), with "did you mean" for a mistyped one.

Engines enforce the format while decoding where they can (`Capabilities.answer_formats`);
every answer is checked here whatever the engine did, so an engine that could not enforce
it still gives `.data` and `.valid`, and says it was not enforced.

Nothing heavy is imported here: pydantic is only read where the user's class comes from
it, jsonschema only when a schema is checked.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from .errors import GenerationError, LLMError

KINDS = ("json", "choice", "regex")
INSTALL = 'pip install "llm_magic[structured]"'

# The inline form's types, as JSON Schema.
_INLINE_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "string": {"type": "string"},
    "int": {"type": "integer"},
    "integer": {"type": "integer"},
    "float": {"type": "number"},
    "number": {"type": "number"},
    "bool": {"type": "boolean"},
    "boolean": {"type": "boolean"},
    "list": {"type": "array", "items": {"type": "string"}},
}
_INLINE_HELP = (
    "inline form: 'name, age int, mood happy|sad, tags list[str]' "
    "(types: str, int, float, bool, list, list[int], or choices a|b|c)"
)


class Parsed(NamedTuple):
    """An answer read against a format: the data (None when not valid), whether it is
    valid, and why not."""

    data: Any
    valid: bool
    error: str | None


@dataclass(frozen=True)
class AnswerFormat:
    """The format an answer must take. `kind` is "json" (`schema`: the JSON Schema as
    canonical text; `model`: the pydantic class it came from, if any), "choice"
    (`choices`) or "regex" (`pattern`). Frozen and hashable: compiled grammars are cached
    by it, and equal formats are the same request."""

    kind: str
    schema: str | None = None  # compact JSON, keys in the order given
    model: type | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    # How the user named it ("Person", "'name, age int'"): said in messages only.
    label: str = field(default="", compare=False)
    # Said with each result (e.g. a pattern whose braces look lost on the way).
    notes: tuple[str, ...] = field(default=(), compare=False)

    # --- making one ----------------------------------------------------------------------

    @classmethod
    def of_schema(cls, spec: Any, label: str | None = None) -> AnswerFormat:
        """From a pydantic model class, a JSON Schema dict, its JSON text, or the inline
        form. Refuses (GenerationError) what is none of these, or a schema that is not
        valid JSON Schema."""
        model = None
        if _is_pydantic_model(spec):
            model = spec
            schema = spec.model_json_schema()
            label = label or spec.__name__
        elif isinstance(spec, Mapping):
            schema = dict(spec)
            # "schema dict" (or the schema's title) reads better than nothing in a card
            title = schema.get("title")
            label = label or (title if isinstance(title, str) and title else "dict")
        elif isinstance(spec, str) and spec.strip().startswith("{"):
            try:
                schema = json.loads(spec)
            except ValueError as e:
                raise GenerationError(
                    f"--schema {_short(spec)}: not valid JSON",
                    str(e),
                    ["check the quotes: JSON wants double quotes around names and strings"],
                ) from None
            label = label or "the schema's JSON"
        elif isinstance(spec, str):
            schema = inline_schema(spec)
            label = label or repr(spec.strip())
        else:
            what = (
                f"the class {spec.__name__} is not a pydantic model class"
                if isinstance(spec, type)
                else f"a {type(spec).__name__} is not a schema"
            )
            raise GenerationError(
                f"--schema {label}: {what}" if label else f"--schema: {what}",
                "a schema is a pydantic model class, a JSON Schema dict, or the inline form",
                [
                    "class Person(pydantic.BaseModel): name: str; age: int  (then --schema Person)",
                    "--schema 'name, age int, city'",
                ],
            )
        check_schema(schema, label)
        # The properties' order is kept: it is the order the answer writes them in.
        text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        return cls("json", schema=text, model=model, label=label)

    @classmethod
    def of_choices(cls, choices: Iterable[Any], label: str | None = None) -> AnswerFormat:
        values = tuple(str(c) for c in choices)
        if isinstance(choices, str) or not values:
            raise GenerationError(
                "--choice needs at least two choices" if values else "--choice: no choices given",
                fixes=["--choice positive negative neutral", "choice=['yes', 'no']"],
            )
        if len(values) < 2:
            raise GenerationError(
                f"--choice {values[0]}: one choice leaves nothing to choose",
                fixes=["--choice yes no"],
            )
        empty = [v for v in values if not v.strip()]
        if empty:
            raise GenerationError("--choice: a choice is empty", fixes=["--choice yes no"])
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise GenerationError(
                f"--choice: {', '.join(dupes)} given twice", fixes=["list each choice once"]
            )
        return cls("choice", choices=values, label=label or " | ".join(values))

    @classmethod
    def of_regex(cls, pattern: Any, label: str | None = None) -> AnswerFormat:
        if isinstance(pattern, re.Pattern):
            pattern = pattern.pattern
        if not isinstance(pattern, str) or not pattern:
            raise GenerationError(
                "--regex: the pattern is empty" if pattern == "" else "--regex takes a pattern",
                fixes=[r"--regex '\d{4}-\d{2}-\d{2}'", "pat = r'...'  then --regex $pat"],
            )
        try:
            re.compile(pattern, re.ASCII)
        except re.error as e:
            raise GenerationError(
                f"--regex {pattern}: not a valid regular expression",
                f"{e.msg} at position {e.pos}",
                [r"--regex '\d{4}-\d{2}-\d{2}'"],
            ) from None
        notes = (_mangled_note(pattern),) if _looks_mangled(pattern) else ()
        return cls("regex", pattern=pattern, label=label or pattern, notes=notes)

    # --- what it is --------------------------------------------------------------------

    @cached_property
    def schema_dict(self) -> dict[str, Any]:
        return json.loads(self.schema) if self.schema else {}

    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        """The top-level properties of an object schema ({} for other formats)."""
        properties = self.schema_dict.get("properties")
        return dict(properties) if isinstance(properties, dict) else {}

    def describe(self) -> str:
        """In a few words: `schema Person`, `choice yes | no`, `regex \\d{4}`."""
        return {"json": "schema", "choice": "choice", "regex": "regex"}[self.kind] + (
            f" {self.label}" if self.label else ""
        )

    def recorded(self) -> dict[str, Any]:
        """Plain data for a result's metadata (the notebook keeps it)."""
        if self.kind == "json":
            out: dict[str, Any] = {"kind": "json", "schema": self.schema_dict}
            if self.model is not None:
                out["model"] = f"{self.model.__module__}.{self.model.__qualname__}"
            return out
        if self.kind == "choice":
            return {"kind": "choice", "choices": list(self.choices)}
        return {"kind": "regex", "pattern": self.pattern}

    # --- reading an answer ---------------------------------------------------------------

    def parse(self, text: str) -> Parsed:
        """The answer in `text` as data: a JSON value (an instance of the pydantic class
        when one was given), the choice, or the matched text."""
        if self.kind == "choice":
            said = text.strip()
            if said in self.choices:
                return Parsed(said, True, None)
            folded = said.strip(" .\"'`").casefold()
            same = [c for c in self.choices if c.casefold() == folded]
            if len(same) == 1:
                return Parsed(same[0], True, None)
            return Parsed(None, False, f"{_short(said)!r} is not one of: {', '.join(self.choices)}")
        if self.kind == "regex":
            assert self.pattern is not None
            said = text.strip()
            if re.fullmatch(self.pattern, said, re.ASCII):
                return Parsed(said, True, None)
            return Parsed(None, False, f"{_short(said)!r} does not match /{self.pattern}/")
        return self._parse_json(text)

    def holds_whole_value(self, text: str) -> bool:
        """Whether `text` holds a whole JSON value (for a schema), whatever it says."""
        return self.kind == "json" and _json_in(text) is not _NO_JSON

    def _parse_json(self, text: str) -> Parsed:
        found = _json_in(text)
        if found is _NO_JSON:
            return Parsed(None, False, "not JSON: " + _json_error(text))
        if self.model is not None:
            model: Any = self.model  # a pydantic model class (checked when it was given)
            try:
                return Parsed(model.model_validate(found), True, None)
            except Exception as e:  # pydantic.ValidationError: its first errors, in one line
                return Parsed(None, False, _pydantic_errors(e))
        error = schema_error(self.schema_dict, found)
        return Parsed(found if error is None else None, error is None, error)


@dataclass(frozen=True)
class Answer:
    """An answer checked against its format: `data` (None unless valid), `valid`,
    `error` (why not), whether the engine `enforced` the format while decoding (`how`: in
    words), and `incomplete` when generation stopped (at --max-new-tokens, or Ctrl-C)
    before the answer was complete."""

    format: AnswerFormat
    data: Any
    valid: bool
    error: str | None
    enforced: bool
    how: str
    incomplete: bool = False

    @property
    def status(self) -> str:
        """For the footer: `schema Person · enforced (llguidance)`, or `schema Person ·
        validated, not enforced` (why not: `how`, said as a note)."""
        if self.enforced:
            return f"{self.format.describe()} · enforced" + (f" ({self.how})" if self.how else "")
        return f"{self.format.describe()} · validated, not enforced"

    def plain_data(self) -> Any:
        """The data as plain JSON values (a pydantic instance dumped)."""
        dump = getattr(self.data, "model_dump", None)
        return dump(mode="json") if callable(dump) else self.data


def check(fmt: AnswerFormat, text: str, stop_reason: str, enforced: bool, how: str = "") -> Answer:
    """`text` read against `fmt`. An answer that stopped early (length, interrupted) and
    does not parse is incomplete, not wrong. Where nothing enforced the format, a whole
    JSON value followed by more words is the model's answer, judged as it is: the words
    after it, not the answer, were cut."""
    data, valid, error = fmt.parse(text)
    stopped_early = not valid and stop_reason in ("length", "interrupted")
    incomplete = stopped_early and (enforced or not fmt.holds_whole_value(text))
    if incomplete:
        error = f"incomplete: generation stopped ({stop_reason}) before the answer was complete"
    return Answer(fmt, data, valid, error, enforced, how, incomplete)


# --- from the cells' flags ----------------------------------------------------------------


def from_flags(
    schema: str | None,
    choice: list[str] | None,
    regex: str | None,
    namespace: Mapping[str, Any],
) -> AnswerFormat | None:
    """The format a cell's `--schema`, `--choice` or `--regex` asks for (None: none).

    The magics are `@no_var_expand`, so their line arrives as typed: quotes kept (stripped
    here), `{4}` intact, `$name` not filled. `$name` names a variable (the pattern, the
    schema or pydantic class, the list of choices); so does a bare name given to --schema,
    and to --regex when a variable of that name holds a pattern."""
    given = [
        flag
        for flag, value in (("--schema", schema), ("--choice", choice), ("--regex", regex))
        if value
    ]
    if len(given) > 1:
        raise GenerationError(
            f"{' and '.join(given)}: an answer takes one format",
            fixes=["keep one of --schema, --choice, --regex"],
        )
    if schema:
        spec = _unquote(schema)
        name = _variable_name(spec)
        if name is None and spec.isidentifier():
            name = spec  # a bare name: the inline form needs a type or a comma
        if name is not None:
            sign = "$" if spec.startswith("$") else ""
            value = _lookup(name, namespace, "--schema", sign)
            return AnswerFormat.of_schema(value, label=name)
        return AnswerFormat.of_schema(spec)
    if choice:
        words = [_unquote(c) for c in choice]
        name = _variable_name(words[0]) if len(words) == 1 else None
        if name is not None:
            value = _lookup(name, namespace, "--choice")
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise GenerationError(
                    f"--choice ${name}: {name} is a {type(value).__name__}, not a list of choices",
                    fixes=[f"{name} = ['positive', 'negative', 'neutral']"],
                )
            return AnswerFormat.of_choices(list(value))
        return AnswerFormat.of_choices(words)
    if regex:
        pattern = _unquote(regex)
        name = _variable_name(pattern)
        if name is not None:
            return AnswerFormat.of_regex(_lookup(name, namespace, "--regex"), label=f"${name}")
        held = namespace.get(pattern) if pattern.isidentifier() else None
        if isinstance(held, (str, re.Pattern)):
            return AnswerFormat.of_regex(held, label=pattern)
        return AnswerFormat.of_regex(pattern)
    return None


def from_keywords(
    schema: Any = None, choice: Iterable[Any] | None = None, regex: Any = None
) -> AnswerFormat | None:
    """The format `llm_magic.generate(schema=..., choice=..., regex=...)` asks for."""
    given = [
        k for k, v in (("schema", schema), ("choice", choice), ("regex", regex)) if v is not None
    ]
    if len(given) > 1:
        raise GenerationError(
            f"{' and '.join(given)}: an answer takes one format",
            fixes=["keep one of schema=, choice=, regex="],
        )
    if schema is not None:
        return schema if isinstance(schema, AnswerFormat) else AnswerFormat.of_schema(schema)
    if choice is not None:
        return AnswerFormat.of_choices(choice)
    if regex is not None:
        return AnswerFormat.of_regex(regex)
    return None


def _variable_name(word: str) -> str | None:
    """`$name` → name."""
    if word.startswith("$") and word[1:].isidentifier():
        return word[1:]
    return None


def _lookup(name: str, namespace: Mapping[str, Any], flag: str, sign: str = "$") -> Any:
    """The variable `name` (written `sign`+name), or the card with the nearest name."""
    if name in namespace:
        return namespace[name]
    visible = [k for k in namespace if not k.startswith("_")]
    close = difflib.get_close_matches(name, visible, n=1, cutoff=0.6)
    fixes = [f"did you mean {flag} {sign}{close[0]}?"] if close else []
    if flag == "--schema":
        fixes.append(
            f"define it first: class {name}(pydantic.BaseModel): ...  (or a JSON Schema dict)"
        )
        fixes.append(f"an inline schema of one field names its type: --schema '{name} str'")
    else:
        fixes.append(f"define it first: {name} = ...  (then run this cell again)")
    raise GenerationError(f"{flag} {name}: no variable named {name!r}", fixes=fixes)


def _unquote(text: str) -> str:
    """The words of a magic line keep their quotes: strip one matching pair."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


# A character class or a class escape followed straight by a digit, and no braces at all:
# what `[0-9]{4}` becomes when something expands `{4}` to `4` on the way (an f-string, or
# a magic line IPython expanded).
_MANGLED = re.compile(r"(\]|\\[dwsDWS])\d")


def _looks_mangled(pattern: str) -> bool:
    return "{" not in pattern and bool(_MANGLED.search(pattern))


def _mangled_note(pattern: str) -> str:
    guess = _MANGLED.sub(lambda m: m.group(1) + "{" + m.group(0)[len(m.group(1)) :] + "}", pattern)
    guess = re.sub(r"\{(\d)\}(\d+)", r"{\1\2}", guess)
    return (
        f"--regex {pattern}: a digit right after a character class; if you meant {guess}, its "
        "braces were lost on the way (an f-string or an expanded magic line turns {4} into 4): "
        "put the pattern in a variable, pat = r'...', and write --regex $pat"
    )


# \d, \w and \s as ASCII classes (Python's re.ASCII), spelled out for grammar backends
# whose regexes read them as Unicode classes (an "ISO date" of Devanagari digits) or do
# not know them (GBNF).
_ASCII_CLASSES = {
    "d": "0-9",
    "w": "0-9A-Za-z_",
    "s": " \\t\\n\\r\\f\\v",
}


def ascii_pattern(pattern: str) -> str:
    r"""`pattern` with \d, \w, \s (and \D, \W, \S) written as the ASCII character
    classes they mean under re.ASCII, inside and outside brackets."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            letter = pattern[i + 1]
            members = _ASCII_CLASSES.get(letter.lower())
            if members is not None and not (in_class and letter.isupper()):
                negate = letter.isupper()
                out.append(members if in_class else f"[{'^' if negate else ''}{members}]")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            out.append(c)
            if pattern[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            if pattern[i + 1 : i + 2] == "]":  # a leading ] is a member
                out.append("]")
                i += 1
        elif c == "]" and in_class:
            in_class = False
            out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


# --- the inline form ----------------------------------------------------------------------


def inline_schema(spec: str) -> dict[str, Any]:
    """`'name, age int, mood happy|sad'` as a JSON Schema object: every field required,
    no others."""
    properties: dict[str, Any] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        words = part.replace(":", " ").split()
        name, kind = words[0], " ".join(words[1:])
        if not name.isidentifier():
            raise GenerationError(
                f"--schema {spec!r}: {name!r} is not a field name",
                _INLINE_HELP,
                ["--schema 'name, age int, city'"],
            )
        if name in properties:
            raise GenerationError(f"--schema {spec!r}: the field {name} is given twice")
        properties[name] = _inline_type(kind, spec)
    if not properties:
        raise GenerationError(
            "--schema: no fields given", _INLINE_HELP, ["--schema 'name, age int'"]
        )
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _inline_type(kind: str, spec: str) -> dict[str, Any]:
    kind = kind.replace(" ", "")
    if not kind:
        return {"type": "string"}
    if "|" in kind:
        options = [o for o in kind.split("|") if o]
        return {"type": "string", "enum": options}
    found = _INLINE_TYPES.get(kind.lower())
    if found is not None:
        return dict(found)
    inner = re.fullmatch(r"list\[(\w+)\]", kind.lower())
    if inner and inner.group(1) in _INLINE_TYPES and inner.group(1) != "list":
        return {"type": "array", "items": dict(_INLINE_TYPES[inner.group(1)])}
    close = difflib.get_close_matches(kind.lower(), list(_INLINE_TYPES), n=1)
    raise GenerationError(
        f"--schema {spec!r}: unknown type {kind!r}",
        _INLINE_HELP,
        ([f"did you mean {close[0]}?"] if close else []) + ["--schema 'name, age int, city'"],
    )


# --- checking -----------------------------------------------------------------------------


def _is_pydantic_model(spec: Any) -> bool:
    pydantic = sys.modules.get("pydantic")  # a user's pydantic class means it is imported
    base = getattr(pydantic, "BaseModel", None)
    return base is not None and isinstance(spec, type) and issubclass(spec, base)


def _jsonschema() -> Any:
    try:
        import jsonschema
    except ImportError:
        raise LLMError(
            "checking answers against a JSON schema needs the jsonschema package",
            "it is an optional package of llm_magic, not installed here",
            [INSTALL, "or give a pydantic model class instead: --schema MyModel"],
        ) from None
    return jsonschema


def check_schema(schema: Any, label: str | None = None) -> None:
    """Refuse a schema that is not valid JSON Schema, naming the part that is wrong."""
    if not isinstance(schema, dict):
        raise GenerationError(
            f"--schema {label or ''}: a JSON Schema is an object (a dict), not a "
            f"{type(schema).__name__}".replace("--schema : ", "--schema: "),
            fixes=['{"type": "object", "properties": {"name": {"type": "string"}}}'],
        )
    jsonschema = _jsonschema()
    validator = jsonschema.validators.validator_for(schema)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = _path(e.absolute_path)
        raise GenerationError(
            f"--schema {label or ''}: not a valid JSON Schema".replace("--schema : ", "--schema: "),
            f"at {where}: {_short(e.message, 160)}" if where else _short(e.message, 160),
            ["fix that part of the schema", "--schema 'name, age int, city' for a flat one"],
        ) from None


def schema_error(schema: dict[str, Any], value: Any) -> str | None:
    """Why `value` does not conform to `schema` (None: it does), in one line."""
    jsonschema = _jsonschema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = _path(error.absolute_path)
    return f"at {where}: {_short(error.message, 160)}" if where else _short(error.message, 160)


def _path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts)


def _pydantic_errors(error: Exception) -> str:
    errors = getattr(error, "errors", None)
    if not callable(errors):
        return _short(str(error), 160)
    said = [f"at {_path(e.get('loc', ()))}: {e.get('msg')}" for e in errors()[:3]]
    return "; ".join(said) or _short(str(error), 160)


_NO_JSON = object()


def _json_in(text: str) -> Any:
    """The JSON value in `text`: all of it, else a ```json block, else the outermost
    {...} or [...] (an engine that did not enforce the format may wrap it in prose)."""
    candidates = [text]
    fenced = re.search(r"```(?:json)?\s*\n(.*?)```", text, re.S)
    if fenced:
        candidates.append(fenced.group(1))
    for opening, closing in ("{}", "[]"):
        start, end = text.find(opening), text.rfind(closing)
        if 0 <= start < end:
            candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return _NO_JSON


def _json_error(text: str) -> str:
    try:
        json.loads(text)
    except ValueError as e:
        return str(e)
    return "no JSON value"


def _short(text: str, limit: int = 60) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
