"""A rendered prompt as token ids in which the user's text stays text.

A chat template writes its own special tokens (`<|im_start|>user ... <|im_end|>`) around
each message; tokenizing the rendered string as a whole would also read marker text
*inside* a message (typed in a cell, filled from a variable or an `--over` item) as those
special tokens, and let it open a forged system turn. Here the messages' text is
tokenized with the tokenizer's split of special tokens (as plain text), the template's
own text as usual, and the pieces joined. A prompt with no marker text in its messages
is tokenized in one piece, exactly as before; one with some gets a note.

Engine-neutral: each engine passes its tokenizer as an `encode(text, markers)` function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ..errors import GenerationError

# (text, markers) -> ids, no BOS/EOS added; markers: special-token text read as special tokens.
Encode = Callable[[str, bool], list[int]]
Name = Callable[[int], str]  # a token id as its text ("<|im_start|>")

_SENTINEL = re.compile("\ue000(\\d+)\ue001")  # private-use characters: in no real prompt


def markers_in(encode: Encode, name: Name, texts: Sequence[str]) -> list[str]:
    """The special tokens `texts` would be read as if tokenized with markers on, in the
    order first found (empty: the texts hold no marker text)."""
    found: list[str] = []
    differs = False
    for text in texts:
        if not text:
            continue
        special = encode(text, True)
        if special == encode(text, False):
            continue
        differs = True
        plain = set(encode(text, False))
        for token in special:
            marker = name(token)
            # The tokens the split changed around a marker (a space before it) are not
            # markers: a marker's own text reads as it, and only with markers on.
            if token in plain or marker in found or encode(marker, True) != [token]:
                continue
            if encode(marker, False) != [token]:
                found.append(marker)
    return found or (["special-token text"] if differs else [])


def marker_note(markers: Sequence[str]) -> str:
    shown = ", ".join(markers[:4]) + (" ..." if len(markers) > 4 else "")
    return (
        f"the prompt's text held special-token text ({shown}): it was read as plain text, "
        "not as chat markers (--raw sends the text as it is, markers and all)"
    )


def encode_template(
    encode: Encode,
    name: Name,
    rendered: str,
    contents: Sequence[str],
    render: Callable[[Sequence[str]], str],
) -> tuple[list[int], tuple[str, ...]] | None:
    """(the ids of `rendered`, a chat template's output for messages whose text is
    `contents`; the note), or None when no message holds marker text: the engine then
    tokenizes `rendered` in one piece, as it always does. `render(texts)` renders the same
    messages with `texts` in place of their text: it shows where the template put each."""
    markers = markers_in(encode, name, contents)
    if not markers:
        return None
    ids: list[int] = []
    for text, is_message in _pieces(encode, name, rendered, contents, render):
        if text:
            ids += encode(text, not is_message)
    return ids, (marker_note(markers),)


def _pieces(
    encode: Encode,
    name: Name,
    rendered: str,
    contents: Sequence[str],
    render: Callable[[Sequence[str]], str],
) -> list[tuple[str, bool]]:
    """`rendered` cut into (text, is message text) pieces: the messages that hold marker
    text apart, the rest (template text and the other messages) together, so that
    everything but the marker text is tokenized as it would be in one piece."""
    risky = [bool(markers_in(encode, name, [c])) for c in contents]
    sentinels = [f"\ue000{i}\ue001" for i in range(len(contents))]
    try:
        shape = render(sentinels)
    except Exception:  # a template that checks the text it is given: find it instead
        shape = None
    pieces: list[tuple[str, bool]] = []
    if shape is not None:
        for i, part in enumerate(_SENTINEL.split(shape)):
            # split() alternates: text between sentinels, then a sentinel's index.
            pieces.append((contents[int(part)], risky[int(part)]) if i % 2 else (part, False))
    if "".join(text for text, _ in pieces) != rendered:
        pieces = _found_in_order(rendered, contents, risky)
    merged: list[tuple[str, bool]] = []
    for text, is_message in pieces:
        if merged and not is_message and not merged[-1][1]:
            merged[-1] = (merged[-1][0] + text, False)
        else:
            merged.append((text, is_message))
    return merged


def _found_in_order(
    rendered: str, contents: Sequence[str], risky: Sequence[bool]
) -> list[tuple[str, bool]]:
    """The pieces, for a template that does not copy the text as it is given (one that
    strips it, say): each risky message's text found in turn in the rendered prompt."""
    pieces: list[tuple[str, bool]] = []
    at = 0
    for content, is_risky in zip(contents, risky, strict=True):
        if not is_risky:
            continue
        text = content if content in rendered[at:] else content.strip()
        found = rendered.find(text, at) if text else -1
        if found < 0:
            raise GenerationError(
                "the prompt holds special-token text that the chat template changes",
                "text such as <|im_start|> in a message would be read as the model's own "
                "markers, and the template did not keep the text as it was to tell them apart",
                [
                    "take the marker text out of the prompt (or the variables filled into it)",
                    "--raw sends the text as it is, markers and all, without the template",
                ],
            )
        pieces += [(rendered[at:found], False), (text, True)]
        at = found + len(text)
    return pieces + [(rendered[at:], False)]
