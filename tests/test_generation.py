"""`%%llm_generate` and `llm_magic.generate` on real models: equality with plain
`model.generate`, prompts and variables, sampling and seeds, stop strings, streaming,
batching, results, input errors, and Ctrl-C in a real kernel."""

from __future__ import annotations

import _thread
import dataclasses
import gc
import io
import logging
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output

import llm_magic
from llm_magic import MODEL_CACHE, GenerationError
from llm_magic.results import GenerationResult, GenerationResults

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(shell, cell):
    """Run one cell; return (result, captured output)."""
    with capture_output() as captured:
        result = shell.run_cell(cell, store_history=True)
    return result, captured


def plain_new_tokens(handle, input_ids, attention_mask=None, **kwargs) -> list[int]:
    """What a plain `model.generate` call gives (the reference for equality)."""
    import torch

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    pad = handle.tokenizer.pad_token_id
    if pad is None:
        pad = handle.tokenizer.eos_token_id
    out = handle.model.generate(
        input_ids=input_ids, attention_mask=attention_mask, pad_token_id=pad, **kwargs
    )
    return out[0, input_ids.shape[1] :].tolist()


@pytest.fixture
def tiny(shell, tiny_model_dir):
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --as tiny --quiet")
    return MODEL_CACHE.find("tiny")


@pytest.fixture
def smol(shell, smollm2_gguf):
    shell.run_line_magic("llm_load", f"{smollm2_gguf} --as smol --quiet")
    return MODEL_CACHE.find("smol")


# --- equality with plain model.generate ---------------------------------------------------
#
# The references must tell a small change apart (a repetition_penalty of 1.05 slipped into
# every call, say): long outputs, several prompts, a model whose greedy path wanders (the
# `varied` tiny model; the default one repeats one or two ids), token ids compared. Each
# test first checks that its references do discriminate, on whatever machine it runs.

VARIED_PROMPTS = [
    "The capital of France",
    "The quick brown fox",
    "Hello world! Numbers like",
    "A notebook cell holds",
    "Language models predict",
    "Paris",
]
VARIED_NEW_TOKENS = 40


@pytest.fixture
def varied(shell, tiny_varied_dir):
    # float32: no packed products on any CPU, so a batch equals single runs token for token.
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --as varied --dtype float32 --quiet")
    return MODEL_CACHE.find("varied")


def plain_greedy(handle, prompts, max_new_tokens, chat=False, **extra) -> list[list[int]]:
    """Plain `model.generate`, one prompt at a time: greedy new token ids per prompt."""
    refs = []
    for p in prompts:
        if chat:
            inputs = handle.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
        else:
            ids, mask = handle.tokenizer(p, return_tensors="pt").input_ids, None
        refs.append(
            plain_new_tokens(
                handle, ids, mask, max_new_tokens=max_new_tokens, do_sample=False, **extra
            )
        )
    return refs


def assert_discriminating(handle, prompts, refs, max_new_tokens, chat=False, min_distinct=8):
    """The references are worth comparing against: varied, and a small change in the
    settings changes them."""
    assert all(len(set(ref)) >= min_distinct for ref in refs), [len(set(ref)) for ref in refs]
    nudged = plain_greedy(handle, prompts, max_new_tokens, chat=chat, repetition_penalty=1.05)
    assert nudged != refs, "these references cannot tell repetition_penalty=1.05 apart"


def test_greedy_equals_plain_generate_tiny(shell, varied):
    expected = plain_greedy(varied, VARIED_PROMPTS, VARIED_NEW_TOKENS)
    assert_discriminating(varied, VARIED_PROMPTS, expected, VARIED_NEW_TOKENS)
    for prompt, ref in zip(VARIED_PROMPTS, expected, strict=True):
        result, _ = run(
            shell,
            f"%%llm_generate -m varied --greedy --max-new-tokens {VARIED_NEW_TOKENS}\n{prompt}",
        )
        assert result.success, result.error_in_exec
        r = result.result
        assert isinstance(r, GenerationResult)
        assert list(r.token_ids) == ref, prompt
        assert r.text == varied.tokenizer.decode(ref, skip_special_tokens=True)
        assert r.prompt_tokens == len(varied.tokenizer(prompt).input_ids) and r.new_tokens == len(
            ref
        )
        assert r.rendered_prompt == prompt  # no chat template: the text as is


def test_over_equals_plain_generate_one_prompt_at_a_time_tiny(shell, varied):
    expected = plain_greedy(varied, VARIED_PROMPTS, VARIED_NEW_TOKENS)
    assert_discriminating(varied, VARIED_PROMPTS, expected, VARIED_NEW_TOKENS)
    shell.user_ns["prompts"] = VARIED_PROMPTS
    result, _ = run(
        shell,
        f"%%llm_generate -m varied --greedy --max-new-tokens {VARIED_NEW_TOKENS} "
        "--over prompts --batch-size 4\n{item}",
    )
    assert result.success, result.error_in_exec
    batch = result.result
    assert {r.batch for r in batch} == {(0, 4), (1, 2)}  # really batched, left-padded
    assert [list(r.token_ids) for r in batch] == expected


def test_sampling_with_seed_equals_plain_generate_with_that_seed(tiny):
    import torch

    r = llm_magic.generate(
        "The quick brown fox", seed=1234, max_new_tokens=20, temperature=0.9, top_p=0.95, top_k=40
    )
    ids = tiny.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    torch.manual_seed(1234)
    expected = plain_new_tokens(
        tiny, ids, max_new_tokens=20, do_sample=True, temperature=0.9, top_p=0.95, top_k=40
    )
    assert list(r.token_ids) == expected


