"""Benchmark rows for scoring and log-probabilities, side by side in one run, on
SmolLM2-135M-Instruct in float32 (the demo .gguf, converted once) and the same model
object on every side:

    python bench/score_rows.py [--pairs 128] [--batch-size 16] [--out rows.json] [--merge bench]

- score_vs_forward: scoring N (context, continuation) pairs with `%%llm_score --over`
  vs a batched forward pass written by hand (lm-evaluation-harness's tokenization,
  right-padded batches sorted by length, log-softmax, gather, sum). Target ≥ 0.9×.
- score_vs_lm_eval: the same pairs with lm-evaluation-harness's `HFLM.loglikelihood`
  (same batch size). Report; target ≥ 1×. Every side's figures must agree to 1e-4, or
  the rows fail.
- logprobs_overhead: `--logprobs 5` generation time vs without (transformers engine,
  greedy, same tokens). Target ≤ 1.1×.
- logprobs_overhead_llamacpp: the same on `--engine llama.cpp` (the .gguf as it is).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from run import Row, fmt_s, judge, log  # noqa: E402

SCORE_ROWS = (
    "score_vs_forward",
    "score_vs_lm_eval",
    "logprobs_overhead",
    "logprobs_overhead_llamacpp",
)
QUESTION = "Write a short poem about the sea."
_SENTENCES = [
    "The capital of France is Paris, a city on the river Seine.",
    "Language models predict the next token from the ones before it.",
    "A notebook cell holds code, text or a prompt for a model.",
    "The quick brown fox jumps over the lazy dog near the old farm.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The library opens at nine in the morning and closes at six.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "She planted tomatoes, beans and a row of sunflowers in spring.",
]


def make_pairs(n: int) -> list[tuple[str, str]]:
    """N (context, continuation) pairs: sentences split after 2 to 9 words, so contexts
    and continuations both vary in length."""
    pairs = []
    for i in range(n):
        words = _SENTENCES[i % len(_SENTENCES)].split(" ")
        cut = 2 + (i * 3) % min(8, len(words) - 2)
        pairs.append((" ".join(words[:cut]), " " + " ".join(words[cut:])))
    return pairs


def hand_written(model, tokenizer, pairs, batch_size: int) -> list[float]:
    """The reference a user would write: lm-evaluation-harness's tokenization, batched
    right-padded forward passes (longest first), log-softmax, gather, sum."""
    import torch

    encoded = []
    for context, continuation in pairs:
        whole = tokenizer.encode(context + continuation)
        head = tokenizer.encode(context)
        encoded.append((head, whole[len(head) :]))
    order = sorted(range(len(pairs)), key=lambda i: -sum(map(len, encoded[i])))
    totals = [0.0] * len(pairs)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        rows = [(encoded[i][0] + encoded[i][1])[:-1] for i in batch]
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        for row, i in enumerate(batch):
            continuation = encoded[i][1]
            end = len(rows[row])
            logprobs = torch.log_softmax(logits[row, end - len(continuation) : end].float(), -1)
            picked = logprobs.gather(1, torch.tensor(continuation)[:, None])
            totals[i] = float(picked.sum())
    return totals


def ours(shell, pairs, batch_size: int) -> list[float]:
    """%%llm_score --over the pairs, as a notebook runs it."""
    shell.user_ns["pairs"] = pairs
    results = shell.run_cell_magic(
        "llm_score",
        f"-m bench --over pairs --context '{{item[0]}}' --raw --batch-size {batch_size}",
        "{item[1]}",
    )
    assert len(results) == len(pairs), "the scoring was cut short"
    return [r.logprob for r in results]


def lm_eval_side(model, tokenizer, pairs, batch_size: int) -> tuple[list[float], float]:
    """(HFLM.loglikelihood's figures, seconds): the harness made once, outside the clock."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    # Its logits cache scores the pairs that are splits of one text from a single pass,
    # and gets the shorter continuations wrong (it gathers their leading positions): off,
    # every pair is scored as the tests compare them.
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, logits_cache=False)
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i)
        for i, p in enumerate(pairs)
    ]
    started = time.perf_counter()
    figures = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    return figures, time.perf_counter() - started


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def rows_score(shell, handle, n: int, batch_size: int, repeats: int) -> list[Row]:
    pairs = make_pairs(n)
    model, tokenizer = handle.model, handle.tokenizer
    forward = Row(
        "score_vs_forward",
        f"`%%llm_score --over` {n} (context, continuation) pairs vs a batched forward pass "
        f"written by hand (batch {batch_size}, right-padded, log-softmax + gather)",
        "≥ 0.9×",
        model="SmolLM2-135M-Instruct float32",
    )
    harness = Row(
        "score_vs_lm_eval",
        f"`%%llm_score --over` {n} pairs vs lm-evaluation-harness `HFLM.loglikelihood` "
        f"on the same pairs and model object (batch {batch_size})",
        "report; ≥ 1×",
        model="SmolLM2-135M-Instruct float32",
    )
    ours(shell, pairs[:batch_size], batch_size)  # warm-ups: the first pass allocates
    hand_written(model, tokenizer, pairs[:batch_size], batch_size)
    mine, plain, lm = [], [], []
    figures: dict[str, list[float]] = {}
    for i in range(repeats):  # interleaved, alternating who goes first
        sides = [
            ("ours", lambda: ours(shell, pairs, batch_size), mine),
            ("plain", lambda: hand_written(model, tokenizer, pairs, batch_size), plain),
        ]
        for name, fn, seconds in sides if i % 2 == 0 else sides[::-1]:
            figures[name], took = timed(fn)
            seconds.append(took)
        figures["lm_eval"], took = lm_eval_side(model, tokenizer, pairs, batch_size)
        lm.append(took)
    gap_plain = max(abs(a - b) for a, b in zip(figures["ours"], figures["plain"], strict=True))
    gap_lm = max(abs(a - b) for a, b in zip(figures["ours"], figures["lm_eval"], strict=True))
    m, p, h = statistics.median(mine), statistics.median(plain), statistics.median(lm)
    forward.llm_magic = harness.llm_magic = f"{fmt_s(m)} ({n / m:.0f} pairs/s)"
    forward.plain = f"{fmt_s(p)} ({n / p:.0f} pairs/s)"
    harness.plain = f"{fmt_s(h)} ({n / h:.0f} pairs/s)"
    forward.ratio, harness.ratio = p / m, h / m
    forward.note = (
        f"median of {repeats}; max |difference| of the log-likelihoods {gap_plain:.1e}; "
        "llm_magic keeps each token's record and its 5 likeliest alternatives too"
    )
    harness.note = (
        f"median of {repeats}; max |difference| from lm-evaluation-harness {gap_lm:.1e} "
        "(its HFLM made once, outside the clock)"
    )
    for row, gap in ((forward, gap_plain), (harness, gap_lm)):
        if gap > 1e-4:
            row.status = f"error: the log-likelihoods differ between the sides by {gap:.1e}"
    judge(forward, forward.ratio >= 0.9)
    judge(harness, harness.ratio >= 1.0)
    forward.data = {"ours": mine, "plain": plain, "max_difference": gap_plain}
    harness.data = {"ours": mine, "lm_eval": lm, "max_difference": gap_lm}
    return [forward, harness]


