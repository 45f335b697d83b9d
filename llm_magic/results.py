"""What `llm_magic.generate` and `llm_magic.chat` return: one generation, the results of a
`--over` run, and a chat answer that knows its conversation.

Plain values only: a result kept in `Out` must not keep a model alive. Each shows itself as
text/plain for terminals and escaped text/html for Jupyter, with what produced it as the
display's metadata (the notebook file keeps it)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from . import logprobs
from .display.card import warning_html
from .display.data import data_html, data_text
from .display.style import (
    COLUMN_STYLE,
    COLUMNS_STYLE,
    DIM,
    FOOTER_STYLE,
    HEAD_STYLE,
    TEXT_STYLE,
)
from .display.tokens import legend_html, tokens_html
from .logprobs import TokenLogprob
from .paths import short_name
from .scores import ScoreResults
from .structured import Answer
from .units import format_seconds

MimeBundle = tuple[dict[str, str], dict[str, Any]]

# The stop reason of an --over item an interrupt left unrun.
NOT_RUN = "not run"


@dataclass(frozen=True, repr=False, eq=False)
class GenerationResult:
    """One generation: `.text` and what produced it (counts, timings, settings, model).

    `str(result)` is the text, so a result can fill `{name}` in a later prompt.
    """

    text: str
    prompt: str  # the prompt after {name} filling
    rendered_prompt: str  # what the model read: the chat template applied, or the raw text
    token_ids: tuple[int, ...]  # the new tokens (up to and including eos / the stop string)
    prompt_tokens: int | None  # None: the engine could not tell (a server reporting no usage)
    new_tokens: int
    time_to_first_token: float | None  # seconds from the call to the first new token
    seconds: float  # the generate call (for a batch: the whole batch)
    tokens_per_second: float
    stop_reason: str  # "eos", "length", "stop string", "interrupted", "error" or "not run"
    settings: dict[str, Any]  # max_new_tokens, greedy, temperature, top_p, top_k, stop, ...
    seed: int | None
    model_id: str
    revision: str | None
    dtype: str
    device: str
    versions: dict[str, str]  # python, torch, transformers, llm_magic
    stop_string: str | None = None
    notes: tuple[str, ...] = ()
    batch: tuple[int, int] | None = None  # (index of the batch, batch size) for --over runs
    # Batches on a CPU that emulates the dtype: which faster products ran.
    products: str | None = None
    engine: dict[str, Any] | None = None  # engines.Engine.describe(): which engine made it
    error: str | None = None  # an --over item that failed on its own: why (the others stand)
    # The answer read against --schema/--choice/--regex (None: free text was asked for).
    answer: Answer | None = None

    @property
    def data(self) -> Any:
        """The parsed answer: an instance of the pydantic class, plain JSON values, the
        choice, or the matched text; None when not valid or no format was asked for."""
        return self.answer.data if self.answer is not None else None

    @property
    def valid(self) -> bool | None:
        """Whether the answer conforms to its format (None: no format was asked for)."""
        return self.answer.valid if self.answer is not None else None

    @property
    def validation_error(self) -> str | None:
        """Why the answer does not conform (None when it does)."""
        return self.answer.error if self.answer is not None else None

    # --logprobs: each new token with its log-probability and the likeliest alternatives.
    tokens: tuple[TokenLogprob, ...] = ()
    distribution: str | None = None  # which distribution the log-probabilities are of
    run_id: int | None = None  # its row in the run log (`%llm_log --show ID`), once written
    # Answered from the run log (--reuse): when the logged run was made (local time).
    replayed_from: str | None = None
    # How the weights were quantized ("nf4", "Q4_1"; None: held at `dtype`), and the label
    # of engine, quantization and dtype that footers and metadata show (ModelInfo.held_as).
    quantization: str | None = None
    held_as: str = ""

    @property
    def model_held_as(self) -> str:
        return self.held_as or self.dtype

    def __str__(self) -> str:
        return self.text

    @property
    def logprob(self) -> float | None:
        """The answer's log-probability: the sum over its tokens (with --logprobs)."""
        return logprobs.total(self.tokens) if self.tokens else None

    def tokens_frame(self) -> Any:
        """The new tokens as a DataFrame (with --logprobs): position, token, token_id,
        logprob, probability, alternatives."""
        return logprobs.frame(self.tokens)

    to_pandas = tokens_frame

    def tokens_table(self) -> str:
        """The new tokens as a compact text table (with --logprobs), for a terminal."""
        return logprobs.table(self.tokens)

    def __repr__(self) -> str:
        return self.plain()

    @property
    def adapter(self) -> str | None:
        """The adapter that made the text ("base": the model's adapters were off; None: the
        model has none)."""
        return (self.engine or {}).get("adapter")

    def footer(self) -> str:
        ttft = "–" if self.time_to_first_token is None else format_seconds(self.time_to_first_token)
        mode = "greedy" if self.settings.get("greedy") else f"sampled, seed {self.seed}"
        stop = self.stop_reason + (f" {self.stop_string!r}" if self.stop_string is not None else "")
        adapter = f":{self.adapter}" if self.adapter else ""
        answer = f" · {self.answer.status}" if self.answer is not None else ""
        footer = (
            f"{'?' if self.prompt_tokens is None else self.prompt_tokens} prompt tokens · "
            f"{self.new_tokens} new · "
            f"first token {ttft} · {self.tokens_per_second:.1f} tokens/s · stopped: {stop} · "
            f"{mode} · {short_name(self.model_id)}{adapter} {self.model_held_as}{answer}"
        )
        if self.tokens:
            average = logprobs.mean(self.tokens) or 0.0
            footer += f" · logprob {self.logprob:.2f} (mean {average:.3f} per token)"
        return footer

    def metadata(self) -> dict[str, Any]:
        """What produced this text, for the notebook file (the display's metadata)."""
        return {
            "model": self.model_id,
            "revision": self.revision,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "held_as": self.model_held_as,
            "device": self.device,
            "settings": dict(self.settings),
            "seed": self.seed,
            "versions": dict(self.versions),
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "time_to_first_token": self.time_to_first_token,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "stop_reason": self.stop_reason,
            "batch": self.batch,
            "products": self.products,
            "engine": self.engine,
            "error": self.error,
            "answer": _answer_metadata(self.answer),
            "adapter": self.adapter,
            "run_id": self.run_id,
            "replayed_from": self.replayed_from,
            **({"logprobs": self._logprobs_metadata()} if self.tokens else {}),
        }

    def _logprobs_metadata(self) -> dict[str, Any]:
        return {
            "distribution": self.distribution,
            "top": self.settings.get("logprobs"),
            "total": self.logprob,
        }

    def replay_line(self) -> str | None:
        """Where a --reuse answer came from (None: it was generated now)."""
        if self.replayed_from is None:
            return None
        return (
            f"↺ from the run log: run {self.run_id}, generated {self.replayed_from} "
            "(the same deterministic request; not generated again)"
        )

    def _warnings(self) -> tuple[str, ...]:
        answer = self.answer
        said: tuple[str, ...] = ()
        if answer is not None and not answer.enforced:
            said += (
                f"{answer.format.describe()} not enforced: {answer.how or 'the engine cannot'}",
            )
        if answer is not None and not answer.valid:
            said += (f"the answer does not conform: {answer.error}",)
        return self.notes + ((self.error,) if self.error else ()) + said

    def _remarks(self) -> tuple[str, ...]:
        """What is said with the result that is no warning (a chat turn retried)."""
        return ()

    def plain(self, with_text: bool = True, said: tuple[str, ...] = ()) -> str:
        """The text, the footer and the notes; `said`: notes already on screen, left out."""
        lines = [self.text.rstrip("\n")] if with_text else []
        if self.answer is not None and self.answer.valid:
            lines.append("→ " + parsed_text(self.answer))
        lines += ["── " + self.footer()] + [f"   {remark}" for remark in self._remarks()]
        if self.tokens:
            lines.append(
                f"── log-probabilities: {self.distribution or logprobs.DISTRIBUTION_SHORT}; "
                "result.tokens_table() lists them"
            )
        lines += [f"⚠ {note}" for note in self._warnings() if note not in said]
        replayed = self.replay_line()
        return "\n".join(lines + ([replayed] if replayed else []))

    def html(self) -> str:
        e = html.escape
        notes = "".join(warning_html(n) for n in self._warnings())
        parsed = parsed_html(self.answer) if self.answer is not None and self.answer.valid else ""
        remarks = "".join(f"<div style='{FOOTER_STYLE}'>{e(r)}</div>" for r in self._remarks())
        text = self.text.rstrip(chr(10))
        body = f"<div style='{TEXT_STYLE}'>{e(text)}</div>"
        legend = ""
        if self.tokens and "".join(t.token for t in self.tokens).startswith(text):
            # The answer drawn token by token (the tokens' text is the answer's, up to the
            # stop string or eos it was cut at).
            body = tokens_html(self.tokens, upto=len(text))
            legend = legend_html(self.distribution or logprobs.DISTRIBUTION_SHORT)
        replayed = self.replay_line()
        if replayed:
            notes += f"<div style='{FOOTER_STYLE}'>{e(replayed)}</div>"
        return (
            f"<div>{body}{parsed}<div style='{FOOTER_STYLE}'>{e(self.footer())}</div>"
            f"{remarks}{legend}{notes}</div>"
        )

    def text_already_shown(self, text: bool = True, notes: tuple[str, ...] = ()) -> None:
        """The text has just streamed to a terminal (`text`), and `notes` were said before
        it: the next display (Out[n]) leaves them out, so nothing is printed twice. Later
        displays show it all."""
        object.__setattr__(self, "_text_on_screen", text)
        object.__setattr__(self, "_notes_on_screen", tuple(notes))

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> MimeBundle:
        plain = self.plain(
            with_text=not self.__dict__.pop("_text_on_screen", False),
            said=self.__dict__.pop("_notes_on_screen", ()),
        )
        return {"text/plain": plain, "text/html": self.html()}, {"llm_magic": self.metadata()}