SMOL_PROMPTS = [
    "Write two sentences about the sea.",
    "Write a short story about a lighthouse keeper.",
]
SMOL_NEW_TOKENS = 40


@pytest.mark.slow
def test_smollm2_greedy_equals_plain_generate_on_long_answers(shell, smol):
    expected = plain_greedy(smol, SMOL_PROMPTS, SMOL_NEW_TOKENS, chat=True)
    assert_discriminating(smol, SMOL_PROMPTS, expected, SMOL_NEW_TOKENS, chat=True, min_distinct=15)
    for prompt, ref in zip(SMOL_PROMPTS, expected, strict=True):
        result, _ = run(
            shell, f"%%llm_generate --greedy --max-new-tokens {SMOL_NEW_TOKENS}\n{prompt}"
        )
        assert result.success, result.error_in_exec
        assert list(result.result.token_ids) == ref, prompt


@pytest.mark.slow
def test_smollm2_greedy_equals_plain_generate_and_answers_paris(shell, smol):
    result, captured = run(
        shell, "%%llm_generate --greedy --max-new-tokens 32\nWhat is the capital of France?"
    )
    assert result.success, result.error_in_exec
    r = result.result
    expected = plain_greedy(smol, ["What is the capital of France?"], 32, chat=True)[0]
    assert list(r.token_ids) == expected
    assert "<|im_start|>assistant\n" in r.rendered_prompt  # SmolLM2's ChatML template was applied
    assert "Paris" in r.text
    assert r.stop_reason == "eos" and r.new_tokens <= 32
    assert r.dtype == str(smol.model.dtype).removeprefix("torch.")
    # Streamed to stdout as it came (terminal), then shown as the value.
    assert captured.stdout.startswith(r.text)


# --- prompts, variables, options ----------------------------------------------------------


def test_variables_attributes_items_and_escapes(shell, tiny):
    shell.run_cell(
        "class Doc:\n    title = 'Moby Dick'\n"
        "doc = Doc()\ninfo = {'author': 'Melville', 0: 'zero'}\n"
        "words = ['whale', 'sea']\nyear = 1851\n"
    )
    result, _ = run(
        shell,
        "%%llm_generate --greedy --max-new-tokens 2\n"
        "{doc.title} by {info[author]} ({year:>6}) {words[1]} {info[0]} {{literal}} {year!r}",
    )
    assert result.success, result.error_in_exec
    assert result.result.prompt == "Moby Dick by Melville (  1851) sea zero {literal} 1851"


def test_no_eval_and_no_expansion_of_the_line(shell, tiny):
    shell.run_cell("x = 3")
    for cell, name in [
        ("{1+1}", "1+1"),
        ("{x + 1}", "x + 1"),
        ("{__import__('os')}", "__import__('os')"),
    ]:
        result, captured = run(shell, f"%%llm_generate --greedy --max-new-tokens 2\n{cell}")
        assert isinstance(result.error_in_exec, GenerationError), cell
        assert f"no variable named {name!r}" in captured.stdout
    result, captured = run(shell, "%%llm_generate --greedy --max-new-tokens 2\n{x.__class__}")
    assert isinstance(result.error_in_exec, GenerationError) and "dunder" in captured.stdout
    # IPython does not expand $x or {x} in the magic's line behind our back.
    result, _ = run(shell, "%%llm_generate --greedy --max-new-tokens 2 --raw --system $x\nHi")
    assert result.result.rendered_prompt == "$x\n\nHi"


def test_unknown_name_is_an_error_naming_it(shell, tiny):
    shell.run_cell("topic = 'whales'")
    result, captured = run(shell, "%%llm_generate\nTell me about {topik}")
    assert isinstance(result.error_in_exec, GenerationError)
    assert "{topik} in the prompt: no variable named 'topik'" in captured.stdout
    assert "did you mean: {topic}" in captured.stdout
    assert "Traceback" not in captured.stdout  # the short card, not a traceback


def test_system_raw_show_prompt_and_out(shell, tiny):
    result, captured = run(
        shell,
        "%%llm_generate --greedy --max-new-tokens 3 --raw --system 'Be brief.' "
        "--show-prompt --out res\nHello",
    )
    assert result.success
    assert shell.user_ns["res"] is result.result is shell.user_ns["_"]
    assert result.result.rendered_prompt == "Be brief.\n\nHello"  # no template: system text first
    assert (
        "prompt (" in captured.outputs[0].data["text/plain"]
        and "Be brief." in captured.outputs[0].data["text/plain"]
    )


@pytest.mark.slow
def test_smollm2_system_message_and_raw(shell, smol):
    result, _ = run(
        shell, "%%llm_generate --greedy --max-new-tokens 1 --system 'You are a pirate.'\nHello"
    )
    assert "<|im_start|>system\nYou are a pirate.<|im_end|>" in result.result.rendered_prompt
    result, _ = run(shell, "%%llm_generate --greedy --max-new-tokens 1 --raw\nHello")
    assert result.result.rendered_prompt == "Hello"


