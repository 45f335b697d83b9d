"""Tokens drawn by their probability: the answer of `--logprobs` and the text `%%llm_score`
scored, each token underlined by how likely the model found it (the style table's bands),
its probability and the likeliest alternatives on hover. Text only from the records: every
token is escaped, in the text and in the hover title."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Protocol

from .style import FOOTER_STYLE, TEXT_STYLE, TOKEN_BANDS, TOKEN_LEGEND


class AlternativeFacts(Protocol):
    @property
    def token(self) -> str: ...
    @property
    def probability(self) -> float: ...


class TokenFacts(Protocol):
    """What the view reads of a token record (logprobs.TokenLogprob)."""

    @property
    def token(self) -> str: ...
    @property
    def logprob(self) -> float: ...
    @property
    def probability(self) -> float: ...
    @property
    def alternatives(self) -> Sequence[AlternativeFacts]: ...


def band(probability: float) -> str:
    """The style of a token of this probability."""
    return next(style for floor, style in TOKEN_BANDS if probability >= floor)


def hover(token: TokenFacts) -> str:
    """The hover text: the token's probability, then the likeliest tokens at its place."""
    lines = [f"{token.token!r}: p = {token.probability:.3f} (logprob {token.logprob:.3f})"]
    lines += [f"  {a.token!r}  {a.probability:.3f}" for a in token.alternatives]
    return "\n".join(lines)


def tokens_html(tokens: Sequence[TokenFacts], upto: int | None = None) -> str:
    """The tokens' text, each in its band; `upto` cuts the text after that many characters
    (an answer cut before its stop string)."""
    parts, length = [], 0
    for t in tokens:
        text = t.token
        if upto is not None:
            if length >= upto:
                break
            text = text[: upto - length]
        length += len(text)
        if not text:
            continue
        style = band(t.probability)
        attribute = f" style='{style}'" if style else ""
        title = html.escape(hover(t), quote=True)
        parts.append(f"<span{attribute} title='{title}'>{html.escape(text)}</span>")
    return f"<div style='{TEXT_STYLE}'>{''.join(parts)}</div>"


def legend_html(distribution: str) -> str:
    """The line under a token view: what the underlines mean, and which distribution."""
    text = f"{TOKEN_LEGEND} · hover a token for its alternatives · {distribution}"
    return f"<div style='{FOOTER_STYLE}'>{html.escape(text)}</div>"
