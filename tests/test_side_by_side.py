"""One cell, several models: `%%llm_generate -m A B ...` and `llm_magic.compare`: the same
prompt, settings and seed through each, the results by name, long form with --over, models
on every engine (a LoRA's base and adapter, llama.cpp, a server), and models the budget
keeps apart run one after another."""

from __future__ import annotations

import _thread
import html
import io
import sys
import threading
import time
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output
from support.tiny_model import build_tiny_gguf, build_tiny_gguf_lora, build_tiny_lora

import llm_magic
from llm_magic import MODEL_CACHE, GenerationError, LoadError
from llm_magic.results import Comparison, GenerationResults

ITEMS = ["The capital of France", "Hello world! Numbers like", "A notebook cell", "Paris"]


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny_varied_dir) -> Path:
    return build_tiny_lora(tiny_varied_dir, tmp_path_factory.mktemp("lora") / "lora", seed=1)


@pytest.fixture
def tiny(shell, tiny_varied_dir, lora):
    shell.run_line_magic(
        "llm_load", f"{tiny_varied_dir} --dtype float32 --as tiny --adapter lora={lora} --quiet"
    )
    return MODEL_CACHE.find("tiny")


def run(shell, cell):
    with capture_output() as captured:
        result = shell.run_cell(cell, store_history=True)
    return result, captured


def test_over_four_prompts_through_two_models_is_eight_rows_in_order(shell, tiny):
    shell.user_ns["items"] = ITEMS
    result, captured = run(
        shell,
        "%%llm_generate -m tiny:base tiny:lora --over items --max-new-tokens 8 --seed 11\n{item}",
    )
    assert result.success, captured.stdout
    comparison = result.result
    assert isinstance(comparison, Comparison) and comparison.models == ["tiny:base", "tiny:lora"]
    assert all(isinstance(v, GenerationResults) and len(v) == 4 for v in comparison.values())
    frame = comparison.to_pandas()
    assert len(frame) == 8
    assert list(frame["item"]) == [item for item in ITEMS for _ in range(2)]  # the items
    assert list(frame["model"]) == ["tiny:base", "tiny:lora"] * 4
    assert list(frame["adapter"]) == ["base", "lora"] * 4
    assert list(frame["seed"]) == [11] * 8 and comparison.seed == 11
    assert list(frame["text"]) == [comparison[m][i].text for i in range(4) for m in comparison]
    assert {"prompt", "new_tokens", "seconds", "stop_reason"} <= set(frame.columns)
    for i in range(4):  # the same prompt, settings and seed went to each
        base, adapted = comparison["tiny:base"][i], comparison["tiny:lora"][i]
        assert base.prompt == adapted.prompt == ITEMS[i]
        assert base.settings == adapted.settings and base.seed == adapted.seed == 11
    assert comparison["tiny:base"].texts != comparison["tiny:lora"].texts
    # Each model's answers are the ones it gives alone with that seed.
    for name in comparison:
        alone, _ = run(
            shell, f"%%llm_generate -m {name} --over items --max-new-tokens 8 --seed 11\n{{item}}"
        )
        assert alone.result.texts == comparison[name].texts
    pivot = comparison.pivot()
    assert list(pivot.columns) == ["tiny:base", "tiny:lora"] and list(pivot.index) == [0, 1, 2, 3]
    assert pivot.loc[2, "tiny:lora"] == comparison["tiny:lora"][2].text
    assert list(comparison.pivot("new_tokens").loc[0]) == [
        comparison["tiny:base"][0].new_tokens,
        comparison["tiny:lora"][0].new_tokens,
    ]