def test_traits_are_defaults_and_flags_override_them(shell, tiny):
    shell.run_line_magic("config", "LLMMagics.max_new_tokens = 5")
    shell.run_line_magic("config", "LLMMagics.greedy = True")
    result, _ = run(shell, "%%llm_generate\nThe capital")
    r = result.result
    assert r.settings["max_new_tokens"] == 5 and r.settings["greedy"] and r.new_tokens <= 5
    result, _ = run(shell, "%%llm_generate --max-new-tokens 7\nThe capital")
    assert result.result.settings["max_new_tokens"] == 7
    shell.run_line_magic("config", "LLMMagics.greedy = False")
    shell.run_line_magic("config", "LLMMagics.temperature = 0.5")
    result, _ = run(shell, "%%llm_generate --seed 1\nThe capital")
    assert result.result.settings["temperature"] == 0.5 and result.result.seed == 1


def test_help_lists_the_options(shell):
    with capture_output() as captured:
        shell.run_cell("%%llm_generate?\n")
    text = captured.stdout
    for flag in (
        "--model",
        "--max-new-tokens",
        "--temperature",
        "--top-p",
        "--top-k",
        "--seed",
        "--greedy",
        "--system",
        "--raw",
        "--no-stream",
        "--out",
        "--stop",
        "--show-prompt",
        "--over",
        "--batch-size",
    ):
        assert flag in text, flag
    assert "%%llm_generate [-m MODEL [MODEL ...]]" in text  # a cell magic's usage, with its two %
    flat = " ".join(text.split())
    assert (
        "Default: 256 (LLMMagics.max_new_tokens)" in flat
        and "Default: 0.7 (LLMMagics.temperature)" in flat
    )
    assert "Default: LLMMagics" not in flat  # every default shows its value


def test_a_mistyped_flag_gets_a_did_you_mean(shell, tiny):
    from IPython.core.error import UsageError

    result, captured = run(shell, "%%llm_generate --temprature 0.5\nHi")
    assert isinstance(result.error_in_exec, UsageError)
    assert "--temprature: did you mean --temperature?" in captured.stderr + captured.stdout
    result, captured = run(shell, "%llm_load x --dtpye bf16")
    assert "--dtpye: did you mean --dtype?" in captured.stderr + captured.stdout


def test_no_fill_sends_braces_as_written(shell, tiny):
    code = "def f(d):\n    return {k: v for k, v in d.items()}  # {not_a_name}"
    result, _ = run(shell, f"%%llm_generate --no-fill --greedy --max-new-tokens 2\n{code}")
    assert result.success and result.result.prompt == code
    result, captured = run(shell, f"%%llm_generate --greedy --max-new-tokens 2\n{code}")
    assert isinstance(result.error_in_exec, GenerationError)  # filled by default: k is no variable
    shell.user_ns["items"] = ["a"]
    result, _ = run(shell, "%%llm_generate --no-fill --over items\n{item}")
    assert "cannot go with --no-fill" in str(result.error_in_exec)


# --- sampling and seeds ------------------------------------------------------------------


def test_same_seed_same_text_and_greedy_is_deterministic(shell, tiny):
    texts = [
        run(shell, "%%llm_generate --seed 7 --max-new-tokens 20\nThe quick brown")[0].result
        for _ in range(2)
    ]
    assert texts[0].token_ids == texts[1].token_ids and texts[0].seed == 7
    other = run(shell, "%%llm_generate --seed 8 --max-new-tokens 20\nThe quick brown")[0].result
    assert other.token_ids != texts[0].token_ids
    # Without --seed a fresh one is drawn and recorded: it reproduces the text.
    free = run(shell, "%%llm_generate --max-new-tokens 20\nThe quick brown")[0].result
    again = run(shell, f"%%llm_generate --seed {free.seed} --max-new-tokens 20\nThe quick brown")[
        0
    ].result
    assert free.seed is not None and again.token_ids == free.token_ids
    greedy = [
        run(shell, "%%llm_generate --greedy --max-new-tokens 20\nThe quick brown")[0].result
        for _ in range(2)
    ]
    assert greedy[0].token_ids == greedy[1].token_ids and greedy[0].seed is None


def test_seeding_leaves_the_users_rng_alone(tiny):
    import torch

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    llm_magic.generate("Hello", seed=5, max_new_tokens=3)
    assert torch.equal(torch.rand(3), expected)


# --- stop strings and the context window --------------------------------------------------


def _stop_piece(tokenizer, ids) -> tuple[int, str] | None:
    """(index, text) of a later token whose text (letters only) appears nowhere before it."""
    for i in range(3, len(ids)):
        piece = tokenizer.decode([ids[i]]).strip()
        if (
            len(piece) >= 2
            and piece.isalpha()
            and piece not in tokenizer.decode(ids[: i + 1])[: -len(piece)]
        ):
            return i, piece
    return None


def test_stop_string_cuts_the_text_and_stops_early(shell, tiny):
    # A sampled text (the random tiny model writes varied text only when sampling), and a
    # word from its middle as the stop string.
    for seed in range(1, 50):
        free = llm_magic.generate("The quick brown", seed=seed, max_new_tokens=30)
        found = _stop_piece(tiny.tokenizer, list(free.token_ids))
        if found:
            break
    index, stop = found
    result, _ = run(
        shell,
        f"%%llm_generate --seed {seed} --max-new-tokens 30 --stop {stop} --stop '\\n'\n"
        "The quick brown",
    )
    r = result.result
    assert r.stop_reason == "stop string" and r.stop_string == stop
    assert r.settings["stop"] == [stop, "\n"]  # \n in the flag stands for a newline
    assert r.text == free.text[: free.text.find(stop)]
    # Generation ended on the token that completed the stop string.
    assert r.token_ids == free.token_ids[: index + 1]
    # The streamed text is the stored text: the stop string is not shown, then dropped.
    chunks = []
    again = llm_magic.generate(
        "The quick brown", seed=seed, max_new_tokens=30, stop=[stop, "\n"], stream=chunks.append
    )
    assert "".join(chunks) == again.text == r.text


