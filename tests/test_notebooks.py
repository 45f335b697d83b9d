"""The example notebooks, executed in a real ipykernel through nbclient."""

from __future__ import annotations

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


def test_scoring_notebook_scores_choices_texts_and_tokens():
    notebook = run(EXAMPLES / "scoring.ipynb")
    table = cell_text(_cells_with(notebook, 'to_pandas()[["context", "best"')[0])
    assert "What is the capital of France?" in table and len(table.splitlines()) == 5
    accuracy = cell_text(_cells_with(notebook, "quiz_scores.accuracy")[0])
    assert "'acc':" in accuracy and "'acc_norm':" in accuracy
    detail = cell_text(_cells_with(notebook, "--choices Paris London Berlin")[0])
    assert detail.splitlines()[1].startswith("'Paris'") and "✓" in detail.splitlines()[1]
    assert "chat template applied" in detail
    # Perplexity: English is less surprising than its words shuffled or random letters.
    frame = cell_text(_cells_with(notebook, "surprise.to_pandas()")[0]).splitlines()
    ppl = [float(line.split()[-1]) for line in frame if line[:1].isdigit()][-3:]
    assert ppl[0] < ppl[1] and ppl[0] < ppl[2], ppl
    view = _cells_with(notebook, '--context "The capital of France is"')[0]
    html = [o["data"]["text/html"] for o in view.outputs if "text/html" in o.get("data", {})]
    assert len(html) == 1 and html[0].count(" title='") == 9 and "hover a token" in html[0]
    tokens = cell_text(_cells_with(notebook, "answer.tokens_frame()")[0])
    assert "Paris" in tokens and "alternatives" in tokens
