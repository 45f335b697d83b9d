"""Benchmark rows for typed answers (`--schema`, `--choice`, `--regex`) on SmolLM2-135M-Instruct
(the demo .gguf, transformers engine, its default dtype), side by side with the same
generation without a format, in one run:

    python bench/structured_rows.py [--prompts 32] [--new-tokens 64] [--out FILE] [--merge DIR]

(`--merge bench` puts the rows into bench/BENCHMARKS.md and results.json beside the rows of
the last full run, replacing earlier typed-answer rows, and says when they were measured.)

- structured_decode: decode time per new token with a JSON schema enforced vs without
  (batch 1, greedy; the first token, which carries the prompt's read, left out of both).
- structured_compile: compiling a schema for the model's tokenizer, the first time and
  from the cache (the tokenizer's one-time conversion said apart).
- structured_over: `--over` N extraction prompts with the schema vs without.
- structured_valid: the share of those N answers that are valid JSON conforming to the
  schema, with and without it (the prompts ask for JSON either way).
- structured_backend: llguidance (the backend llm_magic uses) vs xgrammar on the same
  replayed answer (no model): mask time per token, compile first and cached; skipped
  when xgrammar is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from run import Row, fmt_s, judge, log, machine_info  # noqa: E402

# Runs of the --over row on each side (each is N prompts).
OVER_REPEATS = 2
STRUCTURED_ROWS = (
    "structured_decode",
    "structured_compile",
    "structured_over",
    "structured_valid",
    "structured_backend",
)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "mood": {"enum": ["happy", "sad", "neutral"]},
        "hobbies": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "mood", "hobbies"],
    "additionalProperties": False,
}
PROMPT = (
    "Extract the person's name, age, mood (happy, sad or neutral) and hobbies as JSON "
    "with the keys name, age, mood, hobbies, from this text:\n{item}"
)
_NAMES = ["Maria", "Tom", "Aiko", "Pedro", "Fatima", "Lars", "Chen", "Olga"]
_MOODS = [("cheerful", "happy"), ("gloomy", "sad"), ("calm", "neutral"), ("delighted", "happy")]
_HOBBIES = [
    ("chess", "hiking"),
    ("fishing", "painting"),
    ("the piano", "tennis"),
    ("cooking", "running"),
]


def texts(n: int) -> list[str]:
    """N short texts about people, varied in name, age, mood and hobbies."""
    out = []
    for i in range(n):
        name, (mood, _), (a, b) = _NAMES[i % 8], _MOODS[i % 4], _HOBBIES[(i // 2) % 4]
        age = 18 + (i * 7) % 60
        out.append(
            [
                f"{name} is {age}, {mood}, and loves {a} and {b}.",
                f"{name}, aged {age}, seems {mood} today; {name} enjoys {a} and {b}.",
            ][i % 2]
        )
    return out


def _short_s(seconds: float) -> str:
    """fmt_s, with microseconds for what a cache answers in."""
    return f"{seconds * 1e6:.0f} µs" if seconds < 0.001 else fmt_s(seconds)


def _decode_seconds_per_token(result) -> float:
    return (result.seconds - result.time_to_first_token) / max(result.new_tokens - 1, 1)


def row_decode(model: str, new_tokens: int, repeats: int) -> Row:
    import llm_magic

    row = Row(
        "structured_decode",
        "decode time per new token with a JSON schema enforced (llguidance) vs the same "
        f"generation without, batch 1, greedy, ≤ {new_tokens} new tokens",
        "≤ 1.10×",
        model="SmolLM2-135M-Instruct",
    )
    prompt = PROMPT.replace("{item}", texts(1)[0])
    kwargs = dict(model=model, greedy=True, max_new_tokens=new_tokens)
    llm_magic.generate(prompt, schema=SCHEMA, **kwargs)  # warm-up (and the grammar compiled)
    llm_magic.generate(prompt, **kwargs)
    free, held = [], []
    for i in range(repeats):  # interleaved, alternating who goes first
        pair = [
            lambda: free.append(llm_magic.generate(prompt, **kwargs)),
            lambda: held.append(llm_magic.generate(prompt, schema=SCHEMA, **kwargs)),
        ]
        for measure in pair if i % 2 == 0 else pair[::-1]:
            measure()
    free_s = statistics.median(map(_decode_seconds_per_token, free))
    held_s = statistics.median(map(_decode_seconds_per_token, held))
    row.llm_magic = (
        f"{fmt_s(held_s)} per token ({held[0].new_tokens} tokens, valid {held[0].valid})"
    )
    row.plain = f"{fmt_s(free_s)} per token ({free[0].new_tokens} tokens, no format)"
    row.ratio = held_s / free_s
    row.note = f"median of {repeats} each, interleaved; the dtype: {held[0].dtype}"
    judge(row, row.ratio <= 1.10)
    row.data = {
        "with_schema": [(r.seconds, r.time_to_first_token, r.new_tokens) for r in held],
        "without": [(r.seconds, r.time_to_first_token, r.new_tokens) for r in free],
    }
    return row


def row_compile(handle) -> Row:
    from llm_magic.engines import grammar, transformers
    from llm_magic.structured import AnswerFormat

    row = Row(
        "structured_compile",
        "compiling a JSON schema for the model's tokenizer (llguidance): the first time, and "
        "again from the cache (a second cell with the same schema)",
        "cached ≤ 10 ms",
        model="SmolLM2-135M-Instruct",
    )
    tokenizer, model = handle.tokenizer, handle.model
    width = max(transformers._output_width(model), len(tokenizer))
    eos, _ = transformers._special_ids(model, tokenizer)
    grammar._CACHE.pop(tokenizer, None)
    started = time.perf_counter()
    grammar.ready_matcher(AnswerFormat.of_choices(["a", "b"]), tokenizer, width, eos)
    converting = time.perf_counter() - started  # the tokenizer's conversion (+ a tiny grammar)
    fmt = AnswerFormat.of_schema(SCHEMA)
    firsts, cached = [], []
    for i in range(5):
        fresh = AnswerFormat.of_schema(SCHEMA | {"title": f"person {i}"})  # not cached yet
        started = time.perf_counter()
        grammar.ready_matcher(fresh, tokenizer, width, eos)
        firsts.append(time.perf_counter() - started)
    grammar.ready_matcher(fmt, tokenizer, width, eos)
    for _ in range(20):
        started = time.perf_counter()
        grammar.ready_matcher(fmt, tokenizer, width, eos)
        cached.append(time.perf_counter() - started)
    first, again = statistics.median(firsts), statistics.median(cached)
    row.llm_magic = f"first {fmt_s(first)}, cached {_short_s(again)}"
    row.plain = f"tokenizer conversion, once per model: {fmt_s(converting)}"
    row.ratio = again
    row.note = (
        f"first: median of 5 new schemas ({fmt_s(min(firsts))}–{fmt_s(max(firsts))}); "
        f"cached: median of 20, max {_short_s(max(cached))}"
    )
    judge(row, again <= 0.010)
    row.data = {"first": firsts, "cached": cached, "tokenizer_conversion": converting}
    return row


def rows_over(model: str, prompts: int, new_tokens: int) -> tuple[Row, Row]:
    import llm_magic
    from llm_magic.structured import AnswerFormat

    items = texts(prompts)
    kwargs = dict(greedy=True, max_new_tokens=new_tokens)
    sides = {"held": {"schema": SCHEMA}, "free": {}}
    # Warm-up: a first batch of 8 pays one-time costs (the batch shapes' kernels) that
    # would land on whichever side went first.
    for extra in sides.values():
        llm_magic.generate(PROMPT, model=model, over=items[:8], **extra, **kwargs)
    answers: dict[str, Any] = {}
    seconds: dict[str, list[float]] = {"held": [], "free": []}
    for i in range(OVER_REPEATS):  # interleaved, alternating who goes first
        for side in sides if i % 2 == 0 else list(sides)[::-1]:
            started = time.perf_counter()
            answers[side] = llm_magic.generate(
                PROMPT, model=model, over=items, **sides[side], **kwargs
            )
            seconds[side].append(time.perf_counter() - started)
    held, free = answers["held"], answers["free"]
    held_s, free_s = statistics.median(seconds["held"]), statistics.median(seconds["free"])
    fmt = AnswerFormat.of_schema(SCHEMA)
    free_valid = sum(fmt.parse(r.text).valid for r in free)
    free_strict = sum(_strict_json(r.text) for r in free)
    held_valid = sum(bool(r.valid) for r in held)
    held_tokens, free_tokens = sum(r.new_tokens for r in held), sum(r.new_tokens for r in free)
    over = Row(
        "structured_over",
        f"--over {prompts} extraction prompts with the JSON schema enforced vs without "
        f"(batches of 8, greedy, ≤ {new_tokens} new tokens)",
        "report",
        model="SmolLM2-135M-Instruct",
        llm_magic=f"{fmt_s(held_s)} ({held_tokens / held_s:.1f} tokens/s, {held_tokens} tokens)",
        plain=f"{fmt_s(free_s)} ({free_tokens / free_s:.1f} tokens/s, {free_tokens} tokens)",
        ratio=held_s / free_s,
        status="REPORT",
        note=f"time per new token {held_s / held_tokens / (free_s / free_tokens):.2f}× "
        f"(the answers differ in length); median of {OVER_REPEATS} each, interleaved, "
        "after a warm-up batch on each side",
        data={"with_seconds": seconds["held"], "without_seconds": seconds["free"]},
    )
    valid = Row(
        "structured_valid",
        f"valid answers (JSON conforming to the schema) among the same {prompts} prompts, "
        "with the schema enforced vs without (the prompt asks for JSON either way)",
        "report",
        model="SmolLM2-135M-Instruct",
        llm_magic=f"{held_valid}/{prompts} valid",
        plain=f"{free_valid}/{prompts} valid ({free_strict} were JSON as a whole)",
        ratio=held_valid / prompts,
        status="REPORT",
        note="without: the answer's JSON found in code fences or prose counts if it conforms; "
        f"first answer without: {free[0].text[:80]!r}",
        data={
            "with": [r.text for r in held],
            "without": [r.text for r in free],
            "cut_off_with": sum(r.stop_reason == "length" for r in held),
        },
    )
    return over, valid


def _strict_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def row_backend(handle) -> Row:
    """llguidance vs xgrammar on the same answer replayed token by token (no model)."""
    row = Row(
        "structured_backend",
        "grammar backends on the same replayed answer (no model): mask + apply time per token, "
        "schema compile first and cached; llguidance (used) vs xgrammar",
        "report",
        model="SmolLM2-135M-Instruct tokenizer",
    )
    try:
        import xgrammar as xgr
    except ImportError:
        row.status = "skipped (xgrammar not installed)"
        return row
    import llguidance
    import llguidance.hf
    import numpy as np
    import torch

    tokenizer = handle.tokenizer
    width = max(handle.model.get_output_embeddings().weight.shape[0], len(tokenizer))
    answer = json.dumps(
        {"name": "Maria Lopez", "age": 34, "mood": "happy", "hobbies": ["chess", "hiking"]}
    )
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    started = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=width)
    x_convert = time.perf_counter() - started
    compiler = xgr.GrammarCompiler(info, cache_enabled=True)
    started = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA))
    x_first = time.perf_counter() - started
    started = time.perf_counter()
    compiler.compile_json_schema(json.dumps(SCHEMA))
    x_cached = time.perf_counter() - started
    started = time.perf_counter()
    vocabulary = llguidance.hf.from_tokenizer(tokenizer, n_vocab=width)
    l_convert = time.perf_counter() - started
    started = time.perf_counter()
    text = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
    ready = llguidance.LLMatcher(vocabulary, text)
    l_first = time.perf_counter() - started
    started = time.perf_counter()
    ready.deep_copy()
    l_cached = time.perf_counter() - started

    def replay_x() -> float:
        matcher = xgr.GrammarMatcher(compiled)
        mask = xgr.allocate_token_bitmask(1, width)
        scores = torch.zeros(1, width)
        started = time.perf_counter()
        for token in ids:
            matcher.fill_next_token_bitmask(mask, 0)
            xgr.apply_token_bitmask_inplace(scores, mask)
            matcher.accept_token(token)
        return (time.perf_counter() - started) / len(ids)

    def replay_l() -> float:
        import llguidance.torch as lt

        matcher = ready.deep_copy()
        mask = lt.allocate_token_bitmask(1, width)
        scores = torch.zeros(1, width)
        started = time.perf_counter()
        for token in ids:
            lt.fill_next_token_bitmask(matcher, mask, 0)
            bits = np.unpackbits(mask.numpy().view(np.uint8), axis=-1, bitorder="little")
            scores.masked_fill_(~torch.from_numpy(bits[:, :width].astype(bool)), float("-inf"))
            matcher.consume_token(token)
        return (time.perf_counter() - started) / len(ids)

    replay_x(), replay_l()  # warm-ups
    x_tok = statistics.median(replay_x() for _ in range(7))
    l_tok = statistics.median(replay_l() for _ in range(7))
    row.llm_magic = (
        f"llguidance: {fmt_s(l_tok)} per token; compile {fmt_s(l_first)}, cached "
        f"{_short_s(l_cached)}; tokenizer {fmt_s(l_convert)}"
    )
    row.plain = (
        f"xgrammar: {fmt_s(x_tok)} per token; compile {fmt_s(x_first)}, cached "
        f"{_short_s(x_cached)}; tokenizer {fmt_s(x_convert)}"
    )
    row.ratio = l_tok / x_tok
    row.status = "REPORT"
    row.note = f"{len(ids)} tokens replayed, median of 7 (ratio: llguidance / xgrammar per token)"
    row.data = {
        "llguidance": {"per_token": l_tok, "first": l_first, "cached": l_cached},
        "xgrammar": {"per_token": x_tok, "first": x_first, "cached": x_cached},
    }
    return row


def structured_rows(
    prompts: int = 32,
    new_tokens: int = 64,
    repeats: int = 5,
    only: tuple[str, ...] | None = None,
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """The rows (`only`: these; structured_over also makes structured_valid), each handed
    to `on_row` as it is measured, so a stopped run keeps what it measured."""
    import llm_magic

    handle = llm_magic.load(llm_magic.demo_model(), alias="bench_structured", quiet=True)
    rows = []
    chosen = [
        ("structured_decode", lambda: (row_decode("bench_structured", new_tokens, repeats),)),
        ("structured_compile", lambda: (row_compile(handle),)),
        ("structured_over", lambda: rows_over("bench_structured", prompts, new_tokens)),
        ("structured_backend", lambda: (row_backend(handle),)),
    ]
    for name, fn in chosen:
        if only and name not in only:
            continue
        log(f"measuring {name}")
        try:
            made = tuple(fn())
        except Exception as e:  # one broken row must not lose the others
            made = (Row(name, name, "", status=f"error: {type(e).__name__}: {str(e)[-300:]}"),)
        rows.extend(made)
        for row in made:
            if on_row is not None:
                on_row(row)
    llm_magic.unload(all=True)
    return rows


def _cell_ratio(r: Row) -> str:
    if r.ratio is None:
        return "–"
    if r.name == "structured_compile":
        return _short_s(r.ratio)
    if r.name == "structured_valid":
        return f"{r.ratio:.0%}"
    return f"{r.ratio:.2f}×"


def _table_line(r: Row) -> str:
    cells = [r.metric, r.model, r.llm_magic or "–", r.plain or "–", _cell_ratio(r), r.target]
    cells.append(f"**{r.status}**")
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def merge(
    rows: list[Row],
    into: Path,
    command: str,
    label: str = "The typed-answer rows (`structured_*`)",
    key: str = "structured_rows",
) -> None:
    """Put `rows` into `into`/results.json and BENCHMARKS.md beside the full run's rows:
    earlier rows of the same names replaced, the others kept as they are, and a line under
    the header (`label`: ...; in results.json's meta under `key`) saying when and how these
    were measured."""
    from dataclasses import asdict

    names = {r.name for r in rows}
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    # Merged rows may come from another machine kind than the full run's (see Machine).
    machine = machine_info()
    simd = [k for k, v in machine["flags"].items() if v and k != "amx_tile"]
    said = (
        f"{label}: `{command}` on {when}, load average {load}, on {machine.get('cpu', '?')} "
        f"({machine['cores']} cores; {', '.join(simd) or 'no avx2'})."
    )
    results = into / "results.json"
    payload = json.loads(results.read_text())
    earlier = {
        "| " + r["metric"].replace("|", "\\|") for r in payload["rows"] if r["name"] in names
    }
    payload["rows"] = [r for r in payload["rows"] if r["name"] not in names]
    payload["rows"] += [asdict(r) for r in rows]
    payload.setdefault("meta", {})[key] = said
    results.write_text(json.dumps(payload, indent=1, default=str))

    report = into / "BENCHMARKS.md"
    lines = [
        line
        for line in report.read_text().splitlines()
        if not line.startswith(f"{label}:")
        and not any(line.startswith(f"- `{n}`:") for n in names)
        and line.split(" | ")[0] not in earlier
    ]
    header = next(i for i, line in enumerate(lines) if line.startswith("Generated by"))
    lines.insert(header + 1, said)
    # The first table (the rows) and its notes; the dtype table further down is another.
    table_end = next(i for i, line in enumerate(lines) if line.startswith("| metric |"))
    while lines[table_end + 1].startswith("|"):
        table_end += 1
    lines[table_end + 1 : table_end + 1] = [_table_line(r) for r in rows]
    notes_end = table_end
    for i in range(table_end + 1, len(lines)):
        if lines[i].startswith("## "):
            break
        if lines[i].startswith("- `"):
            notes_end = i
    lines[notes_end + 1 : notes_end + 1] = [f"- `{r.name}`: {r.note}" for r in rows if r.note]
    report.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="of the decode row")
    p.add_argument("--out", type=Path, default=None, help="also write the rows here as JSON")
    p.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="put the rows into DIR/BENCHMARKS.md and DIR/results.json (e.g. bench)",
    )
    p.add_argument("--only", nargs="*", default=None, help="these rows alone")
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python bench/structured_rows.py", *given])

    def on_row(r: Row) -> None:  # printed, and merged, as each row is measured
        print(
            f"{r.name}: {r.status}  ours {r.llm_magic}  |  plain {r.plain}  |  "
            f"ratio {r.ratio}  {r.note}",
            flush=True,
        )
        if args.merge is not None:
            merge([r], args.merge, command)

    only = tuple(args.only) if args.only else None
    rows = structured_rows(args.prompts, args.new_tokens, args.repeats, only, on_row)
    if args.out is not None:
        from dataclasses import asdict

        args.out.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "settings": {k: v for k, v in vars(args).items() if k != "out"},
                    "rows": [asdict(r) for r in rows],
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