def test_greedy_with_a_seed_says_the_seed_is_unused(shell, tiny):
    result, captured = run(shell, "%%llm_generate --greedy --seed 7 --max-new-tokens 3\nHello")
    assert "--seed 7 is unused: greedy decoding makes no random choices" in result.result.notes
    # Said once, before the text (on stderr in a terminal), not again under the footer.
    assert "--seed 7 is unused" in captured.stderr
    assert "--seed 7 is unused" not in captured.stdout
    result, _ = run(shell, "%%llm_generate --seed 7 --max-new-tokens 3\nHello")
    assert not any("unused" in n for n in result.result.notes)
    shell.user_ns["items"] = ["a", "b"]
    result, _ = run(
        shell, "%%llm_generate --over items --greedy --seed 7 --max-new-tokens 2\n{item}"
    )
    assert all(
        "--seed 7 is unused: greedy decoding makes no random choices" in r.notes
        for r in result.result
    )


@pytest.mark.slow
def test_smollm2_stop_string(smol):
    r = llm_magic.generate("1, 2, 3, 4,", raw=True, greedy=True, max_new_tokens=24, stop=["8"])
    assert r.stop_reason == "stop string" and "8" not in r.text
    assert r.text.replace(" ", "").startswith("5,6,7,")


def test_max_new_tokens_is_lowered_to_fit_the_context(tiny):
    prompt = " ".join(["dog"] * 200)  # one token each: 200 of the tiny model's 256 positions
    n = len(tiny.tokenizer(prompt)["input_ids"])
    assert n + 200 > 256 > n
    r = llm_magic.generate(prompt, greedy=True, max_new_tokens=200)
    assert r.new_tokens == 256 - n and r.stop_reason == "length"
    assert any("lowered" in note for note in r.notes)


# --- input errors, through a real shell ------------------------------------------------------


def test_no_model_loaded_names_llm_load(shell):
    result, captured = run(shell, "%%llm_generate\nWhat is the capital of France?")
    assert isinstance(result.error_in_exec, GenerationError)
    assert "no model is loaded" in captured.stdout and "%llm_load" in captured.stdout


@pytest.mark.parametrize(
    "cell, message",
    [
        ("%%llm_generate\n   \n\n", "the prompt is empty"),
        ("%%llm_generate --greedy\n\t\n", "the prompt is empty"),
        ("%%llm_generate --max-new-tokens 0\nHi", "--max-new-tokens 0: at least 1 new token"),
        ("%%llm_generate --max-new-tokens -3\nHi", "--max-new-tokens -3"),
        (
            "%%llm_generate --temperature 0\nHi",
            "--temperature 0.0: sampling needs a temperature above 0",
        ),
        ("%%llm_generate --temperature -1 --seed 3\nHi", "--temperature -1.0"),
        ("%%llm_generate --top-p 1.5\nHi", "--top-p 1.5"),
        ("%%llm_generate -m nope\nHi", "-m nope: no loaded model has that name"),
        ("%%llm_generate\n{missing}", "no variable named 'missing'"),
        (
            "%%llm_generate --system 'Be {tone}.'\nHi",
            "{tone} in --system: no variable named 'tone'",
        ),
        ("%%llm_generate\nunmatched { brace", "write {{ and }} for literal braces"),
        (
            "%%llm_generate --over nothing_here\n{item}",
            "--over nothing_here: no variable named 'nothing_here'",
        ),
        ("%%llm_generate --stop ''\nHi", "empty stop string"),
    ],
)
def test_input_errors(shell, tiny, cell, message):
    result, captured = run(shell, cell)
    assert isinstance(result.error_in_exec, GenerationError), result.error_in_exec
    assert message in captured.stdout
    assert MODEL_CACHE.find("tiny") is tiny  # nothing was dropped


def test_a_cell_with_no_body_is_refused_by_ipython(shell, tiny):
    from IPython.core.error import UsageError

    result, _ = run(shell, "%%llm_generate\n")
    assert isinstance(result.error_in_exec, UsageError) and "the cell body is empty" in str(
        result.error_in_exec
    )


def test_greedy_does_not_need_a_positive_temperature(shell, tiny):
    result, _ = run(shell, "%%llm_generate --greedy --temperature 0 --max-new-tokens 2\nHi")
    assert result.success


def test_unknown_model_lists_the_loaded_ones(shell, tiny):
    result, captured = run(shell, "%%llm_generate -m smol\nHi")
    assert isinstance(result.error_in_exec, GenerationError)
    assert "loaded: tiny" in captured.stdout
    assert "%llm_load smol" not in captured.stdout  # no load of a name that is no model
    assert "%llm_load MODEL --as smol" in captured.stdout
    result, captured = run(shell, "%%llm_generate -m tinny\nHi")
    assert "did you mean: -m tiny" in captured.stdout


