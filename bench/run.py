"""llm_magic side by side with plain transformers, in one run.

    .venv/bin/python bench/run.py            # full: SmolLM2-135M-Instruct + tiny GPT-2
                                             # (< 15 min on 2 cores)
    .venv/bin/python bench/run.py --smoke    # tiny model only, one or two repetitions (~1 min)

Writes BENCHMARKS.md (table with targets, the machine, versions) and results.json
into --out (default: bench/ for a full run, a temporary folder for --smoke).
Each measurement runs in a fresh process (bench/workers.py); this file only starts
them, takes medians and ratios, and writes the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKERS = HERE / "workers.py"
TINY_HUB_ID = "llm-magic-bench/tiny-gpt2"

# The rows every run reports, in order (tests/test_bench_smoke.py checks them).
ROW_NAMES = (
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
    # issue 13: llama.cpp for .gguf, 4-bit loading
    "llamacpp_decode",
    "llamacpp_vs_raw",
    "llamacpp_load",
    "nf4_memory",
    "nf4_decode",
    "decode_bandwidth_engines",
)


@dataclass
class Row:
    name: str
    metric: str
    target: str
    model: str = ""
    llm_magic: str = ""  # the figure, formatted
    plain: str = ""  # the plain-transformers figure it is compared with
    ratio: float | None = None  # the number the target is checked on
    # PASS, MISS, REPORT, skipped (...), error: ... (a side's dtype or token count differs too)
    status: str = ""
    note: str = ""
    data: dict = field(default_factory=dict)  # raw measurements


# ---------------------------------------------------------------- running workers


class WorkerError(RuntimeError):
    pass


def worker_env(workdir: Path) -> dict:
    env = dict(os.environ)
    env["HF_HOME"] = str(workdir / "hf")
    # "The Hub unreachable and no offline variable": the variables must not be set.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_HOME_OFFLINE"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_worker(name: str, args: dict, env: dict, timeout: float = 600) -> dict:
    proc = subprocess.run(
        [sys.executable, str(WORKERS), name, json.dumps(args)],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT ") :])
    raise WorkerError(
        f"worker {name} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
    )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def warm_file_cache(path: Path) -> None:
    """Read every file once, so both sides of a load comparison find them in the page cache."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


# ---------------------------------------------------------------- formatting


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 0.1:
        return f"{seconds * 1000:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(n: float | None) -> str:
    return "–" if n is None else f"{n / 2**20:.0f} MiB"


def tps(runs: list[dict]) -> float | None:
    """Median tokens/s over runs of {'tokens', 'seconds'}."""
    return med([r["tokens"] / r["seconds"] for r in runs if r["seconds"] > 0])


def judge(row: Row, ok: bool) -> None:
    if not row.status.startswith("error"):  # a mismatch between the sides stands
        row.status = "PASS" if ok else "MISS"


def compare_sides(row: Row, what: str, by_side: dict[str, list]) -> bool:
    """Both sides must have measured the same thing (dtype, tokens generated): a
    difference fails the row, with what each side had."""
    seen = {side: sorted(set(map(str, values))) for side, values in by_side.items()}
    if len({tuple(v) for v in seen.values()}) == 1 and all(len(v) == 1 for v in seen.values()):
        return True
    row.status = f"error: {what} differ between the sides: " + "; ".join(
        f"{k} {', '.join(v)}" for k, v in seen.items()
    )
    return False


# ---------------------------------------------------------------- the rows


def row_import(env, reps) -> Row:
    row = Row(
        "import_load_ext",
        "`import llm_magic` + `%load_ext llm_magic` (fresh process); torch imported?",
        "≤ 0.3 s, no torch",
        model="–",
    )
    runs = [run_worker("import", {}, env) for _ in range(reps)]
    secs = med([r["seconds"] for r in runs])
    torch_in = any(r["torch"] or r["transformers"] for r in runs)
    row.llm_magic = f"{fmt_s(secs)}; torch {'imported' if torch_in else 'not imported'}"
    row.plain = "–"
    row.ratio = secs
    judge(row, secs <= 0.3 and not torch_in)
    row.data = {"runs": runs}
    return row


def row_cold_load(env, path: str, dtype: str, label: str, reps: int) -> Row:
    row = Row(
        "cold_load",
        "cold load (new process, file cache warm) vs AutoModelForCausalLM + AutoTokenizer "
        ".from_pretrained, same dtype",
        "≤ 1.05×",
        model=label,
    )
    warm_file_cache(Path(path))
    runs = {"llm_magic": [], "plain": []}
    for i in range(reps):  # alternate which side goes first
        for side in ("llm_magic", "plain") if i % 2 == 0 else ("plain", "llm_magic"):
            runs[side].append(
                run_worker("cold_load", {"side": side, "path": path, "dtype": dtype}, env)
            )
    a, b = (
        med([r["seconds"] for r in runs["llm_magic"]]),
        med([r["seconds"] for r in runs["plain"]]),
    )
    row.llm_magic, row.plain, row.ratio = fmt_s(a), fmt_s(b), a / b
    compare_sides(row, "dtypes", {side: [r["dtype"] for r in rs] for side, rs in runs.items()})
    judge(row, row.ratio <= 1.05)
    row.note = (
        f"dtype: llm_magic {runs['llm_magic'][0]['dtype']}, plain {runs['plain'][0]['dtype']}; "
        "torch/transformers imported before timing"
    )
    row.data = runs
    return row


