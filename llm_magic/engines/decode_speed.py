"""Measured decode speeds of one `.gguf` file per engine on this machine, kept on disk.

The card of a `.gguf` loaded with transformers may say how much faster `--engine
llama.cpp` decodes it — measured, not guessed. Measuring both engines at load time would
cost a second load and seconds of decoding, so the figures come for free instead: every
single-prompt generation with a `.gguf` model records its decode rate (new tokens after
the first, over the time after the first: prompt processing excluded), keyed by the file
and the machine, in $LLM_MAGIC_CACHE/speed/.

One run says little: the file is shared by every kernel on the machine, and a rate
measured while another kernel computes is a fraction of the real one. So the card gives
a figure only from several runs of each engine (the median of each engine's latest runs,
the counts said), and none while the runs of either engine spread too far to compare.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

MIN_TOKENS = 16  # fewer new tokens say little about the decode rate
MIN_RUNS = 3  # per engine, before the card gives a figure
KEPT_RUNS = 7  # per engine, the latest
# The fastest of an engine's runs against its slowest: past this, the runs were not
# alike (another kernel busy, a machine throttled) and no figure is given.
MAX_SPREAD = 1.5


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


def read(identity: str) -> dict[str, list[dict]]:
    """{engine label: its latest runs, oldest first}; runs of an older layout are dropped."""
    try:
        data = json.loads(_file(identity).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, list)}


def record(identity: str, engine_label: str, tokens_per_second: float, tokens: int) -> None:
    """Add a decode rate of `engine_label` (ModelInfo.held_as) for the file `identity`."""
    path = _file(identity)
    data = read(identity)
    runs = data.setdefault(engine_label, [])
    runs.append({"tokens_per_second": tokens_per_second, "tokens": tokens, "when": time.time()})
    del runs[:-KEPT_RUNS]
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
    rate = (result.new_tokens - 1) / decoding
    record(entry.key.weights, info.held_as, rate, result.new_tokens)


def llama_cpp_hint(identity: str, info) -> str:
    """The card line (85 columns at most, under 100 with its label) for a .gguf loaded
    with transformers, llama-cpp-python installed: the ratio of the median rates when
    each engine has run it at least MIN_RUNS times here and its runs agree, else no
    figure."""
    data = read(identity)
    # llama.cpp runs the file as it is quantized: one label per file ("llama.cpp Q4_1").
    theirs = next((v for k, v in data.items() if k.split()[0] == "llama.cpp"), [])
    mine = data.get(info.held_as, [])
    plain = "--engine llama.cpp runs this file as it is"
    if len(theirs) < MIN_RUNS or len(mine) < MIN_RUNS:
        return f"{plain} (no speed figure before {MIN_RUNS} runs of each)"
    rates = [[r["tokens_per_second"] for r in runs] for runs in (theirs, mine)]
    if any(max(r) > MAX_SPREAD * min(r) for r in rates):
        return f"{plain} (speeds vary too much here to compare)"
    ratio = statistics.median(rates[0]) / statistics.median(rates[1])
    return (
        f"--engine llama.cpp decodes this file {ratio:.1f}× as fast here"
        f" (median of {len(theirs)} and {len(mine)} runs)"
    )