def row_logprobs(name: str, model: str, label: str, new_tokens: int, repeats: int) -> Row:
    import llm_magic

    row = Row(
        name,
        f"`%%llm_generate --logprobs 5` vs without: greedy, {new_tokens} new tokens, "
        "batch 1, end to end",
        "≤ 1.1×",
        model=label,
    )
    runs: dict[str, list] = {"with": [], "without": []}
    for logprobs in (None, 5):  # warm-up
        llm_magic.generate(QUESTION, model=model, greedy=True, max_new_tokens=4, logprobs=logprobs)
    for i in range(repeats):
        sides = [("without", None), ("with", 5)]
        for side, logprobs in sides if i % 2 == 0 else sides[::-1]:
            result, took = timed(
                lambda lp=logprobs: llm_magic.generate(
                    QUESTION, model=model, greedy=True, max_new_tokens=new_tokens, logprobs=lp
                )
            )
            runs[side].append({"tokens": result.new_tokens, "seconds": took})
    counts = {side: {r["tokens"] for r in values} for side, values in runs.items()}
    with_s = statistics.median(r["seconds"] for r in runs["with"])
    without_s = statistics.median(r["seconds"] for r in runs["without"])
    tokens = runs["with"][0]["tokens"]
    row.llm_magic = f"{fmt_s(with_s)} ({tokens / with_s:.1f} tokens/s)"
    row.plain = f"{fmt_s(without_s)} ({tokens / without_s:.1f} tokens/s) without --logprobs"
    row.ratio = with_s / without_s
    row.note = f"median of {repeats}; {tokens} tokens on each side"
    if counts["with"] != counts["without"]:
        row.status = f"error: tokens differ between the sides: {counts}"
    judge(row, row.ratio <= 1.1)
    row.data = runs
    return row


