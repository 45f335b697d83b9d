"""`--over` with what notebooks really hold: results that keep their items (a Series its
index, a dict its keys) so they join back to the data, an endless iterator refused in
bounded memory with Ctrl-C working throughout (a real kernel-like process under a memory
watchdog, a real SIGINT), a long run listed as a summary with a progress line that tells
the time, and notes for a dict and for None items. The tiny GPT-2 fixture: the point is
the items, not the text."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output

from llm_magic import MODEL_CACHE, GenerationError
from llm_magic.prompts import MAX_OVER_ITEMS

pd = pytest.importorskip("pandas")

GREEDY = "--greedy --max-new-tokens 2"


@pytest.fixture
def tiny(shell, tiny_model_dir):
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --as tiny --quiet")
    return MODEL_CACHE.find("tiny")


def run(shell, cell):
    with capture_output() as captured:
        result = shell.run_cell(cell, store_history=True)
    return result, captured


def test_a_series_keeps_its_index_and_the_frame_joins_back_to_the_data(shell, tiny):
    data = pd.DataFrame(
        {"text": ["The capital of", "Hello", "A cat"], "year": [2001, 2002, 2003]},
        index=pd.Index(["x", "y", "z"], name="doc"),
    )
    shell.user_ns["texts"] = data["text"]
    result, _ = run(shell, f"%%llm_generate --over texts {GREEDY}\n{{item}} is")
    assert result.success, result.error_in_exec
    frame = result.result.to_pandas()
    pd.testing.assert_series_equal(frame["item"], data["text"], check_names=False)
    assert frame.index.name == "doc" and list(frame.index) == ["x", "y", "z"]
    joined = data.join(frame[["text", "new_tokens"]].rename(columns={"text": "answer"}))
    assert list(joined["answer"]) == result.result.texts
    assert list(joined["year"]) == [2001, 2002, 2003]


def test_a_list_keeps_its_items_and_a_dict_runs_over_its_values_and_says_so(shell, tiny):
    shell.user_ns["docs"] = ["one", "two"]
    result, _ = run(shell, f"%%llm_generate --over docs {GREEDY}\n{{item}}")
    frame = result.result.to_pandas()
    assert list(frame["item"]) == ["one", "two"] and list(frame.index) == [0, 1]

    shell.user_ns["by_name"] = {"first": "one", "second": "two"}
    result, out = run(shell, f"%%llm_generate --over by_name {GREEDY}\n{{item}}")
    assert result.success, result.error_in_exec
    frame = result.result.to_pandas()
    assert list(frame["item"]) == ["one", "two"] and list(frame.index) == ["first", "second"]
    assert [r.prompt for r in result.result] == ["one", "two"]
    said = "--over by_name is a dict: it runs over its values (its keys label the results)"
    assert f"⚠ {said}" in out.stdout


def test_a_none_item_gets_a_note(shell, tiny):
    shell.user_ns["maybe"] = ["one", None, "three"]
    result, out = run(shell, f"%%llm_generate --over maybe {GREEDY}\n{{item}}")
    assert result.success and result.result[1].prompt == "None"
    assert "⚠ item [1] of --over maybe is None: the prompt got the text 'None' there" in out.stdout
    assert pd.isna(result.result.to_pandas()["item"].iloc[1])


def test_what_is_no_list_of_items_is_refused_before_any_work(shell, tiny):
    shell.user_ns["frame"] = pd.DataFrame({"text": ["a", "b"]})
    result, out = run(shell, f"%%llm_generate --over frame {GREEDY}\n{{item}}")
    assert isinstance(result.error_in_exec, GenerationError)
    assert "a DataFrame, not one column of it" in out.stdout and "frame['text']" in out.stdout
    shell.user_ns["huge"] = range(10**12)  # it has a length: refused without being read
    started = time.perf_counter()
    result, out = run(shell, f"%%llm_generate --over huge {GREEDY}\n{{item}}")
    assert isinstance(result.error_in_exec, GenerationError)
    assert f"more than {MAX_OVER_ITEMS:,} items" in out.stdout
    assert time.perf_counter() - started < 5


def test_a_thousand_items_in_a_terminal_print_a_summary_and_the_time(shell, tiny):
    shell.user_ns["many"] = [f"item {i}" for i in range(1000)]
    result, out = run(
        shell, "%%llm_generate --over many --greedy --max-new-tokens 1 --batch-size 100\n{item}"
    )
    assert result.success, result.error_in_exec
    assert len(result.result) == 1000
    shown = out.stdout.strip("\n").splitlines()
    assert len(shown) < 50, len(shown)  # not 2,000 lines
    assert "… 980 more: results[i], results.texts or results.to_pandas()" in out.stdout
    assert "[999]" in out.stdout and "1000 results in 10 batches" in shown[-1]
    progress = out.stderr.split("\r")
    assert any("elapsed · about" in p and "left" in p for p in progress), progress[:3]
    assert "batch 10/10 · 1000 prompts" in progress[-1] and "elapsed" in progress[-1]


# --- an endless iterator, under a memory watchdog, in a process of its own ------------------

CHILD = textwrap.dedent(
    """
    import itertools, os, sys, time
    from IPython.core.interactiveshell import InteractiveShell

    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

    def say(*words):
        print(*words, flush=True)

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llm_magic")
    ip.run_line_magic("llm_load", sys.argv[1] + " --quiet")
    ip.user_ns["it"] = itertools.count()
    say("READY", rss())
    started = time.perf_counter()
    result = ip.run_cell("%%llm_generate --over it --greedy --max-new-tokens 1\\n{item}")
    say("ENDLESS", type(result.error_in_exec).__name__, round(time.perf_counter() - started, 1))

    def slow():
        for n in itertools.count():
            time.sleep(0.01)  # a generator reading a slow source: 100,001 items take 1,000 s
            yield str(n)

    ip.user_ns["slow"] = slow()
    say("SLOW")
    started = time.perf_counter()
    result = ip.run_cell("%%llm_generate --over slow --greedy --max-new-tokens 1\\n{item}")
    say("INTERRUPTED", type(result.error_in_exec).__name__, round(time.perf_counter() - started, 1))
    say("ALIVE", ip.run_cell("1 + 1").result)
    """
)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_an_endless_iterator_is_refused_in_bounded_memory_and_ctrl_c_stops_a_slow_one(
    tiny_model_dir, tmp_path
):
    """The kernel-like process is watched from outside: past 1 GB more than after loading
    it is killed (list(itertools.count()) would grow by gigabytes a minute); a real SIGINT
    lands while a slow generator is being read."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), str(tiny_model_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    arrived: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [arrived.put(x) for x in child.stdout], daemon=True)
    reader.start()
    lines: list[str] = []
    peak, limit, killed = 0, None, False
    deadline = time.monotonic() + 300
    try:
        while child.poll() is None and time.monotonic() < deadline:
            while not arrived.empty():
                line = arrived.get().strip()
                lines.append(line)
                if line.startswith("READY"):
                    limit = int(line.split()[1]) + 10**9
                if line.startswith("SLOW"):
                    time.sleep(1.0)  # into the generator's reading, then Ctrl-C
                    os.kill(child.pid, signal.SIGINT)
            try:
                rss = _rss(child.pid)
            except (FileNotFoundError, ProcessLookupError, StopIteration):
                break
            if limit is not None:
                peak = max(peak, rss)
                if rss > limit:
                    killed = True
                    child.kill()
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        reader.join(timeout=30)
    while not arrived.empty():
        lines.append(arrived.get().strip())
    said = {line.split()[0]: line.split()[1:] for line in lines if line[:1].isupper()}
    assert not killed, f"past the memory watchdog: {peak / 1e9:.1f} GB\n" + "\n".join(lines)
    assert said.get("ENDLESS", [None])[0] == "GenerationError", lines  # refused: too many
    assert float(said["ENDLESS"][1]) < 30
    assert said.get("INTERRUPTED", [None])[0] == "KeyboardInterrupt", lines
    assert float(said["INTERRUPTED"][1]) < 30  # Ctrl-C worked at once, not after 1,000 s
    assert said.get("ALIVE") == ["2"], lines  # the process lives on
