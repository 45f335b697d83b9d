"""`%%llm_chat` and `llm_magic.chat` on real models: turns that follow their cell (in a
shell given cell ids, and in a real kernel), history trimmed to the context, Ctrl-C,
--retry, JSON, the cards, and SmolLM2 remembering what it was told."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output

import llm_magic
from llm_magic import CONVERSATIONS, MODEL_CACHE, Conversation, GenerationError, LLMError
from llm_magic.results import ChatResult

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FOX = "The quick brown fox jumps over the lazy dog. " * 8  # ~80 tokens of the tiny model


def chat(shell, body: str, flags: str = "--greedy --max-new-tokens 4", cell_id: str | None = None):
    """Run a %%llm_chat cell (as the cell `cell_id`, where Jupyter would send one)."""
    with capture_output() as captured:
        result = shell.run_cell(f"%%llm_chat {flags}\n{body}", store_history=True, cell_id=cell_id)
    assert result.success, (result.error_in_exec, captured.stdout)
    return result.result


@pytest.fixture
def tiny(shell, tiny_model_dir):
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --as tiny --quiet")
    yield MODEL_CACHE.find("tiny")
    CONVERSATIONS.clear()


def users(name: str = "tiny") -> list[str]:
    return [t.user for t in llm_magic.conversation(name).turns]


# --- turns follow their cells ------------------------------------------------------------------


def test_running_a_cell_again_replaces_its_turn_and_drops_the_later_ones(shell, tiny):
    for cell in "abcd":
        chat(shell, f"question {cell}", cell_id=cell)
    assert users() == ["question a", "question b", "question c", "question d"]
    again = chat(shell, "question d, edited", cell_id="d")  # the last cell, run twice
    assert users() == ["question a", "question b", "question c", "question d, edited"]
    assert again.notes[0] == "replaced turn 4"
    earlier = chat(shell, "question b, edited", cell_id="b")  # an earlier cell run again
    assert users() == ["question a", "question b, edited"]
    assert earlier.notes[0] == "replaced turn 2; dropped turns 3–4"
    # What was sent: the turns before the re-run cell, not the dropped ones.
    assert "question a" in earlier.rendered_prompt and "question c" not in earlier.rendered_prompt
    conversation = llm_magic.conversation("tiny")
    assert (
        conversation.turns[-1].assistant == earlier.text and conversation.turns[-1].cell_id == "b"
    )
    assert [m["role"] for m in conversation.messages] == ["user", "assistant"] * 2


def test_without_cell_ids_turns_append(shell, tiny):
    """Terminal IPython sends no cell id: the same text twice is two turns."""
    chat(shell, "hello")
    chat(shell, "hello")
    assert users() == ["hello", "hello"]
    chat(shell, "from a cell", cell_id="a")
    with capture_output():  # a silent run (no pre_run_cell event) must not pass for cell "a"
        assert shell.run_cell(
            "%%llm_chat --greedy --max-new-tokens 2\nsilently", silent=True
        ).success
    assert users() == ["hello", "hello", "from a cell", "silently"]


def test_an_error_leaves_the_conversation_as_it_was(shell, tiny):
    chat(shell, "first", cell_id="a")
    with capture_output():
        failed = shell.run_cell("%%llm_chat --temperature 0\nsecond", cell_id="b")
    assert isinstance(failed.error_in_exec, GenerationError)
    with capture_output():
        failed = shell.run_cell("%%llm_chat --greedy\n{undefined_name}", cell_id="a")
    assert isinstance(failed.error_in_exec, GenerationError)
    assert users() == ["first"]


def test_in_a_real_kernel_the_history_matches_the_page(tiny_model_dir):
    """JupyterLab sends each cell's id with its execution request: cells run again, in any
    order, leave the conversation reading as the notebook does."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    sys.path.insert(0, str(EXAMPLES))
    from run_notebook import lab_client

    flags = "--greedy --max-new-tokens 6 --no-stream"
    cells = [
        new_code_cell(f"%load_ext llm_magic\n%llm_load {tiny_model_dir} --as tiny --quiet"),
        new_code_cell(f"%%llm_chat {flags}\nThe capital of France"),
        new_code_cell(f"%%llm_chat {flags}\nThe quick brown fox"),
        new_code_cell(f"%%llm_chat {flags}\nHello world"),
        new_code_cell(
            "import json, llm_magic\nprint(json.dumps(llm_magic.conversation('tiny').to_dict()))"
        ),
    ]
    notebook = new_notebook(cells=cells)
    nbformat.validate(notebook)
    client = lab_client(notebook, timeout=300)
    with client.setup_kernel():
        for index in (0, 1, 2, 3):
            client.execute_cell(cells[index], index)
        client.execute_cell(cells[3], 3)  # the same chat cell, run twice
        cells[2].source = cells[2].source.replace(
            "fox", "cat"
        )  # an earlier cell, edited and run again
        client.execute_cell(cells[2], 2)
        client.execute_cell(cells[4], 4)
        after_edit = _saved(cells[4])
        client.execute_cell(cells[3], 3)  # then the cell below it again: the page is whole
        client.execute_cell(cells[4], 4)
        final = _saved(cells[4])
    assert [t["user"] for t in after_edit["turns"]] == [
        "The capital of France",
        "The quick brown cat",
    ]
    assert "replaced turn 2; dropped turn 3" in _answer_notes(cells[2])
    # The history is the page: one turn per chat cell, its text and the answer shown under it.
    chat_cells = cells[1:4]
    assert [t["user"] for t in final["turns"]] == [c.source.split("\n", 1)[1] for c in chat_cells]
    assert [t["cell_id"] for t in final["turns"]] == [c.id for c in chat_cells]
    assert [t["assistant"] for t in final["turns"]] == [_answer(c) for c in chat_cells]


