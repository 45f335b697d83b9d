"""Measured decode speeds of one `.gguf` file per engine on this machine, kept on disk.

The card of a `.gguf` loaded with transformers says how much faster `--engine llama.cpp`
decodes it — measured, not guessed. Measuring both engines at load time would cost a
second load and seconds of decoding, so the figures come for free instead: every
single-prompt generation with a `.gguf` model records its decode rate (new tokens after
the first, over the time after the first: prompt processing excluded), keyed by the file
and the machine, in $LLM_MAGIC_CACHE/speed/. The bench's llama.cpp rows write the same
records. Until both engines have decoded the file here, the card gives no figure.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

MIN_TOKENS = 8  # fewer new tokens say little about the decode rate


def machine_id() -> str:
    """The CPU model and the cores this process may use: a rate holds for these only."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
            )
    except OSError:
        pass
    from ..hardware import physical_cores

    return f"{cpu or os.uname().machine} × {physical_cores()} cores"


def _file(identity: str) -> Path:
    from ..sources.gguf_cache import cache_root

    key = hashlib.sha256(f"{identity}\0{machine_id()}".encode()).hexdigest()[:16]
    return cache_root() / "speed" / f"{key}.json"


def label(info) -> str:
    """The engine and how the weights are held: 'llama.cpp', 'transformers bfloat16', ..."""
    if info.engine != "transformers":
        return info.engine
    quantized = dict(info.details).get("quantization")
    return f"transformers {info.dtype}" + (f" {quantized.split(':')[0]}" if quantized else "")


def read(identity: str) -> dict:
    try:
        return json.loads(_file(identity).read_text())
    except (OSError, ValueError):
        return {}


def record(
    identity: str,
    engine_label: str,
    tokens_per_second: float,
    tokens: int,
    by: str = "a generation",
) -> None:
    """Keep the latest decode rate of `engine_label` for the file `identity` here."""
    path = _file(identity)
    data = read(identity)
    data[engine_label] = {
        "tokens_per_second": tokens_per_second,
        "tokens": tokens,
        "when": time.time(),
        "by": by,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".{os.getpid()}")
        partial.write_text(json.dumps(data, indent=1))
        os.replace(partial, path)  # atomic: another kernel reads all of it or the old one
    except OSError:  # a read-only cache: the hint just stays without a figure
        pass


def note_result(entry, result) -> None:
    """Record a single-prompt result's decode rate when its model came from a .gguf."""
    info = entry.info
    if info.kind != "gguf" or result.batch is not None or result.time_to_first_token is None:
        return
    decoding = result.seconds - result.time_to_first_token
    if result.new_tokens < MIN_TOKENS or decoding <= 0:
        return
    record(entry.key.weights, label(info), (result.new_tokens - 1) / decoding, result.new_tokens)


def llama_cpp_hint(identity: str, info) -> str:
    """The card line for a .gguf loaded with transformers, llama-cpp-python installed."""
    data = read(identity)
    mine, theirs = data.get(label(info)), data.get("llama.cpp")
    if not mine or not theirs:
        return (
            "--engine llama.cpp runs this file as it is, without dequantizing; "
            "no decode speed measured here yet "
            "(each generation with either engine records one)"
        )
    ratio = theirs["tokens_per_second"] / mine["tokens_per_second"]
    when = time.strftime("%Y-%m-%d", time.localtime(max(theirs["when"], mine["when"])))
    return (
        f"--engine llama.cpp decodes this file {ratio:.1f}× as fast here: "
        f"{theirs['tokens_per_second']:.0f} vs {mine['tokens_per_second']:.0f} tokens/s "
        f"({label(info)}), measured by {theirs.get('by', 'a generation')} "
        f"and {mine.get('by', 'a generation')} on this machine, {when}"
    )
