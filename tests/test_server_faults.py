"""Server models when the server fails, for real: a llama.cpp server stopped with Ctrl-C
mid-answer, a prompt past its context, `transformers serve` failing mid-stream with its
own words; and secrets: a password or key written in the server URL is refused and shows
in no output (cards, `--verbose`, `%llm_tb`, results, `%llm_models`), checked against the
loopback key-checking proxy. Also what a llama.cpp server's results say: unknown prompt
tokens as unknown, the no-usage note once, "eos" for an answer that ended."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output
from support import servers

import llm_magic
from llm_magic import GenerationError, LoadError
from llm_magic.errors import chain
from llm_magic.magics import cells
from llm_magic.redact import public_url, redact, url_credentials

pytest.importorskip("openai")
pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
PASSWORD = "sk-pass-in-the-url-0123456789abcdef"  # made up: it must never show


@pytest.fixture(scope="module")
def llama_server(smollm2_gguf):
    """llama.cpp's server on SmolLM2, with a 512-token context."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("sse_starlette")
    proc = servers.llama_cpp_server(smollm2_gguf, n_ctx=512)
    yield proc
    proc.stop()


def run(shell, cell):
    with capture_output() as captured:
        result = shell.run_cell(cell, store_history=True)
    return result, captured


# --- a stream that ends without a finish reason ---------------------------------------------


@pytest.mark.parametrize("frontend", ["terminal", "jupyter"])
def test_a_server_stopped_mid_answer_fails_with_one_card_and_keeps_the_text(
    shell, smollm2_gguf, monkeypatch, frontend
):
    """Ctrl-C in the server's terminal (SIGINT) while it streams: uvicorn ends the stream
    cleanly, with no finish reason. That is a failure, not "stopped: stop". In a terminal
    the text streamed stays with its footer; in Jupyter the streamed display becomes the
    partial result (the shell given a kernel: the magics then display as in Jupyter)."""
    pytest.importorskip("llama_cpp")
    if frontend == "jupyter":
        monkeypatch.setattr(shell, "kernel", object(), raising=False)
    doomed = servers.llama_cpp_server(smollm2_gguf)
    try:
        shell.run_line_magic("llm_load", f"--server {doomed.url} --as doomed --quiet")
        pieces: list[str] = []
        streamed = cells.Stream.__call__

        def ctrl_c_in_the_servers_terminal(self, chunk):
            pieces.append(chunk)
            if len(pieces) == 3:
                os.killpg(doomed.process.pid, signal.SIGINT)
            streamed(self, chunk)

        monkeypatch.setattr(cells.Stream, "__call__", ctrl_c_in_the_servers_terminal)
        result, out = run(
            shell,
            "%%llm_generate --greedy --max-new-tokens 300 --out kept\n"
            "Write a long story about a dragon.",
        )
        assert doomed.process.wait(timeout=60) is not None  # the server did stop
    finally:
        doomed.stop()
    assert isinstance(result.error_in_exec, GenerationError)
    kept = shell.user_ns["kept"]
    count = shell.execution_count - 1
    assert kept is shell.user_ns["_"] and kept is shell.user_ns["Out"][count]
    assert kept.stop_reason == "error" and kept.text == "".join(pieces) and len(pieces) >= 3
    displays = [o.data.get("text/plain", "") for o in out.outputs]
    shown = out.stdout + out.stderr + "\n".join(displays)
    assert shown.count("✗ ") == 1 and "⚠" not in shown  # one card, and no note beside it
    assert "the server ended the stream before the answer was complete" in shown
    assert f"the text that arrived before the failure is kept: kept, _, Out[{count}]" in shown
    assert "stopped: error" in shown and "stopped: eos" not in shown
    if frontend == "terminal":
        assert out.stdout.count(pieces[1]) == 1  # the text once, above the card
    else:  # the streamed display, updated last to the partial result
        assert kept.text in displays[-1] and "stopped: error" in displays[-1]


def test_a_prompt_past_the_servers_context_fails_and_the_next_one_works(shell, llama_server):
    """llama.cpp's server fails such a prompt in its worker, after the stream has begun:
    the stream ends empty, the error only in its log."""
    shell.run_line_magic("llm_load", f"--server {llama_server.url} --as srv --quiet --reload")
    shell.user_ns["long"] = "word " * 700
    result, out = run(shell, "%%llm_generate --greedy --max-new-tokens 20 --out kept\n{long}")
    assert isinstance(result.error_in_exec, GenerationError)
    shown = out.stdout + out.stderr
    assert shown.count("✗ ") == 1 and "stopped:" not in shown  # no result posing as one
    assert "ended the stream before sending any text" in shown and "shorten the prompt" in shown
    assert "kept" not in shell.user_ns  # nothing arrived: nothing to keep
    again, _ = run(shell, f"%%llm_generate --greedy --max-new-tokens 8 --no-stream\n{QUESTION}")
    assert again.success and again.result.new_tokens > 0  # on a fresh connection


