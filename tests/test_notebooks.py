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


def test_a_saved_notebook_keeps_no_emptied_outputs(tmp_path, tiny_model_dir):
    """The card and the results take the place of the status line and the streamed text:
    each cell's one output is what it showed, and Out still holds the values."""
    import nbformat
    from run_notebook import lab_client

    cells = [
        "%load_ext llm_magic",
        f"%llm_load {tiny_model_dir} --dtype float32 --as t",
        "%%llm_generate --greedy --max-new-tokens 4\nHello",
        "%%llm_generate --greedy --max-new-tokens 4 --no-stream\nHello",
        "print(type(Out[2]).__name__, type(Out[3]).__name__, type(_).__name__)",
        f"%llm_load {tiny_model_dir} --dtype bfloat16 --as u --quiet",
        "%%llm_generate -m t u --greedy --max-new-tokens 4\nHello",  # side by side
        "print(type(_).__name__)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    lab_client(notebook, timeout=600).execute()
    path = tmp_path / "saved.ipynb"
    nbformat.write(notebook, path)
    saved = nbformat.read(path, as_version=4)
    for cell in saved.cells[1:4] + saved.cells[6:7]:
        assert len(cell.outputs) == 1, cell.outputs
        [output] = cell.outputs
        assert output["data"].get("text/html") and output["data"]["text/plain"].strip()
    assert "llm_magic" in saved.cells[2].outputs[0]["metadata"]  # what made the text, kept
    assert "tiny-gpt2  →  GPT2LMHeadModel" in saved.cells[1].outputs[0]["data"]["text/plain"]
    assert cell_text(saved.cells[4]).strip() == "LoadCard GenerationResult GenerationResult"
    assert cell_text(saved.cells[7]).strip() == "Comparison"


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


def test_compare_notebook_trains_an_adapter_and_shows_it_beside_its_base():
    notebook = run(EXAMPLES / "compare.ipynb")
    loaded = _cells_with(notebook, "%llm_load")[0]
    assert "adapter facts" in cell_text(loaded) and "-m tiny:base" in cell_text(loaded)
    one = _cells_with(notebook, "%%llm_generate -m tiny:base tiny:facts --greedy")[0]
    html = [o["data"]["text/html"] for o in one.outputs if "text/html" in o.get("data", {})]
    # The streaming columns were blanked: one value shows, the two models side by side.
    assert len(html) == 1 and "display:flex" in html[0]
    assert html[0].index("tiny:base") < html[0].index("tiny:facts")
    text = cell_text(one)
    base_text = text.split("══ tiny:facts")[0]
    facts_text = text.split("══ tiny:facts")[1]
    assert "Paris" in facts_text.split("──")[0] and "Paris" not in base_text  # it learned
    frame = _cells_with(notebook, 'compared.to_pandas()[["item"')[0]
    table = next(o["data"]["text/html"] for o in frame.outputs if "text/html" in o.get("data", {}))
    # One row per (item, model); the HTML table, as the plain one wraps wide model text.
    assert re.findall(r"<tr>\s*<th>(\d+)</th>", table) == ["0", "1", "2", "3", "4", "5"]
    assert "jumps over the lazy dog" in cell_text(_cells_with(notebook, "compared.pivot()")[0])
    assert "↳ tiny:facts (default)" in cell_text(_cells_with(notebook, "%llm_models")[0])
    unloaded = cell_text(_cells_with(notebook, "%llm_adapter unload")[0])
    assert unloaded.startswith("✓ unloaded adapter facts from tiny-gpt2")


def test_run_log_notebook_logs_every_run_with_its_file_cell_and_notebook(tmp_path, monkeypatch):
    """examples/run_log.ipynb in a real kernel started as Jupyter Server starts one for a
    notebook (JPY_SESSION_NAME is its path; each cell's id sent with it): SmolLM2 by .gguf
    generates, samples with a seed, chats two turns, runs --over on 5 items and scores a
    question's choices; the log holds one row per run with the file's hash, engine, dtype,
    seed, cell ids and texts, and the repeated greedy cell with --reuse is answered from it."""
    import hashlib

    import llm_magic
    from llm_magic import runlog

    path = EXAMPLES / "run_log.ipynb"
    monkeypatch.setenv("LLM_MAGIC_LOG_PATH", str(tmp_path / "runs.db"))
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    notebook = run(path)
    log = runlog.RunLog(tmp_path / "runs.db")
    rows = log.query()
    log.close()
    ran = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith("%%llm_")]
    generating = ran[:-1]  # the last one is the --reuse replay: not a new run
    per_cell = [5 if "--over" in c.source else 1 for c in generating]
    assert len(rows) == sum(per_cell) == 10
    assert [r["cell_id"] for r in rows] == [
        c.id for c, n in zip(generating, per_cell, strict=True) for _ in range(n)
    ]
    assert [r["cell"] for r in rows] == [
        c.source for c, n in zip(generating, per_cell, strict=True) for _ in range(n)
    ]
    assert [r["kind"] for r in rows] == ["generate"] * 2 + ["chat"] * 2 + ["over"] * 5 + ["score"]
    digest = hashlib.sha256(Path(llm_magic.demo_model()).read_bytes()).hexdigest()
    assert {r["model_hash"] for r in rows} == {f"sha256:{digest}"}
    assert {r["engine"] for r in rows} == {"transformers"} and {r["alias"] for r in rows} == {
        "smol"
    }
    assert len({r["dtype"] for r in rows}) == 1 and rows[0]["dtype"] in ("bfloat16", "float32")
    assert [r["seed"] for r in rows[:2]] == [None, 42]
    assert {r["notebook"] for r in rows} == {str(path)}
    assert [r["turn"] for r in rows[2:4]] == [1, 2] and rows[3]["conversation"] == "smol"
    assert "Ada" in rows[3]["answer"]
    assert [r["item"] for r in rows[4:9]] == [0, 1, 2, 3, 4] and "Lima" in rows[6]["prompt"]
    scored = rows[9]["result"]
    assert scored["choices"] == ["Peru", "Spain", "Italy"] and rows[9]["answer"] == scored["best"]
    assert sum(scored["probabilities"].values()) == pytest.approx(1)
    replay = cell_text(ran[-1])
    assert f"↺ from the run log: run {rows[0]['id']}" in replay
    assert replay.split("\n── ")[0] == rows[0]["answer"].rstrip("\n")
    frame = cell_text(_cells_with(notebook, "llm_magic.log(")[0])
    assert "Write one line about the sea." in frame
    assert "run log: 10 runs" in cell_text(_cells_with(notebook, "--stats")[0])
