"""A parsed answer shown under the text it was read from: an object as a small table of
its fields (nested values as compact JSON), anything else as pretty JSON. Plain JSON
values in, text or escaped HTML out."""

from __future__ import annotations

import html
import json
from typing import Any

from .style import DATA_STYLE, DIM

# Longer values are cut in the table (the full value is in result.data).
_CELL_CHARS = 200


def data_text(value: Any) -> str:
    """The value as one line of JSON (a string choice shows as itself)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def data_html(value: Any) -> str:
    e = html.escape
    if isinstance(value, dict) and value:
        rows = "".join(
            f"<tr><td style='padding:0 1em 0 0;color:{DIM};vertical-align:top'>{e(str(k))}</td>"
            f"<td style='text-align:left'>{e(_cell(v))}</td></tr>"
            for k, v in value.items()
        )
        return f"<div style='{DATA_STYLE}'><table style='border:none'>{rows}</table></div>"
    shown = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    return f"<div style='{DATA_STYLE}'><pre style='margin:0'>{e(str(shown))}</pre></div>"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= _CELL_CHARS else text[: _CELL_CHARS - 1] + "…"
