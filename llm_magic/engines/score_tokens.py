"""A pair to score as token ids, made as lm-evaluation-harness's `HFLM.loglikelihood` makes
them, with any engine's tokenizer (transformers_score and llama_cpp_logprobs give theirs):
- a context's trailing whitespace goes to the continuation;
- the context and the whole text (context + continuation) are tokenized each on its own,
  and the continuation is the whole text's tokens after as many as the context has. Where
  the boundary falls inside a token, that differs from the continuation's own text: the
  scored tokens are said in a note;
- the text on its own (no context) is scored after the model's start token (bos, else eos);
- a special start token is added as the tokenizer does, unless the text starts with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import GenerationError
from .base import ScorePair


@dataclass(frozen=True)
class Encoded:
    """One pair as token ids: what the model reads first, and the tokens scored."""

    context: list[int]
    continuation: list[int]
    context_shown: str
    templated: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tokenizer:
    """What encoding a pair needs of an engine's tokenizer."""

    # (text, add the special start: None adds it unless the text starts with it) -> ids
    encode: Callable[[str, bool | None], list[int]]
    decode: Callable[[list[int]], str]
    prefix: int  # the token an empty context stands for: bos, else eos


def encode_pair(
    tokenizer: Tokenizer, context: str, continuation: str, label: str
) -> tuple[list[int], list[int], tuple[str, ...]]:
    """(context ids, continuation ids, notes) as lm-evaluation-harness makes them."""
    notes: tuple[str, ...] = ()
    if not context:
        tokens = tokenizer.encode(continuation, False)
        if tokens and tokens[0] == tokenizer.prefix:
            return tokens[:1], tokens[1:], notes
        return [tokenizer.prefix], tokens, notes
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, None)
    context_ids = tokenizer.encode(context, None)
    continuation_ids = whole[len(context_ids) :]
    if whole[: len(context_ids)] != context_ids:
        scored = tokenizer.decode(continuation_ids)
        notes = (
            f"{label}: the boundary falls inside a token; as lm-evaluation-harness does, "
            f"the tokens scored are the whole text's after the context's {len(context_ids)} "
            f"({scored!r}, not {continuation!r})",
        )
    return context_ids, continuation_ids, notes


def encoded(pair: ScorePair, context: str, templated: bool, tokenizer: Tokenizer) -> Encoded:
    """`pair` as token ids after `context`, its context as the engine rendered it
    (`templated`: through a chat template, which the continuation follows verbatim;
    otherwise after the pair's plain delimiter). Raises GenerationError where no token is
    left to score."""
    text = pair.continuation if templated else pair.plain_delimiter + pair.continuation
    ids, continuation, notes = encode_pair(tokenizer, context, text, pair.label)
    if not continuation:
        raise GenerationError(
            f"{pair.label}: no token left to score",
            "the text is empty, or the boundary with the context falls inside its last "
            "token (lm-evaluation-harness scores the whole text's tokens after the "
            "context's)",
            [
                "write some text to score",
                "end the context at a word boundary: a space goes with the text scored",
            ],
        )
    return Encoded(ids, continuation, context, templated, notes)
