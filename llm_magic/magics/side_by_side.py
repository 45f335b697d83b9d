"""Where the answers of a `-m A B` cell go while it runs: columns side by side in one
display updated in place in Jupyter, one model after another on stdout in a terminal.
Each column shows the model's text as it streams, then its footer."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from IPython.display import display

from ..display import ColumnsView
from .cells import settled

WAITING = "waiting for its turn"
RUNNING = "… generating (Ctrl-C / interrupt stops it, keeping the text)"


class Columns:
    """The sink of a side-by-side run: `begin(model)` as a model's turn starts (returns
    where its text streams, or None), `done(model, result)` as it ends, `settle()` when the
    result, shown as the cell's value, takes the columns' place."""

    redraw_every = 0.1

    def __init__(self, jupyter: bool, models: Sequence[str], stream: bool = True):
        self.jupyter, self.stream = jupyter, stream
        self.texts = {m: "" for m in models}
        self.footers = {m: WAITING for m in models}
        self.parts: list[str] = []  # everything streamed (run_streamed reads it)
        self.handle: Any = None
        self.drawn = 0.0

    def begin(self, model: str) -> Callable[[str], None] | None:
        self.footers[model] = RUNNING
        if not self.jupyter:
            print(f"══ {model}", flush=True)
        self._draw(force=True)
        return (lambda chunk: self._chunk(model, chunk)) if self.stream else None

    def _chunk(self, model: str, chunk: str) -> None:
        self.parts.append(chunk)
        self.texts[model] += chunk
        if not self.jupyter:
            sys.stdout.write(chunk)
            sys.stdout.flush()
            return
        self._draw()

    def done(self, model: str, result: Any) -> None:
        texts = getattr(result, "texts", None)
        if isinstance(texts, list):  # --over: the model's summary
            self.footers[model] = result.summary()
        else:
            self.texts[model] = result.text
            self.footers[model] = result.footer()
        if not self.jupyter and self.stream:
            print(flush=True)  # the footers come with the result
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        if not self.jupyter:
            return
        view = ColumnsView(tuple((m, self.texts[m], self.footers[m]) for m in self.texts))
        now = time.perf_counter()
        if self.handle is None:
            self.handle = display(view, display_id=True)
            self.drawn = now
        elif force or now - self.drawn >= self.redraw_every:
            self.handle.update(view)
            self.drawn = now

    def settle(self, result: Any = None, shell: Any = None) -> Any:
        """Done: the result takes the columns' place (returned, for Out); with no result
        (a failure) the columns are emptied."""
        if self.jupyter and self.handle is not None:
            handle, self.handle = self.handle, None
            return settled(handle, result, shell)
        return result