def row_hub(env, tiny_dir: str, reps: int, plain_by_id: bool, plain_timeout: float) -> Row:
    """The Hub unreachable without a packet leaving this machine: the workers' HF_ENDPOINT
    is a socket on 127.0.0.1, started here, that accepts and never answers."""
    sys.path.insert(0, str(ROOT / "tests"))
    from support.loopback import SilentServer, loopback_env

    with SilentServer() as hub:
        return _row_hub(
            loopback_env(dict(env), hub.url), tiny_dir, reps, plain_by_id, plain_timeout
        )


def _row_hub(env, tiny_dir: str, reps: int, plain_by_id: bool, plain_timeout: float) -> Row:
    row = Row(
        "hub_id_offline",
        "Hub id of a cached model, Hub unreachable, no offline variable, vs the folder by path",
        "≤ 1.5× (plain transformers by id: ~60×)",
        model="tiny GPT-2",
    )
    runs = {"by_id": [], "by_path": [], "plain_by_path": []}
    for i in range(reps):
        order = (("by_id", TINY_HUB_ID), ("by_path", tiny_dir))
        for key, target in order if i % 2 == 0 else order[::-1]:
            runs[key].append(run_worker("hub", {"side": "llm_magic", "target": target}, env))
        if i < 2:  # a contrast only
            runs["plain_by_path"].append(
                run_worker("hub", {"side": "plain", "target": tiny_dir}, env)
            )
    by_id, by_path = (
        med([r["seconds"] for r in runs["by_id"]]),
        med([r["seconds"] for r in runs["by_path"]]),
    )
    plain_path = med([r["seconds"] for r in runs["plain_by_path"]])
    row.llm_magic = f"by id {fmt_s(by_id)} / by path {fmt_s(by_path)}"
    row.ratio = by_id / by_path
    judge(row, row.ratio <= 1.5)
    if plain_by_id:  # once: it retries the unreachable Hub for about two minutes
        started = time.perf_counter()
        try:
            r = run_worker(
                "hub", {"side": "plain", "target": TINY_HUB_ID}, env, timeout=plain_timeout
            )
            plain_id = r["seconds"]
            row.plain = (
                f"by id {fmt_s(plain_id)} "
                f"({plain_id / plain_path:.0f}× its by-path {fmt_s(plain_path)})"
            )
        except subprocess.TimeoutExpired:
            plain_id = None
            row.plain = f"by id > {plain_timeout:.0f} s (stopped) vs by path {fmt_s(plain_path)}"
        except WorkerError as e:
            plain_id = None
            row.plain = (
                f"by id failed after {time.perf_counter() - started:.0f} s: "
                f"{str(e).splitlines()[-1][:120]}"
            )
        runs["plain_by_id_seconds"] = plain_id
    else:
        row.plain = f"by path {fmt_s(plain_path)}; by id not run (--smoke)"
    row.note = (
        "whole load in a new process (torch/transformers imported before timing); "
        "llm_magic's by-id load reads the cached snapshot without touching the network"
    )
    row.data = runs
    return row


def row_gguf(
    env, gguf: str | None, dtype: str, converted_now: float | None, reps: int, plain_reps: int
) -> Row:
    row = Row(
        "gguf_second_load",
        "`.gguf` second load (new process, converted cache present) vs plain "
        "transformers `gguf_file=` load",
        "≤ 0.15×",
        model="SmolLM2-135M-Instruct Q4_1",
    )
    if gguf is None:
        row.status = "skipped (--smoke: tiny model only)"
        return row
    warm_file_cache(Path(gguf))
    runs = {"llm_magic": [], "plain": []}
    for i in range(max(reps, plain_reps)):
        if i < reps:
            runs["llm_magic"].append(
                run_worker("gguf", {"side": "llm_magic", "path": gguf, "dtype": dtype}, env)
            )
        if i < plain_reps:
            runs["plain"].append(
                run_worker("gguf", {"side": "plain", "path": gguf, "dtype": dtype}, env)
            )
    a, b = (
        med([r["seconds"] for r in runs["llm_magic"]]),
        med([r["seconds"] for r in runs["plain"]]),
    )
    row.llm_magic, row.plain, row.ratio = fmt_s(a), fmt_s(b), a / b
    compare_sides(row, "dtypes", {side: [r["dtype"] for r in rs] for side, rs in runs.items()})
    judge(row, row.ratio <= 0.15)
    row.note = (
        f"dtype: llm_magic {runs['llm_magic'][0]['dtype']}, plain {runs['plain'][0]['dtype']}"
        + (
            f"; this run converted the .gguf first ({fmt_s(converted_now)}, once)"
            if converted_now
            else ""
        )
    )
    row.data = runs
    return row


