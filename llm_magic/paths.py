"""Names and paths, the same way everywhere: the short name a card shows for a model, and
the nearest folder that exists on the way to a path that does not."""

from __future__ import annotations

import os
from pathlib import Path

_PATH_STARTS = ("/", ".", "~")


def is_path(name: str) -> bool:
    """Whether MODEL was written as a path rather than as a Hub id (`org/name`)."""
    return name.startswith(_PATH_STARTS) or name.count("/") > 1 or name.endswith(".gguf")


def short_name(name: str) -> str:
    """What cards, footers and `%llm_models` call a model: a Hub id as it is
    (`HuggingFaceTB/SmolLM2-135M-Instruct`), a path by its last part
    (`SmolLM2-135M-Instruct.Q4_1.gguf`). `-m` accepts it too."""
    return name.rstrip("/").rsplit("/", 1)[-1] if is_path(name) else name


def last_part(name: str) -> str:
    """The last part of a name or path: `SmolLM2-135M-Instruct` for a Hub id too."""
    return name.rstrip("/").rsplit("/", 1)[-1]


def nearest_existing(path: str | Path) -> Path:
    """`path` itself when it exists, else its nearest parent that does."""
    found = Path(path).expanduser().absolute()
    while not found.exists() and found != found.parent:
        found = found.parent
    return found


def visible_files(folder: Path) -> list[str]:
    """The folder's entries a user would list (no .ipynb_checkpoints, .cache, dotfiles)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def cache_root() -> Path:
    """Where llm_magic keeps what it makes (converted .gguf models, the run log):
    $LLM_MAGIC_CACHE, else ~/.cache/llm_magic ($XDG_CACHE_HOME/llm_magic)."""
    env = os.environ.get("LLM_MAGIC_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm_magic"
