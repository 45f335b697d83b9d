"""What `%%llm_chat` shows besides its answers: a conversation as a card (`--show`) and
the list of them (`--list`). The cards hold copies of the text, not the conversation."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .card import Shown, plural
from .style import FOOTER_STYLE, ROLE_STYLE, TEXT_STYLE


class TurnFacts(Protocol):
    """What the card reads of a turn (conversations.Turn)."""

    @property
    def user(self) -> str: ...
    @property
    def assistant(self) -> str: ...
    @property
    def interrupted(self) -> bool: ...


class ConversationFacts(Protocol):
    """What the card reads of a conversation (conversations.Conversation)."""

    @property
    def name(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def system(self) -> str | None: ...
    @property
    def turns(self) -> Sequence[TurnFacts]: ...
    @property
    def sent_from(self) -> int: ...


@dataclass(frozen=True, repr=False)
class ConversationView(Shown):
    """A conversation as a card: its name and model, then each turn (user, then assistant)."""

    name: str
    model: str | None
    system: str | None
    turns: tuple[tuple[str, str, bool], ...]  # (user, assistant, interrupted)
    sent_from: int = 0  # turns before it were not sent with the last answer (beyond the context)

    @classmethod
    def of(cls, conversation: ConversationFacts) -> ConversationView:
        return cls(
            conversation.name,
            conversation.model,
            conversation.system,
            tuple((t.user, t.assistant, t.interrupted) for t in conversation.turns),
            conversation.sent_from,
        )

    def title(self) -> str:
        turns = plural(len(self.turns), "turn")
        return f"conversation {self.name} · {turns} · model {self.model or '–'}"

    def _entries(self) -> list[tuple[str, str, str]]:
        """(role label, text, remark) in order."""
        entries = [("system", self.system, "")] if self.system else []
        for i, (user, assistant, interrupted) in enumerate(self.turns):
            remark = (
                "not sent with the last answer: beyond the context" if i < self.sent_from else ""
            )
            entries.append((f"[{i + 1}] user", user, remark))
            entries.append(
                (
                    f"[{i + 1}] assistant",
                    assistant,
                    "interrupted (Ctrl-C): partial answer" if interrupted else "",
                )
            )
        return entries

    def text(self) -> str:
        lines = [self.title()]
        if not self.turns and not self.system:
            lines.append("  (empty)")
        for role, text, remark in self._entries():
            lines.append(f"── {role}" + (f"  ({remark})" if remark else ""))
            lines.append(text.rstrip("\n"))
        return "\n".join(lines)

    def html(self) -> str:
        e = html.escape
        body = "".join(
            f"<div style='{ROLE_STYLE}'><b>{e(role)}</b>{' · ' + e(remark) if remark else ''}"
            f"</div><div style='{TEXT_STYLE}'>{e(text.rstrip(chr(10)))}</div>"
            for role, text, remark in self._entries()
        )
        if not body:
            body = f"<div style='{FOOTER_STYLE}'>(empty)</div>"
        return f"<div><div style='font-family:monospace'><b>{e(self.title())}</b></div>{body}</div>"


@dataclass(frozen=True, repr=False)
class ConversationsCard(Shown):
    """The kernel's conversations (`%llm_chat --list`): name, model, turns; * marks the last
    used."""

    rows: tuple[tuple[str, str | None, int, bool], ...]  # (name, model, turns, last used)

    def lines(self) -> list[str]:
        if not self.rows:
            return ["no conversations yet: %%llm_chat starts one"]
        width = max(len(name) for name, *_ in self.rows)
        return [
            f"{'*' if last else ' '} {name.ljust(width)}  {plural(turns, 'turn')} · "
            f"model {model or '–'}"
            for name, model, turns, last in self.rows
        ]

    def text(self) -> str:
        return "\n".join(self.lines())

    def html(self) -> str:
        body = "".join(f"<div>{html.escape(line)}</div>" for line in self.lines())
        return f"<div style='font-family:monospace;font-size:90%;white-space:pre'>{body}</div>"
