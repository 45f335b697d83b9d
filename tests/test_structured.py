"""Typed answers (`--schema`, `--choice`, `--regex`): the format as a value, the magic
line as IPython hands it over, enforcement while decoding (transformers: llguidance;
llama.cpp: GBNF), the parsed data and its DataFrame, and the cards.

The tiny random GPT-2 shows enforcement at its starkest: left alone it writes no JSON,
no date and none of the choices; under a format every answer conforms. SmolLM2 (the real
.gguf) shows it on real extraction prompts, on both in-kernel engines. The servers' side
is in tests/test_server.py, next to the real servers it runs against.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import time

import pytest
from IPython.utils.capture import capture_output

import llm_magic
from llm_magic import GenerationError, structured
from llm_magic.structured import AnswerFormat

pydantic = pytest.importorskip("pydantic")
pytest.importorskip("llguidance")

# A schema the tiny random model can finish within a few tokens: short ASCII strings,
# bounded numbers and lists (its strings would otherwise run to --max-new-tokens, in
# characters of several tokens each).
BOUNDED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z]{1,6}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad", "neutral"]},
        "tags": {
            "type": "array",
            "items": {"type": "string", "pattern": "^[a-z]{1,4}$"},
            "maxItems": 2,
        },
    },
    "required": ["name", "age", "mood", "tags"],
    "additionalProperties": False,
}
ISO_DATE = r"\d{4}-\d{2}-\d{2}"


class Person(pydantic.BaseModel):
    name: str
    age: int


def run(shell, cell):
    with capture_output() as captured:
        result = shell.run_cell(cell, store_history=True)
    return result, captured


@pytest.fixture
def tiny(tiny_varied_dir):
    return llm_magic.load(str(tiny_varied_dir), alias="tiny", quiet=True)


# --- the format as a value -------------------------------------------------------------


def test_inline_form_dict_and_pydantic_class_become_one_hashable_format():
    fmt = AnswerFormat.of_schema("name, age int, mood happy|sad, tags list[int], ok bool")
    schema = fmt.schema_dict
    assert list(schema["properties"]) == ["name", "age", "mood", "tags", "ok"]  # order kept
    assert schema["properties"]["name"] == {"type": "string"}  # fields default to strings
    assert schema["properties"]["age"] == {"type": "integer"}
    assert schema["properties"]["mood"] == {"type": "string", "enum": ["happy", "sad"]}
    assert schema["properties"]["tags"] == {"type": "array", "items": {"type": "integer"}}
    assert schema["required"] == ["name", "age", "mood", "tags", "ok"]
    assert hash(fmt) == hash(AnswerFormat.of_schema(schema)) and fmt == AnswerFormat.of_schema(
        schema
    )

    typed = AnswerFormat.of_schema(Person)
    data, valid, error = typed.parse('{"name": "Ana", "age": 7}')
    assert valid and error is None and isinstance(data, Person) and data.age == 7
    data, valid, error = typed.parse('{"name": "Ana", "age": "old"}')
    assert data is None and not valid and "age" in error

    plain = AnswerFormat.of_schema(BOUNDED)
    assert plain.parse('{"name": "Ana", "age": 7, "mood": "sad", "tags": []}').valid
    data, valid, error = plain.parse('{"name": "Ana", "age": 7, "mood": "grumpy", "tags": []}')
    assert not valid and error.startswith("at mood:")
    # Not enforced, an answer may come wrapped in prose or a code fence: found all the same.
    assert plain.parse('Sure!\n```json\n{"name": "A", "age": 1, "mood": "sad", "tags": []}\n```')[1]


def test_choice_and_regex_read_the_answer():
    choice = AnswerFormat.of_choices(["positive", "negative", "not sure"])
    assert choice.parse(" negative\n") == ("negative", True, None)
    assert choice.parse("Positive.").data == "positive"
    assert not choice.parse("positive or negative").valid
    date = AnswerFormat.of_regex(ISO_DATE)
    assert date.parse("1789-07-14").data == "1789-07-14"
    # \d means an ASCII digit (as re.ASCII): an "ISO date" of Devanagari digits is not one.
    assert not date.parse("१७८९-07-14").valid
    assert structured.ascii_pattern(r"[\d.]+\s\w") == "[0-9.]+[ \\t\\n\\r\\f\\v][0-9A-Za-z_]"


def test_a_cut_answer_is_incomplete_unless_a_free_one_closed_its_json_before_the_cut():
    fmt = AnswerFormat.of_schema("name, age int")
    cut = structured.check(fmt, '{"name": "Ma', "length", enforced=True)
    assert cut.incomplete and cut.data is None
    # Not enforced: a whole object, then chatter cut by the limit: the object is judged.
    chatty = '{"name": "Maria", "age": 34, "extra": 1}\n\nThis JSON is'
    judged = structured.check(fmt, chatty, "length", enforced=False)
    assert not judged.incomplete and "'extra' was unexpected" in judged.error
    assert structured.check(fmt, '{"name": "Ma', "length", enforced=False).incomplete


def test_bad_formats_are_cards_that_name_the_part():
    with pytest.raises(GenerationError) as bad_schema:
        AnswerFormat.of_schema({"type": "object", "properties": {"x": {"type": "frobnicate"}}})
    assert "not a valid JSON Schema" in str(bad_schema.value)
    assert "at properties.x.type" in bad_schema.value.diagnosis.cause
    with pytest.raises(GenerationError, match="unknown type 'integr'") as typo:
        AnswerFormat.of_schema("name, age integr")
    assert "did you mean integer?" in typo.value.diagnosis.fixes
    with pytest.raises(GenerationError, match="not a pydantic model class"):
        AnswerFormat.of_schema(dict)
    with pytest.raises(GenerationError, match="one choice leaves nothing to choose"):
        AnswerFormat.of_choices(["yes"])
    with pytest.raises(GenerationError, match="not a valid regular expression"):
        AnswerFormat.of_regex("[0-9")
    with pytest.raises(GenerationError, match="an answer takes one format"):
        structured.from_keywords(schema="a, b", regex="x")


def test_flags_name_variables_with_did_you_mean():
    ns = {"Person": Person, "pat": re.compile(ISO_DATE), "labels": ["good", "bad"], "other": "x"}
    assert structured.from_flags("Person", None, None, ns).model is Person
    assert structured.from_flags("$Person", None, None, ns).model is Person
    assert structured.from_flags(None, ["$labels"], None, ns).choices == ("good", "bad")
    assert structured.from_flags(None, ["'not sure'", "yes"], None, {}).choices == (
        "not sure",
        "yes",
    )
    assert structured.from_flags(None, None, "$pat", ns).pattern == ISO_DATE
    assert structured.from_flags(None, None, "pat", ns).pattern == ISO_DATE  # a bare name
    assert structured.from_flags(None, None, "'[0-9]{4}'", ns).pattern == "[0-9]{4}"
    with pytest.raises(GenerationError, match="no variable named 'Persn'") as typo:
        structured.from_flags("Persn", None, None, ns)
    assert "did you mean --schema Person?" in typo.value.diagnosis.fixes
    with pytest.raises(GenerationError, match="--regex pta: no variable") as typo:
        structured.from_flags(None, None, "$pta", ns)
    assert "did you mean --regex $pat?" in typo.value.diagnosis.fixes
    # Braces lost on the way ({4} became 4): said, not guessed away.
    (note,) = structured.from_flags(None, None, "[0-9]4-[0-9]2", ns).notes
    assert "if you meant [0-9]{4}-[0-9]{2}" in note and "--regex $pat" in note


def test_the_magic_line_arrives_as_typed_in_generate_and_chat(shell, tiny_varied_dir):
    """The cells are @no_var_expand: IPython hands the line over as typed, so {4} keeps its
    braces and $pat is llm_magic's to look up (in %%llm_generate and %%llm_chat alike)."""
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --as tiny --quiet")
    shell.user_ns["pat"] = ISO_DATE
    result, _ = run(
        shell,
        "%%llm_generate --regex '[0-9]{4}' --greedy --max-new-tokens 8 --out r\nA year:",
    )
    r = shell.user_ns["r"]
    assert r.answer.format.pattern == "[0-9]{4}" and re.fullmatch("[0-9]{4}", r.text)
    assert r.valid and r.data == r.text and r.answer.enforced
    run(shell, "%%llm_chat --regex $pat --greedy --max-new-tokens 16 --out c\nWhen?")
    c = shell.user_ns["c"]
    assert c.answer.format.pattern == ISO_DATE and re.fullmatch(ISO_DATE, c.text, re.ASCII)
    assert "regex $pat · enforced (llguidance)" in c.footer()
    result, _ = run(shell, "%%llm_generate --schema Persn --max-new-tokens 4\nHi")
    assert isinstance(result.error_in_exec, GenerationError)
    assert not any("did you mean" in f for f in result.error_in_exec.diagnosis.fixes)
    shell.user_ns["Person"] = Person
    result, _ = run(shell, "%%llm_generate --schema Persn --max-new-tokens 4\nHi")
    assert "did you mean --schema Person?" in result.error_in_exec.diagnosis.fixes


