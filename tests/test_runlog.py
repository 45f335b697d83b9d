"""The run log's store (llm_magic/runlog.py) on real SQLite files: the schema and its
migration from an older version, full-text search and its fallback, several processes
writing at once, a process killed mid-write, a damaged file, an unwritable location,
forgetting for good, and keys never written. No model needed: rows are written as the
recorder writes them."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llm_magic import runlog


def row(**values) -> dict:
    base = {
        "time": runlog.now(),
        "kind": "generate",
        "model": "org/model",
        "engine": "transformers",
        "dtype": "float32",
        "prompt": "What is the capital of France?",
        "answer": "The capital of France is Paris.",
        "settings": {"greedy": True, "max_new_tokens": 8},
        "provenance": {"versions": {"python": "3"}},
        "result": {"token_ids": (1, 2, 3)},
    }
    return base | values


@pytest.fixture
def log(tmp_path) -> runlog.RunLog:
    store = runlog.RunLog(tmp_path / "runs.db")
    yield store
    store.close()


def test_a_new_file_has_the_schema_in_wal_mode(log):
    log.add(row())
    db = sqlite3.connect(log.path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == runlog.SCHEMA_VERSION == 2
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "file_hashes", "runs_fts", "runs_fts_state"} <= tables
    columns = [r[1] for r in db.execute("PRAGMA table_info(runs)")]
    assert columns == ["id", *runlog.COLUMNS]
    (stored,) = db.execute("SELECT settings, result, greedy FROM runs").fetchall()
    assert stored[0] == '{"greedy":true,"max_new_tokens":8}' and '"token_ids":[1,2,3]' in stored[1]


def test_an_older_file_is_migrated_keeping_its_runs(tmp_path):
    """A file at version 1 (no full-text index) opened by this version: migrated to 2,
    its rows kept and found by a full-text search."""
    path = tmp_path / "runs.db"
    old = sqlite3.connect(path, isolation_level=None)
    runlog.MIGRATIONS[0](old)
    old.execute("PRAGMA user_version = 1")
    old.execute(
        "INSERT INTO runs (time, kind, model, prompt, answer) VALUES (?, ?, ?, ?, ?)",
        (runlog.now(), "generate", "old/model", "Name a colour", "Vermilion, a warm red."),
    )
    old.close()
    log = runlog.RunLog(path)
    try:
        found = log.query(search="vermilion")
        assert [r["model"] for r in found] == ["old/model"]
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2
        log.add(row(answer="A newer answer about vermilion"))
        assert [r["id"] for r in log.query(search="vermilion")] == [1, 2]
    finally:
        log.close()


def test_a_file_from_a_newer_version_is_read_not_written(tmp_path, capfd):
    path = tmp_path / "runs.db"
    log = runlog.RunLog(path)
    log.add(row())
    log.close()
    sqlite3.connect(path).execute("PRAGMA user_version = 99").connection.commit()
    newer = runlog.RunLog(path)
    try:
        newer.add(row(answer="not written"))
        assert [r["answer"] for r in newer.query()] == ["The capital of France is Paris."]
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and "written by a newer llm_magic (schema 99" in err
    finally:
        newer.close()


def test_search_is_full_text_and_reads_words_not_syntax(log):
    log.add(row(prompt="Translate: 'good-bye' (French)", answer="Au revoir."))
    log.add(row(prompt="The capital of Italy?", answer="Rome."))
    assert [r["answer"] for r in log.query(search="good-bye")] == ["Au revoir."]
    assert [r["answer"] for r in log.query(search="CAPITAL italy")] == ["Rome."]
    assert log.query(search='"unbalanced') == []
    assert runlog.fts_query('say "hi" now') == '"say" """hi""" "now"'


def test_without_fts5_search_falls_back_to_text_and_the_index_comes_later(tmp_path, monkeypatch):
    """A Python whose SQLite lacks FTS5 (not this machine's: simulated) still searches,
    as plain text; a Python with FTS5 opening the same file later adds the index."""
    monkeypatch.setattr(runlog, "fts5_available", lambda: False)
    path = tmp_path / "runs.db"
    log = runlog.RunLog(path)
    log.add(row(answer="Ottawa is the capital of Canada."))
    assert not log.fts and [r["id"] for r in log.query(search="ottawa")] == [1]
    log.close()
    monkeypatch.undo()
    again = runlog.RunLog(path)
    try:
        assert [r["id"] for r in again.query(search="ottawa")] == [1] and again.fts
    finally:
        again.close()


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from llm_magic import runlog
    path, start, count, size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    log = runlog.store(path)
    while not start.exists():
        time.sleep(0.005)
    for i in range(count):
        log.add(
            {"time": runlog.now(), "kind": "generate", "prompt": f"p{i}", "answer": "x" * size},
            on_id=lambda row_id: print(row_id, flush=True),
        )
    """
)


