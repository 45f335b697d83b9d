"""What every generating cell magic shares (`%%llm_generate`, `%%llm_chat`): the flags
made from the generation options (settings.OPTIONS) and the Settings they give, `--out`,
`--show-prompt`, and the cell's run itself:
the text streaming in, a status line under --no-stream, the --over progress bar, and
Ctrl-C keeping the partial result."""

from __future__ import annotations

import difflib
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Protocol

from IPython.core.error import UsageError
from IPython.core.magic import Magics
from IPython.core.magic_arguments import argument, parse_argstring
from IPython.display import display
from traitlets import Bool, Float, Int, TraitType, Unicode

from .. import prompts, structured
from .. import settings as settings_module
from ..display import BatchProgress, PromptView, StatusLine, StreamView
from ..errors import GenerationError, LLMError, quiet_interrupt
from ..redact import redact
from ..results import GenerationResult, carried_result
from ..settings import GENERATE_OPTIONS, OPTIONS, Option, Settings

# The flags of the answer's format (one Settings field, three ways to give it).
_FORMAT_FLAGS = [
    argument(
        "--schema",
        default=None,
        metavar="SPEC",
        help="The answer is JSON following this schema: a notebook variable holding a pydantic "
        "model class or a JSON Schema dict (Person, or $Person), or an inline form "
        "'name, age int, mood happy|sad, tags list' (fields are strings unless typed). "
        "Enforced while decoding where the engine can, always checked: result.data holds "
        "the parsed value, result.valid whether it conforms.",
    ),
    argument(
        "--choice",
        nargs="+",
        default=None,
        metavar="CHOICE",
        help="The answer is exactly one of these words (quote one with spaces; $labels takes "
        "them from a list variable).",
    ),
    argument(
        "--regex",
        default=None,
        metavar="PATTERN",
        help="The whole answer matches this regular expression. The line reaches llm_magic as "
        "typed: '[0-9]{4}' keeps its braces (quotes are stripped, backslashes kept); $pat, or "
        "the name of a variable holding the pattern, takes it from the notebook.",
    ),
]


def _flags(option: Option) -> list[Any]:
    """The argparse flags of a generation option."""
    return _FORMAT_FLAGS if option.kind == "format" else [_flag(option)]


def user_namespace(magics: Magics) -> dict[str, Any]:
    """The notebook's variables: the user namespace of the shell the magics serve."""
    if magics.shell is None:
        raise UsageError("llm_magic's magics run in an IPython shell: load them with %load_ext")
    return magics.shell.user_ns


def _flag(option: Option) -> Any:
    """The argparse flag of a generation option; its help states the default and its trait."""
    by_kind: dict[str, dict[str, Any]] = {
        "int": {"type": int, "default": None},
        "float": {"type": float, "default": None},
        "switch": {"action": "store_true"},
        "list": {"action": "append", "default": None},
        "text": {"default": None},
        "count": {"nargs": "?", "const": option.const, "type": int, "default": None},
    }
    kwargs = by_kind[option.kind]
    help_text = option.help
    if option.configurable:
        help_text += f" Default: {option.default_text} (LLMMagics.{option.name})."
    return argument(option.flag, help=help_text, **kwargs)


def option_trait(name: str, default: Any = None) -> TraitType[Any, Any]:
    """The LLMMagics trait holding a notebook's default for the generation option `name`:
    its type, default and help come from the option (`default` when the trait's own
    differs: 0 for "the engine chooses")."""
    option = next(o for o in OPTIONS + GENERATE_OPTIONS if o.name == name)
    kind = {"int": Int, "float": Float, "switch": Bool, "text": Unicode, "count": Int}[option.kind]
    value = option.default if default is None else default
    trait: TraitType[Any, Any] = kind(
        value, help=f"Default {option.flag} of the generating cells: {option.help}"
    )
    return trait.tag(config=True)


# How a cell shows its answer (not how it is generated).
_CELL_FLAGS = [
    argument("--no-stream", action="store_true", help="Show the text only when it is complete."),
    argument(
        "--out",
        default=None,
        help="Also store the result in this variable (the partial one if interrupted).",
    ),
    argument(
        "--show-prompt", action="store_true", help="Show the prompt exactly as the model reads it."
    ),
]


def generation_flags(magic: Any) -> Any:
    """Add the flags of every generating cell (%%llm_generate, %%llm_chat): the sampling
    options and how the answer is shown (under the magic's other @argument lines)."""
    for flag in reversed([f for o in OPTIONS for f in _flags(o)] + _CELL_FLAGS):
        magic = flag(magic)
    return magic


