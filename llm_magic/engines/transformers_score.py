"""Scoring with a transformers model: the log-probability of each token of a continuation
after its context, by one teacher-forced forward pass over padded batches.

The tokens are those lm-evaluation-harness's `HFLM.loglikelihood` scores (score_tokens,
with this tokenizer), so the figures agree with it (tests check it to 1e-4); too long: cut
from the left to the model's length + 1, the last token not read.
Batches are right-padded with an attention mask (no real position sees a pad: the
figures do not depend on the batch), sorted longest first; the log-softmax is taken in
float32 (lm-evaluation-harness: in the model's dtype, the same in float32).

torch is imported inside the functions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from .base import ProgressCallback, Scored
from .score_tokens import Encoded, Tokenizer
from .transformers_logprobs import Vocabulary, records, token_texts

# lm-evaluation-harness's length when neither the config nor the tokenizer gives one.
DEFAULT_MAX_LENGTH = 2048


def prefix_token_id(tokenizer) -> int:
    """The token an empty context stands for: bos, else eos (as lm-evaluation-harness)."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None else tokenizer.eos_token_id


def encode(tokenizer, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """The text's ids, special tokens added as the tokenizer does unless the text starts
    with the start token already (lm-evaluation-harness's `tok_encode`)."""
    kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    if add_special_tokens is None and text.startswith(tokenizer.decode(prefix_token_id(tokenizer))):
        kwargs["add_special_tokens"] = False
    return list(tokenizer.encode(text, **kwargs))


def pair_tokenizer(tokenizer) -> Tokenizer:
    """The tokenizer as score_tokens encodes a pair with it."""
    return Tokenizer(
        lambda text, add_special: encode(tokenizer, text, add_special),
        tokenizer.decode,
        prefix_token_id(tokenizer),
    )


def score(
    model,
    tokenizer,
    pairs: Sequence[Encoded],
    top: int,
    batch_size: int,
    limit: int | None,
    on_progress: ProgressCallback | None = None,
) -> Iterator[tuple[list[int], list[Scored]]]:
    """The pairs scored in batches of `batch_size`, longest first; yields (indices,
    scores) per batch. `top`: the likeliest alternatives kept per token; `limit`: the
    positions the model reads (None: lm-evaluation-harness's default)."""
    import torch

    limit = limit or DEFAULT_MAX_LENGTH
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i].context + pairs[i].continuation))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    vocabulary = Vocabulary(tokenizer)
    if on_progress is not None:
        on_progress(0, len(batches))
    device = model.device
    for done, batch in enumerate(batches):
        rows, lengths, notes = [], [], []
        for i in batch:
            pair = pairs[i]
            whole = pair.context + pair.continuation
            cut = max(0, len(whole) - (limit + 1))
            rows.append(whole[-(limit + 1) :][:-1])
            lengths.append(len(pair.continuation))
            notes.append(
                (f"{cut} tokens cut from the start: the model reads at most {limit}",)
                if cut
                else ()
            )
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        scored = []
        for row, i, length, cut_note in zip(range(len(rows)), batch, lengths, notes, strict=True):
            pair, end = pairs[i], len(rows[row])
            logprobs = torch.log_softmax(logits[row, end - length : end].float(), dim=-1)
            targets = torch.tensor(pair.continuation, device=logprobs.device)
            chosen = logprobs.gather(1, targets[:, None]).squeeze(1)
            greedy = bool((logprobs.argmax(dim=-1) == targets).all())
            if top:
                values, ids = logprobs.topk(min(top, logprobs.shape[-1]), dim=-1)
                top_values, top_ids = values.tolist(), ids.tolist()
            else:
                top_values = top_ids = [[] for _ in pair.continuation]
            texts = token_texts(
                tokenizer, pair.continuation, before=pair.context, skip_special=False
            )
            tokens = records(
                texts, pair.continuation, chosen.tolist(), top_values, top_ids, vocabulary
            )
            scored.append(
                Scored(
                    tokens,
                    len(rows[row]) - length + 1,
                    pair.context_shown,
                    greedy,
                    pair.notes + cut_note,
                    pair.templated,
                )
            )
        del logits
        yield batch, scored
        if on_progress is not None:
            on_progress(done + 1, len(batches))
