"""The benchmark's smoke version runs end to end, so bench/ cannot rot unnoticed.

It runs `bench/run.py --smoke` (tiny model only, one repetition) in a subprocess and checks
the report it writes; the figures themselves are not asserted (speed targets belong to the
benchmark, not to the tests).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The rows of issue 6, in the order the report gives them.
# The engine rows run llama.cpp and NF4 on the SmolLM2 .gguf: full runs only.
SMOLLM2_GGUF_ROWS = {
    "llamacpp_decode",
    "llamacpp_vs_raw",
    "llamacpp_load",
    "nf4_memory",
    "nf4_decode",
    "decode_bandwidth_engines",
}
EXPECTED_ROWS = [
    "import_load_ext",
    "cache_hit",
    "cold_load",
    "hub_id_offline",
    "gguf_second_load",
    "generate_stream",
    "dtype_default_vs_best",
    "over_batch",
    "decode_vs_bandwidth",
    "load_peak_rss",
    "unload_rss_returned",
    "llamacpp_decode",
    "llamacpp_vs_raw",
    "llamacpp_load",
    "nf4_memory",
    "nf4_decode",
    "decode_bandwidth_engines",
]


def test_bench_smoke_writes_report(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--smoke",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_report(out)


def check_report(out: Path) -> None:
    """What a smoke report must hold (also usable on a report written earlier)."""
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert [r["name"] for r in results["rows"]] == EXPECTED_ROWS
    # Every row measures: a figure and a verdict, never an error, "not available" or a skip
    # (except the .gguf rows, which a smoke run on the tiny model leaves to the full run).
    for name, row in rows.items():
        if name == "gguf_second_load":
            assert row["status"] == "skipped (--smoke: tiny model only)", row["status"]
            continue
        if name in SMOLLM2_GGUF_ROWS:
            assert row["status"] == "skipped (--smoke: needs the SmolLM2 .gguf)", row["status"]
            continue
        assert row["status"] in ("PASS", "MISS") or row["status"].startswith("REPORT ("), (
            f"{name}: {row['status']}"
        )
        assert isinstance(row["ratio"], (int, float)) and row["ratio"] > 0, name
        assert row["llm_magic"] not in ("", "–"), name
        assert row["plain"] not in ("", "–") or name == "import_load_ext", (
            name
        )  # importing has no plain side
    # The import row checks what it claims: torch stays out of `import llm_magic`.
    assert all(not r["torch"] for r in rows["import_load_ext"]["data"]["runs"])
    # Both sides measured the same thing: dtype and new tokens, run by run.
    stream = rows["generate_stream"]["data"]
    assert {(r["dtype"], r["tokens"]) for r in stream["llm_magic"]} == {
        (r["dtype"], r["tokens"]) for r in stream["plain"]
    }
    over = rows["over_batch"]["data"]
    counts = {
        side: {(r["dtype"], r["tokens"]) for r in over[side]}
        for side in ("llm_magic", "plain_batched", "plain_singles")
    }
    assert len(set(map(frozenset, counts.values()))) == 1, counts
    assert (
        "one batched model.generate" in rows["over_batch"]["plain"]
    )  # the plain batched baseline, beside llm_magic
    assert rows["over_batch"]["ratio"] == pytest.approx(
        _tps(over["llm_magic"]) / _tps(over["plain_singles"])
    )
    # The dtype row covers decode, batch and prefill, and says the mix it judges on.
    medians = rows["dtype_default_vs_best"]["data"]["medians"]
    assert set(medians) == {"float32", "bfloat16"}
    assert all(
        t["b1"] > 0 and t["b8"] > 0 and t["prefill"] > 0 and t["mix_seconds"] > 0
        for t in medians.values()
    )
    assert "512-token prompt" in rows["dtype_default_vs_best"]["metric"]
    # decode_vs_bandwidth: llm_magic's own decode figure in its column, plain's in the other.
    assert rows["decode_vs_bandwidth"]["llm_magic"].startswith("%%llm_generate ")
    assert rows["decode_vs_bandwidth"]["plain"].startswith("model.generate ")
    # Unload measured through %llm_unload, which freed the model.
    assert all(
        r["unload_via"] == "%llm_unload bench" and r["unload_freed"]
        for r in rows["unload_rss_returned"]["data"]["llm_magic"]
    )
    assert results["meta"]["smoke"] is True
    assert (
        results["machine"]["cpu"] and results["machine"]["cpu_flags"]
    )  # the machine kind, recorded
    assert results["versions"]["torch"] and results["versions"]["transformers"]

    report = (out / "BENCHMARKS.md").read_text()
    assert "| metric | model | llm_magic | plain transformers |" in report
    assert "## Machine" in report and "## Versions" in report
    for row in results["rows"]:
        assert row["metric"] in report.replace("\\|", "|")


def _tps(runs) -> float:
    return statistics.median(r["tokens"] / r["seconds"] for r in runs)