# --- enforced in the kernel (tiny GPT-2) -------------------------------------------------


def test_the_tiny_model_writes_no_json_alone_and_only_valid_json_under_a_schema(tiny):
    free = llm_magic.generate("Hello", model=tiny, greedy=True, max_new_tokens=30)
    assert not AnswerFormat.of_schema(BOUNDED).parse(free.text).valid
    result = llm_magic.generate("Hello", model=tiny, greedy=True, max_new_tokens=80, schema=BOUNDED)
    assert result.valid and result.stop_reason == "eos"
    assert json.loads(result.text) == result.data and set(result.data) == set(BOUNDED["properties"])
    assert result.answer.enforced and "enforced (llguidance)" in result.footer()
    shown = result._repr_mimebundle_()[0]
    assert "→ {" in shown["text/plain"] and "<table" in shown["text/html"]

    # --over: one grammar state per row of each batch, sampled, all valid; typed columns.
    results = llm_magic.generate(
        "Person {item}:",
        model=tiny,
        over=list(range(6)),
        batch_size=3,
        seed=5,
        max_new_tokens=80,
        schema=BOUNDED,
    )
    assert all(r.valid for r in results) and "6/6 valid" in results.summary()
    frame = results.to_pandas()
    assert str(frame["age"].dtype) == "Int64" and frame["age"].tolist() == [
        r.data["age"] for r in results
    ]
    assert list(frame.columns[:7]) == ["item", "prompt", "text", "name", "age", "mood", "tags"]
    assert frame["valid"].all() and frame["validation_error"].isna().all()