def test_prompt_longer_than_the_context_gives_count_and_limit(shell, tiny):
    shell.user_ns["long_text"] = " ".join(["whale"] * 400)
    n = len(tiny.tokenizer(shell.user_ns["long_text"])["input_ids"])
    result, captured = run(shell, "%%llm_generate\n{long_text}")
    assert isinstance(result.error_in_exec, GenerationError)
    assert f"the prompt is {n} tokens; the model reads at most 256" in captured.stdout


def test_over_needs_item_and_a_list(shell, tiny):
    shell.user_ns["one"] = "just a string"
    shell.user_ns["qs"] = ["a", "b"]
    result, captured = run(shell, "%%llm_generate --over one\n{item}")
    assert (
        isinstance(result.error_in_exec, GenerationError) and "a single string" in captured.stdout
    )
    result, captured = run(shell, "%%llm_generate --over qs\nno placeholder")
    assert (
        isinstance(result.error_in_exec, GenerationError) and "never uses {item}" in captured.stdout
    )


# --- batching --------------------------------------------------------------------------

PROMPTS = [
    "The capital of France",
    "A",
    "Language models predict the next token",
    "Hello world! Numbers like 0 1 2",
    "The quick brown fox jumps",
    "A notebook cell",
    "code",
    "The lazy dog",
]


def test_over_equals_single_runs_in_order(shell, tiny):
    shell.user_ns["prompts"] = PROMPTS
    result, captured = run(
        shell,
        "%%llm_generate --greedy --max-new-tokens 12 --over prompts --batch-size 3\n{item} is",
    )
    assert result.success, result.error_in_exec
    batch = result.result
    assert isinstance(batch, GenerationResults) and len(batch) == 8
    assert [r.prompt for r in batch] == [f"{p} is" for p in PROMPTS]
    assert {r.batch for r in batch} == {(0, 3), (1, 3), (2, 2)}  # left-padded chunks of 3
    singles = [
        llm_magic.generate(f"{p} is", model="tiny", greedy=True, max_new_tokens=12) for p in PROMPTS
    ]
    assert [r.token_ids for r in batch] == [r.token_ids for r in singles]
    assert batch.texts == [r.text for r in singles]
    assert "batch 3/3" in captured.stderr  # the progress bar over batches


@pytest.mark.slow
def test_smollm2_over_equals_single_runs(smollm2_gguf):
    # In float32. In bf16 a batch and a single run may part where two tokens are nearly
    # tied: "Italy" opens with "Il" (27.23) or "The" (27.14) in a float32 reference, and
    # bf16's rounding moves these logits by ~0.5, in the batch and the single run alike.
    smol = llm_magic.load(smollm2_gguf, dtype="float32", alias="smol32")
    countries = ["France", "Japan", "Italy", "Egypt"]
    batch = llm_magic.generate(
        "What is the capital of {item}?",
        over=countries,
        namespace={},
        greedy=True,
        max_new_tokens=8,
    )
    singles = [
        llm_magic.generate(f"What is the capital of {c}?", greedy=True, max_new_tokens=8)
        for c in countries
    ]
    assert [r.token_ids for r in batch] == [r.token_ids for r in singles]
    assert "Paris" in batch[0].text and "Tokyo" in batch[1].text
    # Long answers, against plain model.generate one prompt at a time.
    expected = plain_greedy(smol, SMOL_PROMPTS, SMOL_NEW_TOKENS, chat=True)
    assert_discriminating(smol, SMOL_PROMPTS, expected, SMOL_NEW_TOKENS, chat=True, min_distinct=15)
    long = llm_magic.generate(
        "{item}", over=SMOL_PROMPTS, namespace={}, greedy=True, max_new_tokens=SMOL_NEW_TOKENS
    )
    assert [list(r.token_ids) for r in long] == expected


# --- streaming, results, warnings ------------------------------------------------------


def test_streams_to_stdout_in_a_terminal_and_not_with_no_stream(shell, tiny):
    result, captured = run(shell, "%%llm_generate --greedy --max-new-tokens 16\nThe capital of")
    assert captured.stdout.startswith(result.result.text + "\n")
    result, captured = run(
        shell, "%%llm_generate --greedy --max-new-tokens 16 --no-stream\nThe capital of"
    )
    assert not captured.stdout.startswith(result.result.text)


def test_api_streams_chunks_that_make_the_text(tiny):
    chunks = []
    r = llm_magic.generate("The capital of", greedy=True, max_new_tokens=16, stream=chunks.append)
    assert len(chunks) > 1 and all(chunks) and "".join(chunks) == r.text


def test_result_metadata_and_escaped_html(shell, tiny):
    result, _ = run(shell, "%%llm_generate --seed 3 --max-new-tokens 4\nHi")
    r = result.result
    data, metadata = shell.display_formatter.format(r)
    meta = metadata["llm_magic"]
    assert (
        meta["model"] == tiny.info.name and meta["dtype"] == tiny.info.dtype and meta["seed"] == 3
    )
    assert meta["settings"]["temperature"] == 0.7 and meta["settings"]["max_new_tokens"] == 4
    assert set(meta["versions"]) >= {"torch", "transformers", "python", "llm_magic"}
    footer = next(
        line for line in data["text/plain"].splitlines() if line.startswith("── ")
    )  # notes follow it
    for part in ("prompt tokens", "new", "first token", "tokens/s", "stopped:"):
        assert part in footer
    nasty = dataclasses.replace(r, text="<script>alert(1)</script>")
    html_text = nasty._repr_mimebundle_()[0]["text/html"]
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text


