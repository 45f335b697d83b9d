"""llm_magic: a local language model as a first-class citizen of a notebook.

    %load_ext llm_magic
    %llm_load HuggingFaceTB/SmolLM2-135M-Instruct

Importing this package imports neither torch nor transformers: they load with the
first model.
"""

from __future__ import annotations

from ._version import __version__
from .api import (  # noqa: E402  (cheap: heavy imports are lazy)
    available,
    chat,
    compare,
    conversation,
    forget,
    generate,
    list_adapters,
    load,
    load_adapter,
    load_with_card,
    log,
    models,
    score,
    unload,
    unload_adapter,
)
from .cache import MODEL_CACHE  # noqa: E402
from .conversations import CONVERSATIONS, Conversation  # noqa: E402
from .errors import GenerationError, LLMError, LoadError  # noqa: E402
from .sources.demo import demo_model

__all__ = [
    "available",
    "load",
    "load_with_card",
    "generate",
    "chat",
    "score",
    "conversation",
    "Conversation",
    "models",
    "unload",
    "compare",
    "load_adapter",
    "list_adapters",
    "unload_adapter",
    "log",
    "forget",
    "demo_model",
    "LLMError",
    "LoadError",
    "GenerationError",
    "__version__",
]


def load_ipython_extension(ipython) -> None:
    from .magics import (
        ChatMagics,
        LLMMagics,
        LogMagics,
        ScoreMagics,
        completion,
        watch_cells,
        watch_runs,
        watch_shell,
    )

    settings = LLMMagics(ipython)  # the one configuration section (%config LLMMagics)
    ipython.register_magics(settings)
    ipython.register_magics(ChatMagics(ipython, settings))
    ipython.register_magics(ScoreMagics(ipython, settings))
    ipython.register_magics(LogMagics(ipython))
    watch_shell(ipython)
    watch_cells(ipython)
    watch_runs(ipython)
    completion.register(ipython)


def unload_ipython_extension(ipython) -> None:
    """Release every cached model, as `%llm_unload --all` does (output history and
    tracebacks included), remove the magics, and say so in one line: switching models
    never needs a kernel restart, and `%load_ext llm_magic` brings the magics back."""
    from . import runlog
    from .magics import completion, remove_magics, unwatch_cells, unwatch_runs, unwatch_shell
    from .units import format_bytes

    count, size = len(MODEL_CACHE), MODEL_CACHE.total_bytes()
    released = MODEL_CACHE.clear()
    CONVERSATIONS.clear()
    unwatch_shell(ipython)
    unwatch_cells(ipython)
    unwatch_runs(ipython)
    runlog.close_all()  # what waits is written; %config LLMMagics.log* go back to defaults
    runlog.reset_config()
    completion.unregister(ipython)
    remove_magics(ipython)
    models = (
        f"{count} model{'s' if count != 1 else ''}, {format_bytes(size)}"
        if count
        else "no model was loaded"
    )
    held = (
        ""
        if released.freed
        else f" (still referenced by {', '.join(released.held_by) or 'another object'})"
    )
    print(f"llm_magic unloaded: {models} freed{held}; %load_ext llm_magic to use it again")
