"""Benchmark rows for the run log (llm_magic/runlog.py): what logging costs a generation, how
an `--over` of 1,000 items is written, and how fast `--reuse` answers from the log.

    python bench/log_rows.py [--model PATH] [--items 1000]    # only these rows
    python bench/run.py --log ...                               # with the others

- log_cost: the log's work per generation (the row made from the result, the model's
  provenance looked up, one WAL transaction), timed inside real generations, vs the
  generation itself; the first run of a model also hashes its file once (in the note).
- log_over_1000: `--over` 1,000 prompts on the tiny model: the write transactions, and the
  log's time in all and per item.
- log_replay: the same greedy request again with `--reuse` (answered from the log) vs
  generating it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from run import Row, fmt_s, judge, log  # noqa: E402

LOG_ROWS = ("log_cost", "log_over_1000", "log_replay")


class _Timed:
    """The seconds spent in the log's calls made by generation (Recorder: made, rows
    added, ids read back, queued rows written)."""

    def __init__(self) -> None:
        from llm_magic import recorder

        self.recorder = recorder.Recorder
        self.seconds = 0.0
        self.saved = {}
        for name in ("__init__", "add", "with_id", "flush", "failed"):
            real = getattr(self.recorder, name)
            self.saved[name] = real
            setattr(self.recorder, name, self._wrap(real))

    def _wrap(self, real):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed

    def take(self) -> float:
        spent, self.seconds = self.seconds, 0.0
        return spent

    def close(self) -> None:
        for name, real in self.saved.items():
            setattr(self.recorder, name, real)


def _fresh_log(folder: Path) -> None:
    from llm_magic import runlog

    runlog.close_all()
    runlog.configure(enabled=True, path=str(folder / f"runs-{time.monotonic_ns()}.db"))


def row_log_cost(model: str, label: str, runs: int, new_tokens: int, folder: Path) -> Row:
    import llm_magic
    from llm_magic import runlog

    row = Row(
        "log_cost",
        "the run log's work per generation (row made, provenance, one WAL transaction), "
        f"timed inside `%%llm_generate --greedy` of {new_tokens} tokens",
        "≤ 2 ms per generation",
        model=label,
    )
    _fresh_log(folder)
    runlog._HASHES.clear()
    started = time.perf_counter()
    weights = runlog.model_hash(model)  # the first run of a model hashes its file once
    hashing = time.perf_counter() - started
    runlog._HASHES.clear()
    llm_magic.load(model, alias="bench_log", quiet=True)
    timer = _Timed()
    try:
        llm_magic.generate("Warm up.", greedy=True, max_new_tokens=new_tokens)  # hashes, opens
        first = timer.take()
        costs, totals = [], []
        for i in range(runs):
            started = time.perf_counter()
            llm_magic.generate(
                f"Question {i}: what is the capital of France?",
                greedy=True,
                max_new_tokens=new_tokens,
            )
            totals.append(time.perf_counter() - started)
            costs.append(timer.take())
    finally:
        timer.close()
        llm_magic.unload(all=True)
    cost, total = statistics.median(costs), statistics.median(totals)
    row.llm_magic = f"{fmt_s(cost)} per generation (max {fmt_s(max(costs))})"
    row.plain = f"the generation itself: {fmt_s(total)}"
    row.ratio = round(cost * 1000, 3)
    row.note = (
        f"median of {runs}; {cost / total:.2%} of the generation; the first run of the model "
        f"also hashed its file once ({fmt_s(first)} with the log opened; "
        f"sha256 of the weights alone {fmt_s(hashing)}: {weights[:19]}…)"
    )
    judge(row, cost <= 0.002)
    row.data = {"costs": costs, "totals": totals, "first": first, "hashing": hashing}
    return row


def row_log_over(model: str, label: str, items: int, folder: Path) -> Row:
    import llm_magic
    from llm_magic import runlog

    row = Row(
        "log_over_1000",
        f"`--over` {items} prompts (2 new tokens each, batches of 32): the run log's write "
        "transactions and its time",
        "few transactions (at most 1 per second of the run, + 1); ≤ 2 ms per item",
        model=label,
    )
    _fresh_log(folder)
    llm_magic.load(model, alias="bench_log", quiet=True)
    llm_magic.generate("Warm up.", greedy=True, max_new_tokens=2)  # hashes, opens the log
    store = runlog.store()
    assert store is not None
    before = store.writes
    timer = _Timed()
    try:
        started = time.perf_counter()
        results = llm_magic.generate(
            "Item {item}: say something.",
            over=list(range(items)),
            namespace={},
            greedy=True,
            max_new_tokens=2,
            batch_size=32,
        )
        wall = time.perf_counter() - started
        spent = timer.take()
    finally:
        timer.close()
        llm_magic.unload(all=True)
    writes = store.writes - before
    logged = store.count(kind="over")
    row.llm_magic = f"{logged} rows in {writes} transactions; {fmt_s(spent)} in all"
    row.plain = f"the run: {fmt_s(wall)}"
    row.ratio = writes
    row.note = f"{fmt_s(spent / items)} per item; {len(results)} results"
    judge(row, logged == items and writes <= wall + 1 and spent / items <= 0.002)
    row.data = {"writes": writes, "wall": wall, "log_seconds": spent, "rows": logged}
    return row


def row_log_replay(model: str, label: str, runs: int, new_tokens: int, folder: Path) -> Row:
    import llm_magic

    row = Row(
        "log_replay",
        f"`%%llm_generate --greedy --reuse` of a request logged before ({new_tokens} tokens) vs "
        "generating it",
        "< 50 ms",
        model=label,
    )
    _fresh_log(folder)
    llm_magic.load(model, alias="bench_log", quiet=True)
    try:
        prompt = "What is the capital of France?"
        started = time.perf_counter()
        made = llm_magic.generate(prompt, greedy=True, max_new_tokens=new_tokens)
        generating = time.perf_counter() - started
        replays = []
        for _ in range(runs):
            started = time.perf_counter()
            again = llm_magic.generate(prompt, greedy=True, max_new_tokens=new_tokens, reuse=True)
            replays.append(time.perf_counter() - started)
            assert again.replayed_from is not None and again.text == made.text
    finally:
        llm_magic.unload(all=True)
    replay = statistics.median(replays)
    row.llm_magic = f"{fmt_s(replay)} (max {fmt_s(max(replays))})"
    row.plain = f"generating: {fmt_s(generating)}"
    row.ratio = round(replay * 1000, 2)
    row.note = f"median of {runs}; the same text, said to come from the log"
    judge(row, replay < 0.05)
    row.data = {"replays": replays, "generating": generating}
    return row


def log_rows(
    model: str,
    label: str,
    tiny: str,
    runs: int = 30,
    new_tokens: int = 32,
    items: int = 1000,
    only: tuple[str, ...] | None = None,
) -> list[Row]:
    """The three rows (`model` for cost and replay, the tiny model for the --over)."""
    from llm_magic import runlog

    folder = Path(tempfile.mkdtemp(prefix="llm_magic_bench_log_"))
    chosen = [
        ("log_cost", lambda: row_log_cost(model, label, runs, new_tokens, folder)),
        ("log_over_1000", lambda: row_log_over(tiny, "tiny GPT-2", items, folder)),
        ("log_replay", lambda: row_log_replay(model, label, runs, new_tokens, folder)),
    ]
    rows = []
    try:
        for name, fn in [(n, f) for n, f in chosen if only is None or n in only]:
            log(f"measuring {name}")
            try:
                rows.append(fn())
            except Exception as e:  # one broken row must not lose the others
                rows.append(
                    Row(name, name, "", status=f"error: {type(e).__name__}: {str(e)[-300:]}")
                )
    finally:
        runlog.close_all()
        runlog.reset_config()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="default: the demo SmolLM2 .gguf")
    p.add_argument("--tiny", default=None, help="the tiny model's folder (default: built)")
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)
    import llm_magic

    model = args.model or llm_magic.demo_model()
    tiny = args.tiny
    if tiny is None:
        from support.tiny_model import build_tiny_gpt2

        tiny = str(build_tiny_gpt2(Path(tempfile.mkdtemp(prefix="llm_magic_tiny_")) / "tiny"))
    label = "SmolLM2-135M-Instruct Q4_1" if args.model is None else Path(model).name
    rows = log_rows(
        model, label, tiny, args.runs, args.new_tokens, args.items, tuple(args.only or ()) or None
    )
    for r in rows:
        print(f"{r.name}: {r.status}  {r.llm_magic}  |  {r.plain}  |  {r.ratio}  {r.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
