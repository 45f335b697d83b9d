"""The run log end to end on the tiny model, in a real InteractiveShell given cell ids as
Jupyter sends them: a row per generation, chat turn and --over item with its model and
cell, `%llm_log` and `llm_magic.log()`, `--reuse` (fast, said, never for unseeded
sampling), an interrupted --over resumed, the log turned off or unwritable. The real
SmolLM2 notebook and a server model are in tests/test_notebooks.py and test_server.py."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output

import llm_magic
from llm_magic import CONVERSATIONS, MODEL_CACHE, runlog


def cell(shell, source: str, cell_id: str | None = None):
    """Run a cell as Jupyter would (with its id); its result and what it printed."""
    with capture_output() as captured:
        result = shell.run_cell(source, store_history=True, cell_id=cell_id)
    assert result.success, (result.error_in_exec, captured.stdout, captured.stderr)
    return result.result, captured


@pytest.fixture
def tiny(shell, tiny_model_dir, run_log):
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --as tiny --quiet")
    yield MODEL_CACHE.find("tiny")
    CONVERSATIONS.clear()


def folder_hash(folder: Path) -> str:
    """The weights' name in the log: each file's name and sha256, in name order."""
    listing = "".join(
        f"{p.name}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".")
    )
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


GREEDY = "%%llm_generate --greedy --max-new-tokens 4 --no-stream"


def test_every_run_is_a_row_with_its_model_and_cell(shell, tiny, tiny_model_dir, run_log):
    generated, _ = cell(
        shell, "%%llm_generate --max-new-tokens 3 --seed 11 --no-stream\nHello there", "gen"
    )
    cell(shell, "%%llm_chat --greedy --max-new-tokens 3\nHi!", "chat-1")
    cell(shell, "%%llm_chat --greedy --max-new-tokens 3\nAnd again?", "chat-2")
    cell(shell, "names = ['Ada', 'Bob', 'Cy']", "names")
    cell(shell, "%%llm_generate --over names --greedy --max-new-tokens 2\nGreet {item}.", "over")
    cell(
        shell,
        "import llm_magic\nr = llm_magic.generate('Plain Python', greedy=True, max_new_tokens=2)",
        "py",
    )

    frame = llm_magic.log()
    assert list(frame["kind"]) == ["generate", "chat", "chat", "over", "over", "over", "generate"]
    assert list(frame["cell_id"]) == ["gen", "chat-1", "chat-2", "over", "over", "over", "py"]
    assert frame["execution_count"].is_monotonic_increasing
    assert set(frame["model_hash"]) == {folder_hash(tiny_model_dir)}
    assert set(frame["alias"]) == {"tiny"} and set(frame["engine"]) == {"transformers"}
    assert set(frame["dtype"]) == {tiny.info.dtype}
    assert list(frame["model"])[0] == str(tiny_model_dir)
    assert frame["seed"][0] == 11 and frame["seed"][1:].isna().all()  # greedy: no seed
    assert (
        frame["cell"][0] == "%%llm_generate --max-new-tokens 3 --seed 11 --no-stream\nHello there"
    )
    assert list(frame["prompt"][3:6]) == ["Greet Ada.", "Greet Bob.", "Greet Cy."]
    assert list(frame["item"][3:6]) == [0, 1, 2]
    assert list(frame["conversation"][1:3]) == ["tiny", "tiny"] and list(frame["turn"][1:3]) == [
        1,
        2,
    ]
    assert frame["answer"][0] == generated.text and generated.run_id == frame["id"][0]
    assert frame["settings"][0]["seed"] == 11 and frame["settings"][0]["max_new_tokens"] == 3
    assert frame["provenance"][0]["versions"]["llm_magic"] == llm_magic.__version__
    assert frame["result"][0]["token_ids"] == list(generated.token_ids)
    assert frame["rendered"][2].count("Hi!") == 1 and "And again?" in frame["rendered"][2]
    assert shell.user_ns["r"].run_id == frame["id"][6]


def test_reuse_answers_a_repeated_greedy_cell_from_the_log_and_says_so(shell, tiny, run_log):
    first, _ = cell(shell, f"{GREEDY}\nOnce upon a time", "story")
    # The fastest of three: the machine's other work must not decide the figure.
    took = []
    for _ in range(3):
        started = time.perf_counter()
        again, _ = cell(shell, f"{GREEDY} --reuse\nOnce upon a time", "story")
        took.append(time.perf_counter() - started)
        assert again.text == first.text and again.run_id == first.run_id
    assert min(took) < 0.05, f"--reuse took {[round(t * 1000, 1) for t in took]} ms"
    shown = again.plain()
    assert f"↺ from the run log: run {first.run_id}, generated " in shown
    assert again.replayed_from in shown and first.replayed_from is None
    assert len(run_log.query()) == 1  # a replay is not a new run
    # Set once for the notebook, the same.
    shell.run_line_magic("config", "LLMMagics.reuse = True")
    third, _ = cell(shell, f"{GREEDY}\nOnce upon a time", "story")
    assert third.run_id == first.run_id and third.replayed_from is not None
    # Anything that decides the text changes the request: generated anew.
    for changed in (
        f"{GREEDY}\nOnce upon a time.",
        "%%llm_generate --greedy --max-new-tokens 3 --no-stream\nOnce upon a time",
        f"{GREEDY} --stop x\nOnce upon a time",
        f"{GREEDY} --system 'Be brief.'\nOnce upon a time",
    ):
        result, _ = cell(shell, changed)
        assert result.replayed_from is None, changed
    assert len(run_log.query()) == 5


def test_reuse_never_replays_unseeded_sampling_but_replays_a_seed(shell, tiny, run_log):
    sampled = "%%llm_generate --max-new-tokens 4 --no-stream --reuse\nRoll the dice"
    one, _ = cell(shell, sampled)
    two, _ = cell(shell, sampled)
    assert one.replayed_from is None and two.replayed_from is None
    assert len(run_log.query()) == 2 and one.seed != two.seed
    # The seed a sampled run drew is logged: asking for it again is the same request.
    again, _ = cell(
        shell,
        f"%%llm_generate --max-new-tokens 4 --no-stream --reuse --seed {one.seed}\nRoll the dice",
    )
    assert again.replayed_from is not None and again.text == one.text
    assert again.run_id == one.run_id and len(run_log.query()) == 2
    other, _ = cell(
        shell,
        f"%%llm_generate --max-new-tokens 4 --no-stream --reuse --seed {one.seed + 1}\n"
        "Roll the dice",
    )
    assert other.replayed_from is None and len(run_log.query()) == 3


def test_a_sampled_run_logged_without_a_seed_is_never_replayed(tiny, run_log):
    """An engine that samples without saying which seed it drew logs the run with no seed;
    an unseeded request then has the same key as that row, and is generated anew all the
    same: only greedy or an explicit seed is replayed."""
    from dataclasses import replace

    from llm_magic import recorder, settings
    from llm_magic.engines.base import Rendered, Request

    sampled = settings.make(max_new_tokens=4)
    made = llm_magic.generate("Roll the dice", max_new_tokens=4)
    record = recorder.Recorder(tiny.engine, sampled, None, "generate")
    record.add(replace(made, seed=None))  # as an engine that draws no seed of its own logs it
    key = recorder.request_key(record.facts, sampled, None, made.rendered_prompt)
    assert key is not None and key in run_log.find_answers([key])
    asked = Rendered(
        Request(({"role": "user", "content": "Roll the dice"},)), made.rendered_prompt, 0
    )
    assert record.replayed([asked], None) == [None]


def test_a_replayed_request_is_a_different_model_s_own(shell, tiny, tiny_varied_dir, run_log):
    cell(shell, f"{GREEDY}\nSame words")
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --as other --quiet")
    other, _ = cell(shell, f"{GREEDY} --reuse -m other\nSame words")
    assert other.replayed_from is None
    mine, _ = cell(shell, f"{GREEDY} --reuse -m tiny\nSame words")
    assert mine.replayed_from is not None


def test_an_interrupted_over_resumes_with_reuse_generating_only_the_missing(shell, tiny, run_log):
    """Ctrl-C (a real SIGINT) after 2 of 5 batches; the same cell with --reuse answers the
    8 logged items from the log and generates the other 12."""
    items = [f"item number {i}" for i in range(20)]
    shell.user_ns["items"] = items

    def ctrl_c_after_two_batches(done: int, total: int) -> None:
        if done == 2:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as stopped:
        llm_magic.generate(
            "Repeat: {item}",
            over=items,
            namespace=shell.user_ns,
            greedy=True,
            max_new_tokens=2,
            batch_size=4,
            progress=ctrl_c_after_two_batches,
        )
    stopped_results = stopped.value.result  # one per item, those not run marked
    assert len(stopped_results) == 20 and stopped_results.stopped_after() == (8, 20)
    assert stopped_results.not_run == list(range(8, 20))
    assert len(run_log.query()) == 8  # what was not run is not logged
    resumed, _ = cell(
        shell,
        "%%llm_generate --over items --greedy --max-new-tokens 2 --batch-size 4 --reuse\n"
        "Repeat: {item}",
    )
    assert len(resumed) == 20
    assert [r.replayed_from is not None for r in resumed] == [True] * 8 + [False] * 12
    assert "8 from the run log (--reuse), not generated again" in resumed.summary()
    assert "20 results in 3 batches" in resumed.summary()  # 12 items, batches of 4
    rows = run_log.query()
    assert len(rows) == 20 and sorted(r["prompt"] for r in rows) == sorted(
        f"Repeat: {i}" for i in items
    )
    assert [r.text for r in resumed[:8]] == [r.text for r in stopped_results[:8]]


def test_the_log_card_and_its_flags(shell, tiny, tiny_varied_dir, run_log):
    cell(shell, f"{GREEDY}\nThe capital of France", "france")
    cell(shell, f"{GREEDY}\nThe capital of Peru", "peru")
    shell.run_line_magic("llm_load", f"{tiny_varied_dir} --as other --quiet")
    cell(shell, f"{GREEDY} -m other\nA word about zebras", "zebra")

    card, _ = cell(shell, "%llm_log")
    text = card.text()
    assert "run log: 3 runs" in text and str(run_log.path) in text
    assert "The capital of France" in text and "zebras" in text and "other" in text
    last, _ = cell(shell, "%llm_log --last 1")
    assert "the last 1 of 3 runs" in last.text() and "Peru" not in last.text()
    by_model, _ = cell(shell, "%llm_log --model other")
    assert "zebras" in by_model.text() and "France" not in by_model.text()
    found, _ = cell(shell, "%llm_log --search capital peru")
    assert "Peru" in found.text() and "France" not in found.text()
    assert "3 runs" in cell(shell, "%llm_log --since today")[0].text()
    assert "no runs match" in cell(shell, "%llm_log --since 2099-01-01")[0].text()
    history, _ = cell(shell, "%llm_log --cell per")  # a cell id by its start
    assert "Peru" in history.text() and "France" not in history.text()
    (peru,) = run_log.query(search="peru")
    whole, _ = cell(shell, f"%llm_log --show {peru['id']}")
    assert f"run {peru['id']}" in whole.text() and "── cell\n%%llm_generate" in whole.text()
    assert "weights" in whole.text() and '"max_new_tokens": 4' in whole.text()
    stats, _ = cell(shell, "%llm_log --stats")
    assert "run log: 3 runs" in stats.text() and "full-text (SQLite FTS5)" in stats.text()
    _, printed = cell(shell, f"%llm_log --forget {peru['id']}")
    assert "forgot 1 run" in printed.stdout and len(run_log.query()) == 2
    with capture_output():
        refused = shell.run_cell("%llm_log --forget --all")
    assert not refused.success and "add --yes" in str(refused.error_in_exec)
    cell(shell, "%llm_log --forget --all --yes")
    assert run_log.query() == []


def test_the_html_card_escapes_model_and_user_text(shell, tiny, run_log):
    cell(shell, f"{GREEDY} --no-fill\n<script>alert(1)</script>")
    card, _ = cell(shell, "%llm_log")
    assert "<script>" not in card.html() and "&lt;script&gt;" in card.html()
    whole, _ = cell(shell, "%llm_log --show 1")
    assert "<script>" not in whole.html()


def test_the_log_turned_off_or_moved(shell, tiny, run_log, tmp_path, monkeypatch):
    shell.run_line_magic("config", "LLMMagics.log = False")
    cell(shell, f"{GREEDY}\nnot logged")
    assert run_log.query() == []
    shell.run_line_magic("config", "LLMMagics.log = True")
    shell.run_line_magic("config", f"LLMMagics.log_path = '{tmp_path / 'moved.db'}'")
    cell(shell, f"{GREEDY}\nlogged elsewhere")
    assert run_log.query() == []
    assert [r["prompt"] for r in runlog.store().query()] == ["logged elsewhere"]
    assert runlog.store().path == tmp_path / "moved.db"
    monkeypatch.setenv("LLM_MAGIC_LOG", "0")
    runlog.reset_config()
    llm_magic.generate("the environment says no", greedy=True, max_new_tokens=2)
    assert len(runlog.store(tmp_path / "moved.db").query()) == 1


def test_an_unwritable_log_is_said_once_and_generation_goes_on(shell, tiny, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    shell.run_line_magic("config", f"LLMMagics.log_path = '{blocker / 'runs.db'}'")
    first, printed = cell(shell, f"{GREEDY}\nstill generates")
    second, printed_again = cell(shell, f"{GREEDY}\nand again")
    assert first.text and second.text and first.run_id is None
    assert printed.stderr.count("cannot write the run log") == 1
    assert "cannot write" not in printed_again.stderr


def test_an_interrupted_generation_is_logged_and_never_replayed(shell, tiny, run_log):
    chunks = []

    def ctrl_c_after_two_chunks(text: str) -> None:
        chunks.append(text)
        if len(chunks) == 2:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as stopped:
        llm_magic.generate(
            "Tell me more", greedy=True, max_new_tokens=50, stream=ctrl_c_after_two_chunks
        )
    (logged,) = run_log.query()
    assert logged["stop_reason"] == "interrupted" and logged["answer"] == stopped.value.result.text
    again = llm_magic.generate("Tell me more", greedy=True, max_new_tokens=50, reuse=True)
    assert again.replayed_from is None and again.stop_reason != "interrupted"


def test_llama_cpp_runs_are_logged_with_the_file_hash(smollm2_gguf, run_log):
    pytest.importorskip("llama_cpp")
    llm_magic.load(smollm2_gguf, engine="llama.cpp", alias="smolcpp", quiet=True)
    first = llm_magic.generate("What is the capital of France?", greedy=True, max_new_tokens=4)
    (row,) = run_log.query()
    digest = hashlib.sha256(Path(smollm2_gguf).read_bytes()).hexdigest()
    assert row["model_hash"] == f"sha256:{digest}" and row["engine"] == "llama.cpp"
    assert row["dtype"] == "Q4_1" and row["quantization"].startswith("Q4_1")
    assert "<|im_start|>" in row["rendered"] and row["answer"] == first.text
    again = llm_magic.generate(
        "What is the capital of France?", greedy=True, max_new_tokens=4, reuse=True
    )
    assert again.replayed_from is not None and again.text == first.text


_CRASHING_OVER = textwrap.dedent(
    """
    import sys, time
    import llm_magic
    folder, items = sys.argv[1], [f"item number {i}" for i in range(40)]
    llm_magic.load(folder, alias="tiny", quiet=True)

    def slowly(done, total):  # a long run: it is killed part-way
        print(done, flush=True)
        time.sleep(0.3)

    llm_magic.generate(
        "Repeat: {item}", over=items, namespace={}, greedy=True, max_new_tokens=2,
        batch_size=2, progress=slowly,
    )
    print("finished", flush=True)
    """
)


def _rows_written(path: Path) -> int:
    """The rows another process has written so far (0 before it made the file's tables)."""
    if not path.exists():
        return 0
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:  # the file made, its schema not yet committed
        return 0
    finally:
        db.close()


def test_a_crashed_over_resumes_with_reuse(tiny_model_dir, run_log):
    """A kernel killed (SIGKILL) part-way through an --over of 40: what it finished up to
    a second before is in the log, and the same run with --reuse generates the rest."""
    crashing = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_OVER, str(tiny_model_dir)],
        env={**os.environ, "LLM_MAGIC_LOG_PATH": str(run_log.path)},
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and crashing.poll() is None:
        if _rows_written(run_log.path):
            break
        time.sleep(0.2)
    crashing.kill()
    out, _ = crashing.communicate(timeout=60)
    assert "finished" not in out and crashing.returncode == -signal.SIGKILL
    logged = len(run_log.query())
    assert 0 < logged < 40
    llm_magic.load(str(tiny_model_dir), alias="tiny", quiet=True)
    resumed = llm_magic.generate(
        "Repeat: {item}",
        over=[f"item number {i}" for i in range(40)],
        namespace={},
        greedy=True,
        max_new_tokens=2,
        batch_size=2,
        reuse=True,
    )
    assert sum(r.replayed_from is not None for r in resumed) == logged
    assert len(run_log.query()) == 40