def rows_generate(env, model_arg: str, label: str, args) -> tuple[tuple[Row, Row, Row], dict]:
    hit = Row("cache_hit", "`%llm_load` cache hit (same request again)", "≤ 10 ms", model=label)
    stream = Row(
        "generate_stream",
        "`%%llm_generate` streaming tokens/s vs plain `model.generate`, batch 1, "
        f"same model object, greedy, up to {args.new_tokens} new tokens",
        "≥ 0.95×",
        model=label,
    )
    over = Row(
        "over_batch",
        "`--over` 8 prompts, aggregate tokens/s, vs plain `model.generate`: 8 single "
        "calls (the ratio) and one batched call",
        "≥ 4× the singles",
        model=label,
    )
    r = run_worker(
        "generate",
        {
            "model": model_arg,
            "new_tokens": args.new_tokens,
            "repeats": args.gen_repeats,
            "over_new_tokens": args.over_new_tokens,
            "over_repeats": args.over_repeats,
            "hit_repeats": 20,
        },
        env,
        timeout=1800,
    )
    secs = med(r["cache_hit_seconds"])
    hit.llm_magic, hit.plain, hit.ratio = fmt_s(secs), "a new from_pretrained: see cold_load", secs
    judge(hit, secs <= 0.010)
    hit.note = f"median of {len(r['cache_hit_seconds'])}, max {fmt_s(max(r['cache_hit_seconds']))}"
    hit.data = {"seconds": r["cache_hit_seconds"]}

    g = r["generate"]
    a, b = tps(g["llm_magic"]), tps(g["plain"])
    stream.llm_magic, stream.plain, stream.ratio = f"{a:.1f} tok/s", f"{b:.1f} tok/s", a / b
    sides = ("llm_magic", "plain")
    compare_sides(stream, "dtypes", {s: [x["dtype"] for x in g[s]] for s in sides})
    compare_sides(stream, "new token counts", {s: [x["tokens"] for x in g[s]] for s in sides})
    judge(stream, stream.ratio >= 0.95)
    stream.note = (
        f"llm_magic {g['llm_magic'][0]['tokens']} new tokens in {g['llm_magic'][0]['dtype']}, "
        f"plain {g['plain'][0]['tokens']} in {g['plain'][0]['dtype']} "
        "(its count set to what llm_magic generated); "
        "end to end (template, tokenize, generate, decode)"
    )
    stream.data = g

    o = r["over"]
    a, b, c = tps(o["llm_magic"]), tps(o["plain_singles"]), tps(o["plain_batched"])
    over.llm_magic = f"{a:.1f} tok/s"
    over.plain = f"8 singles {b:.1f} tok/s; one batched model.generate {c:.1f} tok/s"
    over.ratio = a / b
    sides = ("llm_magic", "plain_batched", "plain_singles")
    compare_sides(over, "dtypes", {s: [x["dtype"] for x in o[s]] for s in sides})
    compare_sides(over, "new token counts", {s: [x["tokens"] for x in o[s]] for s in sides})
    judge(over, over.ratio >= 4)
    over.note = (
        f"via {o['via']}, up to {o['new_tokens_per_prompt']} new tokens per prompt, batch size "
        f"{o['prompts']}, rows stopping at eos on every side "
        f"({o['llm_magic'][0]['tokens']} new tokens on each); "
        f"llm_magic / plain batched {a / c:.2f}×"
    )
    if o.get("products"):
        over.note += (
            f"; {o['products']}; the first run, excluded, took "
            f"{o['first_llm_magic_seconds']:.1f} s "
            f"(median llm_magic run {med([x['seconds'] for x in o['llm_magic']]):.1f} s)"
        )
    over.data = o
    return (hit, stream, over), g


# The mix a notebook sees, to judge the default dtype on: one long prompt read, one answer
# decoded, one --over batch (plain model.generate for each part, in each dtype).
MIX = (
    "a 512-token prompt read (the model's context if shorter) + 128 tokens decoded at batch 1 "
    "+ 8 prompts × 32 tokens decoded at batch 8"
)


def mix_seconds(t: dict, prefill_len: int) -> float:
    return prefill_len / t["prefill"] + 128 / t["b1"] + 8 * 32 / t["b8"]