def _saved(cell) -> dict:
    return json.loads("".join(o.text for o in cell.outputs if o.output_type == "stream"))


def _result_text(cell) -> str:
    (result,) = [o for o in cell.outputs if o.output_type == "execute_result"]
    return result.data["text/plain"]


def _answer(cell) -> str:
    return _result_text(cell).split("\n── ")[0]


def _answer_notes(cell) -> str:
    return _result_text(cell).split("\n── ")[1]


# --- fitting the context ------------------------------------------------------------------------


def test_history_beyond_the_context_is_left_out_oldest_first(shell, tiny):
    limit = tiny.engine.context_limit()
    assert limit == 256  # the tiny model's context: three long turns do not fit
    flags = "--greedy --max-new-tokens 16"
    chat(shell, "one " + FOX, flags, "a")
    chat(shell, "two " + FOX, flags, "b")
    third = chat(shell, "three " + FOX, flags, "c")
    assert third.notes[0] == (
        "sent the last 1 of 2 turns: the 1 older one does not fit the model's 256 positions "
        "with room for the answer"
    )  # (then: the tiny model has no chat template)
    assert "one The" not in third.rendered_prompt and "two The" in third.rendered_prompt
    assert third.prompt_tokens + 16 <= limit
    assert users() == [
        "one " + FOX,
        "two " + FOX,
        "three " + FOX,
    ]  # the conversation keeps every turn
    view = shell.run_line_magic("llm_chat", "--show")
    assert "not sent with the last answer" in view.text().split("[2] user")[0]


def test_max_history_caps_the_turns_sent(shell, tiny):
    shell.run_line_magic("config", "LLMMagics.max_history = 1")
    for cell in "abc":
        last = chat(shell, f"question {cell}", cell_id=cell)
    assert last.notes[0] == "sent the last 1 of 2 turns (max_history 1)"
    assert "question a" not in last.rendered_prompt and "question b" in last.rendered_prompt


# --- Ctrl-C and --retry ---------------------------------------------------------------------------


