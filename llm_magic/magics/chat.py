"""`ChatMagics`: `%%llm_chat` (a conversation across cells) and `%llm_chat` (show, list,
reset). Parse, call `api.chat`, wrap — as `LLMMagics` does for generation.

The configuration stays in one section, `LLMMagics`: this class holds no traits, and
reads the defaults (sampling, streaming, system, max_history) from the LLMMagics instance
it is given at registration. Subclassing LLMMagics instead would register a second
configurable with every trait twice (`%config ChatMagics` listing dtype and the cache
budget) and two instances whose values could drift apart.

Turns remember their cell: the cell id Jupyter sends with each execution request reaches
IPython's `pre_run_cell` event (`ExecutionInfo.cell_id`); the id of the cell running now
is noted there and cleared after it. Terminal IPython sends none: turns then append.
"""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments

from .. import api
from ..conversations import CONVERSATIONS
from ..display import ConversationsCard, ConversationView
from ..settings import OPTIONS
from .cells import (
    generation_flags,
    given_settings,
    out_name,
    parse_line,
    prompt_shower,
    run_streamed,
    unquote,
    user_namespace,
)
from .llm import LLMMagics


@magics_class
class ChatMagics(Magics):
    """A conversation with a loaded model across cells (configured by `LLMMagics`' traits)."""

    def __init__(self, shell, settings: LLMMagics):
        super().__init__(shell)
        self.settings = settings  # the configured defaults (%config LLMMagics....)
        self.cell_id: str | None = None  # the cell running now, where the frontend says

    # --- the cell running now ----------------------------------------------------------

    def _cell_starts(self, info) -> None:
        self.cell_id = getattr(info, "cell_id", None)

    def _cell_ends(self, result=None) -> None:
        self.cell_id = None

    # --- the magics ----------------------------------------------------------------------

    @no_var_expand  # `{name}` in the line and the cell are ours to fill, not IPython's
    @magic_arguments()
    @argument(
        "-m",
        "--model",
        default=None,
        help="Alias or name of a loaded model. "
        "Default: the conversation's model, else the one loaded or used last.",
    )
    @argument(
        "--as",
        dest="conversation",
        default=None,
        help="The conversation's name. Default: the model's own conversation "
        "(one per model, named after it).",
    )
    @argument(
        "--system",
        default=None,
        help="Set the conversation's system message (filled like the cell).",
    )
    @argument(
        "--new",
        action="store_true",
        help="Start the conversation over (its turns and system message go).",
    )
    @argument(
        "--retry",
        action="store_true",
        help="%%llm_chat --retry: ask the last question again; a new answer replaces the last one.",
    )
    @generation_flags
    @argument(
        "--show",
        nargs="?",
        const="",
        default=None,
        metavar="CONV",
        help="%%llm_chat --show [CONV]: show the conversation (default: the one used last).",
    )
    @argument(
        "--list",
        action="store_true",
        help="%%llm_chat --list: the conversations, their models and turns.",
    )
    @argument(
        "--reset",
        nargs="?",
        const="",
        default=None,
        metavar="CONV",
        help="%%llm_chat --reset [CONV]: empty the conversation (default: the one used last).",
    )
    @line_cell_magic
    def llm_chat(self, line: str, cell: str | None = None):
        """The cell is the next user turn of a conversation with a loaded model; the answer
        streams in as with %%llm_generate. Running a cell again replaces its own turn (and
        drops the turns after it). `{name}` is filled from the notebook's variables. The
        history that does not fit the model's context is left out, oldest first.

        As a line magic: --show [CONV], --list, --reset [CONV], or --retry."""
        args = parse_line(self.llm_chat, line)
        chosen = [
            flag for flag in ("show", "list", "reset") if getattr(args, flag) not in (None, False)
        ]
        if chosen:
            if cell is not None:
                raise UsageError(
                    f"--{chosen[0]} is a line magic: %llm_chat --{chosen[0]} (one %, no cell)"
                )
            if len(chosen) > 1 or args.retry:
                raise UsageError("%llm_chat takes one of --show, --list, --reset, --retry")
            return self._manage(args)
        if cell is None and not args.retry:
            raise UsageError(
                "%%llm_chat takes the message in the cell below it (two %); "
                "%llm_chat takes --show, --list, --reset or --retry"
            )
        if args.retry and cell is not None and cell.strip():
            raise UsageError(
                "--retry asks the last question again: %llm_chat --retry (one %, no cell), "
                "or drop --retry to ask this cell's question"
            )
        return self._ask(args, cell or "")

    def _manage(self, args):
        if args.list:
            last = CONVERSATIONS.last
            return ConversationsCard(
                tuple((c.name, c.model, len(c.turns), c.name == last) for c in CONVERSATIONS.all())
            )
        name = unquote(args.show if args.show is not None else args.reset) or None
        conversation = api.conversation(name)
        if args.reset is not None:
            conversation.reset()
            print(f"conversation {conversation.name} emptied")
            return None
        return ConversationView.of(conversation)

    def _ask(self, args, cell: str):
        settings, ns = self.settings, user_namespace(self)
        out = out_name(args.out)
        sink = settings.stream_sink(args)
        system = unquote(args.system) if args.system is not None else None
        conversation = unquote(args.conversation) if args.conversation else None
        # A retry keeps the turn's own settings; the flags on its line change single ones.
        how = (
            given_settings(args, OPTIONS, ns)
            if args.retry
            else {"settings": settings.sampling_settings(args)}
        )

        def call():
            return api.chat(
                cell.strip("\n"),
                conversation=conversation,
                model=unquote(args.model) if args.model else None,
                system=system,
                default_system=settings.system or None,
                new=args.new,
                retry=args.retry,
                cell_id=None if args.retry else self.cell_id,
                max_history=settings.max_history,
                namespace=ns,
                stream=sink,
                on_prompt=prompt_shower(args.show_prompt),
                **how,
            )

        return run_streamed(call, sink, out, self.shell)


def watch_cells(shell) -> None:
    """Note the id of each cell as it runs (for the turns of %%llm_chat)."""
    chat = shell.magics_manager.registry.get("ChatMagics")
    if chat is not None:
        shell.events.register("pre_run_cell", chat._cell_starts)
        shell.events.register("post_run_cell", chat._cell_ends)


def unwatch_cells(shell) -> None:
    chat = shell.magics_manager.registry.get("ChatMagics")
    if chat is None:
        return
    for event, callback in (
        ("pre_run_cell", chat._cell_starts),
        ("post_run_cell", chat._cell_ends),
    ):
        try:
            shell.events.unregister(event, callback)
        except ValueError:  # not registered (the extension was loaded by hand, without it)
            pass
