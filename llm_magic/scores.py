"""What `llm_magic.score` and `%%llm_score` return: a scored text (its log-likelihood,
perplexity and tokens), a multiple-choice question's choices with their probabilities,
and the rows of a `--over` run.

The figures are those lm-evaluation-harness reports: a continuation's log-likelihood is
the sum of its tokens' log-probabilities (natural log); of several choices, `best` is the
one with the highest log-likelihood (its `acc`), `best_norm` the highest per character of
the choice (its `acc_norm`: divided by `len(choice)`, the choice as given, without the
space put before it) and `best_bytes` per UTF-8 byte (its `acc_bytes`); the probabilities
over the choices are the softmax of their log-likelihoods. Plain values only, so a result
kept in `Out` keeps no model alive."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import logprobs
from .display.card import plural, warning_html
from .display.style import CARD_STYLE, DIM, FOOTER_STYLE, OK, TEXT_STYLE
from .display.tokens import legend_html, tokens_html
from .logprobs import TokenLogprob
from .paths import short_name
from .units import format_seconds

MimeBundle = tuple[dict[str, Any], dict[str, Any]]


@dataclass(frozen=True, repr=False, eq=False)
class ScoreResult:
    """A text scored after its context: `.logprob` (the total), `.tokens`, `.perplexity`."""

    text: str  # the continuation as given
    context: str | None  # the context as given (None: the text on its own)
    context_shown: str  # the context as the model read it (chat template applied or not)
    tokens: tuple[TokenLogprob, ...]
    context_tokens: int
    greedy: bool | None  # whether every token was the model's likeliest
    model_id: str
    dtype: str
    seconds: float
    distribution: str
    templated: bool = False
    engine: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    label: str = "the text"

    @property
    def logprob(self) -> float:
        """The log-likelihood: the sum of the tokens' log-probabilities."""
        return logprobs.total(self.tokens)

    @property
    def token_count(self) -> int:
        return len(self.tokens)

    @property
    def mean_logprob(self) -> float:
        return logprobs.mean(self.tokens) or 0.0

    @property
    def perplexity(self) -> float:
        """exp of the mean negative log-likelihood per token."""
        value = logprobs.perplexity(self.tokens)
        return value if value is not None else math.nan

    def tokens_frame(self) -> Any:
        return logprobs.frame(self.tokens)

    to_pandas = tokens_frame

    def tokens_table(self) -> str:
        return logprobs.table(self.tokens)

    def figures(self) -> str:
        return (
            f"{self.token_count} tokens · logprob {self.logprob:.3f} · "
            f"mean {self.mean_logprob:.3f} per token · perplexity {self.perplexity:.3f}"
        )

    def how(self) -> str:
        """What was scored after what, in words."""
        if self.context is None:
            return "the text on its own (after the model's start token)"
        if self.templated:
            return "after the context as the user's turn (chat template applied; --raw: not)"
        return "after the context as plain text"

    def footer(self) -> str:
        return (
            f"scored {self.how()} · {self.context_tokens} context tokens · "
            f"{format_seconds(self.seconds)} · {short_name(self.model_id)} {self.dtype}"
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "dtype": self.dtype,
            "engine": self.engine,
            "logprob": self.logprob,
            "tokens": self.token_count,
            "perplexity": self.perplexity,
            "context_tokens": self.context_tokens,
            "templated": self.templated,
            "distribution": self.distribution,
        }

    def plain(self) -> str:
        lines = [f"scored: {self.figures()}", "── " + self.footer()]
        lines.append(f"── log-probabilities: {self.distribution}; result.tokens_table() lists them")
        return "\n".join(lines + [f"⚠ {n}" for n in self.notes])

    def html(self) -> str:
        e = html.escape
        context = ""
        if self.context_shown:
            context = f"<div style='{TEXT_STYLE};color:{DIM}'>{e(_tail(self.context_shown))}</div>"
        return (
            f"<div><div style='{CARD_STYLE}'><b>{e(self.figures())}</b></div>{context}"
            f"{tokens_html(self.tokens)}<div style='{FOOTER_STYLE}'>{e(self.footer())}</div>"
            f"{legend_html(self.distribution)}"
            + "".join(warning_html(n) for n in self.notes)
            + "</div>"
        )

    def __repr__(self) -> str:
        return self.plain()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> MimeBundle:
        return {"text/plain": self.plain(), "text/html": self.html()}, {
            "llm_magic": self.metadata()
        }


def _tail(text: str, limit: int = 300) -> str:
    """A long context's end (what the scored text follows)."""
    return text if len(text) <= limit else "…" + text[-limit:]


def softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    whole = math.fsum(exps)
    return [x / whole for x in exps]


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