def test_an_answer_replayed_from_the_run_log_is_read_into_the_same_data(tiny):
    asked = dict(model=tiny, greedy=True, max_new_tokens=80, schema=BOUNDED)
    first = llm_magic.generate("Replay me", **asked)
    again = llm_magic.generate("Replay me", reuse=True, **asked)
    assert again.replayed_from is not None and again.text == first.text
    assert again.valid and again.data == first.data and again.answer.enforced
    assert again.footer().endswith("· enforced (llguidance)")


def test_choice_and_iso_date_always_conform_when_sampled(tiny):
    labels = ["positive", "negative", "neutral"]
    chosen = llm_magic.generate(
        "Review {item}:", model=tiny, over=list(range(8)), seed=1, max_new_tokens=12, choice=labels
    )
    assert [r.data in labels and r.text.strip() == r.data for r in chosen] == [True] * 8
    dates = llm_magic.generate(
        "Event {item}:", model=tiny, over=list(range(6)), seed=2, max_new_tokens=16, regex=ISO_DATE
    )
    assert all(re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", r.text) for r in dates), dates.texts
    assert dates.to_pandas()["data"].tolist() == dates.texts


def test_a_compiled_format_is_cached_per_tokenizer_and_freed_with_the_model(tiny_varied_dir):
    from llm_magic.engines import grammar

    handle = llm_magic.load(str(tiny_varied_dir), alias="tiny", quiet=True)
    fmt = AnswerFormat.of_schema(BOUNDED)
    eos = [handle.tokenizer.eos_token_id]
    width = len(handle.tokenizer)
    grammar.ready_matcher(fmt, handle.tokenizer, width, eos)  # the first: compiled
    kept = dict(grammar._CACHE[handle.tokenizer])
    started = time.perf_counter()
    grammar.ready_matcher(fmt, handle.tokenizer, width, eos)
    assert time.perf_counter() - started < 0.01  # a copy of the ready one
    assert grammar._CACHE[handle.tokenizer] == kept  # nothing compiled again
    llm_magic.unload(all=True)
    del handle
    gc.collect()
    assert grammar.cached_count() == 0


def test_the_output_width_past_the_vocabulary_is_masked(tiny):
    """config.vocab_size may exceed the tokenizer's vocabulary (padding rows): the ids past
    it are never let through."""
    import torch

    from llm_magic.engines import grammar

    width = len(tiny.tokenizer) + 37  # as a padded output layer would be
    proc = grammar.processor(
        AnswerFormat.of_choices(["yes", "no"]), tiny.tokenizer, width, [0], rows=2
    )
    scores = proc(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, width))
    allowed = torch.isfinite(scores)
    assert not allowed[:, len(tiny.tokenizer) :].any() and allowed.any(dim=1).all()


