"""bench/gpu_check.py stays runnable: on a machine without CUDA it skips every GPU check,
says why, and exits 0 (on a CUDA machine it runs them: bench/GPU.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKS = [
    "dtype",
    "device_map auto",
    "tokens/s vs plain generate",
    "CUDA OOM → card",
    "unload returns GPU memory",
    "NF4 on CUDA",
]


def test_gpu_check_dry_run_skips_cleanly_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real checks, not the dry run")
    out = tmp_path / "GPU.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for name in CHECKS:
        assert any(line.startswith(f"SKIP  {name}: no CUDA device") for line in lines), name
    assert lines[-1] == f"0 passed, 0 failed, {len(CHECKS)} skipped"
    assert out.read_text().count("**SKIP**") == len(CHECKS)
