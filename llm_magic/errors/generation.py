"""The generation catalogue: unexpected exceptions while generating (bad flags and
prompts are checked before generating, by the generation code, and raise
GenerationError directly).

context: model, prompt_tokens, max_new_tokens, batch_size, context_length, dtype, gpus,
ram_free/ram_total, loaded (name, bytes) pairs.
"""

from __future__ import annotations

from .card import Diagnosis, GenerationError
from .rules import Catalogue, Context, Explain, Rule, pattern
from .wording import memory_facts, model_name, unload_fixes


def _what(ctx: Context) -> str:
    return f"generation with {model_name(ctx)} failed"


def _out_of_memory(device: str) -> Explain:
    def explain(exc: BaseException, ctx: Context) -> Diagnosis:
        details = memory_facts(ctx, device, str(exc))
        if ctx.get("prompt_tokens"):
            details.insert(
                0,
                f"prompt {ctx['prompt_tokens']} tokens, "
                f"--max-new-tokens {ctx.get('max_new_tokens')}, "
                f"batch {ctx.get('batch_size') or 1}",
            )
        fixes = [
            "generate less at once: a smaller --max-new-tokens, a shorter prompt, "
            "or a smaller --batch-size",
            *unload_fixes(ctx),
            "reload with less memory: %llm_load MODEL --dtype bfloat16 --reload",
        ]
        where = "the GPU" if device == "cuda" else "the machine's RAM"
        return Diagnosis(_what(ctx), f"{where} ran out of memory while generating", fixes, details)

    return explain


def _index(exc: BaseException, ctx: Context) -> Diagnosis:
    limit = ctx.get("context_length")
    return Diagnosis(
        _what(ctx),
        "a token position or id is outside the model's tables: "
        "the prompt plus new tokens exceed its context" + (f" ({limit} tokens)" if limit else ""),
        ["shorten the prompt or lower --max-new-tokens"],
    )


GENERATION = Catalogue(
    rules=(
        Rule("cuda_oom", ("torch.OutOfMemoryError",), _out_of_memory("cuda")),
        Rule("cpu_oom", ("builtins.MemoryError",), _out_of_memory("cpu")),
        Rule(
            "cuda_oom_msg",
            ("builtins.RuntimeError",),
            _out_of_memory("cuda"),
            pattern(r"CUDA out of memory"),
        ),
        Rule(
            "cpu_oom_msg",
            ("builtins.RuntimeError",),
            _out_of_memory("cpu"),
            pattern(r"DefaultCPUAllocator: (can't allocate|not enough) memory"),
        ),
        Rule("index", ("builtins.IndexError",), _index, pattern(r"index out of range in self")),
    ),
    error_class=GenerationError,
    what=_what,
)
