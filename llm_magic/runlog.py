"""The run log: every generation, chat turn, `--over` item and score, appended to a SQLite
database with what produced it, so that an answer can be traced (which weights, engine,
dtype, settings, seed, cell) and an identical deterministic request answered again from it.

The file is `$LLM_MAGIC_CACHE/runs.db` unless `LLM_MAGIC_LOG_PATH` or `configure(path=...)`
(`%config LLMMagics.log_path`) says otherwise; `LLM_MAGIC_LOG=0` or `configure(enabled=False)`
(`%config LLMMagics.log = False`) turns it off. The schema (`SCHEMA`, below) is plain SQL:
`sqlite3 runs.db 'select time, model, answer from runs'` or Datasette read it as it is.

One table, `runs`, one row per run: the columns a question is asked of (time, model,
model_hash, engine, dtype, quantization, seed, cell id...), then three JSON columns for the
rest (`settings`, `provenance`, `result`): a new setting, a new kind of run or a new field
of a result is recorded there without changing the schema. Cell text, prompt and answer are
full-text indexed (SQLite's FTS5) where this Python's SQLite has it.

Nothing lost, nothing blocking: write-ahead logging (readers never wait for a writer, a
process killed mid-write leaves the last committed state), `BEGIN IMMEDIATE` with a short
busy timeout (rows that could not be written yet wait in memory for the next write or the
end of the process), a damaged file moved aside and a new one started, and a location that
cannot be written said once while generation goes on. This module knows only rows of plain
values; `recorder.py` makes them from runs."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .errors import LLMError
from .paths import cache_root

# The version this code writes; a file at an older one is migrated when opened.
SCHEMA_VERSION = 2

# The columns of `runs` a row dict may set, in insert order ("id" is assigned).
COLUMNS: tuple[str, ...] = (
    "time",
    "kind",
    "model",
    "alias",
    "model_hash",
    "engine",
    "dtype",
    "quantization",
    "device",
    "server",
    "seed",
    "greedy",
    "request_key",
    "cell",
    "prompt",
    "rendered",
    "answer",
    "stop_reason",
    "error",
    "prompt_tokens",
    "new_tokens",
    "seconds",
    "notebook",
    "cell_id",
    "execution_count",
    "conversation",
    "turn",
    "item",
    "settings",
    "provenance",
    "result",
)
JSON_COLUMNS = ("settings", "provenance", "result")

# Version 1: the runs and the file-hash cache.
_V1 = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a forgotten run's id stays gone
    time TEXT NOT NULL,          -- when the run ended, UTC, 'YYYY-MM-DD HH:MM:SS.ffffff'
    kind TEXT NOT NULL,          -- generate, chat, over, score
    model TEXT,                  -- MODEL as it was named: a Hub id, a path, a served id
    alias TEXT,                  -- the --as name it was used by, if any
    model_hash TEXT,             -- the Hub commit, or sha256:... of the .gguf / the folder's files
    engine TEXT,                 -- transformers, llama.cpp, server
    dtype TEXT,
    quantization TEXT,
    device TEXT,
    server TEXT,                 -- a served model's URL, without credentials
    seed INTEGER,                -- the seed used (NULL: greedy decoding, no random choice)
    greedy INTEGER,
    request_key TEXT,            -- sha256 of all that decides a deterministic answer (--reuse)
    cell TEXT,                   -- the notebook cell's text
    prompt TEXT,                 -- the prompt after {name} filling (an --over item's own)
    rendered TEXT,               -- what the model read: the chat template applied, or the messages
    answer TEXT,
    stop_reason TEXT,            -- eos, length, stop string, interrupted, error
    error TEXT,
    prompt_tokens INTEGER,
    new_tokens INTEGER,
    seconds REAL,
    notebook TEXT,               -- the notebook's path, where the kernel knows it
    cell_id TEXT,                -- Jupyter's cell id
    execution_count INTEGER,     -- the In[n] of the cell
    conversation TEXT,           -- %%llm_chat: the conversation and the turn (from 1)
    turn INTEGER,
    item INTEGER,                -- --over: the item's index
    settings TEXT,               -- JSON: the settings that decided the text
    provenance TEXT,             -- JSON: the model's facts, the engine's, library versions
    result TEXT                  -- JSON: the rest of the result (token ids, timings, notes, data)
);
CREATE INDEX runs_time ON runs(time);
CREATE INDEX runs_model ON runs(model);
CREATE INDEX runs_request ON runs(request_key);
CREATE INDEX runs_cell ON runs(cell_id);
CREATE TABLE file_hashes (       -- hashing a model file costs: once per version of the file
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
);
"""