def rows_dtype(env, path: str, label: str, args, stream: dict | None) -> tuple[Row, Row, dict]:
    dt = Row(
        "dtype_default_vs_best",
        "the default dtype llm_magic picks vs the best dtype here (fp32 vs bf16), "
        f"judged on the time of {MIX}; each part timed with plain model.generate",
        "≥ 0.9×",
        model=label,
    )
    bw = Row(
        "decode_vs_bandwidth",
        "batch-1 decode tokens/s vs the memory-bandwidth limit "
        "(measured read bandwidth ÷ weight bytes read per token)",
        "report; aim ≥ 40%",
        model=label,
    )
    r = run_worker(
        "dtype",
        {
            "path": path,
            "new_tokens": args.dtype_new_tokens,
            "batch8_new_tokens": args.batch8_new_tokens,
            "repeats": args.dtype_repeats,
            "bandwidth_mb": args.bandwidth_mb,
        },
        env,
        timeout=1800,
    )
    table = {}
    for d, runs in r["runs"].items():
        table[d] = {
            "b1": tps(runs["b1"]),
            "b8": tps(runs["b8"]),
            "prefill": tps(runs["prefill"]),
            "bytes_per_token": runs["bytes_per_token"],
        }
        table[d]["mix_seconds"] = mix_seconds(table[d], r["prefill_len"])
    default = r["default"]
    best = min(table, key=lambda d: table[d]["mix_seconds"])
    other = [d for d in table if d != default][0]

    def parts(d: str) -> str:
        t = table[d]
        return (
            f"{d}: mix {t['mix_seconds']:.2f} s (decode {t['b1']:.1f}, batch-8 {t['b8']:.1f}, "
            f"prefill {t['prefill']:.0f} tok/s)"
        )

    dt.llm_magic = "picks " + parts(default)
    dt.plain = parts(other)
    dt.ratio = table[best]["mix_seconds"] / table[default]["mix_seconds"]
    for part in ("b1", "b8", "prefill"):
        compare_sides(
            dt,
            f"token counts ({part})",
            {d: [x["tokens"] for x in r["runs"][d][part]] for d in table},
        )
    judge(dt, dt.ratio >= 0.9)
    dt.note = (
        f"default chosen: {default} ({r['reason']}); best on the mix: {best}. The mix: {MIX}. "
        f"Batch-1 decode alone: {default} {table[default]['b1'] / table[other]['b1']:.2f}× "
        f"{other}; batch 8: {table[default]['b8'] / table[other]['b8']:.2f}×; "
        f"{r['prefill_len']}-token prefill: "
        f"{table[default]['prefill'] / table[other]['prefill']:.2f}×. Plain model.generate on "
        "both (`--over` batches in llm_magic may use packed products instead: see over_batch)"
    )
    dt.data = {"raw": r, "medians": table}

    bandwidth = r["bandwidth_bytes_per_s"]
    per_token = table[default]["bytes_per_token"]
    limit = bandwidth / per_token
    plain_tps = table[default]["b1"]
    bw.plain = f"model.generate {plain_tps:.1f} tok/s ({default}) = {plain_tps / limit:.0%}"
    if stream is None:
        bw.status = "error: no llm_magic decode figure (the generate_stream row failed)"
    else:
        magic_tps = tps(stream["llm_magic"])
        magic_dtype = stream["llm_magic"][0]["dtype"]
        bw.llm_magic = (
            f"%%llm_generate {magic_tps:.1f} tok/s ({magic_dtype}) = {magic_tps / limit:.0%}"
        )
        bw.ratio = magic_tps / limit
        if compare_sides(bw, "dtypes", {"llm_magic": [magic_dtype], "plain": [default]}):
            bw.status = f"REPORT ({'aim met' if bw.ratio >= 0.4 else 'below aim'})"
    bw.note = (
        f"limit {limit:.1f} tok/s = {bandwidth / 1e9:.1f} GB/s ÷ "
        f"{per_token / 1e6:.0f} MB of weights per token; "
        f"read bandwidth from a {args.bandwidth_mb} MiB float32 torch sum, same run; "
        "llm_magic's figure is generate_stream's, plain's the dtype table's batch-1 decode"
    )
    bw.data = {"bandwidth_bytes_per_s": bandwidth, "bytes_per_token": per_token, "limit_tps": limit}
    return dt, bw, table


def rows_memory(
    env, model_arg: str, plain_path: str, dtype: str, label: str, reps: int
) -> tuple[Row, Row]:
    peak = Row(
        "load_peak_rss",
        "peak RSS during load minus the RSS after imports, over weight bytes",
        "≤ 1.3×",
        model=label,
    )
    unload = Row(
        "unload_rss_returned",
        "RSS returned by `%llm_unload` (model used once), over weight bytes",
        "≥ 0.8×",
        model=label,
    )
    runs = {"llm_magic": [], "plain": []}
    for i in range(reps):
        for side in ("llm_magic", "plain") if i % 2 == 0 else ("plain", "llm_magic"):
            arg = model_arg if side == "llm_magic" else plain_path
            runs[side].append(
                run_worker("memory", {"side": side, "model": arg, "dtype": dtype}, env)
            )

    def peak_ratio(r):
        return (r["peak"] - r["baseline"]) / r["weight_bytes"]

    def returned_ratio(r):
        return (r["before_unload"] - r["after_unload"]) / r["weight_bytes"]

    a, b = (
        med([peak_ratio(r) for r in runs["llm_magic"]]),
        med([peak_ratio(r) for r in runs["plain"]]),
    )
    w = runs["llm_magic"][0]["weight_bytes"]
    peak.llm_magic, peak.plain, peak.ratio = f"{a:.2f}× ({fmt_bytes(a * w)})", f"{b:.2f}×", a
    same_dtype = {side: [r["dtype"] for r in rs] for side, rs in runs.items()}
    compare_sides(peak, "dtypes", same_dtype)
    judge(peak, a <= 1.3)
    anon = med(
        [
            (r["peak_anon"] - r["baseline_anon"]) / r["weight_bytes"]
            for r in runs["llm_magic"]
            if r.get("baseline_anon") is not None
        ]
    )
    peak.note = (
        f"weights {fmt_bytes(w)} ({runs['llm_magic'][0]['dtype']}); "
        "plain = from_pretrained of the same folder"
        + (
            f"; anonymous memory alone (RSS without the checkpoint's mmapped file pages): "
            f"{anon:.2f}×"
            if anon is not None
            else ""
        )
    )
    peak.data = runs

    a, b = (
        med([returned_ratio(r) for r in runs["llm_magic"]]),
        med([returned_ratio(r) for r in runs["plain"]]),
    )
    unload.plain = f"{b:.2f}× (del + gc.collect())"
    unload.llm_magic, unload.ratio = f"{a:.2f}× ({fmt_bytes(a * w)})", a
    compare_sides(unload, "dtypes", same_dtype)
    if not all(r["unload_freed"] and r["cached_after"] == 0 for r in runs["llm_magic"]):
        unload.status = (
            "error: %llm_unload's card says the model is still held, or the cache is not empty"
        )
    judge(unload, a >= 0.8)
    unload.note = "via %llm_unload bench; its card said freed, and the cache was empty after"
    unload.data = runs
    return peak, unload