def test_result_holds_no_model(shell, tiny_model_dir):
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --quiet")
    model_ref = weakref.ref(MODEL_CACHE.current().model)
    result, _ = run(shell, "%%llm_generate --greedy --max-new-tokens 4 --out kept\nHi")
    assert result.success
    kept = shell.user_ns["kept"]
    for value in dataclasses.asdict(kept).values():
        assert isinstance(value, (str, int, float, bool, type(None), tuple, list, dict)), type(
            value
        )
    MODEL_CACHE.clear()
    del result
    gc.collect()
    assert model_ref() is None  # the result (in Out, _ and `kept`) did not keep it alive
    assert shell.user_ns["kept"].text is not None


def test_no_transformers_warnings_about_mask_or_padding(tiny):
    class Records(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    def generate_and_collect(action) -> list[str]:
        records = Records()
        logger = logging.getLogger("transformers")
        logger.addHandler(records)
        logging.Logger.warning_once.cache_clear()  # transformers says some things once a process
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                action()
        finally:
            logger.removeHandler(records)
        return records.messages + [str(w.message) for w in caught]

    def ours():
        llm_magic.generate("Hello world", max_new_tokens=3)
        llm_magic.generate("Hello world", max_new_tokens=3, greedy=True)
        llm_magic.generate(
            "{item} world",
            over=["a", "Hello there my"],
            namespace={},
            max_new_tokens=3,
            greedy=True,
        )

    def bare():  # the control: a batch without mask or pad id does warn, and is seen here
        ids = tiny.tokenizer("Hello world", return_tensors="pt").input_ids.repeat(2, 1)
        tiny.model.generate(ids, max_new_tokens=3)

    assert any("attention mask" in m for m in generate_and_collect(bare))
    assert generate_and_collect(ours) == []


def test_a_failure_while_generating_is_explained_and_leaves_the_model_cached(
    shell, tiny, monkeypatch
):
    import torch

    # Out of memory cannot be produced on this machine: the model's forward raises the real
    # class on the third token, as CUDA would.
    forward, calls = tiny.model.forward, []

    def failing_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny.model, "forward", failing_forward)
    result, captured = run(shell, "%%llm_generate --greedy --max-new-tokens 20\nThe capital of")
    error = result.error_in_exec
    assert isinstance(error, GenerationError) and isinstance(
        error.__cause__, torch.OutOfMemoryError
    )
    assert (
        "ran out of memory while generating" in captured.stdout
        and "--max-new-tokens" in captured.stdout
    )
    monkeypatch.undo()
    assert MODEL_CACHE.find("tiny") is tiny
    assert run(shell, "%%llm_generate --greedy --max-new-tokens 3\nThe capital of")[0].success


# --- Ctrl-C --------------------------------------------------------------------------------


def test_interrupt_keeps_partial_text_and_the_model(tiny):
    interrupted = []

    def on_text(chunk):
        if not interrupted:  # Ctrl-C as the first text arrives, from another thread like a signal
            interrupted.append(chunk)
            threading.Thread(target=_thread.interrupt_main).start()

    with pytest.raises(KeyboardInterrupt) as info:
        llm_magic.generate("The capital of", greedy=True, max_new_tokens=240, stream=on_text)
        time.sleep(5)  # not reached: the interrupt lands while generating
    partial = info.value.result
    assert partial.stop_reason == "interrupted" and 0 < partial.new_tokens < 240
    assert partial.text.startswith(interrupted[0])
    again = llm_magic.generate(
        "The capital of", greedy=True, max_new_tokens=8
    )  # still cached and usable
    assert again.stop_reason == "length"


@pytest.mark.slow
def test_interrupt_in_a_real_kernel(smollm2_gguf):
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:

        def execute(code, timeout=300):
            msg_id = kc.execute(code)
            reply = _reply(kc, msg_id, timeout)
            return reply, _outputs(kc, msg_id)

        reply, _ = execute(f"%load_ext llm_magic\n%llm_load {smollm2_gguf} --as smol --quiet")
        assert reply["content"]["status"] == "ok"
        # A raw counting prompt: SmolLM2 keeps counting, far past the interrupt.
        long_id = kc.execute(
            "%%llm_generate --greedy --max-new-tokens 400 --raw\n1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
        )
        next_id = kc.execute("ran_after = True")
        streamed, final_text, shown_error = None, None, None
        deadline = time.time() + 300
        while time.time() < deadline:
            msg = kc.get_iopub_msg(timeout=300)
            if msg["parent_header"].get("msg_id") != long_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            text = content.get("data", {}).get("text/plain", "")
            if kind in ("display_data", "update_display_data") and "generating" in text:
                if streamed is None and "12," in text:  # the first tokens are on screen: Ctrl-C
                    streamed = text
                    km.interrupt_kernel()
            elif kind == "update_display_data":
                final_text = text
            elif kind == "error":
                shown_error = content["traceback"]
            elif kind == "status" and content["execution_state"] == "idle":
                break
        assert streamed is not None, "no streamed text arrived"
        replies = {
            r["parent_header"]["msg_id"]: r["content"]
            for r in (kc.get_shell_msg(timeout=60) for _ in range(2))
        }
        assert (
            replies[long_id]["status"] == "error"
            and replies[long_id]["ename"] == "KeyboardInterrupt"
        )
        assert replies[next_id]["status"] == "aborted"  # the queued cell did not run
        # The streamed display settled into the partial result: the text so far, and a footer.
        assert final_text is not None and "stopped: interrupted" in final_text
        partial = final_text.split("\n── ")[0]
        assert partial.startswith(streamed.split("\n")[0]) and " 11, 12," in partial
        # One line under it instead of a traceback through torch (~5,400 px in JupyterLab).
        assert shown_error is not None and len("\n".join(shown_error).splitlines()) == 1
        assert "partial result is in _, Out[" in shown_error[0]
        reply, outputs = execute(
            "from llm_magic import MODEL_CACHE\n"
            "print(len(MODEL_CACHE), MODEL_CACHE.find('smol') is not None, 'ran_after' in dir())"
        )
        assert reply["content"]["status"] == "ok"  # the kernel lives
        assert outputs == ["1 True False\n"]
        reply, _ = execute(
            "%%llm_generate -m smol --greedy --max-new-tokens 8 --no-stream\n"
            "What is the capital of France?"
        )
        assert reply["content"]["status"] == "ok"
    finally:
        km.shutdown_kernel(now=True)


