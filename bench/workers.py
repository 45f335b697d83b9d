"""Measurements that run in their own fresh process, one job per invocation.

    python bench/workers.py NAME 'JSON-ARGS'

prints one line `BENCH_RESULT {json}` at the end. bench/run.py starts these, so imports,
the model cache and the allocator's state never leak from one measurement into the next.
Every figure is measured here, on both sides (llm_magic and the plain transformers code a
user would otherwise write); run.py only takes medians, ratios and writes the report.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

MARK = "BENCH_RESULT "

# Prompts: an instruct model gets them through its chat template on both sides.
STORY_PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
# Prompts asking for long answers (one still ends early: every side stops rows at eos).
OVER_PROMPTS = [
    "Describe the water cycle in detail, step by step.",
    "Explain in detail how a bicycle works, part by part.",
    "Write a long poem about autumn leaves.",
    "What is a prime number? Explain in detail and give many examples.",
    "Tell a long story about a lost cat.",
    "Explain in detail why the sky is blue.",
    "List twenty uses of a paperclip, with a sentence on each.",
    "Describe a busy market in the morning in rich detail.",
]


# ---------------------------------------------------------------- process memory


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs), so that the peak
    read afterwards excludes the imports."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def anon_bytes() -> int | None:
    """RssAnon: the part of RSS that is not file pages (a mmapped checkpoint's pages are)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakSampler:
    """Samples RSS (and its anonymous part) from a thread every ~2 ms (a check on VmHWM,
    and its stand-in where clear_refs is not allowed)."""

    def __init__(self) -> None:
        self.peak = rss_bytes()
        self.peak_anon = anon_bytes() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self.peak_anon = max(self.peak_anon, anon_bytes() or 0)
            time.sleep(0.002)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def measure_peak(fn):
    """Run fn(); returns (its value, baseline RSS, peak RSS during it, and the same two for
    anonymous memory alone)."""
    gc.collect()
    baseline, baseline_anon = rss_bytes(), anon_bytes()
    hwm_ok = reset_hwm()
    with PeakSampler() as sampler:
        value = fn()
    peak = sampler.peak
    if hwm_ok:
        peak = max(peak, hwm_bytes() or 0)
    return value, baseline, peak, {"baseline_anon": baseline_anon, "peak_anon": sampler.peak_anon}


# ---------------------------------------------------------------- model helpers


def import_heavy() -> None:
    """torch + transformers, imported before any timed section on both sides."""
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def plain_load(path: str, dtype: str, **kwargs):
    """The code a user writes without llm_magic."""
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_magic.loading import dtype_keyword

    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        path, **{dtype_keyword(): torch_dtype(dtype)}, **kwargs
    )
    return model, tokenizer


def weight_bytes(model) -> int:
    return int(model.get_memory_footprint())


def bytes_read_per_token(model) -> int:
    """Bytes of weights one decode step reads: every parameter once (a tied embedding is
    read by the LM head), except an untied input embedding, of which one row is read."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or emb.weight.data_ptr() != head.weight.data_ptr():
        total -= emb.weight.numel() * emb.weight.element_size()
    return total


def chat_inputs(tokenizer, prompts: list[str]):
    """Tokenized prompts, through the chat template when the tokenizer has one (what
    llm_magic does for instruct models), left-padded for batches."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return tokenizer(prompts, return_tensors="pt", padding=True)


def plain_generate(
    model, tokenizer, prompts: list[str], new_tokens: int, until_eos: bool = False
) -> tuple[int, float, str]:
    """Greedy model.generate, end to end (tokenize, generate, decode). By default exactly
    `new_tokens` new tokens per prompt; with `until_eos` each row stops at the model's eos
    as llm_magic's `--over` rows do, and is counted as llm_magic counts it (up to and
    including the eos). Returns (tokens generated in all, seconds, first text)."""
    import torch

    started = time.perf_counter()
    inputs = chat_inputs(tokenizer, prompts)
    exact = {} if until_eos else {"min_new_tokens": new_tokens}
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            **exact,
        )
    generated = out[:, inputs["input_ids"].shape[1] :]
    text = tokenizer.decode(generated[0], skip_special_tokens=True)
    seconds = time.perf_counter() - started
    if not until_eos:
        return int(generated.numel()), seconds, text
    eos = model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [tokenizer.eos_token_id])
    tokens = 0
    for row in generated.tolist():
        ends = [i for i, t in enumerate(row) if t in eos_ids]
        tokens += ends[0] + 1 if ends else len(row)
    return tokens, seconds, text