@dataclass(frozen=True, repr=False, eq=False)
class ChoiceScores:
    """A multiple-choice question: each choice scored as the continuation of the same
    context. `.probabilities` (choice → probability, normalised over the choices),
    `.best`, and lm-evaluation-harness's normalised figures."""

    context: str  # the question as given
    choices: tuple[str, ...]
    scores: tuple[ScoreResult, ...]  # one per choice, in order
    answer: int | None = None  # the right choice's index, where known

    @property
    def logprobs(self) -> dict[str, float]:
        """Choice → log-likelihood (the sum over its tokens)."""
        return {c: s.logprob for c, s in zip(self.choices, self.scores, strict=True)}

    @property
    def probabilities(self) -> dict[str, float]:
        """Choice → probability, normalised over the choices (softmax of the log-likelihoods)."""
        values = softmax([s.logprob for s in self.scores])
        return dict(zip(self.choices, values, strict=True))

    @property
    def per_char(self) -> list[float]:
        """Log-likelihood per character of the choice (lm-evaluation-harness's acc_norm)."""
        return [s.logprob / max(len(c), 1) for c, s in zip(self.choices, self.scores, strict=True)]

    @property
    def per_byte(self) -> list[float]:
        """Log-likelihood per UTF-8 byte of the choice (lm-evaluation-harness's acc_bytes)."""
        return [
            s.logprob / max(len(c.encode("utf-8")), 1)
            for c, s in zip(self.choices, self.scores, strict=True)
        ]

    @property
    def best_index(self) -> int:
        return _argmax([s.logprob for s in self.scores])

    @property
    def best(self) -> str:
        """The likeliest choice (the prediction lm-evaluation-harness's acc counts)."""
        return self.choices[self.best_index]

    @property
    def best_norm_index(self) -> int:
        return _argmax(self.per_char)

    @property
    def best_norm(self) -> str:
        """The likeliest choice per character (the prediction acc_norm counts)."""
        return self.choices[self.best_norm_index]

    @property
    def best_bytes(self) -> str:
        return self.choices[_argmax(self.per_byte)]

    @property
    def acc(self) -> float | None:
        return None if self.answer is None else float(self.best_index == self.answer)

    @property
    def acc_norm(self) -> float | None:
        return None if self.answer is None else float(self.best_norm_index == self.answer)

    @property
    def tokens(self) -> tuple[TokenLogprob, ...]:
        """The best choice's tokens."""
        return self.scores[self.best_index].tokens

    @property
    def logprob(self) -> float:
        """The best choice's log-likelihood."""
        return self.scores[self.best_index].logprob

    @property
    def perplexity(self) -> float:
        return self.scores[self.best_index].perplexity

    def frame(self) -> Any:
        """One row per choice: choice, logprob, tokens, per char, per byte, probability."""
        import pandas as pd

        rows = [
            {
                "choice": c,
                "logprob": s.logprob,
                "tokens": s.token_count,
                "logprob_per_char": pc,
                "logprob_per_byte": pb,
                "probability": p,
                "greedy": s.greedy,
            }
            for c, s, pc, pb, p in zip(
                self.choices,
                self.scores,
                self.per_char,
                self.per_byte,
                self.probabilities.values(),
                strict=True,
            )
        ]
        return pd.DataFrame(rows)

    to_pandas = frame

    def summary(self) -> str:
        first = self.scores[0]
        right = "" if self.answer is None else f" · answer {self.choices[self.answer]!r}"
        return (
            f"best {self.best!r} · per character {self.best_norm!r}{right} · "
            f"{len(self.choices)} choices scored {first.how()} · "
            f"{short_name(first.model_id)} {first.dtype}"
        )

    def notes(self) -> list[str]:
        seen: list[str] = []
        for s in self.scores:
            seen += [n for n in s.notes if n not in seen]
        return seen

    def plain(self) -> str:
        width = max(len(repr(c)) for c in self.choices)
        lines = [f"{'choice':<{width}}  {'logprob':>9} {'per char':>9}  probability"]
        for i, (c, p) in enumerate(self.probabilities.items()):
            s = self.scores[i]
            mark = " ✓" if i == self.best_index else ""
            lines.append(
                f"{c!r:<{width}}  {s.logprob:>9.3f} {self.per_char[i]:>9.3f}  {p:>10.3f}{mark}"
            )
        lines.append("── " + self.summary())
        return "\n".join(lines + [f"⚠ {n}" for n in self.notes()])

    def html(self) -> str:
        e = html.escape
        head = "".join(
            f"<th style='padding:0 .8em 0 0;color:{DIM};text-align:left'>{h}</th>"
            for h in ("", "choice", "logprob", "per char", "probability", "")
        )
        body = ""
        for i, (c, p) in enumerate(self.probabilities.items()):
            s = self.scores[i]
            mark = f"<b style='color:{OK}'>✓</b>" if i == self.best_index else ""
            body += (
                f"<tr><td>{mark}</td><td style='text-align:left'>{e(c)}</td>"
                f"<td>{s.logprob:.3f}</td><td>{self.per_char[i]:.3f}</td>"
                f"<td>{p:.3f}</td><td><progress value='{p:.4f}' max='1'></progress></td></tr>"
            )
        return (
            f"<div style='{CARD_STYLE}'><table style='border:none'><tr>{head}</tr>{body}"
            f"</table><div style='{FOOTER_STYLE}'>{e(self.summary())}</div>"
            + "".join(warning_html(n) for n in self.notes())
            + "</div>"
        )

    def __repr__(self) -> str:
        return self.plain()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> MimeBundle:
        meta: dict[str, Any] = {
            "choices": list(self.choices),
            "probabilities": self.probabilities,
        }
        meta.update(answer=self.answer, **self.scores[0].metadata())
        return {"text/plain": self.plain(), "text/html": self.html()}, {"llm_magic": meta}