def test_llama_cpp_server_results_say_what_they_know(shell, llama_server):
    shell.run_line_magic("llm_load", f"--server {llama_server.url} --as srv --quiet --reload")
    first, out = run(shell, f"%%llm_generate --greedy --max-new-tokens 40\n{QUESTION}")
    assert first.success, first.error_in_exec
    answer = first.result
    assert answer.stop_reason == "eos"  # the model finished: the word every engine uses
    assert answer.prompt_tokens is None and "? prompt tokens" in answer.footer()
    usage = "this server reports no usage while streaming"
    assert sum(n.startswith(usage) for n in answer.notes) == 1 and usage in out.stdout
    second, out = run(shell, f"%%llm_generate --greedy --max-new-tokens 4\n{QUESTION}")
    assert not any(n.startswith(usage) for n in second.result.notes)  # said once per model
    assert usage not in out.stdout


def test_a_server_failing_mid_stream_is_shown_in_its_own_words(shell, smollm2_folder_here):
    """`transformers serve` with a small paged cache and a prompt past it: its batching
    worker fails, and the server sends its error in place of the rest of the stream."""
    pytest.importorskip("fastapi")
    small = servers.transformers_serve(
        smollm2_folder_here, dtype="float32", threads=1, cache_blocks=8
    )
    try:
        shell.run_line_magic("llm_load", f"--server {small.url} --as small --quiet")
        shell.user_ns["long"] = "word " * 400  # past 8 blocks of 32 tokens
        result, out = run(shell, "%%llm_generate --greedy --max-new-tokens 20\n{long}")
    finally:
        small.stop()
    assert isinstance(result.error_in_exec, GenerationError)
    shown = out.stdout + out.stderr
    assert shown.count("✗ ") == 1 and "stopped:" not in shown
    assert "the server failed while answering; it says: " in shown
    assert "No requests can be scheduled" in shown  # the server's own words


@pytest.fixture(scope="module")
def smollm2_folder_here(smollm2_gguf) -> Path:
    """SmolLM2 as the float32 folder llm_magic converts the .gguf into."""
    from llm_magic.sources import gguf_cache

    folder = gguf_cache.converted_folder(Path(smollm2_gguf), "float32")
    if not (folder / "config.json").is_file():  # converted once a session, on first load
        llm_magic.load(smollm2_gguf, dtype="float32", quiet=True)
        llm_magic.unload(all=True)
    return folder


# --- secrets in the URL -----------------------------------------------------------------------


def test_credentials_are_cut_out_of_text_and_urls():
    url = f"http://user:{PASSWORD}@gpu-node:8000/v1?api_key={PASSWORD}&x=1"
    assert PASSWORD not in public_url(url) and PASSWORD not in redact(f"saw {url} there")
    assert public_url(url) == "http://gpu-node:8000/v1?api_key=***&x=1"
    assert url_credentials(url) == ["a user name and password", "a key in its query (api_key)"]
    assert url_credentials("http://gpu-node:8000/v1?x=1") == []
    assert redact(f"Authorization: Bearer {PASSWORD}") == "Authorization: Bearer ***"
    assert redact(f"key {PASSWORD} echoed", [PASSWORD]) == "key *** echoed"


def test_a_password_in_the_server_url_is_refused_and_shows_in_no_output(
    shell, llama_server, monkeypatch
):
    """Against the key-checking proxy, with the key it takes: written in the URL it is not
    sent (nothing reaches the proxy) and appears in no output; from a variable it works."""
    proxy = servers.KeyProxy(llama_server.url, PASSWORD)
    host = proxy.url.removeprefix("http://")
    shown: list[str] = []

    def cell(code: str):
        result, out = run(shell, code)
        shown.extend([out.stdout, out.stderr])
        error = result.error_in_exec
        if error is not None:
            shown.extend(str(e) for e in chain(error, suppressed=True))
        return result, out.stdout + out.stderr

    try:
        for url in (f"http://user:{PASSWORD}@{host}", f"http://{host}?api_key={PASSWORD}"):
            result, out = cell(f"%llm_load --server {url} --verbose")
            assert isinstance(result.error_in_exec, LoadError)
            assert "which llm_magic does not send" in out and "--api-key-env" in out
            assert "Traceback" in out  # --verbose printed it, the cell's line redacted
            _, traceback = cell("%llm_tb")
            assert "run_line_magic('llm_load'" in traceback and ("***" in traceback)
        assert proxy.requests == 0  # refused before anything was sent

        monkeypatch.setenv("SERVER_KEY", PASSWORD)
        loaded, _ = cell(f"%llm_load --server {proxy.url} --api-key-env SERVER_KEY --as keyed")
        assert loaded.success, loaded.error_in_exec
        shown += [loaded.result.text(), loaded.result.html()]
        answered, _ = cell("%%llm_generate -m keyed --greedy --max-new-tokens 3 --no-stream\nHi")
        assert answered.success, answered.error_in_exec
        shown += [repr(answered.result.metadata()), answered.result.html()]
        models, _ = cell("%llm_models")
        shown += [models.result.text(), models.result.html()]
        shell.user_ns["long"] = "word " * 700  # a failure with the key in use, traced back
        failed, _ = cell("%%llm_generate -m keyed --greedy --max-new-tokens 9\n{long}")
        assert isinstance(failed.error_in_exec, GenerationError)
        cell("%llm_tb")
        assert proxy.requests > 0
    finally:
        proxy.stop()
    leaks = [text for text in shown if PASSWORD in text]
    assert not leaks, leaks[0][:400]
    assert PASSWORD not in str(getattr(sys, "last_value", ""))