def prefill_seconds(model, tokenizer, length: int) -> float:
    """One forward pass over a `length`-token prompt (prompt processing)."""
    import torch

    text = " ".join([STORY_PROMPT] * 200)
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :length]
    assert ids.shape[1] == length, "prompt too short"
    with torch.inference_mode():
        started = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        return time.perf_counter() - started


def read_bandwidth(megabytes: int = 1024, repeats: int = 5) -> float:
    """Bytes/s of a large float32 tensor sum (a read-only stream through memory)."""
    import torch

    t = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    t.sum()  # warm-up: page in, spin up the threads
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        t.sum()
        times.append(time.perf_counter() - started)
    return t.numel() * 4 / statistics.median(times)


def new_shell():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    return shell


# ---------------------------------------------------------------- jobs


def job_import(args: dict) -> dict:
    """`import llm_magic` + `%load_ext llm_magic` in a shell that exists already (as in a
    kernel): seconds, and whether torch / transformers got imported."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    before = set(sys.modules)
    started = time.perf_counter()
    import llm_magic  # noqa: F401

    shell.run_line_magic("load_ext", "llm_magic")
    seconds = time.perf_counter() - started
    new = set(sys.modules) - before
    return {"seconds": seconds, "torch": "torch" in new, "transformers": "transformers" in new}


def job_cold_load(args: dict) -> dict:
    """One load in a fresh process, torch and transformers already imported on both
    sides (they are the same cost for both; the import row covers llm_magic's own)."""
    import_heavy()
    side, path, dtype = args["side"], args["path"], args["dtype"]
    if side == "llm_magic":
        import llm_magic

        started = time.perf_counter()
        handle = llm_magic.load(path, dtype=dtype)
        seconds = time.perf_counter() - started
        got = handle.info.dtype
    else:
        started = time.perf_counter()
        model, _tok = plain_load(path, dtype)
        seconds = time.perf_counter() - started
        got = str(model.dtype).removeprefix("torch.")
    return {"seconds": seconds, "dtype": got}


def job_hub(args: dict) -> dict:
    """Load the tiny model by Hub id (cached snapshot, Hub unreachable, no offline
    variable) or by folder path; llm_magic or plain transformers."""
    import_heavy()
    side, target = args["side"], args["target"]
    started = time.perf_counter()
    if side == "llm_magic":
        import llm_magic

        handle = llm_magic.load(target, dtype="float32")
        source = handle.info.source
    else:
        model, _tok = plain_load(target, "float32")
        source = getattr(model.config, "_name_or_path", target)
    return {"seconds": time.perf_counter() - started, "source": str(source)}


def job_gguf(args: dict) -> dict:
    """A .gguf load in a fresh process: llm_magic (its converted cache present) or plain
    transformers `gguf_file=` (parses and dequantizes every time)."""
    import_heavy()
    side, path, dtype = args["side"], args["path"], args["dtype"]
    started = time.perf_counter()
    if side == "llm_magic":
        import llm_magic

        handle = llm_magic.load(path, dtype=dtype)
        got = handle.info.dtype
    else:
        folder, file = os.path.split(path)
        model, _tok = plain_load(folder, dtype, gguf_file=file)
        got = str(model.dtype).removeprefix("torch.")
    return {"seconds": time.perf_counter() - started, "dtype": got}


def job_prepare(args: dict) -> dict:
    """Build the tiny model (and its Hub-cache layout); convert the .gguf once if its
    converted copy is missing; tell which dtype llm_magic picks for each model."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.tiny_model import build_tiny_gpt2, lay_out_as_hub_cache

    from llm_magic import gguf_cache, hardware, loading

    out: dict = {}
    tiny = build_tiny_gpt2(Path(args["workdir"]) / "tiny-gpt2")
    lay_out_as_hub_cache(tiny, Path(os.environ["HF_HOME"]) / "hub", args["tiny_hub_id"])
    out["tiny_dir"] = str(tiny)
    hw = hardware.probe()
    out["tiny_dtype"] = hardware.choose_dtype(
        hw, loading.checkpoint_dtype(str(tiny)), "auto", "auto"
    ).dtype
    if args.get("gguf"):
        path = args["gguf"]
        dtype = hardware.choose_dtype(hw, None, "auto", "auto").dtype
        had = (loading.converted_folder(path, dtype) / loading._CONVERTED_MARK).is_file()
        started = time.perf_counter()
        folder, _notes = gguf_cache.ensure_converted(
            path, dtype, lambda m: print(m, file=sys.stderr)
        )
        out["gguf_converted_now_seconds"] = None if had else time.perf_counter() - started
        out["gguf_folder"] = str(folder)
        out["gguf_dtype"] = dtype
        out["gguf_checkpoint_dtype"] = loading.checkpoint_dtype(str(folder))
    return out


def job_generate(args: dict) -> dict:
    """One process, one model loaded with %llm_load: the cache hit, %%llm_generate
    streaming vs plain model.generate on the same model object, and `--over` vs plain
    batched model.generate and plain single generations. Each side records its dtype and
    the new tokens it generated, for run.py to compare."""
    import_heavy()
    from IPython.utils.capture import capture_output

    import llm_magic
    from llm_magic import MODEL_CACHE

    model_arg, n, reps = args["model"], args["new_tokens"], args["repeats"]
    shell = new_shell()
    out: dict = {}
    shell.run_line_magic("llm_load", f"{model_arg} --as bench --quiet")
    hits = []
    for _ in range(args.get("hit_repeats", 20)):
        started = time.perf_counter()
        shell.run_line_magic("llm_load", f"{model_arg} --as bench --quiet")
        hits.append(time.perf_counter() - started)
    out["cache_hit_seconds"] = hits
    entry = MODEL_CACHE.find("bench")
    model, tok = entry.model, entry.tokenizer
    out["dtype"] = entry.info.dtype
    plain_dtype = str(model.dtype).removeprefix("torch.")

    # %%llm_generate streaming vs plain model.generate -------------------------------
    def magic_once(count: int):
        with capture_output():
            started = time.perf_counter()
            result = shell.run_cell_magic(
                "llm_generate", f"-m bench --greedy --max-new-tokens {count}", STORY_PROMPT
            )
            seconds = time.perf_counter() - started
        return int(result.new_tokens), seconds, result.dtype

    # Warm-up (excluded); the plain side then generates exactly as many tokens as it did.
    warm_tokens, _, _ = magic_once(n)
    count = max(1, warm_tokens)
    plain_generate(model, tok, [STORY_PROMPT], count)
    gen: dict = {"new_tokens": count, "llm_magic": [], "plain": []}
    for _ in range(reps):  # alternate the sides
        tokens, seconds, dtype = magic_once(count)
        gen["llm_magic"].append({"tokens": tokens, "seconds": seconds, "dtype": dtype})
        tokens, seconds, _ = plain_generate(model, tok, [STORY_PROMPT], count)
        gen["plain"].append({"tokens": tokens, "seconds": seconds, "dtype": plain_dtype})
    out["generate"] = gen

    # --over 8 prompts vs plain batched model.generate and plain singles -------------
    m = args["over_new_tokens"]
    k = len(OVER_PROMPTS)

    def over_llm_magic():
        batch = llm_magic.generate(
            "{item}",
            model="bench",
            over=OVER_PROMPTS,
            namespace={},
            max_new_tokens=m,
            greedy=True,
            batch_size=k,
        )
        return sum(r.new_tokens for r in batch), batch[0].dtype, batch[0].products

    def over_plain_batched():
        tokens, _, _ = plain_generate(model, tok, OVER_PROMPTS, m, until_eos=True)
        return tokens, plain_dtype, None

    def over_plain_singles():
        return (
            sum(plain_generate(model, tok, [p], m, until_eos=True)[0] for p in OVER_PROMPTS),
            plain_dtype,
            None,
        )

    sides = {
        "llm_magic": over_llm_magic,
        "plain_batched": over_plain_batched,
        "plain_singles": over_plain_singles,
    }
    over: dict = {"via": "llm_magic.generate(over=...)", "new_tokens_per_prompt": m, "prompts": k}
    started = time.perf_counter()
    _, _, over["products"] = (
        over_llm_magic()
    )  # warm-up, excluded: it may pack the weights for batches, once
    over["first_llm_magic_seconds"] = time.perf_counter() - started
    over_plain_batched()
    for key in sides:
        over[key] = []
    for _ in range(args["over_repeats"]):
        for key, fn in sides.items():
            started = time.perf_counter()
            tokens, dtype, _ = fn()
            over[key].append(
                {"tokens": tokens, "seconds": time.perf_counter() - started, "dtype": dtype}
            )
    out["over"] = over
    return out


def job_dtype(args: dict) -> dict:
    """The CPU dtype decision, measured: fp32 vs bf16 at batch-1 decode, batch-8 decode
    and 512-token prompt processing (plain model.generate / forward on both), plus the
    machine's read bandwidth for the decode-vs-bandwidth row."""
    import_heavy()
    from llm_magic import hardware, loading

    path, n, n8, reps = args["path"], args["new_tokens"], args["batch8_new_tokens"], args["repeats"]
    models = {d: plain_load(path, d) for d in ("float32", "bfloat16")}
    tok = models["float32"][1]
    limit = getattr(models["float32"][0].config, "max_position_embeddings", None) or getattr(
        models["float32"][0].config, "n_positions", 512
    )
    prefill_len = min(512, int(limit))
    default = hardware.choose_dtype(hardware.probe(), loading.checkpoint_dtype(path), "auto", "cpu")
    out: dict = {
        "default": default.dtype,
        "reason": default.reason,
        "prefill_len": prefill_len,
        "runs": {},
    }
    for d, (model, _t) in models.items():  # warm-up, excluded
        plain_generate(model, tok, [STORY_PROMPT], 4)
        plain_generate(model, tok, [STORY_PROMPT] * 8, 2)
        prefill_seconds(model, tok, prefill_len)
        out["runs"][d] = {
            "b1": [],
            "b8": [],
            "prefill": [],
            "bytes_per_token": bytes_read_per_token(model),
        }
    for _ in range(reps):
        for d, (model, _t) in models.items():
            r = out["runs"][d]
            tokens, seconds, _ = plain_generate(model, tok, [STORY_PROMPT], n)
            r["b1"].append({"tokens": tokens, "seconds": seconds})
            tokens, seconds, _ = plain_generate(model, tok, [STORY_PROMPT] * 8, n8)
            r["b8"].append({"tokens": tokens, "seconds": seconds})
            r["prefill"].append(
                {"tokens": prefill_len, "seconds": prefill_seconds(model, tok, prefill_len)}
            )
    del models
    gc.collect()
    out["bandwidth_bytes_per_s"] = read_bandwidth(args.get("bandwidth_mb", 1024))
    return out


def run_once(model, tokenizer) -> None:
    """One forward pass: as after a generation, every weight page has been read (weights
    mmapped from a checkpoint of the same dtype count in RSS only once touched)."""
    import torch

    with torch.inference_mode():
        model(**tokenizer("Hello", return_tensors="pt"))


def job_memory(args: dict) -> dict:
    """Peak RSS while loading (over the RSS after imports), and the RSS given back when
    the model, used once, is dropped: `%llm_unload` on the llm_magic side, `del` +
    gc.collect() on the plain side."""
    import_heavy()
    side, model_arg, dtype = args["side"], args["model"], args["dtype"]
    out: dict = {}
    if side == "llm_magic":
        import llm_magic  # noqa: F401
        from llm_magic import MODEL_CACHE

        shell = new_shell()
        _, baseline, peak, anon = measure_peak(
            lambda: shell.run_line_magic("llm_load", f"{model_arg} --as bench --quiet")
        )
        out["weight_bytes"] = MODEL_CACHE.find("bench").info.memory_bytes
        out["dtype"] = MODEL_CACHE.find("bench").info.dtype
        entry = MODEL_CACHE.find("bench")
        run_once(entry.model, entry.tokenizer)
        del entry
        gc.collect()
        before = rss_bytes()
        card = shell.run_line_magic("llm_unload", "bench")
        gc.collect()
        out["unload_via"] = "%llm_unload bench"
        out["unload_freed"] = bool(card.freed)  # the card's own verdict: no reference left
        out["cached_after"] = len(MODEL_CACHE)
    else:
        holder = {}

        def load():
            holder["m"], holder["t"] = plain_load(model_arg, dtype)

        _, baseline, peak, anon = measure_peak(load)
        out["weight_bytes"] = weight_bytes(holder["m"])
        out["dtype"] = str(holder["m"].dtype).removeprefix("torch.")
        run_once(holder["m"], holder["t"])
        gc.collect()
        before = rss_bytes()
        holder.clear()
        gc.collect()
        out["unload_via"] = "del model, tokenizer; gc.collect()"
    out.update(baseline=baseline, peak=peak, before_unload=before, after_unload=rss_bytes(), **anon)
    return out


# ------------------------------------------------------ engines and quantization (issue 13)


def gguf_data_bytes(path: str) -> int:
    """Bytes of tensor data in a .gguf (the file less its header): what llama.cpp reads
    per decoded token (SmolLM2's output head is its tied embedding, read whole)."""
    from llm_magic.sizing import read_gguf_tensor_counts

    _params, header = read_gguf_tensor_counts(path)
    return os.path.getsize(path) - header


def job_engine_decode(args: dict) -> dict:
    """Batch-1 greedy decode of STORY_PROMPT, `new_tokens` tokens, end to end, one side
    per process (torch's spinning threads must not slow llama.cpp's, nor the reverse):
    llm_magic's llama.cpp engine, raw llama-cpp-python, llm_magic's transformers engine,
    plain transformers (bf16) and plain transformers on llm_magic's NF4 weights."""
    side, gguf, n, reps = args["side"], args["gguf"], args["new_tokens"], args["repeats"]
    out: dict = {"side": side, "runs": []}
    if side in ("llamacpp", "transformers"):
        if side == "transformers":
            import_heavy()
        else:
            import llama_cpp  # noqa: F401  (imported before timing, as torch is for the others)
        import llm_magic

        started = time.perf_counter()
        handle = llm_magic.load(gguf, engine="llama.cpp" if side == "llamacpp" else "transformers")
        out["load_seconds"] = time.perf_counter() - started
        out["memory_bytes"] = handle.info.memory_bytes
        out["label"] = f"{handle.info.engine} {handle.info.dtype}"

        def once(count):
            pieces: list[str] = []
            started = time.perf_counter()
            r = llm_magic.generate(
                STORY_PROMPT, model=handle, greedy=True, max_new_tokens=count, stream=pieces.append
            )
            return r.new_tokens, time.perf_counter() - started, r.text

        if side == "llamacpp":
            llm = handle.model
            out["threads"], out["n_ctx"] = llm.n_threads, llm.n_ctx()
            out["bytes_per_token"] = gguf_data_bytes(gguf)
        else:
            out["bytes_per_token"] = bytes_read_per_token(handle.model)
    elif side == "raw":
        import llama_cpp

        threads, n_ctx = args["threads"], args["n_ctx"]
        llm = llama_cpp.Llama(model_path=gguf, n_ctx=n_ctx, n_threads=threads, verbose=False)
        default = llama_cpp.Llama(
            model_path=gguf, verbose=False
        )  # what a user writes without arguments
        out["default_threads"], out["default_n_ctx"] = default.n_threads, default.n_ctx()
        messages = [{"role": "user", "content": STORY_PROMPT}]

        counts: dict = {}

        def once(count, model=llm):
            if (
                id(model),
                count,
            ) not in counts:  # a stream does not report usage: ask once, untimed
                usage = model.create_chat_completion(messages, temperature=0, max_tokens=count)[
                    "usage"
                ]
                counts[id(model), count] = usage["completion_tokens"]
            started = time.perf_counter()
            text = "".join(
                c["choices"][0]["delta"].get("content", "") or ""
                for c in model.create_chat_completion(
                    messages, temperature=0, max_tokens=count, stream=True
                )
            )
            return counts[id(model), count], time.perf_counter() - started, text

        once(8, default)
        out["default_runs"] = []
        for _ in range(reps):
            tokens, seconds, _ = once(n, default)
            out["default_runs"].append({"tokens": tokens, "seconds": seconds})
    else:  # plain transformers, bf16 or llm_magic's nf4 weights
        import_heavy()
        import llm_magic

        handle = llm_magic.load(gguf, dtype="bfloat16", quantize="nf4" if side == "nf4" else None)
        if side == "plain":  # the same converted weights, loaded the plain way
            model, tok = plain_load(handle.info.source, "bfloat16")
            llm_magic.unload(all=True)
        else:
            model, tok = handle.model, handle.tokenizer
        out["memory_bytes"] = weight_bytes(model)
        out["bytes_per_token"] = bytes_read_per_token(model)

        def once(count):
            tokens, seconds, text = plain_generate(model, tok, [STORY_PROMPT], count)
            return tokens, seconds, text

    once(8)  # warm-up, excluded
    for _ in range(reps):
        tokens, seconds, text = once(n)
        out["runs"].append({"tokens": tokens, "seconds": seconds})
    out["text_start"] = text[:120]
    return out


def job_bandwidth(args: dict) -> dict:
    return {"bandwidth_bytes_per_s": read_bandwidth(args.get("megabytes", 1024))}


def job_llamacpp_load(args: dict) -> dict:
    """One `--engine llama.cpp` load in a fresh process (llama_cpp imported before timing,
    as torch and transformers are for the converted load it is compared with)."""
    started = time.perf_counter()
    import llama_cpp  # noqa: F401

    imported = time.perf_counter() - started
    import llm_magic

    started = time.perf_counter()
    handle = llm_magic.load(args["gguf"], engine="llama.cpp")
    return {
        "seconds": time.perf_counter() - started,
        "import_seconds": imported,
        "memory_bytes": handle.info.memory_bytes,
    }


JOBS = {name[4:]: fn for name, fn in globals().items() if name.startswith("job_")}

if __name__ == "__main__":
    name, raw = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}"
    result = JOBS[name](json.loads(raw))
    sys.stdout.flush()
    print(MARK + json.dumps(result), flush=True)
    # Skip interpreter teardown (a model's finalizers can take seconds): the result is out.
    os._exit(0)