def generate_flags(magic: Any) -> Any:
    """Add the options of %%llm_generate alone (system, raw, batch size, concurrency)."""
    for flag in reversed([f for o in GENERATE_OPTIONS for f in _flags(o)]):
        magic = flag(magic)
    return magic


def settings_from(
    args: Any, options: tuple[Option, ...], defaults: Any, namespace: Any = None
) -> Settings:
    """The Settings of a generating cell: each option's flag when given, else the trait on
    `defaults` (LLMMagics) that holds the notebook's default, else Settings' own. The
    answer's format may name variables of `namespace` (the notebook's)."""
    values: dict[str, Any] = {}
    for option in options:
        if option.kind == "format":
            values[option.name] = structured.from_flags(
                args.schema, args.choice, args.regex, namespace or {}
            )
            continue
        given = getattr(args, option.name)
        configured = getattr(defaults, option.name) if option.configurable else None
        if option.kind == "switch":
            values[option.name] = bool(given or configured)
        elif option.kind == "list":
            values[option.name] = tuple(unescape(unquote(s)) for s in given or [])
        elif option.kind == "text":
            values[option.name] = (unquote(given) if given is not None else configured) or None
        else:
            # A trait at 0 where the option's default is None: the engine chooses.
            values[option.name] = pick(given, configured or None)
    return settings_module.make(**values)


def given_settings(args: Any, options: tuple[Option, ...], namespace: Any = None) -> dict[str, Any]:
    """The options given on the line, and only those (not the traits' defaults): what
    changes a setting kept from before (a retried turn's)."""
    given: dict[str, Any] = {}
    for option in options:
        if option.kind == "format":
            if args.schema or args.choice or args.regex:
                given[option.name] = structured.from_flags(
                    args.schema, args.choice, args.regex, namespace or {}
                )
            continue
        value = getattr(args, option.name)
        if option.kind == "switch":
            if value:
                given[option.name] = True
        elif option.kind == "list":
            if value:
                given[option.name] = tuple(unescape(unquote(s)) for s in value)
        elif value is not None:
            given[option.name] = unquote(value) if option.kind == "text" else value
    return given


def parse_line(magic, line: str):
    """parse_argstring, with "did you mean" for a mistyped flag."""
    try:
        return parse_argstring(magic, line)
    except UsageError as e:
        unknown = re.search(r"unrecognized arguments: (.*)", str(e))
        options = [
            o
            for action in magic.parser._actions
            for o in action.option_strings
            if o.startswith("--")
        ]
        hints = []
        for word in unknown.group(1).split() if unknown else []:
            close = (
                difflib.get_close_matches(word.split("=")[0], options, n=1, cutoff=0.6)
                if word.startswith("-")
                else []
            )
            hints += [f"{word}: did you mean {close[0]}?"] if close else []
        if hints:
            raise UsageError(redact(f"{e}\n" + "\n".join(hints))) from None
        raise UsageError(redact(str(e))) from None


