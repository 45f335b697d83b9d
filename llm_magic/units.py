"""Small facts written once: how bytes, counts and times are shown, and how many bytes
one weight takes at each dtype."""

from __future__ import annotations

# Bytes per weight at the dtypes llm_magic loads in.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def format_bytes(n: float | None) -> str:
    """538 MB, 1.2 GB: decimal units, as disks and the Hub count."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB", "MB") else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_count(n: int) -> str:
    """134.5 M parameters."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def format_seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.1f} s"
