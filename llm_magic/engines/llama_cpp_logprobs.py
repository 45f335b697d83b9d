"""Log-probabilities with llama.cpp: each new token's while generating, and a given text's
(scoring), read from the context's own logits.

The distribution is the model's own: the log-softmax of the raw logits of the position
that produced the token (llama.cpp's sampler copies them; temperature, top-k and top-p
act on the copy), computed as llama-cpp-python's `Llama.logits_to_logprobs` does. No
`logits_all=True` is needed, which would keep a row of logits per position of the whole
context (n_ctx × n_vocab floats) for every generation: while generating, the last row is
read after each token; while scoring, llama.cpp is asked for the rows of the scored
positions only, batch by batch, in the model's own context (the next generation then
reads its prompt afresh).

The tokens scored are those lm-evaluation-harness would score (score_tokens), with
llama.cpp's tokenizer. numpy and llama_cpp are imported inside the functions."""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import GenerationError
from ..logprobs import Alternative, TokenLogprob
from .base import ProgressCallback, Scored
from .score_tokens import Encoded, Tokenizer


def last_logprobs(llm) -> Any:
    """The log-softmax of the logits of the last position decoded (a numpy row)."""
    return row_logprobs(llm, -1)


def row_logprobs(llm, index: int) -> Any:
    """The log-softmax of the logits of the batch's token `index` (it asked for logits)."""
    import llama_cpp
    import numpy as np

    pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, index)
    logits = np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),))
    return llama_cpp.Llama.logits_to_logprobs(logits)


def top(logprobs, k: int) -> list[tuple[int, float]]:
    """The k likeliest (id, log-probability), likeliest first."""
    import numpy as np

    if k <= 0:
        return []
    k = min(k, logprobs.shape[0])
    ids = np.argpartition(-logprobs, k - 1)[:k]
    ids = ids[np.argsort(-logprobs[ids], kind="stable")]
    return [(int(i), float(logprobs[i])) for i in ids]


class Vocabulary:
    """Token ids to their own text (for the alternatives), decoded once each."""

    def __init__(self, llm):
        self.llm = llm
        self.known: dict[int, str] = {}

    def __getitem__(self, token_id: int) -> str:
        text = self.known.get(token_id)
        if text is None:
            piece = self.llm._model.detokenize([token_id], special=True)
            text = self.known[token_id] = piece.decode("utf-8", "replace")
        return text


class Pieces:
    """Each token's text as it reads in the decoded whole: its bytes through an
    incremental decoder (a character split over two tokens goes with the second)."""

    def __init__(self, llm, special: bool):
        self.llm, self.special = llm, special
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def __call__(self, token_id: int) -> str:
        piece = self.llm._model.detokenize([token_id], special=self.special)
        return self.decoder.decode(piece)


def record(
    position: int,
    text: str,
    token_id: int,
    logprobs,
    k: int,
    vocabulary: Vocabulary,
) -> TokenLogprob:
    alternatives = [Alternative(vocabulary[i], i, v) for i, v in top(logprobs, k)]
    return TokenLogprob.of(position, text, token_id, float(logprobs[token_id]), alternatives)


# --- scoring ---------------------------------------------------------------------------


def prefix_token_id(llm) -> int:
    bos = llm.token_bos()
    return bos if bos != -1 else llm.token_eos()


def encode(llm, text: str, add_special: bool | None = None) -> list[int]:
    """As lm-evaluation-harness's tok_encode, with llama.cpp's tokenizer: the model's
    special start added unless the text starts with it."""
    if add_special is None:
        start = llm._model.detokenize([prefix_token_id(llm)], special=True).decode(
            "utf-8", "replace"
        )
        add_special = not text.startswith(start)
    return llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)


def pair_tokenizer(llm) -> Tokenizer:
    """llama.cpp's tokenizer as score_tokens encodes a pair with it."""
    return Tokenizer(
        lambda text, add_special: encode(llm, text, add_special),
        lambda ids: llm.detokenize(ids).decode("utf-8", "replace"),
        prefix_token_id(llm),
    )


def score(
    llm,
    pairs: Sequence[Encoded],
    k: int,
    on_progress: ProgressCallback | None = None,
) -> Iterator[tuple[list[int], list[Scored]]]:
    """Each pair in turn, in the model's own context: the tokens before the scored ones
    decoded without logits, the scored positions with; yields ([index], [score]). The
    context is left empty (the next generation reads its prompt afresh)."""
    vocabulary = Vocabulary(llm)
    limit = llm.n_ctx()
    if on_progress is not None:
        on_progress(0, len(pairs))
    try:
        for index, pair in enumerate(pairs):
            whole = pair.context + pair.continuation
            cut = max(0, len(whole) - limit)
            tokens = whole[cut:]
            length = len(pair.continuation)
            if length > len(tokens) - 1:
                raise GenerationError(
                    f"the text is {length} tokens; the model reads at most {limit} here",
                    fixes=["score a shorter text, or split it"],
                )
            first = len(tokens) - length - 1  # the position whose logits give token 0
            rows = _decode(llm, tokens, first)
            pieces = Pieces(llm, special=True)
            made, greedy = [], True
            for position, (token, logprobs) in enumerate(zip(pair.continuation, rows, strict=True)):
                greedy = greedy and int(logprobs.argmax()) == token
                made.append(record(position, pieces(token), token, logprobs, k, vocabulary))
            notes = pair.notes + (
                (f"{cut} tokens cut from the start: the model reads at most {limit} here",)
                if cut
                else ()
            )
            yield (
                [index],
                [
                    Scored(
                        tuple(made),
                        len(tokens) - length,
                        pair.context_shown,
                        greedy,
                        notes,
                        pair.templated,
                    )
                ],
            )
            if on_progress is not None:
                on_progress(index + 1, len(pairs))
    finally:
        forget(llm)


def _decode(llm, tokens: Sequence[int], first: int) -> list[Any]:
    """Decode `tokens` from position 0 in batches of n_batch, asking for the logits of the
    positions from `first` to the one before the last; their log-softmax rows, in order."""
    import llama_cpp

    forget(llm)
    batch = llm._batch
    rows = []
    last = len(tokens) - 1  # the last token is scored, not read on
    for start in range(0, last, llm.n_batch):
        chunk = tokens[start : min(last, start + llm.n_batch)]
        raw = batch.batch
        raw.n_tokens = len(chunk)
        for i, token in enumerate(chunk):
            raw.token[i] = token
            raw.pos[i] = start + i
            raw.seq_id[i][0] = 0
            raw.n_seq_id[i] = 1
            raw.logits[i] = start + i >= first
        if llama_cpp.llama_decode(llm._ctx.ctx, raw) != 0:
            raise RuntimeError("llama_decode failed while scoring")
        rows += [row_logprobs(llm, i) for i in range(len(chunk)) if start + i >= first]
    return rows


def forget(llm) -> None:
    """Empty the model's context: the next generation decodes its prompt from the start."""
    llm.n_tokens = 0
    llm._ctx.kv_cache_clear()
