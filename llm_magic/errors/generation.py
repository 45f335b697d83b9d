"""The generation catalogue: unexpected exceptions while generating (bad flags and
prompts are checked before generating, by the generation code, and raise
GenerationError directly).

context: model, prompt_tokens, max_new_tokens, batch_size, context_length, dtype, gpus,
ram_free/ram_total, loaded (name, bytes) pairs.
"""

from __future__ import annotations

from collections.abc import Callable

from .card import Diagnosis, GenerationError
from .rules import Catalogue, Context, Rule, pattern
from .wording import memory_facts, parse_cuda_oom, unload_fix


def _gen_what(ctx: Context) -> str:
    return f"generation with {ctx.get('model') or 'the model'} failed"


def _gen_oom(device: str) -> Callable[[BaseException, Context], Diagnosis]:
    def explain(exc: BaseException, ctx: Context) -> Diagnosis:
        details = memory_facts(ctx, device)
        if device == "cuda" and not ctx.get("gpus"):
            details = parse_cuda_oom(str(exc)) + details
        if ctx.get("prompt_tokens"):
            details.insert(
                0,
                f"prompt {ctx['prompt_tokens']} tokens, --max-new-tokens {ctx.get('max_new_tokens')}, batch {ctx.get('batch_size') or 1}",
            )
        fixes = [
            "generate less at once: a smaller --max-new-tokens, a shorter prompt, or a smaller --batch-size"
        ]
        fixes += [f for f in [unload_fix(ctx)] if f]
        fixes.append("reload with less memory: %llm_load MODEL --dtype bfloat16 --reload")
        where = "the GPU" if device == "cuda" else "the machine's RAM"
        return Diagnosis(
            _gen_what(ctx), f"{where} ran out of memory while generating", fixes, details
        )

    return explain


def _gen_index(exc: BaseException, ctx: Context) -> Diagnosis:
    limit = ctx.get("context_length")
    return Diagnosis(
        _gen_what(ctx),
        "a token position or id is outside the model's tables: the prompt plus new tokens exceed its context"
        + (f" ({limit} tokens)" if limit else ""),
        ["shorten the prompt or lower --max-new-tokens"],
    )


GENERATION = Catalogue(
    rules=(
        Rule("cuda_oom", ("torch.OutOfMemoryError",), _gen_oom("cuda")),
        Rule("cpu_oom", ("builtins.MemoryError",), _gen_oom("cpu")),
        Rule(
            "cuda_oom_msg",
            ("builtins.RuntimeError",),
            _gen_oom("cuda"),
            pattern(r"CUDA out of memory"),
        ),
        Rule(
            "cpu_oom_msg",
            ("builtins.RuntimeError",),
            _gen_oom("cpu"),
            pattern(r"DefaultCPUAllocator: (can't allocate|not enough) memory"),
        ),
        Rule("index", ("builtins.IndexError",), _gen_index, pattern(r"index out of range in self")),
    ),
    error_class=GenerationError,
    what=_gen_what,
)