def test_interrupted_answer_stays_marked_and_retry_replaces_it(shell, tiny):
    chat(shell, "first question")
    seen = []

    def ctrl_c(chunk):
        seen.append(chunk)
        raise KeyboardInterrupt  # as Ctrl-C lands while the answer streams

    with pytest.raises(KeyboardInterrupt) as info:
        llm_magic.chat("The capital of France", greedy=True, max_new_tokens=100, stream=ctrl_c)
    partial = info.value.result
    assert isinstance(partial, ChatResult) and partial.stop_reason == "interrupted"
    conversation = llm_magic.conversation()
    last = conversation.turns[-1]
    assert (
        last.interrupted and last.user == "The capital of France" and last.assistant == partial.text
    )
    assert partial.text.startswith(seen[0]) and 0 < partial.new_tokens < 100
    assert partial.messages[-1] == {"role": "assistant", "content": partial.text}
    shown = shell.run_line_magic("llm_chat", "--show")
    assert "interrupted (Ctrl-C): partial answer" in shown.text()

    with capture_output():
        again = shell.run_cell(
            "%llm_chat --retry --seed 7 --max-new-tokens 5"
        ).result  # a line magic: no cell
    assert again.remarks[0].startswith("retried turn 2 of conversation 'tiny': greedy, at most 5")
    assert users("tiny") == ["first question", "The capital of France"]
    assert not conversation.turns[-1].interrupted and conversation.turns[-1].assistant == again.text
    assert again.seed == 7 and again.new_tokens == 5


def test_retry_takes_the_conversation_used_last_and_that_turns_own_settings(shell, tiny_varied_dir):
    """A greedy turn of a named conversation, retried from another cell: the same
    conversation, greedy again (so the same answer), said as a remark, not a warning; a
    flag on the retry's line changes that one setting only."""
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --as varied --quiet")
    chat(shell, "an earlier question", flags="--greedy --max-new-tokens 6")  # varied's own
    first = chat(shell, "The capital of France", flags="--as quiz --greedy --max-new-tokens 12")
    with capture_output() as captured:
        again = shell.run_cell("%llm_chat --retry").result
    assert again.conversation is llm_magic.conversation("quiz")
    assert users("quiz") == ["The capital of France"] and users("varied") == ["an earlier question"]
    assert again.settings["greedy"] is True and again.settings["max_new_tokens"] == 12
    assert again.text == first.text and again.new_tokens == first.new_tokens
    said = "retried turn 1 of conversation 'quiz': greedy, at most 12 new tokens"
    assert again.remarks == (said,) and said in captured.stdout
    assert "⚠ retried" not in captured.stdout  # a remark, not a warning
    with capture_output():
        shorter = shell.run_cell("%llm_chat --retry --max-new-tokens 3").result
    assert shorter.settings["greedy"] is True and shorter.new_tokens == 3
    assert shorter.text == first.text[: len(shorter.text)]
    # A format on the retry's line is that turn's format: the answer is one of the choices.
    shell.user_ns["answers"] = ["Paris", "Lyon"]
    with capture_output():
        chosen = shell.run_cell("%llm_chat --retry --choice $answers").result
    assert chosen.settings["greedy"] is True and chosen.data in ("Paris", "Lyon")
    CONVERSATIONS.clear()


def test_retry_needs_an_answer_and_no_new_question(shell, tiny):
    with capture_output():
        failed = shell.run_cell("%llm_chat --retry")
    assert isinstance(failed.error_in_exec, GenerationError) and "no answer to retry" in str(
        failed.error_in_exec
    )
    chat(shell, "hello")
    with capture_output() as captured:
        failed = shell.run_cell("%%llm_chat --retry\nsomething else")
    assert (
        failed.error_in_exec is not None and "%llm_chat --retry (one %, no cell)" in captured.stderr
    )
    assert users() == ["hello"]


def test_a_mistyped_flag_gets_a_did_you_mean(shell, tiny):
    from IPython.core.error import UsageError

    with capture_output() as captured:
        failed = shell.run_cell("%%llm_chat --greddy\nhello")
    assert isinstance(failed.error_in_exec, UsageError)
    assert "--greddy: did you mean --greedy?" in captured.stderr + captured.stdout
    assert not CONVERSATIONS.all()  # nothing was asked


def test_out_show_prompt_and_stream_work_as_in_generate(shell, tiny):
    chat(shell, "first turn")
    with capture_output() as captured:
        result = shell.run_cell(
            "%%llm_chat --greedy --max-new-tokens 3 --out answer --show-prompt\nThe capital of"
        )
    assert result.success
    assert shell.user_ns["answer"] is result.result is shell.user_ns["_"]
    shown = captured.outputs[0].data["text/plain"]
    assert (
        shown.startswith("prompt (") and "first turn" in shown and "The capital of" in shown
    )  # history included
    assert captured.stdout.startswith(result.result.text)  # streamed to a terminal as it came
    assert "── " + result.result.footer() in captured.stdout


