"""Conversations: the turns of a chat across cells, kept so that they read as the notebook reads.

A turn remembers the cell it came from (Jupyter's cell id): running that cell again
replaces its turn and drops the turns after it, instead of appending a duplicate. What is
sent with each new turn is the part of the history that fits the model's context, oldest
turns left out first, the system message always kept. The conversation itself keeps every
turn (so it still matches the page, and a re-run earlier cell is found); `.messages` is
the list of {"role", "content"} dicts every chat API takes.

Plain data and the engine interface only: this works the same on every engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .engines import Engine, Request
from .errors import GenerationError, LLMError
from .runlog import Origin
from .settings import Settings

FORMAT = "llm_magic.conversation/1"


@dataclass
class Turn:
    """One exchange: the user's text (after {name} filling) and the answer to it."""

    user: str
    assistant: str
    cell_id: str | None = None  # the notebook cell it came from; None outside Jupyter
    interrupted: bool = False  # the answer was stopped by Ctrl-C: `assistant` is partial
    settings: Settings | None = None  # how the answer was generated (--retry uses them again)

    def messages(self) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": self.user},
            {"role": "assistant", "content": self.assistant},
        ]


@dataclass
class Conversation:
    """A named conversation: its model, system message and turns."""

    name: str
    model: str | None = None  # the name the model is found by (an alias, or its short name)
    system: str | None = None
    turns: list[Turn] = field(default_factory=list)
    sent_from: int = 0  # the first turn sent with the last answer (the older ones did not fit)

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages: the system one (if any), then user and
        assistant in turn."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [m for turn in self.turns for m in turn.messages()]

    def reset(self, system: str | None = None) -> None:
        """Start over: no turns, and the given system message (or none). In place, so every
        reference to the conversation sees it empty."""
        self.turns.clear()
        self.system = system or None
        self.sent_from = 0

    # --- where a new turn goes -----------------------------------------------------------

    def place(self, cell_id: str | None) -> tuple[int, str | None]:
        """(the index the turn from `cell_id` takes, a one-line note when it replaces turns).

        A cell already in the conversation gets its own place back: its turn is replaced
        and the turns after it (asked after it, from the answer it no longer has) go.
        """
        if cell_id is not None:
            for index, turn in enumerate(self.turns):
                if turn.cell_id == cell_id:
                    return index, replaced_note(index, len(self.turns))
        return len(self.turns), None

    def commit(self, index: int, turn: Turn) -> None:
        """Put `turn` at `index`, dropping what was there and after it."""
        del self.turns[index:]
        self.turns.append(turn)

    # --- JSON ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "model": self.model,
            "system": self.system,
            "turns": [
                {
                    "user": t.user,
                    "assistant": t.assistant,
                    "cell_id": t.cell_id,
                    "interrupted": t.interrupted,
                    "settings": _settings_dict(t.settings),
                }
                for t in self.turns
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Conversation:
        if data.get("format") != FORMAT:
            raise LLMError(
                f"not a saved conversation (format {data.get('format')!r}, expected {FORMAT!r})",
                fixes=["save one with conversation.save('chat.json')"],
            )
        turns = [
            Turn(
                t["user"],
                t["assistant"],
                t.get("cell_id"),
                bool(t.get("interrupted", False)),
                _settings_of(t.get("settings")),
            )
            for t in data.get("turns", [])
        ]
        return cls(data["name"], data.get("model"), data.get("system"), turns)

    def save(self, path: str | Path) -> Path:
        """Write the conversation to a JSON file; returns its path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Conversation:
        """A conversation read back from `save`'s JSON (pass it to `llm_magic.chat(...,
        conversation=...)` to carry on with it)."""
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise LLMError(
                f"{path}: not a saved conversation: the JSON is not whole",
                f"it stops being JSON at line {e.lineno}, column {e.colno} ({e.msg}):"
                " a file cut short while saving, or edited",
                [
                    "save it again from the kernel that has it: conversation.save(path)",
                    "or start over: %%llm_chat --new",
                ],
            ) from None
        if not isinstance(data, dict):
            raise LLMError(
                f"{path}: not a saved conversation (JSON {type(data).__name__}, not an object)",
                fixes=["save one with conversation.save('chat.json')"],
            )
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, AttributeError) as e:
            raise LLMError(
                f"{path}: not a saved conversation: {type(e).__name__} {e} in its turns",
                fixes=["save one with conversation.save('chat.json')"],
            ) from None

    def __repr__(self) -> str:
        return f"<Conversation {self.name!r}: {len(self.turns)} turns, model {self.model}>"


def _settings_dict(settings: Settings | None) -> dict[str, Any] | None:
    if settings is None:
        return None
    values = asdict(settings)
    values["stop"] = list(settings.stop)
    return values


def _settings_of(values: Any) -> Settings | None:
    """A turn's saved settings read back; the fields this version does not know are left
    out (a file saved by another version), and unreadable ones give None."""
    if not isinstance(values, dict):
        return None
    known = {f.name for f in fields(Settings)}
    kept = {k: v for k, v in values.items() if k in known}
    if isinstance(kept.get("stop"), list):
        kept["stop"] = tuple(kept["stop"])
    try:
        return Settings(**kept)
    except TypeError:
        return None


def settings_words(settings: Settings) -> str:
    """How a turn was generated, in a few words: 'greedy, at most 64 new tokens'."""
    how = (
        "greedy"
        if settings.greedy
        else f"sampled at temperature {settings.temperature:g}, top-p {settings.top_p:g}, "
        f"top-k {settings.top_k}" + (f", seed {settings.seed}" if settings.seed is not None else "")
    )
    stops = f", stop at {', '.join(repr(s) for s in settings.stop)}" if settings.stop else ""
    return f"{how}, at most {settings.max_new_tokens} new tokens{stops}"


def replaced_note(index: int, count: int) -> str:
    """'replaced turn 2; dropped turns 3–4' (turns counted from 1, as --show numbers them)."""
    after = count - index - 1
    note = f"replaced turn {index + 1}"
    if after == 1:
        note += f"; dropped turn {index + 2}"
    elif after > 1:
        note += f"; dropped turns {index + 2}–{count}"
    return note


# --- what is sent: the history that fits ----------------------------------------------------


def request_for(system: str | None, history: list[Turn], text: str, start: int = 0) -> Request:
    """The chat request: system, the turns of `history` from `start`, then the new user text."""
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for turn in history[start:]:
        messages += turn.messages()
    messages.append({"role": "user", "content": text})
    return Request(tuple(messages), raw=False)


def fit(
    engine: Engine,
    system: str | None,
    history: list[Turn],
    text: str,
    max_new_tokens: int,
    max_history: int = 0,
) -> tuple[Request, int, str | None]:
    """(the request to send, the first turn of `history` in it, a one-line note when some
    were left out). The oldest turns are left out first, until the prompt leaves room for
    the answer in the model's context; `max_history` (0: no cap) caps the turns sent."""
    start = max(len(history) - max_history, 0) if max_history > 0 else 0
    capped = start
    limit = engine.context_limit()
    if limit is not None:
        # Room for the answer, but at most half the context: an answer budget as large as
        # the context would leave no history at all (generation then lowers
        # max_new_tokens to what is left, and says so).
        room = min(max_new_tokens, limit // 2)
        while start < len(history):
            tokens = engine.render(request_for(system, history, text, start)).tokens
            # An engine that cannot count tokens before sending (a server) returns None:
            # there only max_history trims, and the server refuses what does not fit.
            if tokens is None or tokens + room <= limit:
                break
            start += 1
    note = None
    if start > 0:
        sent = len(history) - start
        if start > capped:
            note = (
                f"sent the last {sent} of {len(history)} turns: the {start} older "
                f"{'one does' if start == 1 else 'ones do'} not fit the model's {limit} positions "
                f"with room for the answer"
            )
        else:
            note = f"sent the last {sent} of {len(history)} turns (max_history {max_history})"
    return request_for(system, history, text, start), start, note


# --- asking: one turn -------------------------------------------------------------------------


def ask(
    conversation: Conversation,
    engine: Engine,
    text: str,
    settings,
    *,
    cell_id: str | None = None,
    retry: bool = False,
    max_history: int = 0,
    on_text: Callable[[str], None] | None = None,
    on_prompt: Callable[[str, int | None], None] | None = None,
    origin: Origin | None = None,
):
    """The next turn of `conversation`: `text` answered by `engine`, recorded as a turn
    (and in the run log as a chat run, with the conversation and the turn's number).

    With `cell_id`, a turn from the same cell is replaced (and the turns after it dropped);
    with `retry`, the last turn is asked again. The conversation changes only once the
    answer is there, or was interrupted (Ctrl-C: the partial answer is recorded as
    interrupted, and KeyboardInterrupt re-raised carrying it as `.result`); a failure
    leaves it as it was. Returns a ChatResult: the GenerationResult with the notes of this
    turn (replaced turns, history left out), and `.conversation`.
    """
    from . import generation
    from .results import ChatResult, GenerationResult, carried_result, carry_result

    notes: list[str] = []
    remarks: list[str] = []  # said with the answer, not as warnings
    if retry:
        if not conversation.turns:
            raise GenerationError(
                f"conversation {conversation.name!r} has no answer to retry yet",
                fixes=["%%llm_chat with a question first"],
            )
        index = len(conversation.turns) - 1
        last = conversation.turns[index]
        text, cell_id = last.user, last.cell_id
        remarks.append(
            f"retried turn {index + 1} of conversation {conversation.name!r}: "
            f"{settings_words(settings)}"
        )
    else:
        if not text or not text.strip():
            raise GenerationError(
                "the message is empty: nothing to send to the model",
                fixes=[
                    "write the message in the cell, under the %%llm_chat line",
                    "%llm_chat --retry asks the last question again",
                ],
            )
        index, note = conversation.place(cell_id)
        if note:
            notes.append(note)
    history = conversation.turns[:index]
    request, start, note = fit(
        engine, conversation.system, history, text, settings.max_new_tokens, max_history
    )
    if note:
        notes.append(note)
    kept = replace(settings, system=None, raw=False)  # the turn's own: --retry reuses them
    settings = replace(settings, system=conversation.system, raw=False)  # recorded with the result
    try:
        result = generation.generate(
            engine,
            request,
            settings,
            on_text=on_text,
            on_prompt=on_prompt,
            origin=replace(
                origin or Origin(), kind="chat", conversation=conversation.name, turn=index + 1
            ),
        )
    except KeyboardInterrupt as e:
        partial = carried_result(e)
        if isinstance(partial, GenerationResult):
            carry_result(e, ChatResult.of(partial, conversation, tuple(notes), tuple(remarks)))
            conversation.commit(index, Turn(text, partial.text, cell_id, True, kept))
            conversation.sent_from = start
        raise
    conversation.commit(index, Turn(text, result.text, cell_id, False, kept))
    conversation.sent_from = start
    return ChatResult.of(result, conversation, tuple(notes), tuple(remarks))


# --- the kernel's conversations -----------------------------------------------------------------


class Conversations:
    """The kernel's named conversations (`--as NAME`; by default one per model)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Conversation] = {}
        self.last: str | None = None  # the one used last: the default of --show and --reset

    def get(self, name: str) -> Conversation | None:
        return self._by_name.get(name)

    def open(self, name: str, model: str | None = None) -> Conversation:
        """The conversation called `name`, made (empty) when there is none yet."""
        conversation = self._by_name.get(name)
        if conversation is None:
            conversation = self._by_name[name] = Conversation(name, model)
        return conversation

    def add(self, conversation: Conversation) -> Conversation:
        """Keep `conversation` under its name (replacing one of the same name)."""
        self._by_name[conversation.name] = conversation
        return conversation

    def current(self) -> Conversation | None:
        return self._by_name.get(self.last) if self.last is not None else None

    def names(self) -> list[str]:
        return list(self._by_name)

    def all(self) -> list[Conversation]:
        return list(self._by_name.values())

    def clear(self) -> None:
        self._by_name.clear()
        self.last = None


CONVERSATIONS = Conversations()