class GenerationResults(list[GenerationResult]):
    """The results of a `--over` run: one GenerationResult per item, in order."""

    # The whole run, start to end (set by generation.generate_many).
    wall_seconds: float | None = None
    # How the engine grouped the prompts (its Capabilities.group): "batch", "request", "prompt".
    group: str = "batch"
    # The items the run went over, and their labels (a pandas Series' index, a dict's
    # keys; None: their positions): to_pandas() keeps both, so results join back to the data.
    items: list[Any] | None = None
    labels: Any = None
    notes: tuple[str, ...] = ()  # about the items as a whole (a dict's values, None items)
    # A plain listing shows this many items at most, then the summary.
    shown_items: int = 20

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self]

    @property
    def failed(self) -> list[int]:
        """The items whose request failed on its own (their `.error` says why)."""
        return [i for i, r in enumerate(self) if r.error is not None]

    @property
    def not_run(self) -> list[int]:
        """The items an interrupt left unrun (stop_reason "not run")."""
        return [i for i, r in enumerate(self) if r.stop_reason == NOT_RUN]

    def stopped_after(self) -> tuple[int, int] | None:
        """(items finished, items in all) when an interrupt stopped the run; else None."""
        unfinished = sum(r.stop_reason in (NOT_RUN, "interrupted") for r in self)
        return (len(self) - unfinished, len(self)) if unfinished else None

    def to_pandas(self) -> Any:
        """One row per item: item, text, prompt/new tokens, stop reason, seconds, error, and
        with --logprobs the answer's log-probability and its tokens (needs pandas). With
        --schema, one typed column per top-level field (integers as integers), then `valid`
        and `validation_error`; with --choice or --regex, a `data` column. The index is the
        items' labels (a Series' index, a dict's keys), so the frame joins back to the data
        it came from."""
        try:
            import pandas as pd
        except ImportError:
            from .errors import LLMError

            raise LLMError(
                "results.to_pandas() needs pandas", fixes=["pip install pandas"]
            ) from None
        items = self.items if self.items is not None else list(range(len(self)))
        with_tokens = any(r.tokens for r in self)
        frame = pd.DataFrame(
            [
                {
                    "item": item,
                    "prompt": r.prompt,
                    "text": r.text,
                    "prompt_tokens": r.prompt_tokens,
                    "new_tokens": r.new_tokens,
                    "stop_reason": r.stop_reason,
                    "seconds": r.seconds,
                    "error": r.error,
                    # with --logprobs: the answer's log-probability and its tokens' records
                    **({"logprob": r.logprob, "tokens": list(r.tokens)} if with_tokens else {}),
                }
                for item, r in zip(items, self, strict=False)
            ]
        )
        # The answer's columns first: they line up with the rows by position.
        frame = _with_answer_columns(pd, frame, [r.answer for r in self])
        if self.labels is not None and len(self.labels) == len(frame):
            frame.index = pd.Index(self.labels)
        return frame

    def summary(self) -> str:
        made = [r for r in self if r.replayed_from is None]  # the runs of this call
        seconds = sum({r.batch[0]: r.seconds for r in made if r.batch is not None}.values())
        if self.wall_seconds is not None:  # concurrent requests overlap: the sum would overstate
            seconds = self.wall_seconds
        new = sum(r.new_tokens for r in made)
        rate = new / seconds if seconds > 0 else 0.0
        interrupted = sum(r.stop_reason == "interrupted" for r in self)
        stopped = self.stopped_after()
        tail = f" · stopped after {stopped[0]} of {stopped[1]} items" if stopped else ""
        tail += f" · {interrupted} interrupted" if interrupted else ""
        tail += f" · {len(self.not_run)} not run" if self.not_run else ""
        replayed = sum(r.replayed_from is not None for r in self)
        if replayed:
            tail += f" · {replayed} from the run log (--reuse), not generated again"
        if self.failed:
            items = ", ".join(f"[{i}]" for i in self.failed[:8])
            more = " ..." if len(self.failed) > 8 else ""
            tail += f" · {len(self.failed)} failed ({items}{more})"
        answers = [r.answer for r in self if r.answer is not None]
        if answers:
            tail += f" · {sum(a.valid for a in answers)}/{len(answers)} valid"
            incomplete = sum(a.incomplete for a in answers)
            tail += f" ({incomplete} incomplete)" if incomplete else ""
            tail += f" · {answers[0].status}"
        model = f" · {short_name(self[0].model_id)} {self[0].model_held_as}" if self else ""
        ran = [r for r in made if r.stop_reason != NOT_RUN]
        count = len({r.batch[0] for r in ran if r.batch}) if self.group == "batch" else len(ran)
        plural = ("es" if self.group.endswith("h") else "s") if count != 1 else ""
        groups = f"{count} {self.group}{plural}"
        return (
            f"{len(self)} results in {groups} · {new} new tokens · "
            f"{format_seconds(seconds)} · {rate:.1f} tokens/s in all{tail}{model}"
        )

    def _listed(self) -> tuple[list[int], int]:
        """(the items a listing shows, how many it leaves out): the first ones and the
        last two, when there are more than `shown_items`."""
        if len(self) <= self.shown_items:
            return list(range(len(self))), 0
        head = list(range(self.shown_items - 2))
        return head + [len(self) - 2, len(self) - 1], len(self) - self.shown_items

    def _more(self, left_out: int) -> str:
        return (
            f"… {left_out} more: results[i], results.texts or results.to_pandas() show every item"
        )

    def plain(self) -> str:
        shown, left_out = self._listed()
        parts = []
        for i in shown:
            r = self[i]
            if left_out and i == len(self) - 2:
                parts.append(self._more(left_out))
            parts.append(
                f"[{i}] {r.text.strip()}\n    ── {r.new_tokens} new · stopped: {r.stop_reason}"
                + (f" · {r.error}" if r.error else "")
                + _row_answer(r.answer)
            )
        notes = [f"⚠ {note}" for note in self.notes]
        return "\n".join(parts + ["── " + self.summary()] + notes)

    def html(self) -> str:
        e = html.escape
        rows = "".join(
            f"<tr><td style='vertical-align:top;color:{DIM};padding-right:1em'>[{i}]</td>"
            f"<td style='text-align:left'><div style='{TEXT_STYLE}'>{e(r.text.strip())}</div>"
            f"<div style='{FOOTER_STYLE}'>{r.new_tokens} new · stopped: {e(r.stop_reason)}"
            f"{e(' · ' + r.error) if r.error else ''}{e(_row_answer(r.answer))}</div></td></tr>"
            for i, r in enumerate(self)
        )
        notes = "".join(warning_html(n) for n in self.notes)
        return (
            f"<div><table style='border:none'>{rows}</table>"
            f"<div style='{FOOTER_STYLE}'>{e(self.summary())}</div>{notes}</div>"
        )

    def __repr__(self) -> str:
        return self.plain()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> MimeBundle:
        meta = [r.metadata() for r in self]
        return {"text/plain": self.plain(), "text/html": self.html()}, {"llm_magic": meta}