# --- names, cards, JSON ---------------------------------------------------------------------------


def test_conversations_by_name_list_show_and_reset(shell, tiny):
    chat(shell, "default one")
    chat(
        shell,
        "about <b>html</b> & more",
        "--as notes --system 'Be brief.' --greedy --max-new-tokens 3",
    )
    assert [c.name for c in CONVERSATIONS.all()] == ["tiny", "notes"]
    notes = llm_magic.conversation("notes")
    assert (
        notes.messages[0] == {"role": "system", "content": "Be brief."} and len(notes.messages) == 3
    )
    listed = repr(shell.run_line_magic("llm_chat", "--list"))
    assert "  tiny   1 turn · model tiny" in listed and "* notes  1 turn · model tiny" in listed
    view = shell.run_line_magic("llm_chat", "--show notes")
    bundle = view._repr_mimebundle_()
    assert "about <b>html</b> & more" in bundle["text/plain"]
    assert (
        "about &lt;b&gt;html&lt;/b&gt; &amp; more" in bundle["text/html"]
        and "<b>html</b>" not in bundle["text/html"]
    )
    with capture_output() as captured:
        shell.run_line_magic("llm_chat", "--reset notes")
    assert "notes emptied" in captured.stdout
    assert notes.messages == [] and llm_magic.conversation("notes") is notes
    assert len(llm_magic.conversation("tiny").messages) == 2  # the other one stands
    with capture_output():
        missing = shell.run_cell("%llm_chat --show nope")
    assert isinstance(missing.error_in_exec, LLMError) and "no conversation named 'nope'" in str(
        missing.error_in_exec
    )


def test_new_starts_over(shell, tiny):
    chat(shell, "one")
    chat(shell, "two")
    chat(shell, "three", "--new --greedy --max-new-tokens 3")
    assert users() == ["three"]


def test_json_round_trip_and_carrying_on(tiny, tmp_path):
    llm_magic.chat(
        "first <question>", greedy=True, max_new_tokens=4, system="Be brief.", cell_id="cell-1"
    )
    saved = llm_magic.conversation().save(tmp_path / "chat.json")
    loaded = Conversation.load(saved)
    assert loaded.to_dict() == llm_magic.conversation().to_dict()
    assert (
        loaded.messages == llm_magic.conversation().messages and loaded.turns[0].cell_id == "cell-1"
    )
    CONVERSATIONS.clear()
    result = llm_magic.chat("second", conversation=loaded, greedy=True, max_new_tokens=4)
    assert llm_magic.conversation("tiny") is loaded and len(loaded.messages) == 5
    assert "first <question>" in result.rendered_prompt
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(LLMError, match="not a saved conversation"):
        Conversation.load(tmp_path / "other.json")


def test_chat_magics_read_the_llm_magics_config(shell, tiny):
    shell.run_line_magic("config", "LLMMagics.max_new_tokens = 2")
    shell.run_line_magic("config", "LLMMagics.greedy = True")
    result = chat(shell, "hello", flags="")
    assert result.new_tokens == 2 and result.settings["greedy"] is True


# --- a real instruct model --------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_remembers_what_it_was_told_a_turn_earlier(shell, smollm2_gguf):
    shell.run_line_magic("llm_load", f"{smollm2_gguf} --as smol --quiet")
    chat(
        shell,
        "Remember this: the secret code word is pineapple.",
        "--greedy --max-new-tokens 40",
        "a",
    )
    answer = chat(shell, "What is the secret code word?", "--greedy --max-new-tokens 40", "b")
    assert "pineapple" in answer.text.lower()
    messages = llm_magic.conversation("smol").messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[3]["content"] == answer.text and answer.messages == messages
    with capture_output():
        shell.run_line_magic("llm_chat", "--reset")
    assert llm_magic.conversation("smol").messages == []