class ScoreResults(list):
    """The results of a `--over` run: one ScoreResult or ChoiceScores per item, in order."""

    items: int = 0  # the items asked for (more than len(self) when interrupted)
    wall_seconds: float | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.indices: list[int] = []  # each result's item (an interrupted run skips some)

    def _item(self, position: int) -> int:
        return self.indices[position] if len(self.indices) == len(self) else position

    @property
    def interrupted(self) -> bool:
        return len(self) < self.items

    @property
    def accuracy(self) -> dict[str, float]:
        """acc and acc_norm over the items that have an answer (empty when none has)."""
        known = [r for r in self if isinstance(r, ChoiceScores) and r.answer is not None]
        if not known:
            return {}
        return {
            "acc": math.fsum(r.acc or 0.0 for r in known) / len(known),
            "acc_norm": math.fsum(r.acc_norm or 0.0 for r in known) / len(known),
        }

    def to_pandas(self) -> Any:
        """One row per item: the text, its figures (or, for choices: best, best per
        character, the probabilities and log-likelihoods, answer, acc, acc_norm)."""
        import pandas as pd

        rows = []
        for i, r in enumerate(self):
            if isinstance(r, ChoiceScores):
                rows.append(
                    {
                        "item": self._item(i),
                        "context": r.context,
                        "best": r.best,
                        "best_norm": r.best_norm,
                        "probabilities": r.probabilities,
                        "logprobs": r.logprobs,
                        "answer": None if r.answer is None else r.choices[r.answer],
                        "acc": r.acc,
                        "acc_norm": r.acc_norm,
                    }
                )
            else:
                rows.append(
                    {
                        "item": self._item(i),
                        "context": r.context,
                        "text": r.text,
                        "logprob": r.logprob,
                        "tokens": r.token_count,
                        "mean_logprob": r.mean_logprob,
                        "perplexity": r.perplexity,
                        "greedy": r.greedy,
                    }
                )
        return pd.DataFrame(rows)

    def summary(self) -> str:
        parts = [f"{plural(len(self), 'item')} scored"]
        if self.interrupted:
            parts[0] += f" of {self.items} (interrupted: the rest were not)"
        parts += [f"{k} {v:.3f}" for k, v in self.accuracy.items()]
        if self.wall_seconds is not None:
            parts.append(format_seconds(self.wall_seconds))
        if self:
            first = self[0].scores[0] if isinstance(self[0], ChoiceScores) else self[0]
            parts.append(f"{short_name(first.model_id)} {first.dtype}")
        return " · ".join(parts)

    def _line(self, i: int, r: ScoreResult | ChoiceScores) -> str:
        if isinstance(r, ChoiceScores):
            p = r.probabilities[r.best]
            return f"[{self._item(i)}] best {r.best!r} ({p:.3f})" + (
                "" if r.answer is None else f" · answer {r.choices[r.answer]!r}"
            )
        return f"[{self._item(i)}] {r.figures()}"

    def plain(self) -> str:
        return "\n".join([self._line(i, r) for i, r in enumerate(self)] + ["── " + self.summary()])

    def html(self) -> str:
        e = html.escape
        rows = "".join(f"<div>{e(self._line(i, r))}</div>" for i, r in enumerate(self))
        return (
            f"<div style='{CARD_STYLE}'>{rows}"
            f"<div style='{FOOTER_STYLE}'>{e(self.summary())}</div></div>"
        )

    def __repr__(self) -> str:
        return self.plain()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> MimeBundle:
        return {"text/plain": self.plain(), "text/html": self.html()}, {
            "llm_magic": {"items": self.items, "accuracy": self.accuracy}
        }