# --- cards ------------------------------------------------------------------------------


def test_a_schema_llguidance_cannot_compile_and_a_cut_answer_each_give_a_card(
    shell, tiny_varied_dir
):
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --as tiny --quiet")
    shell.user_ns["unique"] = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    result, captured = run(shell, "%%llm_generate --schema unique --max-new-tokens 8\nNumbers:")
    error = result.error_in_exec
    assert isinstance(error, GenerationError)
    lines = error.card_lines()
    assert lines[0] == "✗ schema unique cannot be enforced: llguidance cannot compile it"
    assert "uniqueItems" in lines[1]
    # The kernel lives: the next cell runs, and the cut-off answer gets its own card.
    result, captured = run(
        shell, "%%llm_generate --schema 'name, age int' --greedy --max-new-tokens 5 --out cut\nHi"
    )
    error = result.error_in_exec
    assert isinstance(error, GenerationError)
    assert error.card_lines()[0].startswith("✗ the answer was cut off after 5 new tokens")
    assert "--max-new-tokens 69" in error.diagnosis.fixes
    cut = shell.user_ns["cut"]  # the text so far is kept, with no data
    assert cut.data is None and cut.answer.incomplete and cut.new_tokens == 5
    assert cut.text.strip() and cut.text.strip() in captured.stdout


