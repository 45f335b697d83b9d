"""Bad values fail as cards before any work, and flags that do not apply are said.

Each value is typed into a real InteractiveShell as a user would; what the user sees is
the error card (a few lines, no traceback), and the cache is left as it was. Values that
belong to a value (`Settings`, `LoadOptions`) are refused by the Python API too.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output

import llm_magic
from llm_magic import MODEL_CACHE, GenerationError, LLMError, LoadError


def cache_state() -> list[tuple[str, tuple[str, ...]]]:
    return sorted((str(e.key), tuple(sorted(e.aliases))) for e in MODEL_CACHE.entries())


def fail(shell, cell: str, error_type: type[LLMError] = LoadError) -> str:
    """Run a cell that must fail with an error card, fast, leaving the cache alone;
    returns what the user saw."""
    before = cache_state()
    started = time.perf_counter()
    with capture_output() as out:
        result = shell.run_cell(cell)
    seconds = time.perf_counter() - started
    assert isinstance(result.error_in_exec, error_type), repr(result.error_in_exec)
    assert cache_state() == before
    text = out.stdout + out.stderr
    assert "Traceback (most recent call last)" not in text, text
    card = "\n".join(result.error_in_exec._render_traceback_())
    assert card in text and len(card.splitlines()) <= 12, card
    assert seconds < 5, f"{cell}: {seconds:.1f} s: refused after work, not before"
    return card


@pytest.fixture
def loaded(shell, tiny_model_dir):
    """A shell with the tiny model cached as `base` (what a failure must leave alone)."""
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --as base --quiet")
    return shell


# --- loading -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ("--max-memory cpu=-5GB", "--max-memory cpu=-5GB: not a size"),
        ("--max-memory cpu=0", "--max-memory cpu=0: a cap must be above 0"),
        ("--api-key-env MY_KEY", "--api-key-env MY_KEY: a key is for a server model"),
        ("--revision v1", "--revision v1: "),
    ],
)
def test_bad_load_flags_are_refused_as_cards(loaded, tiny_model_dir, flags, said):
    card = fail(loaded, f"%llm_load {tiny_model_dir} {flags}")
    assert said in card
    if flags.startswith("--revision"):
        assert "is a folder on disk, which has no revisions" in card


def test_the_python_api_refuses_the_same_values(tiny_model_dir):
    with pytest.raises(LoadError, match="a cap must be above 0"):
        llm_magic.load(str(tiny_model_dir), max_memory={"cpu": 0})
    with pytest.raises(LoadError, match="not a size"):
        llm_magic.load(str(tiny_model_dir), max_memory={"cpu": "-5GB"})
    with pytest.raises(GenerationError, match="--seed -1"):
        llm_magic.generate("Hi", model=llm_magic.load(str(tiny_model_dir)), seed=-1)


def test_a_max_memory_that_puts_the_whole_model_on_disk_is_refused_at_load(loaded, tiny_model_dir):
    """Wholly on disk, the weights stay on the meta device: every generation would fail."""
    card = fail(loaded, f"%llm_load {tiny_model_dir} --dtype float32 --max-memory cpu=1KB")
    assert "--max-memory cpu=1KB leaves no room for the model on any device" in card


def test_a_file_that_is_no_model_is_called_what_it_is(loaded, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    card = fail(loaded, f"%llm_load {notes}")
    assert f"{notes}: not a model" in card and "no such file" not in card


@pytest.mark.parametrize("engine", ["transformers", "llama.cpp"])
@pytest.mark.parametrize("keep", [30, 5000, "all but 1000"])
def test_a_truncated_gguf_is_said_to_be_truncated(loaded, smollm2_gguf, tmp_path, engine, keep):
    if engine == "llama.cpp":
        pytest.importorskip("llama_cpp")
    data = Path(smollm2_gguf).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000] if keep == "all but 1000" else data[:keep])
    card = fail(loaded, f"%llm_load {cut} --engine {engine}")
    assert f"{cut}: the .gguf file is truncated" in card
    assert ("its header describes" if keep == "all but 1000" else "inside its own header") in card


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ftp://127.0.0.1:21/v1", "ftp:// is not an address of an HTTP API"),
        ("http://127.0.0.1:99999/v1", "the port is not 1 to 65535"),
        ("http://user:secret@127.0.0.1:abc/v1", "the port is not 1 to 65535"),
    ],
)
def test_a_server_url_no_api_answers_on_is_refused_before_sending(loaded, url, said):
    card = fail(loaded, f"%llm_load --server {url}")
    assert said in card and "secret" not in card


# --- generating ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ("--seed -1", "--seed -1: must be a whole number from 0 to 4294967295"),
        ("--seed 18446744073709551616", "--seed 18446744073709551616: must be a whole number"),
        ("--temperature inf", "--temperature inf: must be a finite number above 0"),
        ("--concurrency -1", "--concurrency -1: must be at least 1"),
        ("--batch-size 0", "--batch-size 0: must be at least 1"),
    ],
)
def test_bad_generation_values_are_refused_as_cards(loaded, flags, said):
    card = fail(loaded, f"%%llm_generate {flags} --max-new-tokens 2\nHello", GenerationError)
    assert said in card
    other = "--batch-size" if "--concurrency" in flags else "--concurrency"
    assert other not in card.splitlines()[0]


def test_a_truncated_chat_json_is_one_short_card(shell, tmp_path):
    saved = tmp_path / "chat.json"
    llm_magic.Conversation("talk").save(saved)
    whole = saved.read_text()
    saved.write_text(whole[: len(whole) // 2])
    shell.user_ns["path"] = str(saved)
    card = fail(shell, "import llm_magic\nllm_magic.Conversation.load(path)", LLMError)
    assert "not a saved conversation: the JSON is not whole" in card
    assert "JSONDecodeError" not in card


# --- flags that do not apply ----------------------------------------------------------------


def test_llama_cpp_says_which_flags_it_does_not_use(shell, smollm2_gguf):
    pytest.importorskip("llama_cpp")
    card = shell.run_line_magic(
        "llm_load", f"{smollm2_gguf} --engine llama.cpp --dtype bfloat16 --device-map cuda"
    )
    [note] = [n for n in card.notes() if "not used by --engine llama.cpp" in n]
    assert note.startswith("--dtype, --device-map cuda: not used by --engine llama.cpp")
    again = shell.run_line_magic("llm_load", f"{smollm2_gguf} --engine llama.cpp --dtype bfloat16")
    assert again.cache_state == "cached" and any("--dtype: not used" in n for n in again.notes())
    plain = shell.run_line_magic("llm_load", f"{smollm2_gguf} --engine llama.cpp")
    assert not any("not used" in n for n in plain.notes())


def test_an_alias_moved_to_another_model_says_where_the_first_went(shell, tiny_model_dir):
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --dtype bfloat16 --as m --quiet")
    first = MODEL_CACHE.find("m")
    card = shell.run_line_magic("llm_load", f"{tiny_model_dir} --dtype float32 --as m")
    [note] = [n for n in card.notes() if n.startswith("--as m named")]
    assert "(transformers bfloat16) until now; that model stays loaded (284 KB)" in note
    assert first.engine is not None and len(MODEL_CACHE) == 2  # loaded, as said
    # The way back it names works: the model's line, given an alias, names it again.
    command = note.split("stays loaded (284 KB): ")[1].removesuffix(" names it again")
    assert command.endswith("--as NAME")
    again = shell.run_line_magic(
        "llm_load", command.removeprefix("%llm_load ").replace("--as NAME", "--as old")
    )
    assert again.cache_state == "cached" and MODEL_CACHE.find("old") is first
    # A model with another alias left is named by it.
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --dtype float32 --as other --quiet")
    moved = shell.run_line_magic("llm_load", f"{tiny_model_dir} --dtype bfloat16 --as m")
    assert any(n.endswith("(568 KB): %llm_unload other frees it") for n in moved.notes())
    plain = shell.run_line_magic("llm_load", f"{tiny_model_dir} --dtype bfloat16 --as m")
    assert not any("--as m named" in n for n in plain.notes())  # the same model: nothing moved


def test_the_api_key_trait_is_for_servers_only(shell, tiny_model_dir):
    """LLMMagics.api_key_env set for a notebook's server models leaves local loads alone;
    the flag itself, without --server, is refused (above)."""
    shell.run_line_magic("config", "LLMMagics.api_key_env = 'MY_KEY'")
    card = shell.run_line_magic("llm_load", f"{tiny_model_dir} --dtype bfloat16")
    assert card.cache_state == "new"


# --- fixes that work -----------------------------------------------------------------------


def test_fixes_name_a_model_by_what_reaches_it_alone(shell, tiny_model_dir):
    """The same folder at two dtypes: its short name means both, so the fixes name the
    alias, or the line that gives one; each fix, run, does what it says."""
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --dtype bfloat16 --as half --quiet")
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --dtype float32 --quiet")
    card = fail(shell, "%%llm_generate -m halff --max-new-tokens 2\nHi", GenerationError)
    assert "did you mean: -m half" in card and f"-m {tiny_model_dir.name}" not in card
    card = fail(
        shell, f"%%llm_generate -m {tiny_model_dir.name} --max-new-tokens 2\nHi", GenerationError
    )
    fix = next(line for line in card.splitlines() if "give each an alias:" in line)
    line = fix.split("give each an alias: ")[1].replace("--as NAME", "--as full")
    assert line == f"%llm_load {tiny_model_dir} --dtype float32 --as full"
    again = shell.run_line_magic("llm_load", line.removeprefix("%llm_load "))
    assert again.cache_state == "cached" and MODEL_CACHE.find("full").info.dtype == "float32"


@pytest.mark.parametrize("path", ["./missing-model.gguf", "../../org/model", "/nowhere/org/x"])
def test_a_missing_path_gets_no_hub_id_suggestion(shell, path):
    card = fail(shell, f"%llm_load {path}")
    assert "no such file or folder" in card and "for the Hub id" not in card
