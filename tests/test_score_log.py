"""Scores in the run log, on the tiny model in a real InteractiveShell given cell ids as
Jupyter sends them: a row per scored text, question and --over item (kind 'score') with
its model, cell and figures; an --over written in one transaction; Ctrl-C keeps the items
scored in the log; nothing written while logging is off; `%llm_log --kind score`."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output

import llm_magic
from llm_magic import MODEL_CACHE, runlog
from llm_magic.logprobs import TokenLogprob
from llm_magic.scores import ChoiceScores, ScoreResult


def cell(shell, source: str, cell_id: str | None = None):
    """Run a cell as Jupyter would (with its id); its result and what it printed."""
    with capture_output() as captured:
        result = shell.run_cell(source, store_history=True, cell_id=cell_id)
    assert result.success, (result.error_in_exec, captured.stdout, captured.stderr)
    return result.result, captured


def folder_hash(folder: Path) -> str:
    """The weights' name in the log: each file's name and sha256, in name order."""
    listing = "".join(
        f"{p.name}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".")
    )
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


@pytest.fixture
def tiny(shell, tiny_model_dir, run_log):
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --as tiny --quiet")
    return MODEL_CACHE.find("tiny")


PERPLEXITY = "%%llm_score -m tiny --context 'Once upon'\n a time there was"
QUESTION = "%%llm_score -m tiny --choices Paris Rome Oslo --answer Rome\nThe capital of Italy is"


def test_score_cells_are_rows_with_their_model_cell_and_figures(
    shell, tiny, tiny_model_dir, run_log
):
    scored, _ = cell(shell, PERPLEXITY, "ppl")
    question, _ = cell(shell, QUESTION, "quiz")
    cell(shell, "texts = ['red fox', 'blue sky', 'green tea']", "texts")
    over, _ = cell(shell, "%%llm_score -m tiny --over texts\nA {item}", "over")
    cell(shell, "import llm_magic\nr = llm_magic.score('Plain Python', model='tiny')", "py")
    assert isinstance(scored, ScoreResult) and isinstance(question, ChoiceScores)

    frame = llm_magic.log(kind="score")
    assert list(frame["kind"]) == ["score"] * 6
    assert list(frame["cell_id"]) == ["ppl", "quiz", "over", "over", "over", "py"]
    assert frame["cell"][0] == PERPLEXITY and frame["cell"][1] == QUESTION
    assert set(frame["model_hash"]) == {folder_hash(tiny_model_dir)}
    assert set(frame["alias"]) == {"tiny"} and set(frame["engine"]) == {"transformers"}
    assert set(frame["dtype"]) == {tiny.info.dtype} and set(frame["model"]) == {tiny.info.name}
    assert frame["request_key"].isna().all()  # never replayed, never a generation's answer
    assert frame["provenance"][0]["versions"]["llm_magic"] == llm_magic.__version__
    assert frame["settings"][0]["logprobs"] == 5

    # A text after its context: the text, what the model read, and the figures.
    assert frame["prompt"][0] == " a time there was" and frame["answer"].isna()[0]
    assert frame["rendered"][0] == scored.context_shown + " a time there was"
    assert frame["prompt_tokens"][0] == scored.context_tokens
    figures = frame["result"][0]
    assert figures["context"] == "Once upon" and figures["token_count"] == scored.token_count
    assert figures["logprob"] == scored.logprob and figures["perplexity"] == scored.perplexity
    assert tuple(TokenLogprob.from_json(t) for t in figures["tokens"]) == scored.tokens

    # A question: its choices, their probabilities, the likeliest, acc and acc_norm.
    assert frame["prompt"][1] == "The capital of Italy is"
    assert frame["answer"][1] == question.best
    asked = frame["result"][1]
    assert asked["choices"] == ["Paris", "Rome", "Oslo"] and asked["answer_text"] == "Rome"
    assert asked["probabilities"] == question.probabilities
    assert asked["logprobs"] == question.logprobs and asked["best_norm"] == question.best_norm
    assert asked["acc"] == question.acc and asked["acc_norm"] == question.acc_norm
    assert [s["logprob"] for s in asked["scores"]] == [s.logprob for s in question.scores]

    # --over: a row per item with its index (written as each finishes: the engine scores
    # the longest first); one call, not an --over: no index.
    items = frame[2:5].sort_values("item")
    assert list(items["prompt"]) == ["A red fox", "A blue sky", "A green tea"]
    assert list(items["item"]) == [0, 1, 2] and frame["item"][[0, 1, 5]].isna().all()
    assert [f["logprob"] for f in items["result"]] == [r.logprob for r in over]
    assert frame["result"][5]["logprob"] == shell.user_ns["r"].logprob


def test_log_card_lists_scores_by_kind(shell, tiny, run_log):
    cell(shell, "%%llm_generate --greedy --max-new-tokens 2 --no-stream\nA story about", "gen")
    scored, _ = cell(shell, PERPLEXITY, "ppl")
    question, _ = cell(shell, QUESTION, "quiz")

    card, _ = cell(shell, "%llm_log --kind score")
    text = card.text()
    assert "run log: 2 runs (kind score)" in text and "A story about" not in text
    assert f"logprob {scored.logprob:.3f} · perplexity {scored.perplexity:.3f}" in text
    assert "The capital of Italy is" in text and question.best in text
    assert "3 runs" in cell(shell, "%llm_log")[0].text()
    with capture_output():
        refused = shell.run_cell("%llm_log --forget --kind score --all --yes")
    assert not refused.success and "no --kind" in str(refused.error_in_exec)
    assert len(run_log.query()) == 3


def test_an_over_is_written_in_few_transactions(tiny, run_log):
    """Not one per item: a log not written yet takes its first row at once, the rest
    wait for the end (no second goes by with flush_every this long)."""
    run_log.flush_every = 3600.0
    before = run_log.writes
    llm_magic.score("{item}", over=[f"text number {i}" for i in range(12)], batch_size=1)
    assert len(run_log.query(kind="score")) == 12
    assert run_log.writes - before <= 2


def _rows_on_disk(path: Path) -> int:
    """The rows in the file, read by a connection of its own (not the log's, which would
    write what it holds back first)."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM runs").fetchone()[0]
    finally:
        db.close()


