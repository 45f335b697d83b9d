"""Benchmark rows for server models (`%llm_load --server URL`), side by side with the raw
`openai` client, against a real `transformers serve --continuous-batching` on 127.0.0.1
serving SmolLM2-135M-Instruct (the folder llm_magic converts the demo .gguf into).

    python bench/server_rows.py [--prompts 64] [--new-tokens 16]    # only these rows

- server_stream: streaming tokens/s of `llm_magic.generate(stream=...)` (what
  `%%llm_generate` runs) vs the raw client streaming the same request; first-token overhead.
- server_over: `--over` N prompts (concurrent requests) vs the same prompts one after
  another with the raw client.
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

QUESTION = "Write a short poem about the sea."


def _raw_stream(client, model: str, n: int) -> dict:
    """The reference: the openai client streaming one chat request, tokens from usage."""
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=n,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content and first is None:
                first = time.perf_counter()
    ended = time.perf_counter()
    return {"tokens": tokens, "seconds": ended - started, "ttft": first - started}


def _ours_stream(model_alias: str, n: int) -> dict:
    import llm_magic

    first = []

    def on_text(piece):
        if not first:
            first.append(time.perf_counter())

    started = time.perf_counter()
    result = llm_magic.generate(
        QUESTION, model=model_alias, greedy=True, max_new_tokens=n, stream=on_text
    )
    ended = time.perf_counter()  # the whole call and its first piece, as the cell sees them
    return {"tokens": result.new_tokens, "seconds": ended - started, "ttft": first[0] - started}


def row_server_stream(url: str, model: str, new_tokens: int, repeats: int) -> Row:
    import openai

    row = Row(
        "server_stream",
        "streaming tokens/s of %%llm_generate on a server vs the raw openai client streaming "
        "the same request (transformers serve --continuous-batching); first-token overhead",
        "≥ 0.95×, first token ≤ +10 ms",
        model="SmolLM2-135M-Instruct on transformers serve",
    )
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    ours, raw = [], []
    _raw_stream(client, model, 4)  # warm-up: the server's first request compiles/allocates
    for i in range(
        repeats
    ):  # interleaved, alternating who goes first: drift on a shared machine hits both alike
        pair = [
            lambda: raw.append(_raw_stream(client, model, new_tokens)),
            lambda: ours.append(_ours_stream("bench_server", new_tokens)),
        ]
        for measure in pair if i % 2 == 0 else pair[::-1]:
            measure()
    tps = lambda runs: statistics.median(r["tokens"] / r["seconds"] for r in runs)  # noqa: E731
    ttft = lambda runs: statistics.median(r["ttft"] for r in runs)  # noqa: E731
    row.llm_magic = f"{tps(ours):.1f} tokens/s, first token {fmt_s(ttft(ours))}"
    row.plain = f"{tps(raw):.1f} tokens/s, first token {fmt_s(ttft(raw))}"
    row.ratio = tps(ours) / tps(raw)
    overhead = ttft(ours) - ttft(raw)
    row.note = f"first-token overhead {overhead * 1000:+.1f} ms (median of {repeats})"
    judge(row, row.ratio >= 0.95 and overhead <= 0.010)
    row.data = {"ours": ours, "raw": raw, "first_token_overhead": overhead}
    return row


def row_server_over(url: str, model: str, prompts: int, new_tokens: int, concurrency: int) -> Row:
    import openai

    import llm_magic

    row = Row(
        "server_over",
        f"--over {prompts} prompts (concurrency {concurrency}) vs the same prompts one after "
        "another (raw openai client), transformers serve --continuous-batching",
        "≥ 4×",
        model="SmolLM2-135M-Instruct on transformers serve",
    )
    items = [f"Write one sentence about the number {i}." for i in range(prompts)]
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    started = time.perf_counter()
    plain_tokens = 0
    for text in items:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": text}],
            max_tokens=new_tokens,
            temperature=0.0,
        )
        plain_tokens += reply.usage.completion_tokens
    plain = time.perf_counter() - started
    started = time.perf_counter()
    results = llm_magic.generate(
        "{item}",
        model="bench_server",
        over=items,
        namespace={},
        greedy=True,
        max_new_tokens=new_tokens,
        concurrency=concurrency,
    )
    ours = time.perf_counter() - started
    assert [r.prompt for r in results] == items and not results.failed
    ours_tokens = sum(r.new_tokens for r in results)
    row.llm_magic = f"{fmt_s(ours)} ({ours_tokens / ours:.1f} tokens/s)"
    row.plain = f"{fmt_s(plain)} ({plain_tokens / plain:.1f} tokens/s)"
    row.ratio = plain / ours
    row.note = (
        f"{prompts} prompts × ≤{new_tokens} new tokens; {ours_tokens} vs {plain_tokens} tokens"
    )
    judge(row, row.ratio >= 4)
    row.data = {
        "ours_seconds": ours,
        "plain_seconds": plain,
        "ours_tokens": ours_tokens,
        "plain_tokens": plain_tokens,
    }
    return row


def server_rows(
    prompts: int = 64,
    new_tokens: int = 16,
    stream_tokens: int = 64,
    repeats: int = 7,
    concurrency: int = 16,
    threads: int | None = None,
    only: tuple[str, ...] | None = None,
) -> list[Row]:
    """Start the server, measure both rows, stop it."""
    from support import servers

    import llm_magic
    from llm_magic import loading

    gguf = llm_magic.demo_model()
    llm_magic.load(gguf, dtype="bfloat16")  # converts the .gguf once (kept in LLM_MAGIC_CACHE)
    folder = loading.converted_folder(Path(gguf), "bfloat16")
    llm_magic.unload(all=True)
    log("starting transformers serve --continuous-batching")
    server = servers.transformers_serve(
        folder, dtype="bfloat16", continuous_batching=True, threads=threads
    )
    try:
        model = servers.served_ids(server.url)[0]
        llm_magic.load(server=server.url, alias="bench_server")
        rows = []
        chosen = [
            ("server_stream", lambda: row_server_stream(server.url, model, stream_tokens, repeats)),
            (
                "server_over",
                lambda: row_server_over(server.url, model, prompts, new_tokens, concurrency),
            ),
        ]
        for name, fn in [(n, f) for n, f in chosen if only is None or n in only]:
            log(f"measuring {name}")
            try:
                rows.append(fn())
            except Exception as e:  # one broken row must not lose the other
                rows.append(
                    Row(name, name, "", status=f"error: {type(e).__name__}: {str(e)[-300:]}")
                )
        return rows
    finally:
        server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=16, help="per --over prompt")
    p.add_argument("--stream-tokens", type=int, default=64)
    p.add_argument(
        "--repeats",
        type=int,
        default=7,
        help="of the stream row: the server's own pace drifts ±10%% run to run",
    )
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="the server's OMP_NUM_THREADS (1 on a busy shared machine)",
    )
    p.add_argument("--only", nargs="*", default=None, help="server_stream and/or server_over")
    p.add_argument("--out", type=Path, default=None, help="also write the rows here as JSON")
    args = p.parse_args(argv)
    rows = server_rows(
        args.prompts,
        args.new_tokens,
        args.stream_tokens,
        args.repeats,
        args.concurrency,
        args.threads,
        args.only,
    )
    for r in rows:
        print(
            f"{r.name}: {r.status}  ours {r.llm_magic}  |  plain {r.plain}  |  "
            f"ratio {r.ratio}  {r.note}"
        )
    if args.out is None:
        return 0
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