def score_rows(
    pairs: int = 128,
    batch_size: int = 16,
    repeats: int = 3,
    new_tokens: int = 64,
    only: tuple[str, ...] | None = None,
) -> list[Row]:
    """Load SmolLM2 (float32, and the .gguf with llama.cpp), measure the rows."""
    from IPython.core.interactiveshell import InteractiveShell

    import llm_magic

    gguf = llm_magic.demo_model()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    handle = llm_magic.load(gguf, dtype="float32", alias="bench", quiet=True)
    wanted = lambda names: only is None or any(n in only for n in names)  # noqa: E731
    rows: list[Row] = []

    def attempt(names, fn):
        if not wanted(names):
            return
        log(f"measuring {', '.join(names)}")
        try:
            made = fn()
            rows.extend(made if isinstance(made, list) else [made])
        except Exception as e:  # one broken row must not lose the others
            rows.extend(
                Row(n, n, "", status=f"error: {type(e).__name__}: {str(e)[-300:]}") for n in names
            )

    attempt(
        ("score_vs_forward", "score_vs_lm_eval"),
        lambda: rows_score(shell, handle, pairs, batch_size, repeats),
    )
    attempt(
        ("logprobs_overhead",),
        lambda: row_logprobs(
            "logprobs_overhead",
            "bench",
            "SmolLM2-135M-Instruct float32",
            new_tokens,
            max(repeats, 5),
        ),
    )
    if wanted(("logprobs_overhead_llamacpp",)):
        llm_magic.load(gguf, engine="llama.cpp", alias="bench_lcpp", quiet=True)
    attempt(
        ("logprobs_overhead_llamacpp",),
        lambda: row_logprobs(
            "logprobs_overhead_llamacpp",
            "bench_lcpp",
            "SmolLM2-135M-Instruct Q4_1 (llama.cpp)",
            new_tokens * 2,
            max(repeats, 5),
        ),
    )
    shell.run_line_magic("unload_ext", "llm_magic")
    return [r for r in rows if only is None or r.name in only]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--only", nargs="*", default=None, help=", ".join(SCORE_ROWS))
    p.add_argument("--out", type=Path, default=None, help="also write the rows here as JSON")
    p.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="put the rows into DIR/BENCHMARKS.md and DIR/results.json (e.g. bench)",
    )
    args = p.parse_args(argv)
    rows = score_rows(
        args.pairs,
        args.batch_size,
        args.repeats,
        args.new_tokens,
        tuple(args.only) if args.only else None,
    )
    for r in rows:
        print(
            f"{r.name}: {r.status}  ours {r.llm_magic}  |  other {r.plain}  |  "
            f"ratio {r.ratio}  {r.note}"
        )
    if args.merge is not None:
        from structured_rows import merge

        given = sys.argv[1:] if argv is None else list(argv)
        command = " ".join(["python bench/score_rows.py", *given])
        merge(rows, args.merge, command, "The scoring rows (`score_*`, `logprobs_*`)", "score_rows")
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