def test_ctrl_c_keeps_the_items_scored_in_the_log(tiny, run_log):
    texts = [f"The quick brown fox {i} " * 10 for i in range(8)]
    run_log.flush_every = 3600.0  # held back until the run ends: Ctrl-C must write them

    def ctrl_c_at_the_fifth_step(done: int, total: int) -> None:
        if done == 5:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as stopped:
        llm_magic.score("{item}", over=texts, batch_size=1, progress=ctrl_c_at_the_fifth_step)
    partial = stopped.value.result
    assert 2 <= len(partial) < len(texts) and partial.interrupted
    assert _rows_on_disk(run_log.path) == len(partial)
    rows = sorted(run_log.query(kind="score"), key=lambda r: r["item"])
    assert [r["item"] for r in rows] == partial.indices
    assert [r["result"]["logprob"] for r in rows] == [r.logprob for r in partial]


def test_logging_off_writes_no_score(shell, tiny, run_log, monkeypatch):
    shell.run_line_magic("config", "LLMMagics.log = False")
    cell(shell, PERPLEXITY)
    cell(shell, QUESTION)
    cell(shell, "texts = ['one', 'two']")
    cell(shell, "%%llm_score -m tiny --over texts\n{item}")
    assert run_log.query() == []
    shell.run_line_magic("config", "LLMMagics.log = True")
    monkeypatch.setenv("LLM_MAGIC_LOG", "0")
    monkeypatch.setenv("LLM_MAGIC_LOG_PATH", str(run_log.path))
    runlog.reset_config()
    llm_magic.score("the environment says no", model="tiny")
    llm_magic.score("{item}", over=["a", "b"], model="tiny")
    assert run_log.query() == []