def unquote(text: str) -> str:
    """magic_arguments keeps quotes around a path with spaces; strip one matching pair."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def pick(flag, trait):
    """A flag's value when given (even 0), else the trait's."""
    return trait if flag is None else flag


def out_name(text: str | None) -> str | None:
    """The variable of --out, refused when it is not a name."""
    out = unquote(text) if text else None
    if out is not None and not out.isidentifier():
        raise UsageError(f"--out {out}: not a variable name")
    return out


def over_items(args, ns: dict[str, Any]) -> prompts.Over | None:
    """The items of the variable --over names (None without --over); refused with
    --no-fill, and where no variable has that name."""
    if args.over is None:
        return None
    if args.no_fill:
        raise UsageError("--over fills {item} into the cell: it cannot go with --no-fill")
    name = unquote(args.over)
    if name not in ns:
        raise GenerationError(
            f"--over {name}: no variable named {name!r}",
            fixes=[f"{name} = ['first text', 'second text']  (then run this cell again)"],
        )
    return prompts.items_of(ns[name], f"--over {name}")


def prompt_shower(show: bool):
    """The on_prompt callback of --show-prompt: the prompt as the model reads it, shown above
    the answer."""
    return (lambda text, tokens: display(PromptView(text, tokens))) if show else None


class Sink(Protocol):
    """Where a run's text streams: one model's Stream, or the columns of `-m A B`."""

    jupyter: bool
    parts: list[str]
    handle: Any

    def settle(self, result: Any = None, shell: Any = None) -> Any: ...


def run_streamed(
    call,
    sink: Sink | None,
    out: str | None,
    shell,
    waiting: Waiting | None = None,
    what: str = "generation",
):
    """`call()`'s result, its streamed text settled, stored in `out` when given. On Ctrl-C
    the partial result stays on screen, is kept where a result would be (`_`, Out[n],
    `out`), and the interrupt goes on, shown as one line instead of a traceback."""
    try:
        result = call()
    except KeyboardInterrupt as e:
        if waiting is not None:
            waiting.done()
        partial = carried_result(e)  # what was generated before Ctrl-C
        _show_partial(sink, partial)
        quiet_interrupt(e, _keep_partial(shell, partial, out, what))
        raise  # the cell is interrupted: later queued cells must not run
    except Exception as e:
        if waiting is not None:
            waiting.done()
        partial = carried_result(e)  # a server that failed mid-stream: its text stays
        if isinstance(partial, GenerationResult):
            # On screen with its footer, as after Ctrl-C; the failure itself is said once,
            # by the card under it.
            _show_partial(sink, replace(partial, error=None))
            places = _keep(shell, partial, out)
            if isinstance(e, LLMError) and places:
                e.diagnosis.details.insert(
                    0, f"the text that arrived before the failure is kept: {', '.join(places)}"
                )
        elif sink is not None:
            sink.settle()  # no "generating…" left above the error card
        raise
    if waiting is not None:
        result = waiting.done(result, shell)
    if sink is not None:
        result = sink.settle(result, shell)
    # In a terminal, what is already on screen (the streamed text, the notes said before
    # it) is not printed again: Out[n] adds the footer and the rest.
    shown = sink or waiting
    if shown is not None and not shown.jupyter and hasattr(result, "text_already_shown"):
        said = getattr(shown, "notes", ())  # notes a Stream or a status line said first
        result.text_already_shown(bool(sink is not None and sink.parts), said)
    if out is not None:
        shell.user_ns[out] = result
    return result


def shown_in_place(handle, value, shell):
    """`value` shown in place of the display `handle` (a status line, the streaming
    text), so the notebook keeps the value there rather than an emptied output beside
    it; returned marked so that this cell's result display (which still fills Out and
    `_`) shows nothing more. Shown later, in another cell, it shows as any value does."""
    data, metadata = shell.display_formatter.format(value)
    handle.update(data, metadata=metadata, raw=True)
    object.__setattr__(value, "_ipython_display_", _ShownAlready(value, shell.execution_count))
    return value


def settled(handle, result, shell):
    """The end of a display that stood in for the result (a status line, the streaming
    text): `result` shown in its place and returned (for Out); with no result (a failure,
    Ctrl-C), the display emptied."""
    if result is not None and shell is not None:
        return shown_in_place(handle, result, shell)
    handle.update({"text/plain": ""}, raw=True)
    return result


class _ShownAlready:
    """A value's one-time `_ipython_display_`: nothing in the cell that showed it, the
    value as usual anywhere else. A plain object, so the value still pickles."""

    def __init__(self, value, count: int) -> None:
        self.value, self.count = value, count

    def __call__(self) -> None:
        object.__delattr__(self.value, "_ipython_display_")
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None or shell.execution_count != self.count:
            display(self.value)


def _keep_partial(shell, partial, out: str | None, what: str = "generation") -> str:
    """Keep an interrupted run's partial result where a finished one would be (`_`,
    Out[n], and --out's variable); returns where, in words, for the interrupt line
    (`what` stopped: generation, scoring)."""
    if partial is None or (isinstance(partial, list) and not partial):
        nothing = "any text was made" if what == "generation" else "anything was done"
        return f"{what} stopped before {nothing}"
    places = _keep(shell, partial, out)
    where = (
        ", ".join(places) if places else "--out VAR (run again with it to keep a partial result)"
    )
    stopped = partial.stopped_after() if hasattr(partial, "stopped_after") else None
    if stopped is not None:  # an --over run: one result per item, the unrun ones marked
        return (
            f"{what} stopped after {stopped[0]} of {stopped[1]} items; the results "
            f"(one per item, those not run marked 'not run') are in {where}"
        )
    return f"{what} stopped; the partial result is in {where}"


def _keep(shell, partial, out: str | None) -> list[str]:
    """Put a partial result where a finished one would be (--out's variable, `_`, Out[n]);
    returns those places' names."""
    places = []
    if out is not None:
        shell.user_ns[out] = partial
        places.append(out)
    if shell.displayhook.do_full_cache:
        shell.displayhook.update_user_ns(partial)
        places += ["_", f"Out[{shell.displayhook.prompt_count}]"]
    return places


def unescape(text: str) -> str:
    """`\\n` and `\\t` in a --stop value stand for newline and tab (`\\\\` for a backslash)."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


class Stream:
    """Where streamed text goes: one display updated in place in Jupyter (redrawn at
    most every 0.1 s), plain text on stdout in a terminal."""

    redraw_every = 0.1

    def __init__(self, jupyter: bool):
        self.jupyter = jupyter
        self.parts: list[str] = []
        self.handle = None
        self.drawn = 0.0

    notes: tuple[str, ...] = ()

    def start(self, notes: tuple[str, ...]) -> None:
        """Before the first token (a prompt takes seconds to read): say so, and say the
        notes (max_new_tokens lowered...) now rather than after the text."""
        self.notes = notes
        if not self.jupyter:
            for note in notes:
                print(f"⚠ {note}", file=sys.stderr, flush=True)
            return
        self.handle = display(StreamView("", notes), display_id=True)
        self.drawn = time.perf_counter()

    def __call__(self, chunk: str) -> None:
        self.parts.append(chunk)
        if not self.jupyter:
            sys.stdout.write(chunk)
            sys.stdout.flush()
            return
        now = time.perf_counter()
        if self.handle is None:
            self.handle = display(StreamView("".join(self.parts), self.notes), display_id=True)
            self.drawn = now
        elif now - self.drawn >= self.redraw_every or len(self.parts) == 1:
            self.handle.update(StreamView("".join(self.parts), self.notes))
            self.drawn = now

    def settle(self, result=None, shell=None):
        """Done: the result takes the streamed text's place (returned, for Out); with no
        result (a failure) the streamed display is emptied."""
        if self.jupyter and self.handle is not None:
            handle, self.handle = self.handle, None
            return settled(handle, result, shell)
        elif not self.jupyter and self.parts:
            print(flush=True)
        return result


class Waiting:
    """--no-stream: a status line while the whole text is made (blanked when done), and
    the notes said first."""

    notes: tuple[str, ...] = ()

    def __init__(self, jupyter: bool):
        self.jupyter = jupyter
        self.handle = None

    def start(self, notes: tuple[str, ...]) -> None:
        self.notes = notes
        message = "generating; the text shows when it is complete (Ctrl-C stops it)"
        if not self.jupyter:
            for note in notes:
                print(f"⚠ {note}", file=sys.stderr, flush=True)
            print(f"… {message}", file=sys.stderr, flush=True)
            return
        self.handle = display(
            StatusLine(" · ".join((message,) + tuple(f"⚠ {n}" for n in notes))), display_id=True
        )

    def done(self, result=None, shell=None):
        """The result takes the status line's place (returned, for Out); with no result
        (a failure, Ctrl-C) the line is emptied."""
        if self.handle is not None:
            handle, self.handle = self.handle, None
            return settled(handle, result, shell)
        return result


def _show_partial(sink: Sink | None, partial) -> None:
    """After Ctrl-C: the partial result stays on screen where the text was streaming."""
    if partial is None:
        return
    if sink is not None and sink.jupyter and sink.handle is not None:
        sink.handle.update(partial)
    elif sink is not None and not sink.jupyter and sink.parts:
        print("\n── " + partial.footer(), flush=True)  # the text itself is already on screen
    else:
        display(partial)


@contextmanager
def batch_progress(jupyter: bool, items: int, noun: str = "prompts"):
    """A progress bar over the batches of an --over run (`items` prompts, or texts
    scored: `noun`), with the time so far and left: a display updated in place in Jupyter
    (blanked when done), one line on stderr rewritten in place in a terminal."""
    if not items:
        yield None
        return
    started = time.perf_counter()

    def bar(done: int, total: int) -> BatchProgress:
        return BatchProgress(done, total, items, time.perf_counter() - started, noun)

    if not jupyter:
        width = 0

        def line(done: int, total: int) -> None:
            nonlocal width
            text = bar(done, total).text()
            # Padded to the longest line yet: a shorter one must cover the last.
            print(f"\r{text.ljust(width)}", end="", file=sys.stderr, flush=True)
            width = max(width, len(text))

        try:
            yield line
        finally:
            print(file=sys.stderr)
        return
    handle = display(BatchProgress(0, 1, items, noun=noun), display_id=True)
    try:
        yield lambda done, total: handle.update(bar(done, total))
    finally:
        handle.update({"text/plain": ""}, raw=True)
