"""Per-token log-probabilities: the plain records `--logprobs` keeps for each new token and
`%%llm_score` for each scored one, and the table and DataFrame made from them.

Which distribution: the model's own next-token distribution, the log-softmax of its raw
logits, before temperature, top-k, top-p or any other processing: what
lm-evaluation-harness scores with, and what the OpenAI API's `logprobs` report. Every
engine in the kernel gives that one; a server gives what it computes (vLLM: the same, by
default). Sampling settings change which token was picked, never the figures shown."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DISTRIBUTION = (
    "the model's own next-token distribution (log-softmax of the raw logits, "
    "before temperature, top-k and top-p)"
)
DISTRIBUTION_SHORT = "the model's own distribution, before temperature/top-k/top-p"
SERVER_DISTRIBUTION = "as the server computes them (vLLM: the model's own distribution)"
# The alternatives kept per token when `--logprobs` is given without a number.
DEFAULT_TOP = 5


@dataclass(frozen=True)
class Alternative:
    """One of the likeliest tokens at a position."""

    token: str
    token_id: int | None  # None where a server gives only the text
    logprob: float

    @property
    def probability(self) -> float:
        return math.exp(self.logprob)


@dataclass(frozen=True)
class TokenLogprob:
    """One token with its log-probability (natural log) under the model, and the
    likeliest tokens at its position (the token itself among them when it is one)."""

    position: int  # 0 for the first new (or scored) token
    token: str  # its text, as it reads in the answer
    token_id: int | None
    logprob: float
    probability: float
    alternatives: tuple[Alternative, ...] = ()

    @classmethod
    def of(
        cls,
        position: int,
        token: str,
        token_id: int | None,
        logprob: float,
        alternatives: Sequence[Alternative] = (),
    ) -> TokenLogprob:
        return cls(position, token, token_id, logprob, math.exp(logprob), tuple(alternatives))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenLogprob:
        """A record written as JSON (the run log's copy of a result) read back."""
        return cls(
            data["position"],
            data["token"],
            data["token_id"],
            data["logprob"],
            data["probability"],
            tuple(
                Alternative(a["token"], a["token_id"], a["logprob"])
                for a in data.get("alternatives") or ()
            ),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "token": self.token,
            "token_id": self.token_id,
            "logprob": self.logprob,
            "probability": self.probability,
            "alternatives": [(a.token, a.logprob) for a in self.alternatives],
        }


def total(tokens: Sequence[TokenLogprob]) -> float:
    return math.fsum(t.logprob for t in tokens)


def mean(tokens: Sequence[TokenLogprob]) -> float | None:
    return total(tokens) / len(tokens) if tokens else None


def perplexity(tokens: Sequence[TokenLogprob]) -> float | None:
    """exp of the mean negative log-likelihood per token."""
    average = mean(tokens)
    return math.exp(-average) if average is not None else None


def frame(tokens: Sequence[TokenLogprob]) -> Any:
    """A pandas DataFrame: one row per token (position, token, token_id, logprob,
    probability, alternatives as (token, logprob) pairs)."""
    try:
        import pandas as pd
    except ImportError:
        from .errors import LLMError

        raise LLMError("the token table needs pandas", fixes=["pip install pandas"]) from None
    columns = ["position", "token", "token_id", "logprob", "probability", "alternatives"]
    return pd.DataFrame([t.as_dict() for t in tokens], columns=columns)


def shown(token: str) -> str:
    """A token's text on one line: newlines and tabs as escapes, kept visible."""
    return token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def table(tokens: Sequence[TokenLogprob], alternatives: int = 3) -> str:
    """A compact text table: one line per token, its probability and the likeliest others."""
    lines = [f"{'pos':>4}  {'token':<16} {'logprob':>8} {'prob':>6}  alternatives"]
    for t in tokens:
        others = "  ".join(
            f"{shown(a.token)!r} {a.probability:.2f}" for a in t.alternatives[:alternatives]
        )
        lines.append(
            f"{t.position:>4}  {repr(shown(t.token))[:16]:<16} {t.logprob:>8.3f} "
            f"{t.probability:>6.3f}  {others}"
        )
    return "\n".join(lines)