ENGINE_ROWS = (
    "llamacpp_decode",
    "llamacpp_vs_raw",
    "llamacpp_load",
    "nf4_memory",
    "nf4_decode",
    "decode_bandwidth_engines",
)


def rows_engines(env, gguf: str | None, converted_seconds: float | None, args) -> tuple[Row, ...]:
    """llama.cpp on the .gguf against transformers on the same file, raw llama-cpp-python,
    and the converted load; NF4 against bf16; each engine's share of the bandwidth limit."""
    import importlib.util

    label = "SmolLM2-135M-Instruct Q4_1"
    n = args.engine_new_tokens
    decode = Row(
        "llamacpp_decode",
        f"`.gguf` batch-1 decode, `--engine llama.cpp` vs plain transformers `model.generate` "
        f"on the same file (bf16), greedy, {n} new tokens, end to end",
        "≥ 3.5×",
        model=label,
    )
    raw = Row(
        "llamacpp_vs_raw",
        "`--engine llama.cpp` decode vs raw llama-cpp-python "
        "`create_chat_completion(stream=True)`, same threads and context",
        "≥ 0.9×",
        model=label,
    )
    load = Row(
        "llamacpp_load",
        "`.gguf` load with `--engine llama.cpp` vs today's second (converted) load, new process",
        "≤ 0.5×",
        model=label,
    )
    mem = Row(
        "nf4_memory",
        "`--quantize nf4` footprint vs bf16 (`get_memory_footprint`)",
        "≤ 0.45×",
        model=label,
    )
    nf4 = Row(
        "nf4_decode",
        f"NF4 batch-1 decode tokens/s vs bf16, plain `model.generate`, {n} new tokens",
        "report",
        model=label,
    )
    bw = Row(
        "decode_bandwidth_engines",
        "batch-1 decode as a share of the memory-bandwidth limit, per engine "
        "(measured read bandwidth ÷ weight bytes read per token)",
        "report",
        model=label,
    )
    rows = (decode, raw, load, mem, nf4, bw)
    if gguf is None:
        for r in rows:
            r.status = "skipped (--smoke: needs the SmolLM2 .gguf)"
        return rows
    have_llama = importlib.util.find_spec("llama_cpp") is not None
    have_bnb = importlib.util.find_spec("bitsandbytes") is not None
    common = {"gguf": gguf, "new_tokens": n, "repeats": args.engine_repeats}
    sides: dict = {}
    for side in ("llamacpp", "transformers", "plain") + (("nf4",) if have_bnb else ()):
        if side == "llamacpp" and not have_llama:
            continue
        log(f"  decode: {side}")
        sides[side] = run_worker("engine_decode", {**common, "side": side}, env, timeout=1200)
    if have_llama:
        log("  decode: raw llama-cpp-python")
        sides["raw"] = run_worker(
            "engine_decode",
            {
                **common,
                "side": "raw",
                "threads": sides["llamacpp"]["threads"],
                "n_ctx": sides["llamacpp"]["n_ctx"],
            },
            env,
            timeout=1200,
        )
    rate = {k: tps(v["runs"]) for k, v in sides.items()}

    if have_llama:
        decode.llm_magic = (
            f"{rate['llamacpp']:.1f} tok/s (llama.cpp, {sides['llamacpp']['threads']} threads)"
        )
        decode.plain = f"{rate['plain']:.1f} tok/s (bf16)"
        decode.ratio = rate["llamacpp"] / rate["plain"]
        judge(decode, decode.ratio >= 3.5)
        decode.note = (
            "llm_magic's own transformers engine on the file: "
            f"{rate['transformers']:.1f} tok/s, so llama.cpp is "
            f"{rate['llamacpp'] / rate['transformers']:.1f}× it; "
            "plain side = the converted bf16 weights (what transformers' `gguf_file=` load "
            "dequantizes to). Q4_1 arithmetic is not the dequantized model's: "
            f"texts differ (llama.cpp: {sides['llamacpp']['text_start'][:50]!r}…)"
        )
        raw.llm_magic = decode.llm_magic
        raw.plain = f"{rate['raw']:.1f} tok/s"
        raw.ratio = rate["llamacpp"] / rate["raw"]
        judge(raw, raw.ratio >= 0.9)
        raw_default = tps(sides["raw"]["default_runs"])
        raw.note = (
            f"both streaming, {sides['llamacpp']['threads']} threads, "
            f"n_ctx {sides['llamacpp']['n_ctx']}; raw with its "
            f"defaults (`Llama(model_path)`: {sides['raw']['default_threads']} thread(s), n_ctx "
            f"{sides['raw']['default_n_ctx']}): {raw_default:.1f} tok/s"
        )
        raw.data = {k: sides[k] for k in ("llamacpp", "raw")}
        decode.data = {k: sides[k] for k in ("llamacpp", "transformers", "plain")}

        warm_file_cache(Path(gguf))
        runs = {"llamacpp": [], "converted": []}
        for i in range(args.load_reps):
            runs["llamacpp"].append(run_worker("llamacpp_load", {"gguf": gguf}, env))
            if i < 3:
                runs["converted"].append(
                    run_worker(
                        "gguf", {"side": "llm_magic", "path": gguf, "dtype": "bfloat16"}, env
                    )
                )
        a, b = (
            med([r["seconds"] for r in runs["llamacpp"]]),
            med([r["seconds"] for r in runs["converted"]]),
        )
        load.llm_magic, load.plain, load.ratio = (
            fmt_s(a),
            f"{fmt_s(b)} (converted bf16 copy)",
            a / b,
        )
        judge(load, load.ratio <= 0.5)
        load.note = (
            "library imports before timing on both sides (llama_cpp: "
            f"{fmt_s(med([r['import_seconds'] for r in runs['llamacpp']]))}; "
            "torch + transformers take seconds more)"
            + (
                f"; this run converted the .gguf first ({fmt_s(converted_seconds)}, once)"
                if converted_seconds
                else ""
            )
        )
        load.data = runs
    else:
        for r in (decode, raw, load):
            r.status = (
                'skipped (llama-cpp-python not installed: pip install "llm_magic[llama-cpp]")'
            )

    if have_bnb:
        m_nf4, m_bf16 = sides["nf4"]["memory_bytes"], sides["plain"]["memory_bytes"]
        mem.llm_magic, mem.plain, mem.ratio = (
            fmt_bytes(m_nf4) + " (nf4)",
            fmt_bytes(m_bf16) + " (bf16)",
            m_nf4 / m_bf16,
        )
        judge(mem, mem.ratio <= 0.45)
        mem.note = (
            "embeddings (tied output head) stay bf16; "
            "the linear layers take 4 bits + one fp32 scale per 64"
        )
        nf4.llm_magic, nf4.plain, nf4.ratio = (
            f"{rate['nf4']:.1f} tok/s",
            f"{rate['plain']:.1f} tok/s (bf16)",
            rate["nf4"] / rate["plain"],
        )
        nf4.status = "REPORT"
        nf4.data = {k: sides[k] for k in ("nf4", "plain")}
    else:
        for r in (mem, nf4):
            r.status = 'skipped (bitsandbytes not installed: pip install "llm_magic[quantize]")'

    bandwidth = run_worker("bandwidth", {"megabytes": args.bandwidth_mb}, env)[
        "bandwidth_bytes_per_s"
    ]
    shares = {}
    for k, v in sides.items():
        if k == "raw":
            continue
        limit = bandwidth / v["bytes_per_token"]
        shares[k] = (rate[k] / limit, limit, v["bytes_per_token"])
    names = {
        "llamacpp": "llama.cpp Q4_1",
        "transformers": "transformers engine bf16",
        "plain": "plain bf16",
        "nf4": "NF4",
    }
    bw.llm_magic = "; ".join(
        f"{names[k]} {s[0]:.0%} ({rate[k]:.0f} of {s[1]:.0f} tok/s)" for k, s in shares.items()
    )
    bw.plain = f"{bandwidth / 1e9:.1f} GB/s read"
    lead = "llamacpp" if "llamacpp" in shares else "transformers"
    bw.ratio = shares[lead][0]
    bw.status = "REPORT"
    bw.note = (
        "bytes per token: "
        + ", ".join(f"{names[k]} {s[2] / 1e6:.0f} MB" for k, s in shares.items())
        + f"; the ratio column is {names[lead]}'s share"
    )
    bw.data = {"bandwidth_bytes_per_s": bandwidth, "shares": shares}
    return rows