def _reply(kc, msg_id, timeout):
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def _outputs(kc, msg_id) -> list[str]:
    texts = []
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            texts.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return texts


# --- notebooks -------------------------------------------------------------------------------


@pytest.mark.slow
def test_generation_notebook_runs():
    sys.path.insert(0, str(EXAMPLES))
    from run_notebook import cell_text
    from run_notebook import run as run_notebook

    notebook = run_notebook(EXAMPLES / "generation.ipynb")
    intro = notebook.cells[0].source
    assert (
        "A 135M model gets facts wrong" in intro
    )  # its answers are a demo of the magics, not facts
    code = [c for c in notebook.cells if c.cell_type == "code"]
    text = "\n".join(cell_text(c) for c in code)
    assert "Traceback" not in text and "Error" not in text
    assert "Paris" in text
    for cell in code:
        for out in cell.get("outputs", []):
            assert "generating" not in out.get("data", {}).get(
                "text/plain", ""
            )  # streaming settled everywhere
    batch_cells = [c for c in code if "--over" in c.source]
    assert batch_cells and "results in" in cell_text(batch_cells[0])


@pytest.mark.slow
def test_quickstart_ends_with_smollm2_answering_paris():
    sys.path.insert(0, str(EXAMPLES))
    from run_notebook import cell_text
    from run_notebook import run as run_notebook

    notebook = run_notebook(EXAMPLES / "quickstart.ipynb")
    last = [c for c in notebook.cells if c.cell_type == "code"][-1]
    assert last.source.startswith("%%llm_generate --greedy --max-new-tokens 32")
    assert "Paris" in cell_text(last) and "stopped: eos" in cell_text(last)


# --- a terminal: the text once, a quiet Ctrl-C ---------------------------------------------


def test_a_terminal_shows_the_streamed_text_once_then_the_footer(shell, tiny):
    result, captured = run(shell, "%%llm_generate --greedy --max-new-tokens 16\nThe capital of")
    text = result.result.text
    assert (
        text.strip() and captured.stdout.count(text.strip()) == 1
    )  # Out[n] does not print it again
    after = captured.stdout.split(text, 1)[1]
    assert "── " in after and "stopped:" in after
    assert shell.user_ns["_"] is result.result  # `_` and Out hold the whole result
    again, captured = run(shell, "_")  # shown later, it is shown whole
    assert text.strip() in captured.stdout and "stopped:" in captured.stdout


class _InterruptOnWrite(io.StringIO):
    """Captured stdout/stderr that presses Ctrl-C (from another thread, like a signal)
    when `at` is first written: as the streamed text, or a batch's progress, reaches the screen."""

    def __init__(self, at: str):
        super().__init__()
        self.at, self.pressed = at, False

    def write(self, text):
        written = super().write(text)
        if not self.pressed and self.at in self.getvalue():
            self.pressed = True
            threading.Thread(target=_thread.interrupt_main).start()
            time.sleep(0.5)  # let it land here, inside generate's callback
        return written


def _run_interrupted(shell, cell, stream="stdout", at=""):
    watched, other = _InterruptOnWrite(at), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (watched, other) if stream == "stdout" else (other, watched)
    try:
        result = shell.run_cell(cell, store_history=True)
    finally:
        sys.stdout, sys.stderr = old
    out = watched.getvalue() if stream == "stdout" else other.getvalue()
    return result, out


def test_ctrl_c_in_a_terminal_shows_the_partial_text_the_footer_and_one_line(shell, tiny):
    result, out = _run_interrupted(
        shell, "%%llm_generate --greedy --max-new-tokens 2000 --out kept\nThe capital of"
    )
    assert isinstance(result.error_in_exec, KeyboardInterrupt)  # the cell failed as interrupted
    partial = shell.user_ns["kept"]
    assert partial.stop_reason == "interrupted" and shell.user_ns["_"] is partial
    assert out.startswith(partial.text.rstrip("\n")[:20])
    tail = out.split(partial.text.rstrip("\n"), 1)[1].strip("\n").splitlines()
    assert len(tail) <= 3, tail  # the footer and one line, not a traceback through torch
    assert "stopped: interrupted" in tail[0]
    assert tail[-1].startswith(
        "KeyboardInterrupt: generation stopped; the partial result is in kept, _, Out["
    )
    assert "Traceback" not in out and "torch" not in out
    del tiny
    assert shell.run_line_magic("llm_unload", "tiny").freed  # the kept interrupt pins no model


