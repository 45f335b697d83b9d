"""Answer formats enforced while decoding in the kernel (the transformers engine): a logits
processor that lets through, at each step, only the tokens the format allows.

The grammar backend is llguidance (the optional extra `llm_magic[structured]`), chosen by
measurement over xgrammar (bench/BENCHMARKS.md, "structured"): a mask in ~0.2 ms per
token on a quiet machine (xgrammar ~0.25 ms), a first schema in a few ms and a cached one
in microseconds (a ready matcher copied), every schema, choice and regex of the tests
covered, and a named refusal ("Unimplemented keys: uniqueItems") where xgrammar accepted
`uniqueItems` and `if`/`then` and did not enforce them; a 3 MB wheel with no dependencies,
where xgrammar's metadata pulls triton (~290 MB) on Linux x86-64.

A compiled format is kept per tokenizer (weakly: unloading the model frees it) and per
(format, vocabulary width, end tokens), so a second cell with the same format pays only a
copy. The model's output width (`config.vocab_size`) may exceed the tokenizer's
vocabulary: the matcher is made that wide, and the ids past the tokenizer are never
allowed. A processor serves one `generate` call, with one matcher per row of the batch.

llguidance, numpy and torch are imported inside the functions.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Sequence
from functools import cache
from typing import Any

from ..errors import GenerationError
from ..structured import INSTALL, AnswerFormat, ascii_pattern

BACKEND = "llguidance"
# Readable JSON, without the endless whitespace a small model may fall into when any is
# allowed between tokens.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# tokenizer -> {(vocabulary width, end tokens): LLTokenizer, (format, width, end tokens):
# ready matcher}. Weak keys: an unloaded model's tokenizer takes its grammars with it.
_CACHE: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def cached_count() -> int:
    """How many tokenizers hold compiled grammars now (tests: none after unloading)."""
    return len(_CACHE)


def _llguidance() -> Any:
    try:
        import llguidance
        import llguidance.hf
    except ImportError:
        raise GenerationError(
            "enforcing an answer format in the kernel needs the llguidance package",
            "it is an optional package of llm_magic, not installed here",
            [INSTALL, "then restart the kernel", "or leave out --schema/--choice/--regex"],
        ) from None
    return llguidance


def grammar_text(fmt: AnswerFormat) -> str:
    """The format as an llguidance grammar."""
    llguidance = _llguidance()
    matcher = llguidance.LLMatcher
    if fmt.kind == "json":
        return matcher.grammar_from_json_schema(fmt.schema, defaults=_JSON_OPTIONS)
    if fmt.kind == "choice":
        # Lark string literals read JSON's escapes.
        return matcher.grammar_from_lark(
            "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in fmt.choices)
        )
    assert fmt.pattern is not None
    return matcher.grammar_from_regex(ascii_pattern(fmt.pattern))


def ready_matcher(fmt: AnswerFormat, tokenizer: Any, width: int, eos_ids: Sequence[int]) -> Any:
    """A matcher at the start of `fmt`, compiled once per (tokenizer, format, width, end
    tokens) and copied for each use. Raises the card for a format llguidance cannot
    compile (which part, why)."""
    llguidance = _llguidance()
    kept = _CACHE.setdefault(tokenizer, {})
    ends = tuple(eos_ids)
    key = (fmt, width, ends)
    if key in kept:
        return kept[key].deep_copy()
    vocabulary = kept.get((width, ends))
    if vocabulary is None:
        try:
            vocabulary = llguidance.hf.from_tokenizer(
                tokenizer, n_vocab=width, eos_token=list(ends) or None
            )
        except ValueError as e:  # a slow (Python) tokenizer
            raise GenerationError(
                "this model's tokenizer cannot enforce an answer format",
                f"llguidance reads fast (Rust) tokenizers only: {e}",
                ["leave out --schema/--choice/--regex: answers are then checked, not enforced"],
            ) from e
        kept[(width, ends)] = vocabulary
    try:
        grammar = grammar_text(fmt)
    except ValueError as e:
        raise _refusal(fmt, str(e)) from e
    matcher = llguidance.LLMatcher(vocabulary, grammar, log_level=0)
    if matcher.is_error():
        raise _refusal(fmt, matcher.get_error())
    kept[key] = matcher
    return matcher.deep_copy()


def _refusal(fmt: AnswerFormat, said: str) -> GenerationError:
    """The card for a format the backend refuses, naming the part it refused."""
    first = said.strip().splitlines()[0] if said.strip() else said
    lines = [line.strip() for line in said.strip().splitlines()[1:4] if line.strip()]
    fixes = {
        "json": [
            "drop or rewrite that part of the schema (the answer is still checked against "
            "all of it after)",
            "leave out --schema and ask for JSON in the prompt: checked, not enforced",
        ],
        "regex": [
            "rewrite the pattern without look-around, back-references or \\b "
            "(none can be enforced token by token)",
            "leave out --regex and check the text yourself",
        ],
        "choice": ["--choice with plain words"],
    }[fmt.kind]
    return GenerationError(
        f"{fmt.describe()} cannot be enforced: {BACKEND} cannot compile it",
        first,
        fixes,
        lines,
    )


@cache
def _processor_class() -> type:
    import numpy as np
    import torch
    from transformers import LogitsProcessor

    class FormatProcessor(LogitsProcessor):
        """Masks, at each step, the tokens each row's format does not allow: one
        matcher per row, fed the token the row took at the step before. Serves one
        generate call."""

        def __init__(self, matchers: list[Any], vocabulary: int):
            self.matchers = matchers
            self.vocabulary = vocabulary  # the matchers' width (at least the scores')
            self.mask: Any = None
            self.started = False
            self.errors: list[str] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            import llguidance.torch as llg_torch

            rows, width = scores.shape
            if self.mask is None:
                self.mask = llg_torch.allocate_token_bitmask(rows, self.vocabulary)
            if self.started:  # the first call comes before any token was taken
                for row, matcher in enumerate(self.matchers):
                    if not matcher.is_stopped() and not matcher.is_error():
                        if not matcher.consume_token(int(input_ids[row, -1])):
                            self.errors.append(matcher.get_error())
            self.started = True
            for row, matcher in enumerate(self.matchers):
                if matcher.is_error():
                    self.mask[row].fill_(-1)  # a matcher gone wrong stops enforcing its row
                else:
                    llg_torch.fill_next_token_bitmask(matcher, self.mask, row)
            # Bit i of word j is token 32*j + i (little-endian words).
            bits = np.unpackbits(self.mask.numpy().view(np.uint8), axis=-1, bitorder="little")
            allowed = torch.from_numpy(bits[:, :width].astype(bool)).to(scores.device)
            return scores.masked_fill(~allowed, float("-inf"))

    return FormatProcessor


def processor(
    fmt: AnswerFormat, tokenizer: Any, output_width: int, eos_ids: Sequence[int], rows: int
) -> Any:
    """A logits processor enforcing `fmt` on `rows` rows, for one generate call.
    `output_width`: the model's scores per step (`config.vocab_size`, which may exceed
    the tokenizer's vocabulary)."""
    width = max(output_width, len(tokenizer))
    matchers = [ready_matcher(fmt, tokenizer, width, eos_ids) for _ in range(rows)]
    return _processor_class()(matchers, width)
