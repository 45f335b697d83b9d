"""Answer formats on an OpenAI-compatible server: each server's own way of asking, found by
trying them, and believed only when the answer shows it.

Servers differ: vLLM takes `structured_outputs` (older ones `guided_json`, `guided_choice`,
`guided_regex`), SGLang and llama.cpp's server OpenAI's `response_format` with a
`json_schema`, llama-cpp-python's server `response_format` `json_object` with a `schema`
and a `grammar` (GBNF), SGLang a `regex`, Ollama `format`. And servers ignore fields they
do not know without a word (`transformers serve` takes `response_format` and ignores it),
or refuse them (HTTP 400/422). So the absence of an error proves nothing: each way is
tried on a short probe whose answer the model would not give by itself (a made-up word
the format forces), and the first way whose answer conforms is the server's. When none
does, answers are checked, not enforced, and the result says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..structured import AnswerFormat

# What the probes force: words no model answers "Say hello." with.
_PROBE_WORD, _OTHER_WORD = "qzxv", "bkwj"
_PROBES: dict[str, AnswerFormat] = {
    "json": AnswerFormat(
        "json",
        schema='{"type":"object","properties":{"q":{"enum":["qzxv"]}},'
        '"required":["q"],"additionalProperties":false}',
        label="probe",
    ),
    "choice": AnswerFormat("choice", choices=(_PROBE_WORD, _OTHER_WORD), label="probe"),
    "regex": AnswerFormat("regex", pattern="qzxv[0-9]{2}", label="probe"),
}
PROBE_PROMPT = "Say hello."
PROBE_TOKENS = 16


@dataclass(frozen=True)
class Way:
    """One way of asking a server for a format: its name (said in results) and the body
    fields it adds for a format."""

    name: str
    fields: Callable[[AnswerFormat], dict[str, Any] | None]  # None: it cannot say this format


def _json_schema(fmt: AnswerFormat) -> dict[str, Any]:
    schema = {"name": "answer", "schema": fmt.schema_dict, "strict": True}
    return {"response_format": {"type": "json_schema", "json_schema": schema}}


def _gbnf(fmt: AnswerFormat) -> dict[str, Any] | None:
    """A GBNF grammar, where one can be written here (a regex needs llama-cpp-python's
    converter in the kernel)."""
    from . import gbnf

    try:
        text, _ = gbnf.convert(fmt)
    except ImportError:
        return None
    except Exception:  # what the converter refuses is not asked this way
        return None
    return {"grammar": text}


WAYS: dict[str, tuple[Way, ...]] = {
    "json": (
        Way("response_format json_schema", _json_schema),
        Way(
            "response_format json_object with a schema",
            lambda f: {"response_format": {"type": "json_object", "schema": f.schema_dict}},
        ),
        Way("structured_outputs", lambda f: {"structured_outputs": {"json": f.schema_dict}}),
        Way("guided_json", lambda f: {"guided_json": f.schema_dict}),
        Way("format", lambda f: {"format": f.schema_dict}),
    ),
    "choice": (
        Way("structured_outputs", lambda f: {"structured_outputs": {"choice": list(f.choices)}}),
        Way("guided_choice", lambda f: {"guided_choice": list(f.choices)}),
        Way("grammar", _gbnf),
    ),
    "regex": (
        Way("structured_outputs", lambda f: {"structured_outputs": {"regex": f.pattern}}),
        Way("guided_regex", lambda f: {"guided_regex": f.pattern}),
        Way("regex", lambda f: {"regex": f.pattern}),
        Way("grammar", _gbnf),
    ),
}


@dataclass
class Found:
    """What probing a server for one kind of format found: the way it enforces it, or
    (None) what each way met."""

    way: Way | None
    met: tuple[str, ...] = ()

    def note(self) -> str:
        if self.way is not None:
            return f"the server's {self.way.name}"
        said = "; ".join(self.met)
        return f"the server enforced none of the ways to ask ({said})"


def probe(kind: str, ask: Callable[[dict[str, Any]], tuple[str, int | None]]) -> Found:
    """Try each way for `kind`: `ask(fields)` sends the probe prompt with those body
    fields and returns (the answer, None) or ("", the HTTP status that refused it)."""
    fmt = _PROBES[kind]
    met: list[str] = []
    for way in WAYS[kind]:
        fields = way.fields(fmt)
        if fields is None:
            continue
        answer, refused = ask(fields)
        if refused is not None:
            met.append(f"{way.name}: refused, HTTP {refused}")
            continue
        if fmt.parse(answer).valid:
            return Found(way, tuple(met))
        met.append(f"{way.name}: ignored")
    return Found(None, tuple(met))