def test_one_prompt_streams_each_model_in_turn_with_one_seed(shell, tiny):
    result, captured = run(shell, "%%llm_generate -m tiny tiny:base --max-new-tokens 10\nParis")
    assert result.success, captured.stdout
    comparison = result.result
    seed = comparison.seed
    assert seed is not None  # sampled: one seed drawn, given to both
    assert [r.seed for r in comparison.values()] == [seed, seed]
    assert comparison["tiny"].adapter == "lora" and comparison["tiny:base"].adapter == "base"
    # A terminal: each model's name, then its text as it streamed, one after another.
    out = captured.stdout
    first, second = out.index("══ tiny\n"), out.index("══ tiny:base\n")
    assert first < out.index(comparison["tiny"].text) < second
    assert out.index(comparison["tiny:base"].text, second) > second
    # The same seed again gives the same texts.
    again, _ = run(
        shell, f"%%llm_generate -m tiny tiny:base --max-new-tokens 10 --seed {seed}\nParis"
    )
    assert again.result.texts == comparison.texts
    # The value shown: columns in the browser (escaped), one after another in a terminal.
    bundle, meta = comparison._repr_mimebundle_()
    for name, r in comparison.items():
        assert html.escape(r.text.rstrip("\n")) in bundle["text/html"]
        assert f"══ {name}\n" in bundle["text/plain"]
    assert "display:flex" in bundle["text/html"]
    assert meta["llm_magic"]["seed"] == seed and set(meta["llm_magic"]["models"]) == {
        "tiny",
        "tiny:base",
    }


def test_a_name_that_means_no_model_fails_before_anything_runs(shell, tiny):
    started = []
    with pytest.raises(GenerationError, match="-m nosuch: no loaded model has that name"):
        llm_magic.compare("Hi", ["tiny", "nosuch"], stream=lambda m: started.append(m))
    assert started == []
    result, captured = run(shell, "%%llm_generate -m tiny tiny:nope --max-new-tokens 2\nHi")
    assert isinstance(result.error_in_exec, GenerationError)
    assert "tiny has no adapter 'nope'" in captured.stdout


def test_models_the_budget_keeps_apart_run_one_after_another(
    shell, tiny_varied_dir, tiny_model_dir, monkeypatch
):
    monkeypatch.setattr(MODEL_CACHE, "max_models", 0)  # the budget lives on the cache: put back
    shell.run_line_magic("config", "LLMMagics.max_models = 1")
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --dtype float32 --as a --quiet")
    alone_a = llm_magic.generate("Paris", model="a", greedy=True, max_new_tokens=12)
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --dtype float32 --as b --quiet")
    alone_b = llm_magic.generate("Paris", model="b", greedy=True, max_new_tokens=12)
    assert len(MODEL_CACHE) == 1 and MODEL_CACHE.find("a") is None  # the budget unloaded a
    in_memory = []

    def turn(name):
        in_memory.append((name, len(MODEL_CACHE)))
        return None

    comparison = llm_magic.compare("Paris", ["a", "b"], greedy=True, max_new_tokens=12, stream=turn)
    assert comparison.models == ["a", "b"]
    assert comparison["a"].token_ids == alone_a.token_ids
    assert comparison["b"].token_ids == alone_b.token_ids
    # b (in memory) first, then a, loaded again in its place: never two at once.
    assert in_memory == [("b", 1), ("a", 1)]
    notes = " ".join(comparison.notes)
    assert "a was not in memory (the budget unloaded it): loaded again for its turn" in notes
    assert "unloaded b" in notes
    # The magic says so under the results.
    result, captured = run(shell, "%%llm_generate -m a b --greedy --max-new-tokens 4\nParis")
    assert result.success and "loaded again for its turn" in str(result.result)
    # A model that free memory cannot hold is refused before it is read, not swapped in.
    from llm_magic import hardware

    monkeypatch.setattr(hardware, "free_ram_bytes", lambda: 1_000_000)
    result, captured = run(shell, "%%llm_generate -m a b --greedy --max-new-tokens 4\nParis")
    assert isinstance(result.error_in_exec, LoadError)
    assert "will not fit in memory" in captured.stdout
    assert len(MODEL_CACHE) == 1


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    pytest.importorskip("llama_cpp")
    root = tmp_path_factory.mktemp("side-gguf")
    return build_tiny_gguf(root / "tiny.gguf", tiny_model_dir), build_tiny_gguf_lora(
        root / "lora.gguf"
    )