# Version 2: full-text search over the cell, the prompt and the answer: an external-content
# FTS5 index (it stores no text of its own). Writing a run does not index it: an FTS5 insert
# costs a new index segment per transaction, several times the row itself, and a run must
# stay cheap to log. The index catches up in one transaction when a search runs
# (`indexed_upto` says how far it goes); deleting or changing a run indexed already
# takes it out of the index, by triggers, whoever deletes it (sqlite3, Datasette too).
_FTS = """
CREATE VIRTUAL TABLE runs_fts USING fts5(
    cell, prompt, answer, content='runs', content_rowid='id'
);
CREATE TABLE runs_fts_state (indexed_upto INTEGER NOT NULL);
INSERT INTO runs_fts_state VALUES (0);
CREATE TRIGGER runs_fts_delete AFTER DELETE ON runs
WHEN old.id <= (SELECT indexed_upto FROM runs_fts_state) BEGIN
    INSERT INTO runs_fts(runs_fts, rowid, cell, prompt, answer)
    VALUES ('delete', old.id, old.cell, old.prompt, old.answer);
END;
CREATE TRIGGER runs_fts_update AFTER UPDATE OF cell, prompt, answer ON runs
WHEN old.id <= (SELECT indexed_upto FROM runs_fts_state) BEGIN
    INSERT INTO runs_fts(runs_fts, rowid, cell, prompt, answer)
    VALUES ('delete', old.id, old.cell, old.prompt, old.answer);
    INSERT INTO runs_fts(rowid, cell, prompt, answer)
    VALUES (new.id, new.cell, new.prompt, new.answer);
END;
"""

# The index catching up with the runs written since the last search.
_FTS_CATCH_UP = """
INSERT INTO runs_fts(rowid, cell, prompt, answer)
SELECT id, cell, prompt, answer FROM runs
WHERE id > (SELECT indexed_upto FROM runs_fts_state) ORDER BY id;
UPDATE runs_fts_state SET indexed_upto = coalesce((SELECT max(id) FROM runs), 0);
"""


def fts5_available() -> bool:
    """Whether this Python's SQLite was built with FTS5 (most are; a few distributions' not)."""
    try:
        sqlite3.connect(":memory:").execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    except sqlite3.OperationalError:
        return False
    return True


def _migrate_2(db: sqlite3.Connection) -> None:
    if fts5_available():
        _execute_script(db, _FTS)
    # Without FTS5, --search falls back to LIKE; `_ensure_fts` adds the index once a
    # Python with FTS5 opens the file.


# MIGRATIONS[v] takes a file at version v to v + 1, inside one transaction.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    lambda db: _execute_script(db, _V1),
    _migrate_2,
)
assert len(MIGRATIONS) == SCHEMA_VERSION

SCHEMA = _V1 + _FTS  # what a new file holds, for the README and the curious


# --- where the log is, and whether it is on ------------------------------------------------

_OFF = {"0", "false", "off", "no"}


@dataclass
class Config:
    """What `%config LLMMagics.log` / `.log_path` set (None: the environment decides)."""

    enabled: bool | None = None
    path: str | None = None


CONFIG = Config()


def configure(*, enabled: bool | None = None, path: str | None = None) -> None:
    """Turn the log on or off, or point it at another file ('' or None: the default)."""
    if enabled is not None:
        CONFIG.enabled = enabled
    if path is not None:
        CONFIG.path = path or None


