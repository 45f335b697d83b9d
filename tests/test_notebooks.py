"""The example notebooks, executed in a real ipykernel through nbclient."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

from run_notebook import cell_text, run  # noqa: E402

pytestmark = pytest.mark.slow


def _cells_with(notebook, needle: str):
    return [c for c in notebook.cells if c.cell_type == "code" and needle in c.source]


def test_quickstart_notebook_loads_smollm2_and_shows_the_card():
    notebook = run(EXAMPLES / "quickstart.ipynb")
    first, second = _cells_with(notebook, "%llm_load")[:2]
    card = cell_text(first)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf  →  LlamaForCausalLM  (as smol)" in card
    # The kernel chooses from the facts of the machine it runs on (no test can hand it others):
    # the card states the policy's choice for those facts, and its reason.
    from llm_magic import hardware

    choice = hardware.choose_dtype(hardware._probe_host(), None)
    assert "device      cpu" in card and f"dtype       {choice.dtype}  ({choice.reason})" in card
    assert "cache       new · 1 model" in card
    assert "cache hit" in cell_text(second) and "cached · 1 model" in cell_text(second)
    # The status line was blanked once the card arrived: finished cells stay clean.
    for cell in (first, second):
        html = [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]
        assert len(html) == 1 and "LlamaForCausalLM" in html[0]
        assert "…" not in cell_text(cell)
        assert "Loading weights" not in cell_text(cell) and "IProgress" not in cell_text(cell)


def test_run_notebook_output_starts_with_the_cells_not_a_kernel_warning(tmp_path):
    import subprocess

    import nbformat

    path = tmp_path / "tiny.ipynb"
    nbformat.write(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")]), path
    )
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "run_notebook.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["In: print(6 * 7)", "42"]
    assert "IPKernelApp" not in done.stderr and "without encryption" not in done.stderr


def test_chat_notebook_remembers_and_resets():
    notebook = run(EXAMPLES / "chat.ipynb")
    told, asked = _cells_with(notebook, "%%llm_chat")
    assert (
        "pineapple" in cell_text(asked).split("\n── ")[0].lower()
    )  # said a turn earlier, recalled
    messages = cell_text(_cells_with(notebook, "conversation.messages")[0])
    assert messages.count("'role': 'user'") == 2 and messages.count("'role': 'assistant'") == 2
    shown = _cells_with(notebook, "%llm_chat --show")[0]
    html = [o["data"]["text/html"] for o in shown.outputs if "text/html" in o.get("data", {})]
    assert "[2] assistant" in cell_text(shown) and len(html) == 1 and "secret code word" in html[0]
    assert cell_text(_cells_with(notebook, "Conversation.load")[0]).strip() == "True"
    assert cell_text(_cells_with(notebook, "--reset")[0]).endswith("emptied\n[]\n")


def test_extract_notebook_types_the_answers():
    notebook = run(EXAMPLES / "extract.ipynb")
    table = cell_text(_cells_with(notebook, 'table[["name"')[0])
    assert table.count("True") == 4 and "False" not in table  # every row valid
    dtype = " ".join(cell_text(_cells_with(notebook, 'table["age"].dtype')[0]).split())
    assert dtype.startswith("(Int64Dtype(), Person(name=")  # integers, and a pydantic instance
    labels = cell_text(_cells_with(notebook, "[r.data for r in labels]")[0])
    assert set(ast.literal_eval(labels)) <= {"positive", "negative", "neutral"}
    # The line reached the magic as typed: braces kept in %%llm_generate, $iso looked up
    # by %%llm_chat.
    date = cell_text(_cells_with(notebook, "--regex '[0-9]{4}")[0])
    assert re.match(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\n", date), date
    assert "regex [0-9]{4}-[0-9]{2}-[0-9]{2} · enforced (llguidance)" in date
    chat = cell_text(_cells_with(notebook, "--regex $iso")[0])
    assert re.match(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\n", chat) and "regex $iso · enforced" in chat
    cut = cell_text(_cells_with(notebook, "--max-new-tokens 8 --out cut")[0])
    assert "✗ the answer was cut off after 8 new tokens" in cut and "--max-new-tokens 72" in cut
    assert cell_text(_cells_with(notebook, "cut.text, cut.data")[0]).rstrip().endswith("None)")