def test_models_on_every_engine_and_a_servers_own_adapter(shell, tiny, ggufs):
    from support.servers import llama_cpp_models_server

    gguf, gguf_lora = ggufs
    server = llama_cpp_models_server(
        {
            "tiny": {"model": str(gguf), "n_ctx": 256},
            "tiny-lora": {"model": str(gguf), "n_ctx": 256, "lora_path": str(gguf_lora)},
        }
    )
    try:
        result, captured = run(
            shell, f"%llm_load tiny --server {server.url} --as s --adapter tiny-lora"
        )
        assert result.success, captured.stdout
        assert "adapter tiny-lora" in str(result.result) and "-m s:tiny-lora" in str(result.result)
        shell.run_line_magic("llm_load", f"tiny-lora --server {server.url} --as direct --quiet")
        shell.run_line_magic(
            "llm_load", f"{gguf} --engine llama.cpp --as g --adapter q={gguf_lora} --quiet"
        )
        names = ["tiny:lora", "g:base", "g:q", "s:base", "s:tiny-lora", "direct"]
        result, captured = run(
            shell, f"%%llm_generate -m {' '.join(names)} --greedy --raw --max-new-tokens 8\nParis"
        )
        assert result.success, captured.stdout
        comparison = result.result
        assert comparison.models == names
        engines = [comparison[n].engine["engine"] for n in names]
        assert engines == ["transformers", "llama.cpp", "llama.cpp", "server", "server", "server"]
        assert comparison["s:tiny-lora"].engine["served_model"] == "tiny-lora"
        assert comparison["s:base"].engine["served_model"] == "tiny"
        # The server's adapter is the model it serves under that name.
        assert comparison["s:tiny-lora"].text == comparison["direct"].text
        assert comparison["s:tiny-lora"].text != comparison["s:base"].text
        assert comparison["g:q"].text != comparison["g:base"].text
        for name in ("tiny:lora", "g:q"):
            alone, _ = run(
                shell, f"%%llm_generate -m {name} --greedy --raw --max-new-tokens 8\nParis"
            )
            assert alone.success, (name, captured.stdout, alone.error_in_exec)
            assert alone.result.token_ids == comparison[name].token_ids
    finally:
        server.stop()


def test_ctrl_c_keeps_the_models_done_and_the_partial_answer(tiny):
    pieces = []

    def stream(name):
        if name != "tiny:lora":
            return None

        def on_text(piece):
            pieces.append(piece)
            if len(pieces) == 3:
                raise KeyboardInterrupt  # as Ctrl-C lands while the second model streams

        return on_text

    with pytest.raises(KeyboardInterrupt) as caught:
        llm_magic.compare(
            "The capital of France",
            ["tiny:base", "tiny:lora"],
            greedy=True,
            max_new_tokens=40,
            stream=stream,
        )
    partial = caught.value.result
    assert isinstance(partial, Comparison) and partial.models == ["tiny:base", "tiny:lora"]
    assert partial["tiny:base"].stop_reason in ("length", "eos")
    assert partial["tiny:lora"].stop_reason == "interrupted"
    assert partial["tiny:lora"].text.startswith("".join(pieces[:2]))
    assert tiny.engine.active_adapter == "lora"  # at rest again: its default adapter on


def test_a_failing_model_leaves_the_ones_done_on_its_error(tiny):
    def stream(name):
        if name == "tiny:lora":  # as a model fails at its turn (a server gone, say)
            raise GenerationError("the server went away")
        return None

    with pytest.raises(GenerationError, match="went away") as caught:
        llm_magic.compare(
            "Paris", ["tiny:base", "tiny:lora"], greedy=True, max_new_tokens=8, stream=stream
        )
    partial = caught.value.result
    assert isinstance(partial, Comparison) and partial.models == ["tiny:base"]
    assert partial["tiny:base"].stop_reason in ("length", "eos")
    # A failure before any model answered carries nothing.
    with pytest.raises(GenerationError) as caught:
        llm_magic.compare("Paris", ["tiny:lora", "tiny:base"], greedy=True, stream=stream)
    assert not hasattr(caught.value, "result")


