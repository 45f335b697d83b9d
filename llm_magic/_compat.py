"""Differences between the library versions llm_magic supports, bridged in one place."""

from __future__ import annotations

import re


def dtype_keyword() -> str:
    """transformers >= 4.56 takes `dtype=`; older ones `torch_dtype=` (never pass both)."""
    import transformers

    major, minor = (int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
