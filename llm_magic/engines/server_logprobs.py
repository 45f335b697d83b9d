"""Log-probabilities from an OpenAI-compatible server: the request fields that ask for
them, the token records made from its replies, and scoring a given text through
`/v1/completions` with `echo` (the prompt's own log-probabilities).

Which servers give what: vLLM gives both (the model's own distribution by default); the
llama.cpp server and Ollama give no prompt log-probabilities; llama-cpp-python's server
gives them one position off; `transformers serve` ignores `logprobs` and `echo` on
completions and refuses `logprobs` on chat. A server is checked before its prompt
log-probabilities are used (`check_server`), and each reply too: one without them, or
with wrong ones, gets a card saying so, not a number.

The text is sent as plain text (the completions API takes no chat template); the tokens
scored are the server's own, from the first that starts at or after the boundary between
context and continuation (the context's trailing whitespace goes with the continuation,
as lm-evaluation-harness does)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import GenerationError
from ..logprobs import Alternative, TokenLogprob
from .base import Scored


def request_fields(endpoint: str, top: int) -> dict[str, Any]:
    """What a generation request adds to ask for each new token's log-probability."""
    if endpoint == "chat":
        return {"logprobs": True, "top_logprobs": top}
    return {"logprobs": max(top, 1)}  # legacy completions: 0 reads as "none" on some servers


def _alternatives(top: Any, k: int) -> list[Alternative]:
    """A reply's alternatives at one position (a {token: logprob} dict or a list of
    TopLogprob), the k likeliest."""
    if not top:
        return []
    if isinstance(top, dict):
        pairs = [(str(t), float(v)) for t, v in top.items() if v is not None]
    else:
        pairs = [(t.token, float(t.logprob)) for t in top]
    pairs.sort(key=lambda p: -p[1])
    return [Alternative(t, None, v) for t, v in pairs[:k]]


def chat_records(content: Sequence[Any] | None, start: int, k: int) -> list[TokenLogprob]:
    """Records of a chat reply's `logprobs.content` items (numbered from `start`)."""
    return [
        TokenLogprob.of(
            start + i,
            item.token,
            None,
            float(item.logprob),
            _alternatives(getattr(item, "top_logprobs", None), k),
        )
        for i, item in enumerate(content or ())
        if item.logprob is not None
    ]


def completion_records(logprobs: Any, start: int, k: int) -> list[TokenLogprob]:
    """Records of a legacy completions reply's `logprobs` (tokens, token_logprobs,
    top_logprobs)."""
    if logprobs is None:
        return []
    tokens = logprobs.tokens or []
    values = logprobs.token_logprobs or []
    tops = logprobs.top_logprobs or [None] * len(tokens)
    return [
        TokenLogprob.of(start + i, token, None, float(value), _alternatives(top, k))
        for i, (token, value, top) in enumerate(zip(tokens, values, tops, strict=False))
        if value is not None
    ]


# --- scoring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """One pair as text: the prompt sent and where the continuation starts in it."""

    prompt: str
    boundary: int
    context_shown: str
    label: str


def prepare(context: str, continuation: str, label: str) -> Prepared:
    spaces = len(context) - len(context.rstrip())
    boundary = len(context) - spaces
    return Prepared(context + continuation, boundary, context, label)


def scoring_body(model: str, prepared: Prepared, top: int) -> dict[str, Any]:
    """The completions request whose reply echoes the prompt with its log-probabilities
    (one token generated: some servers refuse none)."""
    return {
        "model": model,
        "prompt": prepared.prompt,
        "max_tokens": 1,
        "temperature": 0.0,
        "echo": True,
        "logprobs": max(top, 1),
    }


def no_prompt_logprobs(url: str, why: str) -> GenerationError:
    return GenerationError(
        f"%%llm_score: the server at {url} gives no usable log-probabilities of a given text",
        why,
        [
            "a vLLM server gives them: vllm serve MODEL (then %llm_load MODEL --server URL)",
            "load the model in the kernel: %llm_load MODEL, or --engine llama.cpp for a .gguf",
            "the llama.cpp server, Ollama and transformers serve give none",
        ],
    )