def _writer(path: Path, start: Path, count: int, size: int = 10) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(start), str(count), str(size)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_two_processes_writing_at_once_lose_no_row(tmp_path):
    path, start = tmp_path / "runs.db", tmp_path / "go"
    runlog.RunLog(path).close()  # made and migrated first: both writers find it ready
    writers = [_writer(path, start, 200), _writer(path, start, 200)]
    time.sleep(1.0)  # both imported and waiting
    start.touch()
    outputs = [w.communicate(timeout=120)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0]
    ids = [int(x) for out in outputs for x in out.split()]
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 400 == len(set(ids))
    # The writes interleaved: neither process wrote all its rows before the other began.
    first, second = (sorted(int(x) for x in out.split()) for out in outputs)
    assert first[0] < second[-1] and second[0] < first[-1]


def test_rows_kept_out_by_another_writer_wait_and_are_written_next_time(log):
    log.add(row(answer="first"))
    other = sqlite3.connect(log.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another kernel holds the write lock
    ids: list[int] = []
    started = time.monotonic()
    log.add(row(answer="second"), on_id=ids.append)
    # The run did not wait long for the lock, and its row was neither written nor lost.
    assert time.monotonic() - started < 5 and ids == [] and log.unavailable is None
    other.execute("ROLLBACK")
    other.close()
    log.add(row(answer="third"), on_id=ids.append)
    assert len(ids) == 2
    assert [r["answer"] for r in log.query(last=3)] == ["first", "second", "third"]


def test_a_process_killed_mid_write_leaves_a_consistent_file(tmp_path):
    path, start = tmp_path / "runs.db", tmp_path / "go"
    start.touch()
    writer = _writer(path, start, 10_000, size=200_000)  # big rows: it is mostly writing
    written = []
    assert writer.stdout is not None
    while len(written) < 30:
        line = writer.stdout.readline()
        assert line, "the writer stopped before being killed"
        written.append(int(line))
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {r[0] for r in db.execute("SELECT id FROM runs")}
    assert set(written) <= stored  # every run said to be written is there
    log = runlog.RunLog(path)
    try:
        log.add(row(answer="after the crash"))
        assert log.query(last=1)[0]["answer"] == "after the crash"
    finally:
        log.close()


def test_a_damaged_file_is_moved_aside_and_logging_goes_on(tmp_path, capfd):
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is not a database, it was overwritten by something else" * 100)
    log = runlog.RunLog(path)
    try:
        log.add(row(answer="into a new log"))
        assert [r["answer"] for r in log.query()] == ["into a new log"]
    finally:
        log.close()
    (aside,) = tmp_path.glob("runs.db.damaged-*")
    assert aside.read_bytes().startswith(b"this is not a database")
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"moved aside to {aside.name}" in err


def test_a_file_damaged_inside_is_moved_aside_too(tmp_path, capfd):
    """A log whose header is intact but whose pages were overwritten: found when used,
    moved aside, and the row written into a new file."""
    path = tmp_path / "runs.db"
    log = runlog.RunLog(path)
    for i in range(200):
        log.add(row(prompt=f"question {i}", answer="an answer " * 50))
    log.close()
    data = bytearray(path.read_bytes())
    data[4096:] = os.urandom(len(data) - 4096)  # every page after the first
    path.write_bytes(bytes(data))
    damaged = runlog.RunLog(path)
    try:
        damaged.add(row(answer="kept"))
        assert [r["answer"] for r in damaged.query()] == ["kept"]
    finally:
        damaged.close()
    assert len(list(tmp_path.glob("runs.db.damaged-*"))) == 1
    assert "moved aside" in capfd.readouterr().err


def test_an_unwritable_location_is_said_once_and_nothing_raises(tmp_path, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the log's folder would be")
    log = runlog.RunLog(blocker / "runs.db")
    log.add(row())
    log.add(row())
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "cannot write the run log at" in err
    assert "generation goes on without it" in err


def test_forgotten_runs_leave_no_text_in_the_file(log):
    """The deleted text is gone from the file's bytes (its page overwritten, the search
    index merged without it, the WAL emptied), the runs beside it kept."""
    for i in range(10):
        log.add(row(prompt=f"public question {i}", answer="a public answer"))
    log.add(row(prompt="my private question about zanzibar", answer="a private answer"))
    for i in range(10, 20):
        log.add(row(prompt=f"public question {i}", answer="a public answer"))
    assert len(log.query(search="zanzibar")) == 1  # the search index holds the words too
    assert log.forget(search="zanzibar") == 1
    assert len(log.query()) == 20 and len(log.query(search="public")) == 20
    on_disk = b"".join(
        p.read_bytes() for p in log.path.parent.iterdir() if p.name.startswith("runs.db")
    )
    assert b"zanzibar" not in on_disk and b"private" not in on_disk
    assert b"a public answer" in on_disk
    log.forget(ids=[21])
    log.add(row())
    assert log.query(last=1)[0]["id"] == 22  # ids are never reused, even the last one


def test_forget_needs_something_named(log):
    log.add(row())
    with pytest.raises(runlog.LLMError, match="forget which runs"):
        log.forget()
    assert log.forget(everything=True) == 1 and log.query() == []


def test_keys_in_the_environment_are_never_written(log, monkeypatch):
    key = "sk-test-1234567890abcdefghij"
    monkeypatch.setenv("SOME_SERVICE_API_KEY", key)
    monkeypatch.setenv("MY_VARIABLE", "hf_also-a-secret-value")  # named by a server model
    log.add(
        row(prompt=f"my key is {key}", answer="hf_also-a-secret-value", result={"echo": key}),
        secrets=runlog.secrets_in_environment(("MY_VARIABLE",)),
    )
    (stored,) = log.query()
    assert stored["prompt"] == "my key is [redacted]" and stored["answer"] == "[redacted]"
    assert stored["result"] == {"echo": "[redacted]"}
    assert key.encode() not in log.path.read_bytes() + Path(f"{log.path}-wal").read_bytes()


def test_since_reads_dates_spans_and_words():
    from datetime import datetime, timezone

    now = datetime(2025, 6, 10, 12, 0, tzinfo=timezone.utc)
    assert runlog.since("2h", now) == "2025-06-10 10:00:00.000000"
    assert runlog.since("3d", now) == "2025-06-07 12:00:00.000000"
    assert runlog.since("2025-06-01T00:00+00:00") == "2025-06-01 00:00:00.000000"
    assert runlog.since("today", now) < runlog.since("1m", now)
    with pytest.raises(runlog.LLMError, match="--since soon: not a date or a span"):
        runlog.since("soon")


def test_the_default_file_is_in_the_cache_folder_and_the_tests_use_their_own(monkeypatch, tmp_path):
    home_cache = Path("~/.cache/llm_magic").expanduser()
    assert not runlog.log_path().is_relative_to(home_cache)
    assert "llm_magic_tests_" in str(runlog.log_path())  # conftest's temporary folder
    monkeypatch.delenv("LLM_MAGIC_LOG_PATH")
    monkeypatch.setenv("LLM_MAGIC_CACHE", str(tmp_path))
    assert runlog.log_path() == tmp_path / "runs.db"
    monkeypatch.setenv("LLM_MAGIC_LOG", "0")
    assert runlog.store() is None and not runlog.enabled()
    runlog.configure(enabled=True, path=str(tmp_path / "other.db"))
    try:
        assert runlog.store().path == tmp_path / "other.db"
    finally:
        runlog.close_all()
        runlog.reset_config()


def test_a_model_file_is_hashed_once_per_version(tmp_path, log):
    import hashlib

    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights" * 1000)
    want = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    assert runlog.model_hash(model, log) == want
    runlog._HASHES.clear()  # a new process: the log remembers it
    assert log.cached_hash(str(model), model.stat().st_size, model.stat().st_mtime_ns)
    model.write_bytes(b"other weights")  # a new version: hashed again
    assert runlog.model_hash(model, log) == "sha256:" + hashlib.sha256(b"other weights").hexdigest()
