"""`LogMagics`: `%llm_log`, the run log of every generation (`runlog.py`): the latest runs,
one run whole, searching, forgetting, the log's size. Parse, call the API, wrap.

The log is on, and configured, through `LLMMagics` (`log`, `log_path`, `reuse`). Which
cell a run comes from is noted here: IPython's `pre_run_cell` event carries the cell's
text and the id Jupyter sends with it, and the notebook's path where the kernel knows it
(`runlog.notebook_path`); the Python API called in a cell is logged with that cell too."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from .. import api, runlog
from .cells import parse_line, unquote


@magics_class
class LogMagics(Magics):
    """The run log: what ran, with which model and settings, from which cell."""

    @magic_arguments()
    @argument("--last", type=int, default=None, help="Show the latest N runs. Default: 10.")
    @argument("--model", default=None, help="Runs of this model (a part of its name or alias).")
    @argument(
        "--search",
        nargs="+",
        default=None,
        help="Runs whose cell, prompt or answer hold these words (SQLite full-text search).",
    )
    @argument(
        "--since",
        nargs="+",
        default=None,
        help="Runs since a date (2025-06-01, '2025-06-01 14:00'), a span back from now "
        "(30m, 2h, 3d, 1w), today or yesterday.",
    )
    @argument(
        "--cell",
        nargs="?",
        const="",
        default=None,
        metavar="ID",
        help="The history of one cell: this cell, or the cell that ran last when this "
        "one ran none; or the cell whose id starts with ID.",
    )
    @argument(
        "--kind",
        choices=("generate", "chat", "over", "score"),
        default=None,
        help="Runs of this kind only: generate, chat, over (an --over item) or score.",
    )
    @argument("--show", type=int, default=None, metavar="ID", help="One run whole.")
    @argument(
        "--forget",
        nargs="*",
        type=int,
        default=None,
        metavar="ID",
        help="Delete runs for good: these ids, or the runs --model, --search, --since, "
        "--cell name, or --all.",
    )
    @argument("--all", action="store_true", help="With --forget: every run (with --yes).")
    @argument("--yes", action="store_true", help="With --forget --all: yes, every run.")
    @argument("--stats", action="store_true", help="How many runs, the file's size and path.")
    @line_magic
    def llm_log(self, line: str = ""):
        """The run log: every generation, chat turn, --over item and score, with its model,
        settings, seed and cell. Shows the latest runs; `llm_magic.log()` gives the log
        as a DataFrame, and the file opens in `sqlite3` or Datasette."""
        args = parse_line(self.llm_log, line)
        search = unquote(" ".join(args.search)) if args.search else None
        since = unquote(" ".join(args.since)) if args.since else None
        model = unquote(args.model) if args.model else None
        if args.stats:
            return api.log_stats()
        if args.show is not None:
            return api.log_run(args.show)
        cell, notes = self._cell(args.cell)
        if args.forget is not None:
            return self._forget(args, model, search, since, cell)
        last = args.last if args.last is not None else 10
        return api.log_card(
            last=last or None,
            model=model,
            search=search,
            since=since,
            cell=cell,
            kind=args.kind,
            notes=notes,
        )

    def _cell(self, asked: str | None) -> tuple[str | None, tuple[str, ...]]:
        """The cell id --cell means (and a note when it is not this cell)."""
        if asked is None:
            return None, ()
        if asked:
            return unquote(asked), ()
        here = runlog.current_cell()
        store = runlog.store(runlog.log_path())
        if here is not None and here.id and store is not None and store.count(cell_id=here.id):
            return here.id, ()
        last = store.last_cell_id() if store is not None else None
        if last is None:
            raise UsageError(
                "--cell: no run in the log has a cell id (Jupyter sends one with each cell; "
                "a terminal does not)"
            )
        return last, (f"this cell ran nothing: the cell that ran last ({last[:8]}…)",)

    def _forget(self, args, model, search, since, cell):
        if args.kind:
            # Deleting by the other filters alone would delete runs of every kind.
            raise UsageError("%llm_log --forget takes no --kind: name the runs by their ids")
        if args.all and not args.yes:
            stats = api.log_stats()
            raise UsageError(
                f"%llm_log --forget --all deletes every run ({stats.runs} in {stats.path}): "
                "add --yes to do it"
            )
        if not (args.forget or args.all or model or search or since or cell):
            raise UsageError(
                "%llm_log --forget takes run ids (%llm_log lists them), or --model, --search, "
                "--since, --cell to name runs, or --all --yes"
            )
        gone = api.forget(
            args.forget, model=model, search=search, since=since, cell=cell, all=args.all
        )
        print(f"forgot {gone} run{'s' if gone != 1 else ''}: deleted from the log for good")


def watch_runs(shell) -> None:
    """Note the cell each run comes from: its text, Jupyter's id for it, In[n], the notebook."""
    shell.events.register("pre_run_cell", _cell_starts(shell))
    shell.events.register("post_run_cell", _cell_ends)


class _CellStarts:
    """The pre_run_cell callback: the cell about to run, told to the run log."""

    def __init__(self, shell) -> None:
        self.shell = shell

    def __call__(self, info) -> None:
        runlog.cell_started(
            runlog.Cell(
                id=getattr(info, "cell_id", None),
                execution_count=self.shell.execution_count,
                text=getattr(info, "raw_cell", "") or "",
                notebook=runlog.notebook_path(self.shell.user_ns),
            )
        )


def _cell_starts(shell) -> _CellStarts:
    return _CellStarts(shell)


def _cell_ends(result=None) -> None:
    runlog.cell_started(None)


def unwatch_runs(shell) -> None:
    for callback in list(shell.events.callbacks["pre_run_cell"]):
        if isinstance(callback, _CellStarts):
            shell.events.unregister("pre_run_cell", callback)
    if _cell_ends in shell.events.callbacks["post_run_cell"]:
        shell.events.unregister("post_run_cell", _cell_ends)
    runlog.cell_started(None)
