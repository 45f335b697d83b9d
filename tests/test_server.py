"""Server models (`%llm_load --server URL`) against REAL OpenAI-compatible servers started
here on 127.0.0.1: `transformers serve --continuous-batching` and llama.cpp's server,
both serving SmolLM2-135M-Instruct. The same tests run against both (`server`).

Every failure in the catalogue is produced for real: a closed port, a wrong model name, a
`python -m http.server` URL, a server killed mid-stream, a key checked by a tiny real proxy.
Token counts are kept small: the servers run on the CPU, next to the tests.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output
from support import servers

import llm_magic
from llm_magic import MODEL_CACHE, GenerationError, LoadError
from llm_magic.engines import server as server_engine
from llm_magic.structured import AnswerFormat

pytest.importorskip("openai")
pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
KEY = "sk-llm-magic-test-0123456789abcdef"  # a made-up key the proxy checks: it must never show


# --- servers, started once per session --------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_gguf) -> Path:
    """SmolLM2 as the float32 folder llm_magic converts the .gguf into (what local
    `%llm_load --dtype float32` runs), so `transformers serve` serves the very same weights.
    float32, not bf16: greedy answers must not depend on how the server batches. In bf16,
    "What is the capital of France?" is a near tie that paged attention's other rounding
    flipped to "L'Étoile, …" in one of three runs here; in float32 the gap dwarfs the rounding."""
    from llm_magic.sources import gguf_cache

    handle = llm_magic.load(smollm2_gguf, dtype="float32")
    folder = gguf_cache.converted_folder(Path(smollm2_gguf), "float32")
    llm_magic.unload(all=True)
    del handle
    assert (folder / "config.json").is_file()
    return folder


@pytest.fixture(scope="session")
def transformers_server(smollm2_folder):
    pytest.importorskip("fastapi")
    # One OpenMP thread: on a shared machine, spinning OpenMP teams made it 10× slower here.
    proc = servers.transformers_serve(
        smollm2_folder, dtype="float32", continuous_batching=True, threads=1
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def llama_server(smollm2_gguf):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("sse_starlette")
    proc = servers.llama_cpp_server(smollm2_gguf)
    try:
        servers.smoke_request(proc)
    except RuntimeError as e:
        proc.stop()
        pytest.skip(f"llama.cpp's server cannot answer on this machine: {e}")
    yield proc
    proc.stop()


@pytest.fixture(params=["transformers", "llama.cpp"])
def server(request):
    return request.getfixturevalue(
        "transformers_server" if request.param == "transformers" else "llama_server"
    )


@pytest.fixture
def loaded(shell, server):
    card = shell.run_line_magic("llm_load", f"--server {server.url} --as srv")
    return shell, MODEL_CACHE.find("srv"), card


def run(shell, cell):
    with capture_output() as captured:
        result = shell.run_cell(cell, store_history=True)
    return result, captured


def cache_state():
    return sorted((str(e.key), tuple(sorted(e.aliases))) for e in MODEL_CACHE.entries())


# --- loading: the card, the cache ------------------------------------------------------


def test_load_card_lists_and_unloads(loaded, server):
    shell, entry, card = loaded
    served = servers.served_ids(server.url)
    assert entry.info.name == served[0] and entry.model is None and entry.memory_bytes == 0
    text = card.text()
    assert f"served at {server.url}" in text and served[0] in text
    assert "round trip" in text and "api key     none sent" in text and "cache       new" in text
    again = shell.run_line_magic("llm_load", f"--server {server.url}")
    assert again.cache_state == "cached" and "cache hit" in again.text()
    assert MODEL_CACHE.find("srv") is entry and len(MODEL_CACHE) == 1
    models = shell.run_line_magic("llm_models", "").text()
    assert "srv" in models and server.url in models
    shell.run_line_magic("llm_unload", "srv")
    assert len(MODEL_CACHE) == 0 and entry.engine is None


def test_a_server_model_past_max_models_says_what_it_unloaded_as_a_local_one_does(
    shell, server, tiny_model_dir
):
    shell.run_line_magic("config", "LLMMagics.max_models = 1")
    try:
        shell.run_line_magic("llm_load", f"{tiny_model_dir} --as first --dtype bfloat16")
        served = shell.run_line_magic("llm_load", f"--server {server.url} --as srv")
        local = shell.run_line_magic("llm_load", f"{tiny_model_dir} --as again --dtype bfloat16")
    finally:
        MODEL_CACHE.set_budget(max_models=0)
    budget = "least recently used, to stay within the budget of 1 model"
    first = "unloaded first (transformers bfloat16, 284 KB)"
    assert f"{first}, {budget}" in served.notes()
    assert f"unloaded srv (served, 0 B), {budget}" in local.notes()
    assert f"⚠ {first}, {budget}" in served.text()
    assert [e.aliases for e in MODEL_CACHE.entries()] == [{"again"}]


def test_model_named_explicitly_is_the_same_entry(shell, server):
    served = servers.served_ids(server.url)[0]
    a = llm_magic.load(served, server=server.url)
    b = llm_magic.load(server=server.url)
    assert a is b


def test_every_listed_line_is_a_cache_hit_of_its_entry(
    shell, llama_server, tiny_model_dir, smollm2_gguf
):
    """`%llm_load` without MODEL: each loaded model's line, run as printed in the same
    shell, hits that very entry: a server (named by the URL that answered, /v1 added),
    llama.cpp, nf4, an alias, a device map."""
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("llama_cpp")
    for line in (
        f"{tiny_model_dir} --as tiny --dtype float32 --device-map cpu",
        f"{tiny_model_dir} --dtype bfloat16 --quantize nf4",
        f"{smollm2_gguf} --engine llama.cpp",
        f"--server {llama_server.url.removesuffix('/v1')} --as srv",
    ):
        shell.run_line_magic("llm_load", line + " --quiet")
    listing = shell.run_line_magic("llm_load", "")
    entries = sorted(MODEL_CACHE.entries(), key=lambda e: -e.last_used)
    assert len(listing.loaded) == len(entries) == 4
    lines = [listed.line for listed in listing.loaded]
    served = servers.served_ids(llama_server.url)[0]
    assert f"%llm_load {served} --server {llama_server.url} --as srv" in lines
    assert f"%llm_load {smollm2_gguf} --engine llama.cpp" in lines
    assert f"%llm_load {tiny_model_dir} --dtype bfloat16 --quantize nf4" in lines
    assert f"%llm_load {tiny_model_dir} --dtype float32 --device-map cpu --as tiny" in lines
    for listed, entry in zip(listing.loaded, entries, strict=True):
        card = shell.run_line_magic("llm_load", listed.line.removeprefix("%llm_load "))
        assert card.cache_state == "cached", listed.line
        assert MODEL_CACHE.current() is entry and len(MODEL_CACHE) == 4, listed.line
    # One table: every line starts in the same column.
    text = listing.text()
    starts = {row.index("%llm_load") for row in text.splitlines() if "%llm_load" in row}
    assert len(starts) == 1, text
    assert "demo model:" not in text  # the demo .gguf is listed once: loaded with llama.cpp


# --- generation ---------------------------------------------------------------------


def test_transformers_serve_greedy_equals_local_greedy(shell, transformers_server, smollm2_gguf):
    """The same float32 weights, greedy, in the kernel and behind `transformers serve`."""
    shell.run_line_magic("llm_load", f"{smollm2_gguf} --dtype float32 --as local --quiet")
    local, _ = run(
        shell, f"%%llm_generate -m local --greedy --max-new-tokens 8 --no-stream\n{QUESTION}"
    )
    shell.run_line_magic("llm_load", f"--server {transformers_server.url} --as remote --quiet")
    remote, _ = run(
        shell, f"%%llm_generate -m remote --greedy --max-new-tokens 8 --no-stream\n{QUESTION}"
    )
    assert remote.success, remote.error_in_exec
    assert "Paris" in remote.result.text
    assert remote.result.text == local.result.text
    assert (
        remote.result.engine["engine"] == "server"
        and remote.result.device == transformers_server.url
    )


def test_transformers_serve_is_not_said_to_refuse_a_top_k_nobody_set(shell, transformers_server):
    """`transformers serve` takes no top_k: sampling without it is said only when the user
    chose one (--top-k), not for the default every sampled request carries."""
    shell.run_line_magic("llm_load", f"--server {transformers_server.url} --as ts --quiet --reload")
    sampled, out = run(shell, f"%%llm_generate -m ts --max-new-tokens 2 --no-stream\n{QUESTION}")
    assert sampled.success, sampled.error_in_exec
    assert MODEL_CACHE.find("ts").engine.top_k_refused  # the server did refuse it
    assert not any("top_k" in n for n in sampled.result.notes) and "top_k" not in out.stdout
    chosen, _ = run(
        shell, f"%%llm_generate -m ts --top-k 5 --max-new-tokens 2 --no-stream\n{QUESTION}"
    )
    assert "this server takes no top_k: sampled without --top-k 5" in chosen.result.notes


def test_llama_cpp_greedy_equals_the_raw_openai_client(shell, llama_server):
    import openai

    shell.run_line_magic("llm_load", f"--server {llama_server.url} --quiet")
    result, _ = run(shell, f"%%llm_generate --greedy --max-new-tokens 8 --no-stream\n{QUESTION}")
    client = openai.OpenAI(base_url=llama_server.url, api_key="none", timeout=120, max_retries=0)
    served = servers.served_ids(llama_server.url)[0]
    reply = client.chat.completions.create(
        model=served,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0.0,
        max_tokens=8,
    )
    assert result.result.text == reply.choices[0].message.content


def test_streaming_shows_text_before_the_end_and_reports_usage(loaded):
    shell, entry, _ = loaded
    pieces = []
    result = llm_magic.generate(
        QUESTION,
        model="srv",
        greedy=True,
        max_new_tokens=8,
        stream=lambda piece: pieces.append((time.perf_counter(), piece)),
    )
    ended = time.perf_counter()
    assert len(pieces) >= 2 and pieces[0][0] < pieces[-1][0] < ended
    assert "".join(p for _, p in pieces) == result.text
    assert 0 < result.new_tokens <= 8
    if any(
        "no usage" in n for n in result.notes
    ):  # llama_cpp.server streams no usage: one token per piece, said so
        assert result.new_tokens == len(pieces)
        # An unknown count shows as '?', never as 'None'.
        assert result.prompt_tokens is None
        prompt = "?"
    else:  # the server's usage (stream_options include_usage)
        assert result.prompt_tokens > 5
        prompt = str(result.prompt_tokens)
    assert result.time_to_first_token is not None
    footer = result.footer()
    assert f"{prompt} prompt tokens · {result.new_tokens} new" in footer and "served" in footer


def test_raw_system_and_show_prompt(loaded):
    shell, entry, _ = loaded
    result, out = run(
        shell,
        "%%llm_generate --raw --greedy --max-new-tokens 4 --show-prompt --out r\n"
        "The capital of France is",
    )
    assert result.success, result.error_in_exec
    assert shell.user_ns["r"] is result.result
    assert "sent as is to /v1/completions" in result.result.notes
    assert out.outputs[0].data["text/plain"].endswith("The capital of France is")
    system, out = run(
        shell,
        "%%llm_generate --greedy --max-new-tokens 4 --system 'Answer in French.' "
        "--show-prompt --no-stream\n" + QUESTION,
    )
    shown = out.outputs[0].data["text/plain"]
    assert (
        system.success
        and "messages as sent" in shown
        and '"role": "system"' in shown
        and "Answer in French." in shown
    )


def test_ctrl_c_mid_stream_keeps_the_partial_text(loaded):
    shell, entry, _ = loaded
    pieces = []

    def interrupt_after_first(piece):
        pieces.append(piece)
        raise KeyboardInterrupt

    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt) as caught:
        llm_magic.generate(
            "Write a long story about a dragon.",
            model="srv",
            greedy=True,
            max_new_tokens=200,
            stream=interrupt_after_first,
        )
    partial = caught.value.result
    assert partial.stop_reason == "interrupted" and partial.text == pieces[0] and len(pieces) == 1
    assert partial.new_tokens < 200
    assert (
        time.perf_counter() - started < 120
    )  # generous: the stream closed, 200 tokens were not waited for
    after = llm_magic.generate(
        QUESTION, model="srv", greedy=True, max_new_tokens=3
    )  # the server still answers
    assert after.new_tokens > 0


# --- --over -----------------------------------------------------------------------------

SEQUENCES = ["1, 2, 3, 4, 5,", "Monday, Tuesday, Wednesday,", "January, February, March,"]


def test_over_keeps_the_order_and_converts_to_pandas(loaded):
    shell, entry, _ = loaded
    shell.user_ns["seqs"] = SEQUENCES
    result, captured = run(
        shell,
        "%%llm_generate --over seqs --raw --greedy --max-new-tokens 3 --concurrency 3\n{item}",
    )
    assert result.success, result.error_in_exec
    assert (
        f"{len(SEQUENCES)}/{len(SEQUENCES)} prompts" in captured.stderr
        and "batch" not in captured.stderr
    )  # a step per request
    results = result.result
    singles = [
        llm_magic.generate(s, model="srv", raw=True, greedy=True, max_new_tokens=3).text
        for s in SEQUENCES
    ]
    assert results.texts == singles
    assert [r.prompt for r in results] == SEQUENCES
    frame = results.to_pandas()
    assert list(frame["text"]) == singles and list(frame["item"]) == SEQUENCES
    assert set(frame.columns) >= {"new_tokens", "stop_reason", "seconds", "error"}
    assert "3 results in 3 requests" in results.summary()


def test_over_one_item_failing_leaves_the_others(llama_server, shell):
    """llama.cpp's server is started with a 512-token context: one item past it fails on
    its own (the server's own 400), the others stand."""
    shell.run_line_magic("llm_load", f"--server {llama_server.url} --quiet")
    shell.user_ns["docs"] = ["1, 2, 3,", "word " * 700, "a, b, c,"]
    result, _ = run(shell, "%%llm_generate --over docs --raw --greedy --max-new-tokens 3\n{item}")
    assert result.success, result.error_in_exec
    results = result.result
    assert results.failed == [1]
    assert results[1].stop_reason == "error" and "context" in results[1].error
    assert results[0].new_tokens > 0 and results[2].new_tokens > 0
    assert "1 failed ([1])" in results.summary()


def test_over_retries_a_busy_server_then_reports_it(shell, transformers_server):
    """A real proxy answers 429 to the first requests: they are retried and succeed; a
    server that stays busy gives the rate-limit card once the retries are spent."""
    shell.user_ns["seqs"] = SEQUENCES[:2]
    proxy = servers.KeyProxy(transformers_server.url, busy=3)
    try:
        shell.run_line_magic("llm_load", f"--server {proxy.url} --as busy --quiet")
        result, _ = run(
            shell, "%%llm_generate -m busy --over seqs --raw --greedy --max-new-tokens 2\n{item}"
        )
        assert result.success, result.error_in_exec
        assert (
            proxy.refused == 3
            and not result.result.failed
            and all(r.new_tokens > 0 for r in result.result)
        )
        proxy.busy_left = 10**6
        text = fail(
            shell,
            "%%llm_generate -m busy --over seqs --raw --greedy --max-new-tokens 2\n{item}",
            GenerationError,
            60,
        )
        assert "rate-limiting requests (429)" in text and "--concurrency" in text
    finally:
        proxy.stop()


# --- failures, produced for real ----------------------------------------------------------


def fail(shell, cell: str, error_type=LoadError, seconds: float = 5.0) -> str:
    """Run a failing cell: it fails with a short card within `seconds`, the cache as it was."""
    before = cache_state()
    started = time.perf_counter()
    result, out = run(shell, cell)
    took = time.perf_counter() - started
    assert result.success is False
    assert isinstance(result.error_in_exec, error_type), repr(result.error_in_exec)
    assert cache_state() == before
    text = out.stdout + out.stderr
    assert "Traceback (most recent call last)" not in text
    assert took < seconds, f"{took:.1f} s"
    return text


def test_closed_port(shell):
    url = f"http://127.0.0.1:{servers.closed_port()}/v1"
    text = fail(shell, f"%llm_load --server {url}")
    assert "nothing is listening at 127.0.0.1" in text and "connection refused" in text
    assert shell.run_cell("1 + 1").result == 2  # the kernel lives


def test_wrong_model_name_lists_the_served_ones(shell, transformers_server):
    served = servers.served_ids(transformers_server.url)[0]
    text = fail(shell, f"%llm_load no-such-model --server {transformers_server.url}")
    assert "does not serve 'no-such-model'" in text and served in text


def test_a_web_server_that_is_not_an_openai_api(shell):
    web = servers.static_http_server()
    try:
        text = fail(shell, f"%llm_load --server {web.url}")
        assert "is not an OpenAI-compatible API" in text and "an HTML page" in text
        assert "/v1" in text  # the fix names the usual base path
        tls = fail(
            shell, f"%llm_load --server https://127.0.0.1:{web.port}/v1"
        )  # TLS spoken to a plain-HTTP server
        assert "TLS handshake with 127.0.0.1" in tls and "write http://" in tls
    finally:
        web.stop()


def test_api_key_checked_by_a_real_proxy_never_shows(
    shell, transformers_server, monkeypatch, tmp_path
):
    proxy = servers.KeyProxy(transformers_server.url, KEY)
    try:
        text = fail(shell, f"%llm_load --server {proxy.url}")
        assert "wants an API key, and none was sent" in text and "--api-key-env" in text
        monkeypatch.setenv("LLM_MAGIC_TEST_KEY", "sk-wrong-key")
        text = fail(shell, f"%llm_load --server {proxy.url} --api-key-env LLM_MAGIC_TEST_KEY")
        assert "refused the key in $LLM_MAGIC_TEST_KEY" in text and "sk-wrong-key" not in text
        monkeypatch.setenv("LLM_MAGIC_TEST_KEY", KEY)
        result, out = run(
            shell, f"%llm_load --server {proxy.url} --api-key-env LLM_MAGIC_TEST_KEY --as keyed"
        )
        assert result.success, result.error_in_exec
        gen, gen_out = run(
            shell, "%%llm_generate -m keyed --greedy --max-new-tokens 3 --no-stream\nHello"
        )
        assert gen.success, gen.error_in_exec
        models, models_out = run(shell, "%llm_models")
        shown = [
            out.stdout,
            gen_out.stdout,
            models_out.stdout,
            result.result.text(),
            result.result.html(),
            repr(gen.result.metadata()),
            gen.result.html(),
            models.result.html(),
            repr(MODEL_CACHE.find("keyed").info),
        ]
        assert all(KEY not in s for s in shown)
        assert "from $LLM_MAGIC_TEST_KEY" in result.result.text()
    finally:
        proxy.stop()


def test_the_run_log_holds_a_server_model_s_url_and_never_its_key(
    shell, transformers_server, monkeypatch, run_log
):
    """Through a real key-checking proxy: a generation, a chat turn and an --over of two
    are logged with the server's URL and the served model; the key is nowhere in the
    file's bytes; the same greedy request with --reuse is answered from the log."""
    proxy = servers.KeyProxy(transformers_server.url, KEY)
    try:
        monkeypatch.setenv("LLM_MAGIC_TEST_KEY", KEY)
        shell.run_line_magic(
            "llm_load", f"--server {proxy.url} --api-key-env LLM_MAGIC_TEST_KEY --as keyed --quiet"
        )
        shell.user_ns["two"] = ["Paris", "Rome"]
        cells = [
            "%%llm_generate --greedy --max-new-tokens 3 --no-stream\nHello",
            "%%llm_chat --greedy --max-new-tokens 3\nHi there",
            "%%llm_generate --over two --greedy --max-new-tokens 3\nWhere is {item}?",
            "%%llm_generate --greedy --max-new-tokens 3 --no-stream --reuse\nHello",
        ]
        results = []
        for cell in cells:
            result, _ = run(shell, cell)
            assert result.success, result.error_in_exec
            results.append(result.result)
    finally:
        proxy.stop()
    rows = run_log.query()
    served = servers.served_ids(transformers_server.url)[0]
    assert [r["kind"] for r in rows] == ["generate", "chat", "over", "over"]
    assert {r["server"] for r in rows} == {proxy.url} and {r["model"] for r in rows} == {served}
    assert {r["engine"] for r in rows} == {"server"} and {r["alias"] for r in rows} == {"keyed"}
    assert rows[0]["provenance"]["engine_facts"]["server"] == proxy.url
    assert results[-1].replayed_from is not None and results[-1].text == results[0].text
    on_disk = b"".join(
        p.read_bytes() for p in run_log.path.parent.iterdir() if p.name.startswith("runs.db")
    )
    assert proxy.url.encode() in on_disk and KEY.encode() not in on_disk


def test_server_killed_mid_stream_keeps_the_partial_text(shell, smollm2_folder):
    doomed = servers.transformers_serve(
        smollm2_folder, dtype="float32", continuous_batching=False, threads=1
    )
    try:
        shell.run_line_magic("llm_load", f"--server {doomed.url} --as doomed --quiet")
        pieces = []

        def kill_after_first(piece):
            pieces.append(piece)
            if len(pieces) == 1:
                doomed.kill()

        with pytest.raises(GenerationError) as caught:
            llm_magic.generate(
                "Write a long story about a dragon.",
                model="doomed",
                greedy=True,
                max_new_tokens=200,
                stream=kill_after_first,
            )
        card = "\n".join(caught.value._render_traceback_())
        assert "closed the connection before the answer was complete" in card
        partial = caught.value.result
        assert partial.stop_reason == "error" and partial.text == "".join(pieces) and partial.text
    finally:
        doomed.stop()


def test_read_timeout_gives_a_card(shell, transformers_server):
    """A reply slower than the timeout: 200 tokens in 0.5 s is more than any CPU does."""
    old = server_engine.DEFAULTS.timeout
    shell.run_line_magic("config", "LLMMagics.request_timeout = 0.5")
    try:
        shell.run_line_magic(
            "llm_load", f"--server {transformers_server.url} --as slow --quiet --reload"
        )
        shell.user_ns["one"] = ["Write a long story about a dragon."]
        text = fail(
            shell,
            "%%llm_generate -m slow --over one --greedy --max-new-tokens 200\n{item}",
            GenerationError,
            30,
        )
        assert "did not answer within 0.5 s" in text
    finally:
        server_engine.DEFAULTS.timeout = old


# --- the example notebook --------------------------------------------------------------


def test_server_notebook_runs_against_a_real_server_and_keeps_no_key(
    transformers_server, monkeypatch, tmp_path
):
    """examples/server.ipynb in a real kernel, through a key-checking proxy: the key comes
    from OPENAI_API_KEY (the default variable) and appears nowhere in the saved notebook."""
    import sys

    import nbformat

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from run_notebook import cell_text
    from run_notebook import run as run_notebook

    proxy = servers.KeyProxy(transformers_server.url, KEY)
    monkeypatch.setenv("LLM_MAGIC_SERVER_URL", proxy.url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    try:
        notebook = run_notebook(Path(__file__).resolve().parents[1] / "examples" / "server.ipynb")
    finally:
        proxy.stop()
    code = [c for c in notebook.cells if c.cell_type == "code"]
    texts = {c.source.splitlines()[0]: cell_text(c) for c in code}
    card = texts["%llm_load --server $url --as remote"]
    assert f"served at {proxy.url}" in card and "from $OPENAI_API_KEY" in card
    assert "Paris" in texts["%%llm_generate -m remote --greedy --max-new-tokens 12"]
    assert (
        "3 results in 3 requests"
        in texts[
            "%%llm_generate -m remote --over countries --greedy --max-new-tokens 8 --out answers"
        ]
    )
    assert (
        "nothing is listening at 127.0.0.1:9" in texts["%llm_load --server http://127.0.0.1:9/v1"]
    )
    saved = tmp_path / "server.ipynb"
    nbformat.write(notebook, saved)
    assert KEY not in saved.read_text()


# --- typed answers: each server's own way, believed when the answer shows it -------------

EXTRACTION = (
    "Extract the name and age as JSON from: 'Maria is 34 and loves chess.'",
    {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
)


def test_a_schema_is_enforced_by_llama_cpp_server_and_only_checked_on_transformers_serve(
    loaded, server
):
    """llama.cpp's server takes `response_format` json_object with a schema (and answers
    OpenAI's json_schema shape with an error); `transformers serve` accepts
    `response_format` and ignores it, and refuses vLLM's fields with HTTP 422. Both say
    what they did: neither is silent."""
    shell, entry, _ = loaded
    prompt, schema = EXTRACTION
    shell.user_ns["schema"] = schema
    result, out = run(
        shell, f"%%llm_generate --schema schema --greedy --max-new-tokens 40 --out r\n{prompt}"
    )
    r = shell.user_ns["r"]
    assert r.answer is not None and result.success, result.error_in_exec
    found = entry.engine.format_ways["json"]
    if server.name == "llama-cpp-server":
        assert (
            found.way is not None and found.way.name == "response_format json_object with a schema"
        )
        assert "response_format json_schema: refused, HTTP 500" in found.met
        assert r.answer.enforced and r.valid and set(r.data) == {"name", "age"}
        assert isinstance(r.data["age"], int)
        assert "· enforced (the server's response_format json_object with a schema)" in r.footer()
        assert "json" in entry.engine.capabilities.answer_formats
    else:
        assert found.way is None and entry.engine.capabilities.answer_formats == frozenset()
        assert "response_format json_schema: ignored" in found.met
        assert "structured_outputs: refused, HTTP 422" in found.met
        assert not r.answer.enforced and "validated, not enforced" in r.footer()
        shown = r._repr_mimebundle_()[0]["text/plain"]
        assert "⚠ schema schema not enforced: the server enforced none of the ways" in shown
        # Checked all the same: .valid says whether the free answer happens to conform.
        assert r.valid == AnswerFormat.of_schema(schema).parse(r.text).valid
    # Learned once: the second cell asks the same way without probing again.
    probes = dict(entry.engine.format_ways)
    again = llm_magic.generate(prompt, model="srv", greedy=True, max_new_tokens=40, schema=schema)
    assert entry.engine.format_ways == probes and again.answer.enforced == r.answer.enforced


def test_choice_and_date_over_a_server_that_enforces_them(shell, llama_server):
    shell.run_line_magic("llm_load", f"--server {llama_server.url} --as srv --quiet")
    labels = ["positive", "negative", "neutral"]
    chosen = llm_magic.generate(
        "Is this review positive, negative or neutral? {item}",
        model="srv",
        over=["Loved it.", "Awful.", "It is a chair."],
        seed=4,
        max_new_tokens=6,
        choice=labels,
    )
    assert all(r.data in labels and r.answer.enforced for r in chosen), chosen.texts
    dates = llm_magic.generate(
        "On what date did {item} happen?",
        model="srv",
        over=["the storming of the Bastille", "the first Moon landing"],
        greedy=True,
        max_new_tokens=16,
        regex=r"\d{4}-\d{2}-\d{2}",
    )
    assert all(re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", r.text) for r in dates), dates.texts
    assert "enforced (the server's grammar)" in dates.summary()


# --- log-probabilities and scoring -------------------------------------------------------


def test_scoring_on_a_server_without_usable_prompt_logprobs_gives_the_card(shell, server):
    """transformers serve ignores echo and logprobs on /v1/completions; llama-cpp-python's
    server echoes them one position off (its own generation disagrees with them). Either
    way: the card within seconds, no number, and the kernel goes on."""
    shell.run_line_magic("llm_load", f"--server {server.url} --as srv")
    text = fail(
        shell,
        "%%llm_score -m srv --context 'The capital of France is'\n Paris.",
        GenerationError,
        seconds=30.0,
    )
    assert "gives no usable log-probabilities of a given text" in text
    assert "vLLM" in text and "Paris" not in text.split("cause:")[0].split("✗")[0]
    assert "_" not in shell.user_ns or not hasattr(shell.user_ns["_"], "logprob")
    again, _ = run(shell, "%%llm_generate -m srv --greedy --max-new-tokens 3\nHi")
    assert again.success, again.error_in_exec


def test_logprobs_from_the_llama_cpp_server_equal_the_in_kernel_engines(shell, llama_server):
    """Generated tokens' log-probabilities through the chat API: the same figures as the
    llama.cpp engine's for the same question (the same file, the same llama.cpp)."""
    shell.run_line_magic("llm_load", f"--server {llama_server.url} --as srv")
    served = llm_magic.generate(QUESTION, model="srv", greedy=True, max_new_tokens=6, logprobs=2)
    llm_magic.load(llm_magic.demo_model(), engine="llama.cpp", alias="here")
    here = llm_magic.generate(QUESTION, model="here", greedy=True, max_new_tokens=6, logprobs=2)
    assert served.text == here.text and len(served.tokens) == 6
    assert [t.token for t in served.tokens] == [t.token for t in here.tokens]
    assert [t.logprob for t in served.tokens] == pytest.approx(
        [t.logprob for t in here.tokens], abs=1e-3
    )
    assert [a.token for a in served.tokens[0].alternatives] == [
        a.token for a in here.tokens[0].alternatives
    ]
    assert "as the server computes them" in served.plain()


def test_a_server_that_refuses_logprobs_answers_without_them_and_says_so(
    shell, transformers_server
):
    shell.run_line_magic("llm_load", f"--server {transformers_server.url} --as srv")
    result = shell.run_cell_magic(
        "llm_generate", "-m srv --greedy --max-new-tokens 4 --logprobs", QUESTION
    )
    assert result.text and result.tokens == ()
    assert any("--logprobs: this server" in note for note in result.notes)