# The check a server's prompt log-probabilities must pass before any is used: the
# log-probability it gives a token it generated itself (greedy, after PROBE) must be the
# one it gives the same token echoed back in a prompt. llama-cpp-python's server fails it
# (its echoed log-probabilities are one position off); a server that ignores echo gives
# none.
PROBE = "The capital of France is"
PROBE_TOLERANCE = 0.05  # nats: bf16 prefill and decode round differently


def check_server(client, model: str, url: str) -> None:
    """Raise the card unless the server's echoed prompt log-probabilities agree with the
    ones it gives while generating (see PROBE)."""
    generated = client.completions.create(
        model=model, prompt=PROBE, max_tokens=1, temperature=0.0, logprobs=1
    )
    made = completion_records(getattr(generated.choices[0], "logprobs", None), 0, 1)
    if not made or not made[0].token:
        return  # nothing to compare with: the echo itself is checked on each reply
    token = made[0]
    echoed = client.completions.create(**scoring_body(model, prepare(PROBE, token.token, ""), 1))
    again = scored(echoed, prepare(PROBE, token.token, "the check"), 1, url)
    if again.tokens[0].token != token.token:
        return  # the server tokenized the two texts apart: no like-for-like comparison
    gap = abs(again.tokens[0].logprob - token.logprob)
    if gap > PROBE_TOLERANCE:
        raise no_prompt_logprobs(
            url,
            f"its prompt log-probabilities are wrong: after {PROBE!r} it generates "
            f"{token.token!r} with log-probability {token.logprob:.3f}, yet gives that "
            f"token {again.tokens[0].logprob:.3f} when it is echoed back in the prompt "
            "(llama-cpp-python's server is one position off)",
        )


def scored(reply: Any, prepared: Prepared, top: int, url: str) -> Scored:
    """The continuation's tokens from an echoed reply; a card when the reply has no
    log-probabilities for them (the server ignored echo or logprobs)."""
    choice = reply.choices[0] if getattr(reply, "choices", None) else None
    logprobs = getattr(choice, "logprobs", None)
    offsets = getattr(logprobs, "text_offset", None)
    tokens = getattr(logprobs, "tokens", None)
    values = getattr(logprobs, "token_logprobs", None)
    if not offsets or not tokens or not values:
        raise no_prompt_logprobs(
            url,
            "asked for the prompt's log-probabilities (/v1/completions with echo and "
            "logprobs), it sent "
            + ("none" if logprobs is None else "no token offsets to place them"),
        )
    end = len(prepared.prompt)
    tops = getattr(logprobs, "top_logprobs", None) or [None] * len(tokens)
    picked: list[TokenLogprob] = []
    notes: list[str] = []
    context_tokens = 0
    for offset, token, value, alternatives in zip(offsets, tokens, values, tops, strict=False):
        if offset >= end:
            break  # the generated token
        if offset + len(token) <= prepared.boundary:
            context_tokens += 1
            continue
        if offset < prepared.boundary:
            notes.append(
                f"{prepared.label}: the server's token {token!r} holds the end of the "
                "context and the start of the text: scored with the text"
            )
        if value is None:
            notes.append(
                f"{prepared.label}: the server gave no log-probability for {token!r} "
                "(nothing before it): left out"
            )
            continue
        picked.append(
            TokenLogprob.of(
                len(picked), token, None, float(value), _alternatives(alternatives, top)
            )
        )
    if not picked:
        raise no_prompt_logprobs(
            url,
            "its reply to /v1/completions with echo and logprobs holds no log-probability "
            "for the text's tokens (the prompt was not echoed)",
        )
    notes.insert(
        0,
        "scored through the server's /v1/completions: the context read as plain text, "
        "the server's own tokens",
    )
    return Scored(tuple(picked), context_tokens, prepared.context_shown, None, tuple(notes))