def test_no_llguidance_is_a_card_with_the_install_line(tiny_varied_dir):
    """Run where llguidance cannot be imported (a None entry in sys.modules makes Python
    raise ImportError for it)."""
    code = (
        "import sys; sys.modules['llguidance'] = None\n"
        "import llm_magic\n"
        "llm_magic.load(sys.argv[1], quiet=True)\n"
        "try:\n"
        "    llm_magic.generate('Hi', choice=['a', 'b'], max_new_tokens=2)\n"
        "except llm_magic.GenerationError as e:\n"
        "    print('\\n'.join(e.card_lines()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tiny_varied_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert "✗ enforcing an answer format in the kernel needs the llguidance package" in done.stdout
    assert 'pip install "llm_magic[structured]"' in done.stdout, done.stderr[-2000:]


def test_parsed_values_are_escaped_in_html():
    from llm_magic.display.data import data_html

    shown = data_html({"name": "<script>alert(1)</script>", "tags": ["<b>"]})
    assert "<script>" not in shown and "&lt;script&gt;" in shown and "&lt;b&gt;" in shown


# --- SmolLM2: real extraction on both in-kernel engines ------------------------------------

TEXTS = [
    "Maria is 34, cheerful, and loves chess and hiking.",
    "Tom, 52, has been sad since he lost his job; he still enjoys fishing.",
    "Aiko is a happy 19-year-old student who plays the piano and tennis.",
    "Pedro (age 41) is calm about the news; his hobbies are cooking and running.",
]
EXTRACT = "Extract the person's name, age, mood and hobbies as JSON from this text:\n{item}"
EXTRACTION = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "mood": {"enum": ["happy", "sad", "neutral"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3},
    },
    "required": ["name", "age", "mood", "hobbies"],
    "additionalProperties": False,
}


def _check_smollm2(handle) -> None:
    results = llm_magic.generate(
        EXTRACT, model=handle, over=TEXTS, greedy=True, max_new_tokens=64, schema=EXTRACTION
    )
    assert [r.valid for r in results] == [True] * len(TEXTS), [r.text for r in results]
    assert all(r.answer.enforced for r in results)
    frame = results.to_pandas()
    assert frame["age"].dtype.kind == "i" or str(frame["age"].dtype) == "Int64"
    assert frame["age"].tolist() == [r.data["age"] for r in results]
    assert set(frame["mood"]) <= {"happy", "sad", "neutral"}
    labels = ["positive", "negative", "neutral"]
    reviews = ["I loved every minute.", "Broken on arrival, avoid.", "It is a chair."]
    chosen = llm_magic.generate(
        "Is this review positive, negative or neutral?\n{item}",
        model=handle,
        over=reviews,
        seed=3,
        temperature=1.0,
        max_new_tokens=6,
        choice=labels,
    )
    assert all(r.data in labels for r in chosen), chosen.texts
    dates = llm_magic.generate(
        "On what date did {item} happen? Answer as YYYY-MM-DD.",
        model=handle,
        over=["the storming of the Bastille", "the first Moon landing"],
        greedy=True,
        max_new_tokens=16,
        regex=ISO_DATE,
    )
    assert all(re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", r.text) for r in dates), dates.texts


@pytest.mark.slow
def test_smollm2_extraction_choice_and_date_on_the_transformers_engine(smollm2_gguf):
    _check_smollm2(llm_magic.load(smollm2_gguf, alias="smol", quiet=True))


@pytest.mark.slow
def test_smollm2_extraction_choice_and_date_on_llama_cpp(smollm2_gguf):
    pytest.importorskip("llama_cpp")
    handle = llm_magic.load(smollm2_gguf, engine="llama.cpp", alias="lc", quiet=True)
    _check_smollm2(handle)
    # A keyword GBNF cannot say is named in the notes (a short answer: a boolean closes it).
    flag = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    result = llm_magic.generate(
        "Is the sky blue?",
        model=handle,
        greedy=True,
        max_new_tokens=16,
        schema=flag | {"minProperties": 1},
    )
    assert result.valid and isinstance(result.data["ok"], bool), result.text
    assert "llama.cpp's grammar does not enforce minProperties (at the top)" in " ".join(
        result.notes
    )
    with pytest.raises(GenerationError, match="cannot be enforced by llama.cpp") as refused:
        llm_magic.generate("Hi", model=handle, max_new_tokens=4, regex=r"(?=a)a+")
    assert "look-around" in refused.value.diagnosis.cause
    assert llm_magic.generate("Hi", model=handle, greedy=True, max_new_tokens=2).text is not None
