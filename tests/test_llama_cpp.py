"""`--engine llama.cpp`: the real SmolLM2 .gguf run as it is by llama-cpp-python.

Greedy text is checked against raw llama-cpp-python's `create_chat_completion` at
temperature 0 for the same messages: the engine renders and tokenizes the prompt itself,
and must land on the very same tokens.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref

import pytest

import llm_magic
from llm_magic import MODEL_CACHE, LoadError, generation
from llm_magic.engines import Request, decode_speed
from llm_magic.settings import Settings
from llm_magic.sources import resolve

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = "What is the capital of France?"


@pytest.fixture
def handle(smollm2_gguf):
    return llm_magic.load(smollm2_gguf, engine="llama.cpp", alias="lc")


def raw_chat(path: str, handle, messages, max_tokens: int) -> tuple[str, dict]:
    """What a user writes without llm_magic (same file, threads and context): the text and
    its usage."""
    llm = llama_cpp.Llama(
        model_path=path, n_ctx=handle.model.n_ctx(), n_threads=handle.model.n_threads, verbose=False
    )
    try:
        out = llm.create_chat_completion(messages=messages, temperature=0, max_tokens=max_tokens)
        return out["choices"][0]["message"]["content"], out["usage"]
    finally:
        llm.close()


def test_load_card_says_engine_quantization_context_threads(shell, smollm2_gguf):
    card = shell.run_line_magic("llm_load", f"{smollm2_gguf} --engine llama.cpp --as lc").text()
    entry = MODEL_CACHE.find("lc")
    assert isinstance(entry.model, llama_cpp.Llama) and entry.tokenizer is None
    assert "SmolLM2-135M-Instruct.Q4_1.gguf  →  llama.cpp llama" in card
    assert "engine        llama.cpp (llama-cpp-python" in card
    assert "quantization  Q4_1 (GGUF file type)" in card
    assert "context       4096 tokens (trained on 8192" in card
    assert f"threads       {entry.model.n_threads} (one per physical core)" in card
    assert "converted" not in card  # nothing was converted
    assert entry.info.memory_bytes >= os.path.getsize(smollm2_gguf)
    # The same request again is a cache hit; the transformers engine is another entry.
    again = shell.run_line_magic("llm_load", f"{smollm2_gguf} --engine llama.cpp").text()
    assert "cache hit" in again and len(MODEL_CACHE) == 1


def test_llama_cpp_load_imports_no_torch(smollm2_gguf):
    code = (
        "import sys, llm_magic\n"
        "h = llm_magic.load(sys.argv[1], engine='llama.cpp')\n"
        "print(llm_magic.generate('Hi', model=h, greedy=True, max_new_tokens=4).new_tokens)\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, smollm2_gguf],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        check=True,
    )
    assert proc.stdout.split("\n")[-2] == "False False", proc.stdout


def test_greedy_text_equals_raw_create_chat_completion(handle, smollm2_gguf):
    result = llm_magic.generate(PROMPT, model=handle, greedy=True, max_new_tokens=48)
    assert result.new_tokens > 5 and result.engine["engine"] == "llama.cpp"
    text, usage = raw_chat(smollm2_gguf, handle, [{"role": "user", "content": PROMPT}], 48)
    assert result.text == text
    assert (
        result.prompt_tokens == usage["prompt_tokens"]
    )  # the same prompt tokens, counted before generating


def test_multi_turn_messages_match_raw_llama_cpp(handle, smollm2_gguf):
    messages = (
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Name another one."},
    )
    settings = Settings(greedy=True, max_new_tokens=24)
    result = generation.generate(handle.engine, Request(messages), settings)
    assert "Name a colour." in result.rendered_prompt and "Blue." in result.rendered_prompt
    assert result.text == raw_chat(smollm2_gguf, handle, [dict(m) for m in messages], 24)[0]


def test_streaming_pieces_make_the_text(handle):
    pieces: list[str] = []
    result = llm_magic.generate(
        PROMPT, model=handle, greedy=True, max_new_tokens=32, stream=pieces.append
    )
    assert len(pieces) > 3 and "".join(pieces) == result.text


def test_stop_string_cuts_the_text(handle):
    full = llm_magic.generate(PROMPT, model=handle, greedy=True, max_new_tokens=32).text
    word = " ".join(
        full.split()[3:5]
    )  # two words: more than one token, so a prefix could stream early
    pieces: list[str] = []
    cut = llm_magic.generate(
        PROMPT, model=handle, greedy=True, max_new_tokens=32, stop=word, stream=pieces.append
    )
    assert cut.stop_reason == "stop string" and cut.stop_string == word
    assert (
        cut.text == full[: full.index(word)] and "".join(pieces) == cut.text
    )  # the stop string never streamed


def test_ctrl_c_stops_at_once_and_keeps_the_partial_text(handle):
    full = llm_magic.generate(PROMPT, model=handle, greedy=True, max_new_tokens=40)
    pieces: list[str] = []

    def interrupt_after_first(piece: str) -> None:
        pieces.append(piece)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        llm_magic.generate(
            PROMPT, model=handle, greedy=True, max_new_tokens=40, stream=interrupt_after_first
        )
    partial = info.value.result
    assert len(pieces) == 1 and partial.stop_reason == "interrupted"
    assert partial.text.startswith(pieces[0]) and full.text.startswith(partial.text)
    assert partial.new_tokens < full.new_tokens
    # The model is left in a clean state: the same request gives the same text.
    assert (
        llm_magic.generate(PROMPT, model=handle, greedy=True, max_new_tokens=40).text == full.text
    )


def test_over_runs_each_prompt_in_order(shell, smollm2_gguf):
    shell.run_line_magic("llm_load", f"{smollm2_gguf} --engine llama.cpp --as lc --quiet")
    shell.user_ns["countries"] = ["France", "Italy", "Spain"]
    results = shell.run_cell_magic(
        "llm_generate",
        "-m lc --greedy --max-new-tokens 12 --over countries",
        "What is the capital of {item}?",
    )
    assert len(results) == 3
    for country, result in zip(["France", "Italy", "Spain"], results, strict=True):
        single = llm_magic.generate(
            f"What is the capital of {country}?", model="lc", greedy=True, max_new_tokens=12
        )
        assert result.text == single.text and result.prompt == f"What is the capital of {country}?"


def test_unload_closes_the_llama_and_frees_it(shell, smollm2_gguf):
    shell.run_line_magic("llm_load", f"{smollm2_gguf} --engine llama.cpp --as lc --quiet")
    llm = MODEL_CACHE.find("lc").model
    ref = weakref.ref(llm)
    native = llm._stack  # frees llama.cpp's model and context when closed
    del llm
    card = shell.run_line_magic("llm_unload", "lc")
    gc.collect()
    assert card.freed and ref() is None and len(MODEL_CACHE) == 0
    assert not native._exit_callbacks  # every native free ran


def test_unload_frees_llama_cpp_memory_even_while_a_variable_holds_the_llama(shell, smollm2_gguf):
    shell.run_line_magic("llm_load", f"{smollm2_gguf} --engine llama.cpp --as lc --quiet")
    shell.user_ns["kept"] = MODEL_CACHE.find("lc").model
    card = shell.run_line_magic("llm_unload", "lc")
    assert not card.freed and card.held_by == (
        "kept",
    )  # the Python object lives on, and the card says so...
    assert not shell.user_ns["kept"]._stack._exit_callbacks  # ...but its native memory was released


def test_a_bad_gguf_file_gives_a_card(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + os.urandom(200))
    with pytest.raises(LoadError) as info:
        llm_magic.load(str(bad), engine="llama.cpp")
    card = "\n".join(info.value.card_lines())
    # The header is walked before llama.cpp opens the file: the card says what is wrong.
    assert "broken.gguf: the .gguf file is damaged\n" in card
    assert "cause: damaged: a header that cannot be read" in card
    assert len(MODEL_CACHE) == 0


def test_a_folder_with_llama_cpp_is_refused(tiny_model_dir):
    with pytest.raises(LoadError, match="runs .gguf files only"):
        llm_magic.load(str(tiny_model_dir), engine="llama.cpp")


def test_missing_llama_cpp_python_gives_the_install_line(smollm2_gguf, monkeypatch):
    monkeypatch.setitem(
        sys.modules, "llama_cpp", None
    )  # how Python marks a package as not importable
    with pytest.raises(LoadError) as info:
        llm_magic.load(smollm2_gguf, engine="llama.cpp")
    assert 'pip install "llm_magic[llama-cpp]"' in "\n".join(info.value.card_lines())


def test_generations_record_decode_speeds_for_the_card(handle, smollm2_gguf):
    identity = handle.key.weights
    decode_speed._file(identity).unlink(missing_ok=True)
    llm_magic.generate(
        PROMPT, model=handle, greedy=True, max_new_tokens=2
    )  # too few tokens to say anything
    assert decode_speed.read(identity) == {}
    llm_magic.generate("Write a story about a cat.", model=handle, greedy=True, max_new_tokens=24)
    [record] = decode_speed.read(identity)["llama.cpp Q4_1"]
    assert record["tokens_per_second"] > 0 and record["tokens"] >= decode_speed.MIN_TOKENS
    json.dumps(record)


def test_the_speed_line_needs_several_runs_that_agree(tmp_path, monkeypatch):
    """One run (another kernel may have been computing) gives no figure; three of each
    engine that agree give the ratio of their medians, the counts said, in one short line;
    runs that spread too far give none again."""
    from llm_magic.engines.base import ModelInfo

    monkeypatch.setenv("LLM_MAGIC_CACHE", str(tmp_path))
    info = ModelInfo("m.gguf", "gguf", "LlamaForCausalLM", 1, 1, "cpu", "bfloat16", "", "", None, 0)
    lines = []
    for run in range(4):
        decode_speed.record("f", "llama.cpp Q4_1", [30.0, 33.0, 31.0, 32.0][run], 32)
        decode_speed.record("f", info.held_as, [10.0, 11.0, 10.5, 10.0][run], 32)
        lines.append(decode_speed.llama_cpp_hint("f", info))
    assert all(x.endswith("(no speed figure before 3 runs of each)") for x in lines[:2])
    assert (
        lines[2]
        == "--engine llama.cpp decodes this file 3.0× as fast here (median of 3 and 3 runs)"
    )
    assert lines[3].endswith("(median of 4 and 4 runs)")
    decode_speed.record("f", "llama.cpp Q4_1", 12.0, 32)  # a run while the machine was busy
    assert decode_speed.llama_cpp_hint("f", info).endswith("(speeds vary too much here to compare)")
    assert all(len(x) <= 85 for x in lines + [decode_speed.llama_cpp_hint("f", info)])
    for _ in range(decode_speed.KEPT_RUNS):  # the latest runs count: the outlier ages out
        decode_speed.record("f", "llama.cpp Q4_1", 30.0, 32)
    assert decode_speed.llama_cpp_hint("f", info).endswith(
        "2.9× as fast here (median of 7 and 4 runs)"
    )


@pytest.mark.slow
def test_transformers_card_says_how_much_faster_llama_cpp_decodes(shell, smollm2_gguf):
    identity = resolve.resolve_source(smollm2_gguf).identity
    decode_speed._file(identity).unlink(missing_ok=True)
    # float32: the quickest transformers dtype on a CPU, for the runs this test makes
    card = shell.run_line_magic("llm_load", f"{smollm2_gguf} --dtype float32 --as tf").text()
    assert "no speed figure before 3 runs of each" in card
    shell.run_line_magic("llm_load", f"{smollm2_gguf} --engine llama.cpp --as lc --quiet")
    for _ in range(decode_speed.MIN_RUNS):  # the rates are measured, here
        for model in ("tf", "lc"):
            llm_magic.generate(
                "Write a story about a cat.", model=model, greedy=True, max_new_tokens=18
            )
    rates = decode_speed.read(identity)
    card = shell.run_line_magic("llm_load", f"{smollm2_gguf} --dtype float32 --as tf").text()
    line = next(x for x in card.splitlines() if x.strip().startswith("llama.cpp"))
    assert len(line) < 100
    if "vary too much" in line:  # a busy machine: no figure is the honest answer
        return
    median = {k: sorted(r["tokens_per_second"] for r in v)[1] for k, v in rates.items()}
    ratio = median["llama.cpp Q4_1"] / median["transformers float32"]
    assert f"decodes this file {ratio:.1f}× as fast here (median of 3 and 3 runs)" in line
    assert (
        ratio > 1.5
    )  # llama.cpp on Q4_1 against dequantized float32 (the bench has the real figure)