class Comparison(dict[str, Any]):
    """One cell run against several models (`-m A B ...`): one value per model, by the name
    it was given (`comparison["tiny:lora"]`), in the order named. The same prompt, settings
    and seed went to each. A value is the model's GenerationResult, or with `--over` its
    GenerationResults; `to_pandas()` is then long form (one row per item and model, items in
    order) and `pivot()` puts the models side by side (items × models)."""

    seed: int | None = None  # the one seed every model was given (None: greedy)
    notes: tuple[str, ...] = ()  # how the run went: models loaded again for their turn

    @property
    def models(self) -> list[str]:
        return list(self)

    @property
    def texts(self) -> dict[str, Any]:
        """{model: its text} (with --over: {model: its texts})."""
        return {
            m: (v.texts if isinstance(v, GenerationResults) else v.text) for m, v in self.items()
        }

    def to_pandas(self) -> Any:
        """Long form: item, model, prompt, text, tokens, stop reason, seconds, seed, error
        (and what each model's results add), one row per item and model, the items in order
        and the models as named within each (needs pandas)."""
        return self._long().drop(columns=["_position", "_order"], errors="ignore")

    def _long(self) -> Any:
        """The long form with each row's position in its model's results (`_position`):
        items themselves (texts, dicts) may repeat or not sort."""
        try:
            import pandas as pd
        except ImportError:
            from .errors import LLMError

            raise LLMError("to_pandas() needs pandas", fixes=["pip install pandas"]) from None
        frames = []
        for order, (model, value) in enumerate(self.items()):
            runs = value if isinstance(value, GenerationResults) else GenerationResults([value])
            frame = runs.to_pandas().reset_index(drop=True)
            frame.insert(1, "model", model)
            frame["seed"] = [r.seed for r in runs]
            frame["adapter"] = [r.adapter for r in runs]
            frame["_position"] = range(len(frame))
            frame["_order"] = order
            frames.append(frame)
        if not frames:
            return pd.DataFrame()
        long = pd.concat(frames, ignore_index=True)
        long = long.sort_values(["_position", "_order"], kind="stable")
        return long.reset_index(drop=True)

    def pivot(self, values: str = "text") -> Any:
        """Items × models: each model's `values` column (text, new_tokens, seconds, ...)
        side by side, the models in the order named; a row per item, indexed by its
        position."""
        table = self._long().pivot(index="_position", columns="model", values=values)
        table.index.name = "item"
        return table[[m for m in self.models if m in table.columns]]

    def footer(self) -> str:
        mode = "greedy" if self.seed is None else f"seed {self.seed}"
        return f"{len(self)} models · the same prompt and settings ({mode}) for each"

    def text_already_shown(self, text: bool = True, notes: tuple[str, ...] = ()) -> None:
        """The texts have just streamed to a terminal (`text`): the next display shows the
        footers. `notes`: as a single result takes them (the columns say none first)."""
        self._texts_on_screen = text

    def plain(self, with_text: bool = True) -> str:
        parts = []
        for model, value in self.items():
            if isinstance(value, GenerationResults):
                parts.append(f"══ {model}\n{value.plain()}")
            else:
                parts.append(f"══ {model}\n{value.plain(with_text)}")
        tail = ["── " + self.footer()] + [f"⚠ {n}" for n in self.notes]
        return "\n".join(parts + tail)

    def html(self) -> str:
        e = html.escape
        if any(isinstance(v, GenerationResults) for v in self.values()):
            body = self._table()
        else:
            body = (
                f"<div style='{COLUMNS_STYLE}'>"
                + "".join(
                    f"<div style='{COLUMN_STYLE}'><div style='{HEAD_STYLE}'>{e(m)}</div>"
                    f"{v.html()}</div>"
                    for m, v in self.items()
                )
                + "</div>"
            )
        notes = "".join(warning_html(n) for n in self.notes)
        return f"<div>{body}<div style='{FOOTER_STYLE}'>{e(self.footer())}</div>{notes}</div>"

    def _table(self) -> str:
        """--over: a row per item, a column per model."""
        e = html.escape
        runs = {
            m: v if isinstance(v, GenerationResults) else GenerationResults([v])
            for m, v in self.items()
        }
        count = max((len(r) for r in runs.values()), default=0)
        head = f"<th style='{HEAD_STYLE}'></th>" + "".join(
            f"<th style='{HEAD_STYLE};text-align:left'>{e(m)}</th>" for m in runs
        )
        rows = []
        for i in range(count):
            cells = "".join(
                (
                    f"<td style='vertical-align:top;text-align:left'>"
                    f"<div style='{TEXT_STYLE}'>{e(r[i].text.strip())}</div>"
                    f"<div style='{FOOTER_STYLE}'>{r[i].new_tokens} new · stopped: "
                    f"{e(r[i].stop_reason)}{e(' · ' + (r[i].error or '')) if r[i].error else ''}"
                    "</div></td>"
                )
                if i < len(r)
                else "<td></td>"
                for r in runs.values()
            )
            rows.append(f"<tr><td style='vertical-align:top;color:{DIM}'>[{i}]</td>{cells}</tr>")
        return f"<table style='border:none'><tr>{head}</tr>{''.join(rows)}</table>"

    def __repr__(self) -> str:
        return self.plain()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> MimeBundle:
        shown = not self.__dict__.pop("_texts_on_screen", False)
        meta = {
            m: ([r.metadata() for r in v] if isinstance(v, GenerationResults) else v.metadata())
            for m, v in self.items()
        }
        bundle = {"text/plain": self.plain(with_text=shown), "text/html": self.html()}
        return bundle, {"llm_magic": {"models": meta, "seed": self.seed}}


