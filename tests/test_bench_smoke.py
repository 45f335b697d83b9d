"""The benchmark's smoke version runs end to end, so bench/ cannot rot unnoticed.

It runs `bench/run.py --smoke` (tiny model only, one repetition) in a subprocess and checks
the report it writes; the figures themselves are not asserted (speed targets belong to the
benchmark, not to the tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The rows of issue 6, in the order the report gives them.
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
# Rows that need only what the foundation provides: they must produce a figure.
MEASURED_ROWS = {"import_load_ext", "cache_hit", "cold_load", "hub_id_offline", "dtype_default_vs_best",
                 "decode_vs_bandwidth", "load_peak_rss"}


def test_bench_smoke_writes_report(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert [r["name"] for r in results["rows"]] == EXPECTED_ROWS
    for name, row in rows.items():
        status = row["status"]
        assert not status.startswith("error"), f"{name}: {status}"
        assert status.split(" ")[0] in ("PASS", "MISS", "REPORT", "skipped", "not"), f"{name}: {status}"
        if status in ("PASS", "MISS") or status.startswith("REPORT"):
            assert isinstance(row["ratio"], (int, float)) and row["ratio"] >= 0, name
    for name in MEASURED_ROWS:
        assert rows[name]["ratio"] is not None, f"{name} measured nothing: {rows[name]['status']}"
    # The import row checks what it claims: torch stays out of `import llm_magic`.
    assert all(not r["torch"] for r in rows["import_load_ext"]["data"]["runs"])
    assert results["meta"]["smoke"] is True
    assert set(results["machine"]["flags"]) >= {"avx2", "avx512_bf16", "amx_bf16"}
    assert results["versions"]["torch"] and results["versions"]["transformers"]

    report = (out / "BENCHMARKS.md").read_text()
    assert "| metric | model | llm_magic | plain transformers |" in report
    assert "## Machine" in report and "## Versions" in report
    for row in results["rows"]:
        assert row["metric"] in report.replace("\\|", "|")