# ---------------------------------------------------------------- machine and report


def machine_info() -> dict:
    info: dict = {"platform": platform.platform(), "python": platform.python_version()}
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and "cpu" not in info:
                    info["cpu"] = value.strip()
                if key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        info["cpu"] = platform.processor()
    info["cores"] = os.cpu_count()
    info["cores_usable"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    info["flags"] = {
        f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    }
    info["cpu_flags"] = sorted(flags)  # all of them: the machine kind, recorded
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["ram_bytes"] = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    return info


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "llm_magic",
        "torch",
        "transformers",
        "tokenizers",
        "huggingface_hub",
        "accelerate",
        "safetensors",
        "ipython",
        "gguf",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    if out["llm_magic"] is None:
        sys.path.insert(0, str(ROOT))
        import llm_magic

        out["llm_magic"] = llm_magic.__version__
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        )
        out["git"] = commit.stdout.strip() + (
            " (+ uncommitted changes)" if dirty.stdout.strip() else ""
        )
    except OSError:
        pass
    return out


def write_report(
    out: Path, rows: list[Row], machine: dict, vers: dict, meta: dict, dtype_table: dict | None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "machine": machine,
        "versions": vers,
        "rows": [asdict(r) for r in rows],
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str))

    def ratio(r: Row) -> str:
        if r.ratio is None:
            return "–"
        if r.name in ("import_load_ext", "cache_hit", "structured_compile"):
            return fmt_s(r.ratio)
        if r.name in ("decode_vs_bandwidth", "decode_bandwidth_engines", "structured_valid"):
            return f"{r.ratio:.0%}"
        return f"{r.ratio:.2f}×"

    lines = [
        "# Benchmarks: llm_magic side by side with plain transformers",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} in {meta['total_seconds']:.0f} s"
        + (
            " — **smoke run: tiny model, few repetitions; the figures mean little**"
            if meta["smoke"]
            else ""
        )
        + (
            ""
            if meta.get("complete", True)
            else f" — **incomplete: {len(rows)} of {len(ROW_NAMES)} rows so far**"
        )
        + ".",
        "Medians of repeated runs, warm-ups excluded; each load in its own fresh process. "
        "Raw figures: `results.json` beside this file.",
        "",
        "| metric | model | llm_magic | plain transformers | ratio / value | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r.metric,
            r.model,
            r.llm_magic or "–",
            r.plain or "–",
            ratio(r),
            r.target,
            f"**{r.status}**",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Notes:", ""]
    lines += [f"- `{r.name}`: {r.note}" for r in rows if r.note]
    if dtype_table:
        lines += [
            "",
            "## The CPU dtype decision, measured",
            "",
            "Plain `model.generate` (greedy, fixed new tokens) and one forward pass over the "
            "prompt, on the same weights loaded in each dtype:",
            "",
            "| dtype | batch-1 decode tok/s | batch-8 decode tok/s (all sequences) "
            "| prefill tok/s | weight bytes read per token | the mix |",
            "|---|---|---|---|---|---|",
        ]
        for d, t in dtype_table.items():
            lines.append(
                f"| {d} | {t['b1']:.1f} | {t['b8']:.1f} | {t['prefill']:.0f} "
                f"| {t['bytes_per_token'] / 1e6:.1f} MB "
                f"| {t['mix_seconds']:.2f} s |"
            )
        lines += ["", f"The mix: {MIX}."]
    f = machine["flags"]
    lines += [
        "",
        "## Machine",
        "",
        f"- CPU: {machine.get('cpu', '?')}, {machine['cores']} cores "
        f"({machine['cores_usable']} usable)",
        "- flags: "
        + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in f.items())
        + f" ({len(machine.get('cpu_flags', ()))} flags in all in results.json)",
        f"- RAM: {fmt_bytes(machine.get('ram_bytes'))}; load average at start: "
        + ", ".join(f"{x:.2f}" for x in machine.get("load_average_at_start", ())),
        f"- {machine['platform']}, Python {machine['python']}",
        "",
        "## Versions",
        "",
        "- " + ", ".join(f"{k} {v}" for k, v in vers.items() if v),
        "",
    ]
    (out / "BENCHMARKS.md").write_text("\n".join(lines))


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model only, few repetitions (~1 min)")
    p.add_argument(
        "--out", type=Path, default=None, help="where to write BENCHMARKS.md and results.json"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch folder (tiny model, HF_HOME); default: temporary",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="ROW",
        help="measure only these rows (and the rows measured with them), e.g. llamacpp_decode",
    )
    p.add_argument(
        "--engine-new-tokens",
        type=int,
        default=None,
        help="new tokens per decode in the engine rows (128)",
    )
    p.add_argument(
        "--engine-repeats", type=int, default=None, help="repetitions in the engine rows (3)"
    )
    p.add_argument(
        "--plain-hub-timeout",
        type=float,
        default=150,
        help="stop plain transformers' by-id load after this",
    )
    p.add_argument(
        "--server",
        action="store_true",
        help="also the server rows (bench/server_rows.py: starts transformers serve)",
    )
    p.add_argument(
        "--structured",
        action="store_true",
        help="also the typed-answer rows (bench/structured_rows.py: --schema vs none on SmolLM2)",
    )
    p.add_argument(
        "--score",
        action="store_true",
        help="also the scoring and --logprobs rows (bench/score_rows.py: needs lm-eval)",
    )
    p.add_argument(
        "--log",
        action="store_true",
        help="also the run log's rows (bench/log_rows.py: its cost per generation, an "
        "--over of 1,000, --reuse)",
    )
    args = p.parse_args(argv)
    smoke = args.smoke
    # Repetitions and sizes: the full run fits in < 15 min on 2 cores.
    args.reps = 1 if smoke else 4  # cheap rows (import, hub)
    args.load_reps = 1 if smoke else 5  # loads are noisy here: ±15% run to run
    args.new_tokens = 16 if smoke else 128
    args.gen_repeats = 1 if smoke else 5
    args.over_new_tokens = 8 if smoke else 32
    args.over_repeats = (
        1 if smoke else 4
    )  # llm_magic vs plain batched differ by a few %: noise needs a median
    args.dtype_new_tokens = 8 if smoke else 32
    args.batch8_new_tokens = 4 if smoke else 8
    args.dtype_repeats = 1 if smoke else 3
    args.bandwidth_mb = 64 if smoke else 1024
    args.engine_new_tokens = args.engine_new_tokens or 128
    args.engine_repeats = args.engine_repeats or 3
    out = args.out or (Path(tempfile.mkdtemp(prefix="llm_magic_bench_out_")) if smoke else HERE)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llm_magic_bench_"))
    env = worker_env(workdir)
    started = time.perf_counter()
    machine = machine_info()

    gguf = None
    if not smoke:
        sys.path.insert(0, str(ROOT))
        import llm_magic

        gguf = llm_magic.demo_model()
    log("preparing models" + (" (converting the .gguf if not yet converted)" if gguf else ""))
    prep = run_worker(
        "prepare",
        {"workdir": str(workdir), "tiny_hub_id": TINY_HUB_ID, "gguf": gguf},
        env,
        timeout=900,
    )
    if smoke:
        main_arg, main_folder, main_dtype, label = (
            prep["tiny_dir"],
            prep["tiny_dir"],
            prep["tiny_dtype"],
            "tiny GPT-2",
        )
    else:
        main_arg, main_folder, main_dtype = gguf, prep["gguf_folder"], prep["gguf_dtype"]
        label = "SmolLM2-135M-Instruct"

    rows: list[Row] = []
    dtype_table = None
    vers = versions()

    def report() -> None:  # after every row, so an interrupted run still leaves its figures
        rows.sort(key=lambda r: ROW_NAMES.index(r.name) if r.name in ROW_NAMES else len(ROW_NAMES))
        meta = {
            "command": "python bench/run.py"
            + (" --smoke" if smoke else "")
            + (" --score" if args.score else "")
            + (f" --only {' '.join(args.only)}" if args.only else ""),
            "smoke": smoke,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "total_seconds": time.perf_counter() - started,
            "complete": {r.name for r in rows} >= set(ROW_NAMES),
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
            "prepare": prep,
        }
        write_report(out, rows, machine, vers, meta, dtype_table)

    def attempt(names: tuple[str, ...], fn):
        if args.only and not set(names) & set(args.only):
            return
        log(f"measuring {', '.join(names)}")
        try:
            result = fn()
            rows.extend(result if isinstance(result, tuple) else (result,))
        except Exception as e:  # one broken row must not lose the others
            for name in names:
                rows.append(
                    Row(name, name, "", status=f"error: {type(e).__name__}: {str(e)[-300:]}")
                )
        log("  " + "; ".join(f"{r.name} {r.status}" for r in rows[-len(names) :]))
        report()

    attempt(("import_load_ext",), lambda: row_import(env, args.reps))
    attempt(
        ("cold_load",),
        lambda: row_cold_load(
            env, main_folder, main_dtype, label + " (safetensors folder)", args.load_reps
        ),
    )
    attempt(
        ("hub_id_offline",),
        lambda: row_hub(env, prep["tiny_dir"], args.reps, not smoke, args.plain_hub_timeout),
    )
    attempt(
        ("gguf_second_load",),
        lambda: row_gguf(
            env,
            gguf,
            main_dtype,
            prep.get("gguf_converted_now_seconds"),
            args.load_reps,
            1 if smoke else 2,
        ),
    )
    stream_runs: dict = {}

    def generate_rows():
        generated, stream_runs["data"] = rows_generate(env, main_arg, label, args)
        return generated

    attempt(("cache_hit", "generate_stream", "over_batch"), generate_rows)

    def dtype_rows():
        nonlocal dtype_table
        dt, bw, dtype_table = rows_dtype(env, main_folder, label, args, stream_runs.get("data"))
        return dt, bw

    attempt(("dtype_default_vs_best", "decode_vs_bandwidth"), dtype_rows)
    attempt(
        ("load_peak_rss", "unload_rss_returned"),
        lambda: rows_memory(env, main_arg, main_folder, main_dtype, label, 1 if smoke else 2),
    )

    if args.server:
        from server_rows import server_rows

        attempt(
            ("server_stream", "server_over"),
            lambda: tuple(server_rows(16 if smoke else 64, 8 if smoke else 16)),
        )
    attempt(
        ENGINE_ROWS, lambda: rows_engines(env, gguf, prep.get("gguf_converted_now_seconds"), args)
    )
    if args.structured:
        from structured_rows import STRUCTURED_ROWS, structured_rows

        attempt(
            STRUCTURED_ROWS,
            lambda: tuple(
                structured_rows(8 if smoke else 32, 16 if smoke else 64, 1 if smoke else 5)
            ),
        )
    if args.score and not smoke:
        from score_rows import SCORE_ROWS, score_rows

        # In this process: the rows load SmolLM2 once and keep each side on the same object.
        attempt(SCORE_ROWS, lambda: tuple(score_rows(only=tuple(args.only or ()) or None)))
    if args.log:
        from log_rows import LOG_ROWS, log_rows

        attempt(
            LOG_ROWS,
            lambda: tuple(
                log_rows(
                    main_arg,
                    label,
                    prep["tiny_dir"],
                    runs=5 if smoke else 30,
                    new_tokens=8 if smoke else 32,
                    items=200 if smoke else 1000,
                    only=tuple(args.only) if args.only else None,
                )
            ),
        )

    report()
    log(
        f"wrote {out / 'BENCHMARKS.md'} and {out / 'results.json'} "
        f"in {time.perf_counter() - started:.0f} s"
    )
    print(out / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
