"""What chat shows: an answer (a GenerationResult that knows its conversation), a
conversation as a card (`%llm_chat --show`) and the list of them (`%llm_chat --list`).
Text/plain for terminals, escaped text/html for Jupyter; cards hold copies of the text."""

from __future__ import annotations

import html
from dataclasses import dataclass

from .display import _FOOTER_STYLE, _TEXT_STYLE

_ROLE_STYLE = "font-family:monospace;font-size:85%;color:#666;margin-top:.5em"


@dataclass(frozen=True, repr=False)
class ConversationView:
    """A conversation as a card: its name and model, then each turn (user, then assistant)."""

    name: str
    model: str | None
    system: str | None
    turns: tuple[tuple[str, str, bool], ...]  # (user, assistant, interrupted)
    sent_from: int = 0  # turns before it were not sent with the last answer (beyond the context)

    @classmethod
    def of(cls, conversation) -> ConversationView:
        return cls(
            conversation.name,
            conversation.model,
            conversation.system,
            tuple((t.user, t.assistant, t.interrupted) for t in conversation.turns),
            conversation.sent_from,
        )

    def title(self) -> str:
        n = len(self.turns)
        return f"conversation {self.name} · {n} turn{'s' if n != 1 else ''} · model {self.model or '–'}"

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
            f"<div style='{_ROLE_STYLE}'><b>{e(role)}</b>{' · ' + e(remark) if remark else ''}</div>"
            f"<div style='{_TEXT_STYLE}'>{e(text.rstrip(chr(10)))}</div>"
            for role, text, remark in self._entries()
        )
        if not body:
            body = f"<div style='{_FOOTER_STYLE}'>(empty)</div>"
        return f"<div><div style='font-family:monospace'><b>{e(self.title())}</b></div>{body}</div>"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return {"text/plain": self.text(), "text/html": self.html()}

    def __repr__(self) -> str:
        return self.text()


@dataclass(frozen=True, repr=False)
class ConversationsCard:
    """The kernel's conversations (`%llm_chat --list`): name, model, turns; * marks the last used."""

    rows: tuple[tuple[str, str, int, bool], ...]  # (name, model, turns, last used)

    def lines(self) -> list[str]:
        if not self.rows:
            return ["no conversations yet: %%llm_chat starts one"]
        width = max(len(name) for name, *_ in self.rows)
        return [
            f"{'*' if last else ' '} {name.ljust(width)}  {turns} turn{'s' if turns != 1 else ''} · model {model or '–'}"
            for name, model, turns, last in self.rows
        ]

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        body = "".join(f"<div>{html.escape(line)}</div>" for line in self.lines())
        return {
            "text/plain": "\n".join(self.lines()),
            "text/html": f"<div style='font-family:monospace;font-size:90%;white-space:pre'>{body}</div>",
        }

    def __repr__(self) -> str:
        return "\n".join(self.lines())
