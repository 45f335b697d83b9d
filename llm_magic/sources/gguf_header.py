"""Whether a `.gguf` file is whole: its header walked (keys, values and the tensor table;
values skipped, never decoded) and the data it describes checked against the file's size.

A truncated or damaged file is then said as such before any reader fails on it with a
message about bytes ("not enough values to unpack", a numpy dtype error), and before a
conversion spends seconds on it. Standard library only: the file is memory-mapped and
walked in place (SmolLM2's 49k-token vocabulary: a few tens of milliseconds).
"""

from __future__ import annotations

import mmap
import os
import struct
from functools import lru_cache
from pathlib import Path

# Byte widths of GGUF's fixed-size value types (uint8 ... float64, bool); 8 is a string,
# 9 an array.
_WIDTH = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
# Far past any real file: a count beyond these means the header is not what it claims.
_MOST_KEYS, _MOST_TENSORS, _MOST_DIMS = 1_000_000, 10_000_000, 8
_DEFAULT_ALIGNMENT = 32
_U64 = struct.Struct("<Q")
# ggml's tensor types: (elements per block, bytes per block), as the file format fixes
# them (the gguf package's GGML_QUANT_SIZES). A type not here: the size is not checked.
_TYPE_SIZES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17),
}  # fmt: skip


class _Truncated(Exception):
    pass


def problem(path: str | Path) -> str | None:
    """None when the .gguf at `path` is whole, else what is wrong with it, in words.
    Remembered per file size and time: a cache hit does not walk the header again."""
    st = os.stat(path)
    return _problem(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _problem(path: str, size: int, mtime_ns: int) -> str | None:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            described = _Walk(data).described_size()
    except _Truncated:
        return f"truncated: the file ends ({size} bytes) inside its own header"
    except ValueError as e:  # mmap of an empty file too
        return f"damaged: a header that cannot be read ({e})"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if described is not None and described > size:
        return (
            f"truncated: the file has {size} bytes, its header describes {described}"
            " (a download or copy that did not finish)"
        )
    return None


class _Walk:
    """A cursor over the mapped file."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data, self.at, self.size = data, 0, len(data)

    def number(self, fmt: str) -> int:
        width = struct.calcsize(fmt)
        if self.at + width > self.size:
            raise _Truncated
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += width
        return int(value)

    def skip(self, n: int) -> None:
        self.at += n
        if self.at > self.size:
            raise _Truncated

    def string(self) -> bytes:
        n = self.number("<Q")
        self.skip(n)
        return self.data[self.at - n : self.at]

    def skip_value(self, kind: int) -> None:
        if kind == _STRING:
            self.skip(self.number("<Q"))
        elif kind == _ARRAY:
            item, count = self.number("<I"), self.number("<Q")
            if item in _WIDTH:
                self.skip(_WIDTH[item] * count)
            elif item == _STRING:  # a vocabulary: tens of thousands, walked in one loop
                length, data, at = _U64.unpack_from, self.data, self.at
                for _ in range(count):
                    if at + 8 > self.size:
                        raise _Truncated
                    at += 8 + length(data, at)[0]
                self.at = at
                self.skip(0)
            else:
                raise ValueError(f"an array of value type {item}")
        elif kind in _WIDTH:
            self.skip(_WIDTH[kind])
        else:
            raise ValueError(f"value type {kind}")

    def described_size(self) -> int | None:
        """The size the header says the file has (None where a tensor's type is not
        known here); raises _Truncated, or ValueError for a header that is not GGUF's."""
        if self.data[:4] != b"GGUF":
            raise ValueError("no GGUF magic")
        self.at = 4
        version = self.number("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}")
        n_tensors, n_keys = self.number("<Q"), self.number("<Q")
        if n_tensors > _MOST_TENSORS or n_keys > _MOST_KEYS:
            raise ValueError(f"{n_tensors} tensors and {n_keys} keys claimed")
        alignment = _DEFAULT_ALIGNMENT
        for _ in range(n_keys):
            key, kind = self.string(), self.number("<I")
            if key == b"general.alignment" and kind == 4:
                alignment = self.number("<I") or _DEFAULT_ALIGNMENT
            else:
                self.skip_value(kind)
        end: int | None = 0
        for _ in range(n_tensors):
            self.string()
            dims = self.number("<I")
            if dims > _MOST_DIMS:
                raise ValueError(f"a tensor of {dims} dimensions")
            elements = 1
            for _ in range(dims):
                elements *= self.number("<Q")
            kind, offset = self.number("<I"), self.number("<Q")
            if end is not None and kind in _TYPE_SIZES:
                block, width = _TYPE_SIZES[kind]
                end = max(end, offset + elements // block * width)
            else:
                end = None
        data_start = -(-self.at // alignment) * alignment
        return None if end is None else data_start + end