def test_ctrl_c_during_over_is_quiet_and_keeps_the_finished_items(shell, tiny):
    shell.user_ns["items"] = ["The capital of", "The quick", "Hello"]
    cell = "%%llm_generate --over items --batch-size 1 --greedy --max-new-tokens 2000\n{item}"
    result, out = _run_interrupted(
        shell, cell, stream="stderr", at="1/3 prompts"
    )  # the first item is done (a step per prompt)
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    partial = shell.user_ns["_"]
    # One result per item: the finished one whole, the rest not run (Ctrl-C landed as the
    # progress line was written, between items).
    assert isinstance(partial, GenerationResults) and len(partial) == 3
    assert partial[0].stop_reason == "length"  # the finished item is kept whole
    assert [r.stop_reason for r in partial[1:]] == ["not run", "not run"]
    assert partial[2].text == "" and partial[2].prompt == "Hello" and partial.not_run == [1, 2]
    assert partial.items == shell.user_ns["items"]
    assert "stopped after 1 of 3 items · 2 not run" in partial.summary()
    lines = out.strip("\n").splitlines()
    assert lines[-1].startswith(
        "KeyboardInterrupt: generation stopped after 1 of 3 items; the results (one per item, "
        "those not run marked 'not run') are in _, Out["
    )
    assert "Traceback" not in out and len(lines) <= 2 * len(partial) + 3


# --- a model without a chat template ---------------------------------------------------------


def test_no_chat_template_is_said_on_the_card_in_the_result_and_for_system(shell, tiny_model_dir):
    result, captured = run(shell, f"%llm_load {tiny_model_dir} --as base")
    assert "⚠ chat template: none — prompts are continued as plain text" in captured.stdout
    result, captured = run(shell, "%%llm_generate --greedy --max-new-tokens 3\nHello")
    assert any(
        n.startswith("no chat template: the prompt was continued as plain text")
        for n in result.result.notes
    )
    assert "⚠ no chat template" in captured.stdout
    result, captured = run(
        shell, "%%llm_generate --greedy --max-new-tokens 3 --system 'Be brief.'\nHello"
    )
    assert result.success and result.result.rendered_prompt == "Be brief.\n\nHello"
    assert (
        "⚠ no system role without a chat template: the --system text went first, as plain text"
        in captured.stdout
    )
    result, _ = run(
        shell, "%%llm_generate --greedy --max-new-tokens 3 --raw --system 'Be brief.'\nHello"
    )
    assert (
        result.success and result.result.notes == ()
    )  # --raw asked for plain text: nothing to say


def test_smollm2_has_a_template_and_says_nothing_about_it(shell, smollm2_gguf):
    result, captured = run(shell, f"%llm_load {smollm2_gguf}")
    assert "chat template" not in captured.stdout


# --- feedback before the first token, and a quiet load, in a real kernel ----------------------


def test_a_terminal_says_the_lowered_budget_before_the_text(shell, tiny):
    both = io.StringIO()  # stdout and stderr in one, to see the order
    old = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = both
    try:
        prompt = " ".join(["dog"] * 200)
        result = shell.run_cell(
            f"%%llm_generate --greedy --max-new-tokens 100\n{prompt}", store_history=True
        )
    finally:
        sys.stdout, sys.stderr = old
    text = both.getvalue()
    assert result.success and text.startswith("⚠ max_new_tokens lowered from 100 to")
    assert text.index("max_new_tokens lowered") < text.index(result.result.text.strip()[:10])
    assert text.count("max_new_tokens lowered") == 1  # said first, not again under the text
    assert "max_new_tokens lowered" in result.result.plain()  # the result itself still says it


@pytest.mark.slow
def test_a_kernel_shows_status_before_the_first_token_and_a_quiet_load_shows_nothing(
    tiny_model_dir,
):
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:

        def execute(code):
            msg_id = kc.execute(code)
            _reply(kc, msg_id, 300)
            shown = []
            while True:
                msg = kc.get_iopub_msg(timeout=60)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    return shown
                if msg["msg_type"] in (
                    "stream",
                    "display_data",
                    "update_display_data",
                    "execute_result",
                    "error",
                ):
                    content = msg["content"]
                    shown.append(
                        (
                            msg["msg_type"],
                            content.get("text") or content.get("data", {}).get("text/plain", ""),
                        )
                    )

        assert (
            execute(f"%load_ext llm_magic\n%llm_load {tiny_model_dir} --quiet") == []
        )  # nothing at all
        prompt = " ".join(["dog"] * 200)
        for flags in ("--no-stream", ""):
            shown = execute(f"%%llm_generate {flags} --greedy --max-new-tokens 100\n{prompt}")
            kind, first = shown[0]
            assert kind == "display_data", shown
            assert (
                "generating; the text shows when it is complete"
                if flags
                else "waiting for the first token"
            ) in first
            assert (
                "max_new_tokens lowered from 100 to" in first
            )  # said first, not only after the text
            # The result takes the status line's place (no emptied output left behind).
            assert shown[-1][0] == "update_display_data" and "stopped:" in shown[-1][1]
            assert "execute_result" not in [kind for kind, _ in shown]
    finally:
        km.shutdown_kernel(now=True)