class HasMessages(Protocol):
    """What a chat answer reads of its conversation (conversations.Conversation)."""

    @property
    def messages(self) -> list[dict[str, str]]: ...


@dataclass(frozen=True, repr=False, eq=False)
class ChatResult(GenerationResult):
    """One chat answer: a GenerationResult (`.text`, counts, timings, footer), plus the
    conversation it is a turn of (`.conversation`, `.messages`)."""

    conversation: HasMessages | None = field(default=None, compare=False)
    remarks: tuple[str, ...] = ()  # said under the footer, not as warnings ("retried turn 2")

    @classmethod
    def of(
        cls,
        result: GenerationResult,
        conversation: HasMessages,
        notes: tuple[str, ...] = (),
        remarks: tuple[str, ...] = (),
    ) -> ChatResult:
        values = {f.name: getattr(result, f.name) for f in fields(GenerationResult)}
        values["notes"] = tuple(notes) + result.notes
        return cls(**values, conversation=conversation, remarks=remarks)

    def _remarks(self) -> tuple[str, ...]:
        return self.remarks

    @property
    def messages(self) -> list[dict[str, str]]:
        """The whole conversation so far, as chat messages (this answer included)."""
        return self.conversation.messages if self.conversation is not None else []


# --- typed answers -------------------------------------------------------------------------


