"""Differences between the library versions llm_magic supports, bridged in one place."""

from __future__ import annotations

import re
import sys


def dtype_keyword() -> str:
    """transformers >= 4.56 takes `dtype=`; older ones `torch_dtype=` (never pass both)."""
    import transformers

    major, minor = (int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def add_note(error: BaseException, note: str) -> None:
    """`error.add_note(note)`: the method is Python 3.11's; on 3.10 the same `__notes__`
    list is written by hand (tracebacks there do not print it, but readers of it do)."""
    if sys.version_info >= (3, 11):
        error.add_note(note)
    else:
        # An instance attribute, as 3.11 keeps it (typeshed declares it only from 3.11).
        error.__dict__.setdefault("__notes__", []).append(note)