def reset_config() -> None:
    CONFIG.enabled, CONFIG.path = None, None


def enabled() -> bool:
    if CONFIG.enabled is not None:
        return CONFIG.enabled
    return os.environ.get("LLM_MAGIC_LOG", "1").strip().lower() not in _OFF


def default_path() -> Path:
    """$LLM_MAGIC_LOG_PATH, else runs.db in llm_magic's cache folder ($LLM_MAGIC_CACHE)."""
    env = os.environ.get("LLM_MAGIC_LOG_PATH")
    return Path(env).expanduser() if env else cache_root() / "runs.db"


def log_path() -> Path:
    return Path(CONFIG.path).expanduser() if CONFIG.path else default_path()


_STORES: dict[str, RunLog] = {}
_STORES_LOCK = threading.Lock()


def store(path: str | Path | None = None) -> RunLog | None:
    """The log at `path` (default: the configured one), or None when logging is off and
    no path was asked for. One per file per process, kept open."""
    if path is None:
        if not enabled():
            return None
        path = log_path()
    key = os.path.abspath(os.path.expanduser(str(path)))
    with _STORES_LOCK:
        found = _STORES.get(key)
        if found is None:
            found = _STORES[key] = RunLog(Path(key))
        return found


def close_all() -> None:
    """Write what waits and close every open log (the end of the process, unloading the
    extension)."""
    with _STORES_LOCK:
        stores = list(_STORES.values())
        _STORES.clear()
    for log in stores:
        log.close()


atexit.register(close_all)


# --- the cell running now (told by the extension), the notebook ------------------------------


@dataclass(frozen=True)
class Cell:
    """The notebook cell a run comes from."""

    id: str | None  # Jupyter's cell id (None in a terminal)
    execution_count: int | None  # its In[n]
    text: str
    notebook: str | None  # the notebook's path, where the kernel knows it


_CELL: Cell | None = None


@dataclass(frozen=True)
class Origin:
    """Where a run comes from beyond its cell, as the caller knows it."""

    kind: str | None = None  # generate, chat, over, score (None: what the call runs)
    alias: str | None = None  # the --as name(s) of the model
    conversation: str | None = None
    turn: int | None = None  # the turn's number in its conversation, from 1


def cell_started(cell: Cell | None) -> None:
    global _CELL
    _CELL = cell


def current_cell() -> Cell | None:
    return _CELL


def notebook_path(namespace: Mapping[str, Any]) -> str | None:
    """The notebook's path as the kernel knows it: VS Code sets `__vsc_ipynb_file__`;
    ipykernel sets `__session__` from JPY_SESSION_NAME, which Jupyter Server gives each
    kernel it starts for a notebook (its path). A plain kernel knows none."""
    for name in ("__vsc_ipynb_file__", "__session__"):
        value = namespace.get(name)
        if isinstance(value, str) and value:
            return value
    return os.environ.get("JPY_SESSION_NAME") or None


