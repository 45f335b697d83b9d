"""Log-probabilities from a transformers model: each new token's while `generate` runs
(`Recorder`), and the records made from them (`records`), with each token's text as it
reads in the decoded whole.

The distribution is the model's own: the log-softmax of the raw logits of the position
that produced the token, taken from the model's forward output (a forward hook), before
`generate`'s logits processors (temperature, top-k, top-p, repetition penalty) change
them. That is what lm-evaluation-harness scores and what `compute_transition_scores`
gives for `output_logits`; sampling settings change which token is picked, never these
figures. Kept per step as small tensors (the chosen token's log-probability and the top
K), so long answers and big batches cost no more memory than one row of logits.

torch is imported inside the functions."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from ..logprobs import Alternative, TokenLogprob


@cache
def recorder_class() -> type:
    import torch
    from transformers import StoppingCriteria

    class Recorder(StoppingCriteria):
        """Notes, at each step, the log-probability of the token just chosen and the top
        `top` tokens. `hook` reads the forward's last-position logits (raw); the stopping
        criterion, called once the token is appended, reads which token was chosen."""

        def __init__(self, top: int):
            self.top = top
            self.pending = None  # log-softmax of the last forward's last position
            self.chosen: list[Any] = []  # per step: (rows,) log-probabilities
            self.top_values: list[Any] = []  # per step: (rows, top)
            self.top_ids: list[Any] = []

        def hook(self, module, args, output) -> None:
            logits = output.logits if hasattr(output, "logits") else output[0]
            self.pending = torch.log_softmax(logits[:, -1, :].float(), dim=-1)

        def __call__(self, input_ids, scores, **kwargs):
            logprobs = self.pending
            if logprobs is not None:
                self.pending = None
                self.chosen.append(logprobs.gather(1, input_ids[:, -1:]).squeeze(1))
                if self.top:
                    values, ids = logprobs.topk(min(self.top, logprobs.shape[-1]), dim=-1)
                    self.top_values.append(values)
                    self.top_ids.append(ids)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        def rows(self) -> tuple[list[list[float]], list[list[list[float]]], list[list[list[int]]]]:
            """Per row, per step: the chosen token's log-probability, the top values, the
            top ids (one transfer from the device at the end)."""
            if not self.chosen:
                return [], [], []
            chosen = torch.stack(self.chosen, dim=1).tolist()
            if not self.top:
                return chosen, [[[] for _ in r] for r in chosen], [[[] for _ in r] for r in chosen]
            values = torch.stack(self.top_values, dim=1).tolist()
            ids = torch.stack(self.top_ids, dim=1).tolist()
            return chosen, values, ids

    return Recorder


def token_texts(
    tokenizer, ids: Sequence[int], before: Sequence[int] = (), skip_special: bool = True
) -> list[str]:
    """Each token's text as it reads in the decoded whole: what decoding grows by when the
    token is added after the few before it (`before`: the tokens preceding `ids`), so a
    tokenizer that drops a word's leading space when it decodes a token alone still gives
    " Paris"."""
    window = 4
    previous = list(before[-window:])
    texts = []
    for token in ids:
        head = tokenizer.decode(previous, skip_special_tokens=skip_special)
        whole = tokenizer.decode(previous + [token], skip_special_tokens=skip_special)
        if whole.startswith(head):
            texts.append(whole[len(head) :])
        else:  # an unfinished character in the window: the token on its own
            texts.append(tokenizer.decode([token], skip_special_tokens=skip_special))
        previous = (previous + [token])[-window:]
    return texts


class Vocabulary:
    """Token ids to their own text, decoded once each (for the alternatives)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.known: dict[int, str] = {}

    def __getitem__(self, token_id: int) -> str:
        text = self.known.get(token_id)
        if text is None:
            text = self.known[token_id] = self.tokenizer.decode([token_id])
        return text


def records(
    texts: Sequence[str],
    ids: Sequence[int],
    chosen: Sequence[float],
    top_values: Sequence[Sequence[float]],
    top_ids: Sequence[Sequence[int]],
    vocabulary: Vocabulary,
) -> tuple[TokenLogprob, ...]:
    """The token records, as many as there are both tokens and figures."""
    return tuple(
        TokenLogprob.of(
            position,
            text,
            token_id,
            logprob,
            [Alternative(vocabulary[i], i, v) for v, i in zip(values, alt_ids, strict=True)],
        )
        for position, (text, token_id, logprob, values, alt_ids) in enumerate(
            zip(texts, ids, chosen, top_values, top_ids, strict=False)
        )
    )