def parsed_text(answer: Answer) -> str:
    """The parsed answer in one line of text (after the streamed text)."""
    return data_text(answer.plain_data())


def parsed_html(answer: Answer) -> str:
    """The parsed answer as a small table (an object) or pretty JSON, escaped."""
    return data_html(answer.plain_data())


def _row_answer(answer: Answer | None) -> str:
    if answer is None:
        return ""
    return " · valid" if answer.valid else f" · not valid: {answer.error}"


def _answer_metadata(answer: Answer | None) -> dict[str, Any] | None:
    if answer is None:
        return None
    return {
        "format": answer.format.recorded(),
        "valid": answer.valid,
        "error": answer.error,
        "enforced": answer.enforced,
        "how": answer.how,
        "incomplete": answer.incomplete,
        "data": answer.plain_data(),
    }


# pandas dtypes for JSON Schema types: nullable, so an invalid row (None) keeps integers
# integers.
_DTYPES = {"integer": "Int64", "number": "Float64", "boolean": "boolean"}
_USUAL_COLUMNS = ("item", "prompt", "text", "prompt_tokens", "new_tokens", "stop_reason")


def _with_answer_columns(pd: Any, frame: Any, answers: list[Answer | None]) -> Any:
    """`frame` with the answers' columns after `text`: one per top-level field of an
    object schema (typed from the schema), else one `data` column; then `valid` and
    `validation_error`."""
    fmt = next((a.format for a in answers if a is not None), None)
    if fmt is None:
        return frame
    data = [a.plain_data() if a is not None and a.valid else None for a in answers]
    columns: dict[str, Any] = {}
    if fmt.fields:
        for name, spec in fmt.fields.items():
            values = [d.get(name) if isinstance(d, dict) else None for d in data]
            column = f"data.{name}" if name in frame.columns or name in _USUAL_COLUMNS else name
            columns[column] = _typed(pd, values, spec)
    else:
        columns["data"] = pd.Series(data, dtype=object if fmt.kind == "json" else None)
    columns["valid"] = pd.Series([a is not None and a.valid for a in answers], dtype=bool)
    columns["validation_error"] = [a.error if a is not None else None for a in answers]
    at = list(frame.columns).index("text") + 1
    for offset, (name, values) in enumerate(columns.items()):
        frame.insert(at + offset, name, values)
    return frame