# --- JSON and secrets -------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data: tuples as lists, a class or object by its JSON Schema or
    its fields where it has them, anything else by its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    schema = getattr(value, "model_json_schema", None)  # a pydantic class
    if isinstance(value, type) and callable(schema):
        return {"json_schema": schema(), "class": value.__qualname__}
    dump = getattr(value, "model_dump", None)  # a pydantic object
    if callable(dump):
        return jsonable(dump())
    if hasattr(value, "__dataclass_fields__") and not isinstance(value, type):
        return {k: jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    to_list = getattr(value, "tolist", None)  # numpy and torch values
    if callable(to_list):
        return jsonable(to_list())
    return repr(value)


class Json(str):
    """Text that is JSON already: a JSON column given one is stored as it is (a value
    shared by many rows is serialized once)."""


def dumps(value: Any) -> str:
    """`value` as compact JSON (plain data goes straight through `json`: it is the cost of
    logging a run)."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=jsonable)
    except (TypeError, ValueError):  # keys json cannot write, or a cycle
        return json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":"))


_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def secrets_in_environment(extra_names: Iterable[str] = ()) -> tuple[str, ...]:
    """The values of the environment variables that hold keys and tokens (by their names,
    and the ones named in `extra_names`, a server model's --api-key-env): never written."""
    names = set(extra_names)
    values = {
        v
        for k, v in os.environ.items()
        if (k in names or _SECRET_NAME.search(k)) and v and len(v.strip()) >= 8
    }
    return tuple(sorted(values, key=len, reverse=True))


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    return text


# --- times --------------------------------------------------------------------------------


def now() -> str:
    """The current time as the log stores it (UTC, SQLite's own format: sorts as text)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def local_time(stored: str) -> datetime:
    """A stored time, in this machine's time zone."""
    when = datetime.strptime(stored, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
    return when.astimezone()


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hours?|d|days?|w|weeks?)$")


def since(text: str, now_: datetime | None = None) -> str:
    """'--since' as a stored time: a date or date and time (this machine's time zone:
    '2025-06-01', '2025-06-01 14:00'), a span back from now ('30m', '2h', '3d', '1w'),
    'today' or 'yesterday'."""
    text = text.strip().lower()
    local_now = (now_ or datetime.now(timezone.utc)).astimezone()
    if text in ("today", "yesterday"):
        start = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
        when = start - timedelta(days=1) if text == "yesterday" else start
    elif match := _RELATIVE.match(text):
        amount, unit = float(match.group(1)), match.group(2)[0]
        when = local_now - timedelta(
            seconds=amount * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
        )
    else:
        try:
            parsed = datetime.fromisoformat(text.replace("t", " "))
        except ValueError:
            raise LLMError(
                f"--since {text}: not a date or a span",
                "--since takes a date ('2025-06-01'), a date and time ('2025-06-01 14:00'), "
                "a span back from now ('30m', '2h', '3d', '1w'), today or yesterday",
                ["--since today", "--since 2h"],
            ) from None
        when = parsed if parsed.tzinfo else parsed.astimezone()
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


# --- the store -----------------------------------------------------------------------------


# SQLite's messages for its error codes (Python 3.10 gives the message only).
_MESSAGES = {
    "file is not a database": "SQLITE_NOTADB",
    "database disk image is malformed": "SQLITE_CORRUPT",
    "database is locked": "SQLITE_BUSY",
    "database table is locked": "SQLITE_LOCKED",
}


def _error_name(error: sqlite3.Error) -> str:
    name = getattr(error, "sqlite_errorname", None)
    if name:
        return name
    return next((code for text, code in _MESSAGES.items() if text in str(error)), "")


def _is_damage(error: sqlite3.Error) -> bool:
    return _error_name(error).startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def _is_busy(error: sqlite3.Error) -> bool:
    return _error_name(error).startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def _statements(script: str) -> list[str]:
    """A script's statements, one by one: `executescript` would commit the transaction a
    migration runs in (a trigger's body holds `;` too, hence complete_statement)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return [s for s in statements if s.strip(" ;\n")]


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    for statement in _statements(script):
        db.execute(statement)


def _say(message: str) -> None:
    """One line on stderr (a notebook shows it under the cell)."""
    print(f"⚠ llm_magic: {message}", file=sys.stderr, flush=True)


class LogUnavailable(Exception):
    """The log cannot be used now (said once); the caller goes on without it."""


class RunLog:
    """One log file, opened on first use and kept open; safe to use from several threads
    and, through SQLite's locking, from several processes at once."""

    # Seconds a write waits for another process's write before the rows wait in memory.
    busy_timeout = 0.25
    # Opening waits longer: it happens once per process, and a busy machine can hold another
    # process's first open or migration past the short timeout (then the log would be off).
    open_timeout = 10.0
    # --over rows are written at most this often (and at the end): few transactions.
    flush_every = 1.0

    def __init__(self, path: Path):
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._inode: int | None = None
        self._lock = threading.RLock()
        self._pending: list[tuple[list[Any], Callable[[int], None] | None]] = []
        self._last_write = 0.0
        self.unavailable: str | None = None  # why the log is off for this process, once said
        self.fts = False
        self.newer = False  # a file written by a newer llm_magic: read, never written
        self.writes = 0  # write transactions of runs made by this process

    # --- opening --------------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """The open connection (opening and migrating the file the first time); raises
        LogUnavailable when the log cannot be used."""
        with self._lock:
            if self.unavailable is not None:
                raise LogUnavailable(self.unavailable)
            if self._db is None:
                try:
                    self._db = self._open()
                except sqlite3.Error as e:
                    if _is_damage(e):
                        self._move_aside(e)
                        try:
                            self._db = self._open()
                        except sqlite3.Error as again:
                            self._give_up(again)
                    else:
                        self._give_up(e)
                except OSError as e:
                    self._give_up(e)
            assert self._db is not None
            return self._db

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.path, timeout=self.open_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # NOTADB shows here
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash of the process loses nothing
            db.execute("PRAGMA secure_delete=ON")  # forgotten runs leave no text behind
            if version > SCHEMA_VERSION:
                self.newer = True
                _say(
                    f"the run log {self.path} was written by a newer llm_magic (schema "
                    f"{version}, this one knows {SCHEMA_VERSION}): it is read, not written; "
                    "upgrade llm_magic, or %config LLMMagics.log_path = 'other.db'"
                )
            elif version < SCHEMA_VERSION:
                self._migrate(db, version)
            self.fts = self._ensure_fts(db)
            db.execute("SELECT count(*) FROM runs WHERE id = (SELECT max(id) FROM runs)")
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except BaseException:
            db.close()
            raise
        self._inode = _inode(self.path)
        return db

    def _migrate(self, db: sqlite3.Connection, version: int) -> None:
        """Bring the file up to SCHEMA_VERSION, one step at a time, each step in the same
        transaction as its version bump (another process opening it at once waits)."""
        with _write_transaction(db):
            version = db.execute("PRAGMA user_version").fetchone()[0]  # someone may have
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](db)
                db.execute(f"PRAGMA user_version = {step + 1}")

    def _ensure_fts(self, db: sqlite3.Connection) -> bool:
        """Whether the full-text index is there; it is added (and filled) when this SQLite
        has FTS5 and a Python without it made the file."""
        has = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs_fts'").fetchone()
        if has:
            return True
        if self.newer or not fts5_available():
            return False
        with _write_transaction(db):
            if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs_fts'").fetchone():
                _execute_script(db, _FTS)
        return True

    def _move_aside(self, error: sqlite3.Error) -> None:
        """A damaged file: renamed `runs.db.damaged-<time>` (its WAL with it), and said in
        one line; the caller starts a new one. Only the file this process opened: if
        another process has already replaced it, the new one is left alone."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._inode is not None and _inode(self.path) != self._inode:
            return
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                side = Path(str(self.path) + suffix)
                if side.exists():
                    os.replace(side, Path(str(aside) + suffix))
        except FileNotFoundError:
            pass
        self._inode = None
        _say(
            f"the run log was damaged ({error}): moved aside to {aside.name}; "
            f"a new log is started at {self.path}"
        )

    def _give_up(self, error: BaseException) -> None:
        self._drop_connection()
        self.unavailable = f"{type(error).__name__}: {error}"
        _say(
            f"cannot write the run log at {self.path} ({error}); generation goes on without "
            "it. %config LLMMagics.log_path = '...' picks another file, LLM_MAGIC_LOG=0 or "
            "%config LLMMagics.log = False turns it off"
        )
        raise LogUnavailable(self.unavailable) from None

    def close(self) -> None:
        with self._lock:
            self.flush(final=True)
            self._drop_connection()

    def _drop_connection(self) -> None:
        """Close the open connection, if any, ignoring a failure to close it: the file is
        being let go of either way."""
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    # --- using it, with damage handled -------------------------------------------------------

    def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """`work(connection)`; a damaged file is moved aside and `work` tried once on a new
        one. Raises LogUnavailable, or sqlite3.OperationalError when another process holds
        the write lock past the busy timeout."""
        with self._lock:
            db = self.connection()
            try:
                return work(db)
            except sqlite3.DatabaseError as e:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if not _is_damage(e):
                    raise
                self._move_aside(e)
                return work(self.connection())

    # --- writing --------------------------------------------------------------------------

    def add(
        self,
        row: Mapping[str, Any],
        on_id: Callable[[int], None] | None = None,
        at_once: bool = True,
        secrets: Sequence[str] | None = None,
    ) -> None:
        """Queue one row and write the queue now, or with `at_once=False` when
        `flush_every` seconds passed since the last write. The row is made into SQL values
        here (its JSON columns serialized), with every key or token replaced by
        '[redacted]': `secrets` (default: `secrets_in_environment()`). `on_id` is called
        with the row's id once it is written."""
        values = _values(row, secrets_in_environment() if secrets is None else secrets)
        with self._lock:
            self._pending.append((values, on_id))
            if at_once or time.monotonic() - self._last_write >= self.flush_every:
                self.flush()

    def flush(self, final: bool = False) -> bool:
        """Write the queued rows in one transaction; True when none is left waiting. Rows
        another process keeps out (its write lock held past the busy timeout) wait for the
        next call; at the end of the process they are waited for longer."""
        with self._lock:
            if not self._pending:
                return True
            try:
                self.connection()
            except LogUnavailable:
                self._pending.clear()
                return True
            if self.newer:
                self._pending.clear()
                return True
            rows = self._pending
            self._pending = []
            try:
                if final and self._db is not None:  # the end: worth waiting for
                    self._db.execute("PRAGMA busy_timeout = 5000")
                ids = self._run(lambda db: _insert(db, [r for r, _ in rows]))
            except LogUnavailable:
                return True
            except sqlite3.Error as e:
                if not _is_busy(e) or final:
                    if not _is_busy(e):
                        self._give_up_quietly(e)
                    return True
                self._pending = rows + self._pending  # another kernel is writing: later
                return False
            self._last_write = time.monotonic()
            self.writes += 1
            for (_, on_id), row_id in zip(rows, ids, strict=True):
                if on_id is not None:
                    on_id(row_id)
            return True

    def _give_up_quietly(self, error: sqlite3.Error) -> None:
        try:
            self._give_up(error)
        except LogUnavailable:
            pass

    # --- reading --------------------------------------------------------------------------

    def find_answer(self, request_key: str) -> dict[str, Any] | None:
        """The latest complete run (not interrupted, not failed) of this exact request."""
        self.flush()
        rows = self._select(
            "SELECT * FROM runs WHERE request_key = ? AND error IS NULL "
            "AND stop_reason NOT IN ('interrupted', 'error') ORDER BY id DESC LIMIT 1",
            (request_key,),
        )
        return rows[0] if rows else None

    def find_answers(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """request_key -> the latest complete run of it, for the keys that have one."""
        self.flush()
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite's limit on ? in one statement
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._select(
                f"SELECT * FROM runs WHERE request_key IN ({marks}) AND error IS NULL "
                "AND stop_reason NOT IN ('interrupted', 'error') ORDER BY id",
                tuple(chunk),
            ):
                found[row["request_key"]] = row  # ascending ids: the latest wins
        return found

    def query(
        self,
        *,
        last: int | None = None,
        model: str | None = None,
        search: str | None = None,
        since: str | None = None,
        cell_id: str | None = None,
        ids: Sequence[int] | None = None,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:
        """Runs, oldest first (the `last` N when given), filtered: `model` matches the model
        or its alias (a part of either), `search` the cell, prompt or answer (full-text
        where SQLite has FTS5, else a plain substring), `since` a stored time (see
        `since()`), `cell_id` a cell id or its start."""
        self.flush()
        where, args = self._where(model, search, since, cell_id, ids, kind)
        sql = f"SELECT * FROM runs{where} ORDER BY id DESC"
        if last is not None:
            sql += f" LIMIT {int(last)}"
        return list(reversed(self._select(sql, tuple(args))))

    def count(
        self,
        *,
        model: str | None = None,
        search: str | None = None,
        since: str | None = None,
        cell_id: str | None = None,
        kind: str | None = None,
    ) -> int:
        """How many runs `query` would give without `last`."""
        self.flush()
        where, args = self._where(model, search, since, cell_id, None, kind)
        return int(
            self._run(
                lambda db: db.execute(f"SELECT count(*) FROM runs{where}", args).fetchone()[0]
            )
        )

    def _where(self, model, search, since, cell_id, ids, kind) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if model:
            clauses.append("(model LIKE ? ESCAPE '\\' OR alias LIKE ? ESCAPE '\\')")
            args += [f"%{_like(model)}%"] * 2
        if search:
            if self._index_caught_up():
                clauses.append("id IN (SELECT rowid FROM runs_fts WHERE runs_fts MATCH ?)")
                args.append(fts_query(search))
            else:
                clauses.append(
                    "(cell LIKE ? ESCAPE '\\' OR prompt LIKE ? ESCAPE '\\' "
                    "OR answer LIKE ? ESCAPE '\\')"
                )
                args += [f"%{_like(search)}%"] * 3
        if since:
            clauses.append("time >= ?")
            args.append(since)
        if cell_id:
            clauses.append("cell_id LIKE ? ESCAPE '\\'")
            args.append(f"{_like(cell_id)}%")
        if ids is not None:
            clauses.append(f"id IN ({','.join(str(int(i)) for i in ids) or 'NULL'})")
        if kind:
            clauses.append("kind = ?")
            args.append(kind)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    def _index_caught_up(self) -> bool:
        """Whether the full-text index is there and now holds every run (see `_FTS`)."""
        self.connection()
        if not self.fts or self.newer:
            return False

        def work(db: sqlite3.Connection) -> None:
            with _write_transaction(db):
                _execute_script(db, _FTS_CATCH_UP)

        try:
            self._run(work)
        except (LogUnavailable, sqlite3.Error):
            return False  # another process is writing, or the file is read-only: LIKE
        return True

    def _select(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        def work(db: sqlite3.Connection) -> list[dict[str, Any]]:
            cursor = db.execute(sql, args)
            names = [d[0] for d in cursor.description]
            return [_decoded(dict(zip(names, values, strict=True))) for values in cursor]

        return self._run(work)

    def last_cell_id(self) -> str | None:
        """The cell id of the latest run that has one (this kernel's or another's)."""
        rows = self._select(
            "SELECT cell_id FROM runs WHERE cell_id IS NOT NULL ORDER BY id DESC LIMIT 1"
        )
        return rows[0]["cell_id"] if rows else None

    def stats(self) -> dict[str, Any]:
        """How many runs, from when to when, by model and kind, and the bytes on disk."""
        self.flush()

        def work(db: sqlite3.Connection) -> dict[str, Any]:
            count, first, last = db.execute(
                "SELECT count(*), min(time), max(time) FROM runs"
            ).fetchone()
            models = db.execute(
                "SELECT coalesce(alias, model), count(*) FROM runs GROUP BY 1 ORDER BY 2 DESC"
            ).fetchall()
            kinds = db.execute(
                "SELECT kind, count(*) FROM runs GROUP BY 1 ORDER BY 2 DESC"
            ).fetchall()
            return {
                "runs": count,
                "first": first,
                "last": last,
                "models": [(m or "?", n) for m, n in models],
                "kinds": kinds,
            }

        facts = self._run(work)
        facts["path"] = str(self.path)
        facts["bytes"] = sum(
            Path(str(self.path) + s).stat().st_size
            for s in ("", "-wal")
            if Path(str(self.path) + s).exists()
        )
        facts["fts"] = self.fts
        facts["schema"] = SCHEMA_VERSION
        return facts

    # --- forgetting -----------------------------------------------------------------------

    def forget(
        self,
        *,
        ids: Sequence[int] | None = None,
        model: str | None = None,
        search: str | None = None,
        since: str | None = None,
        cell_id: str | None = None,
        everything: bool = False,
    ) -> int:
        """Delete runs for good (their text is overwritten on disk, the full-text index
        rebuilt without them, the WAL emptied); returns how many went. Some filter, or
        `everything=True`, is required."""
        if not everything and not (ids or model or search or since or cell_id):
            raise LLMError(
                "forget which runs? nothing was named",
                fixes=["%llm_log --forget 12 15", "%llm_log --forget --model NAME", "--all"],
            )
        self.flush()
        where, args = (
            ("", []) if everything else self._where(model, search, since, cell_id, ids, None)
        )

        def work(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            gone = db.execute(f"DELETE FROM runs{where}", tuple(args)).rowcount
            if self.fts:
                db.execute("INSERT INTO runs_fts(runs_fts) VALUES ('optimize')")
            db.execute("COMMIT")
            return gone

        gone = self._run(work)
        # The WAL still holds the pages as they were: copy them back and empty it.
        self._run(lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        return gone

    # --- file hashes ------------------------------------------------------------------------

    def cached_hash(self, path: str, size: int, mtime_ns: int) -> str | None:
        try:
            rows = self._select(
                "SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ?",
                (path, size, mtime_ns),
            )
        except (LogUnavailable, sqlite3.Error):
            return None
        return rows[0]["sha256"] if rows else None

    def keep_hash(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        if self.newer:
            return
        try:
            self._run(
                lambda db: db.execute(
                    "INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)",
                    (path, size, mtime_ns, sha256),
                )
            )
        except (LogUnavailable, sqlite3.Error):
            pass


def _values(row: Mapping[str, Any], secrets: Sequence[str]) -> list[Any]:
    """A row dict as the SQL values of COLUMNS: JSON columns serialized, booleans as 0/1,
    secrets redacted from every text."""
    values: list[Any] = []
    for column in COLUMNS:
        value = row.get(column)
        if isinstance(value, Json):
            value = str(value)
        elif column in JSON_COLUMNS and value is not None:
            value = dumps(value)
        elif isinstance(value, bool):
            value = int(value)
        if secrets and isinstance(value, str):
            value = redact(value, secrets)
        values.append(value)
    return values


_INSERT = f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


@contextmanager
def _write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction begun at once (BEGIN IMMEDIATE: another process opening the file
    waits for it), committed at the end, rolled back on any failure or interruption."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _insert(db: sqlite3.Connection, rows: list[list[Any]]) -> list[int]:
    with _write_transaction(db):
        ids = [int(db.execute(_INSERT, values).lastrowid or 0) for values in rows]
    return ids


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    for name in JSON_COLUMNS:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    return row


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def fts_query(text: str) -> str:
    """The user's words as an FTS5 query: each word a quoted phrase, all required (so
    punctuation, '-' or ':' in the text is never read as query syntax)."""
    words = text.split()
    return " ".join('"' + w.replace('"', '""') + '"' for w in words) or '""'


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


# --- the hash of a model's files ------------------------------------------------------------


def file_sha256(path: str | Path, log: RunLog | None = None) -> str:
    """sha256 of a file, remembered (in memory, and in the log's `file_hashes`) by its path,
    size and modification time: a model file is read once per version of it."""
    path = os.path.abspath(str(path))
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    found = _HASHES.get(key)
    if found is None and log is not None:
        found = log.cached_hash(*key)
    if found is None:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        found = digest.hexdigest()
        if log is not None:
            log.keep_hash(*key, found)
    _HASHES[key] = found
    return found


_HASHES: dict[tuple[str, int, int], str] = {}


def model_hash(path: str | Path, log: RunLog | None = None) -> str:
    """'sha256:...' of a model file, or of a folder's files (each file's name and sha256,
    in name order; dotfiles and subfolders such as .cache left out)."""
    path = Path(path)
    if path.is_file():
        return "sha256:" + file_sha256(path, log)
    listing = "".join(
        f"{child.name}\0{file_sha256(child, log)}\n"
        for child in sorted(path.iterdir())
        if child.is_file() and not child.name.startswith(".")
    )
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
