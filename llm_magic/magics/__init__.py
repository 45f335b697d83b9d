"""The IPython magics, split by concern as IPython's own `core/magics` is:

- `llm.py`: `LLMMagics`, the one configuration section, and the model magics;
- `chat.py`: `ChatMagics`, `%%llm_chat`, reading its defaults from `LLMMagics`;
- `cells.py`: what every generating cell magic shares (flags, streaming, Ctrl-C);
- `score.py`: `ScoreMagics`, `%%llm_score`;
- `log.py`: `LogMagics`, `%llm_log`, and the cell each run comes from.

Only this package and `llm_magic/__init__.py` import IPython's magics; nothing outside
them imports this package."""

from .chat import ChatMagics, unwatch_cells, watch_cells
from .llm import LLMMagics, unwatch_shell, watch_shell
from .log import LogMagics, unwatch_runs, watch_runs
from .score import ScoreMagics

__all__ = [
    "ChatMagics",
    "LLMMagics",
    "LogMagics",
    "remove_magics",
    "ScoreMagics",
    "unwatch_cells",
    "unwatch_runs",
    "unwatch_shell",
    "watch_cells",
    "watch_runs",
    "watch_shell",
]


def remove_magics(shell) -> None:
    """Take llm_magic's Magics classes out of the shell (IPython has no call to unregister
    one): `%llm_load` and `%%llm_chat` are unknown again until `%load_ext llm_magic`."""
    manager = shell.magics_manager
    for name in ("LLMMagics", "ChatMagics", "ScoreMagics", "LogMagics"):
        instance = manager.registry.pop(name, None)
        if instance is None:
            continue
        for kind, methods in instance.magics.items():
            table = manager.magics[kind]
            for magic in methods:
                if getattr(table.get(magic), "__self__", None) is instance:
                    del table[magic]