def _typed(pd: Any, values: list[Any], spec: Any) -> Any:
    kind = spec.get("type") if isinstance(spec, dict) else None
    dtype = _DTYPES.get(kind) if isinstance(kind, str) else None
    if dtype is not None:
        try:
            return pd.Series(values, dtype=dtype)
        except (TypeError, ValueError):  # a value of another type: keep what came
            pass
    if kind == "string" or (isinstance(spec, dict) and "enum" in spec and kind is None):
        return pd.Series(values)
    return pd.Series(values, dtype=object)


# The attribute that carries a partial result on the exception that ended its run.
_CARRIED = "result"


def carry_result(
    error: BaseException,
    result: GenerationResult | GenerationResults | Comparison | ScoreResults,
) -> None:
    """Attach what a run made before it ended (Ctrl-C's KeyboardInterrupt, a GenerationError
    after text was made) to the exception, as its `.result`: whoever catches it keeps it."""
    setattr(error, _CARRIED, result)


def carried_result(
    error: BaseException,
) -> GenerationResult | GenerationResults | Comparison | ScoreResults | None:
    """The partial result `carry_result` attached to `error`, or None."""
    result = getattr(error, _CARRIED, None)
    kinds = GenerationResult | GenerationResults | Comparison | ScoreResults
    return result if isinstance(result, kinds) else None