class _CtrlCWhileStreaming(io.StringIO):
    """A terminal's stdout that presses Ctrl-C (from another thread, like a signal) once
    `model`'s column has streamed a few pieces."""

    def __init__(self, model: str):
        super().__init__()
        self.header, self.pressed, self.pieces = f"══ {model}\n", False, 0

    def write(self, text):
        written = super().write(text)
        if not self.pressed and self.header in self.getvalue():
            self.pieces += 1
            if self.pieces == 4:
                self.pressed = True
                threading.Thread(target=_thread.interrupt_main).start()
                time.sleep(0.5)  # let it land here, inside the model's streaming
        return written


def test_ctrl_c_in_the_cell_keeps_the_comparison_so_far(shell, tiny):
    watched, old = _CtrlCWhileStreaming("tiny:lora"), sys.stdout
    sys.stdout = watched
    try:
        result = shell.run_cell(
            "%%llm_generate -m tiny:base tiny:lora --greedy --max-new-tokens 200 --out kept\n"
            "The capital of France",
            store_history=True,
        )
    finally:
        sys.stdout = old
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    kept = shell.user_ns["kept"]
    assert isinstance(kept, Comparison) and shell.user_ns["_"] is kept
    assert kept.models == ["tiny:base", "tiny:lora"]
    assert kept["tiny:base"].stop_reason != "interrupted"
    assert kept["tiny:lora"].stop_reason == "interrupted"
    out = watched.getvalue()
    assert (
        out.strip()
        .splitlines()[-1]
        .startswith("KeyboardInterrupt: generation stopped; the partial result is in kept, _, Out[")
    )
    assert "Traceback" not in out


def test_a_servers_own_adapters_are_named_without_a_path(shell):
    """vLLM lists a LoRA module as a model whose `parent` is the base: `-m MODEL:NAME` names
    it with no %llm_adapter load, and requests go to that name (plain data: no request)."""
    from llm_magic.cache import LoadedModel
    from llm_magic.engines.base import CacheKey, LoadReport
    from llm_magic.engines.server import Connection, ServerEngine
    from llm_magic.engines.server_load import LOADER, ServerInfo

    url = "http://127.0.0.1:9/v1"
    info = ServerInfo(
        name="base-model",
        kind="server",
        class_name="served",
        num_params=0,
        memory_bytes=0,
        device=url,
        dtype="served",
        dtype_reason="chosen by the server",
        source=url,
        revision=None,
        load_seconds=0.0,
        engine="server",
        url=url,
        served=({"id": "base-model"}, {"id": "sql-lora", "parent": "base-model"}),
    )
    engine = ServerEngine(info, Connection(url, None))
    entry = LoadedModel(CacheKey("server", f"{url} base-model"), None, None, info)
    entry.engine = engine
    MODEL_CACHE.put(entry)
    MODEL_CACHE.alias(entry, "s")
    card = str(LOADER.card(entry, LoadReport("new", 0.0, None, (), 1, 0)))
    assert "adapters" in card and "sql-lora  (served: -m s:sql-lora)" in card
    assert "sql-lora" in str(llm_magic.list_adapters("s"))
    target = llm_magic.adapters.find("s:sql-lora")
    assert target.adapter == "sql-lora" and entry.adapters["sql-lora"].format == "served"
    with llm_magic.adapters.using(target):
        assert engine.describe()["served_model"] == "sql-lora"
    assert engine.describe()["served_model"] == "base-model"
    with pytest.raises(LoadError, match="does not serve 'nope'"):
        llm_magic.load_adapter("nope", model="s")
