"""Tab completion for the magics' arguments, through IPython's matcher API (v2).

`%llm_load <TAB>` offers the models already loaded, the Hub ids of the local Hugging
Face cache, the converted `.gguf` originals, the demo model, and `.gguf` files and folders
on disk; `-m`/`--model` (each of several) and `%llm_unload` offer the loaded models'
aliases and names, and `MODEL:ADAPTER` for their adapters; `%llm_adapter load` offers
folders and .gguf files, `%llm_adapter unload` the adapters;
`--<TAB>` offers a magic's flags (read from its magic_arguments parser), `--dtype` and
`--device-map` their values. No network, no torch: answers come from folder listings and
the kernel's cache. Besides the magics package, the one module that imports IPython: it
plugs into the shell's completer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from IPython.core.completer import (
    CompletionContext,
    SimpleCompletion,
    context_matcher,
)

from ..cache import MODEL_CACHE

IDENTIFIER = "llm_magic.completion"
_MAGICS = ("llm_load", "llm_unload", "llm_generate", "llm_adapter")
_VALUES = {
    "--dtype": ("auto", "bfloat16", "float16", "float32", "bf16", "fp16", "fp32"),
    "--device-map": ("auto", "cpu", "cuda", "cuda:0", "cuda:1", "mps", "balanced", "sequential"),
}
_MODEL_FLAGS = ("-m", "--model")
# A word: a quoted string (maybe still open) or a run of non-blanks.
_WORD = re.compile(r"\"[^\"]*\"?|'[^']*'?|\S+")
_MAX_PATHS = 200


def register(shell) -> None:
    """Add the matcher to the shell's completer (once)."""
    completer = getattr(shell, "Completer", None)
    if completer is None:
        return
    unregister(shell)
    completer.custom_matchers.append(_matcher_for(shell))


def unregister(shell) -> None:
    completer = getattr(shell, "Completer", None)
    if completer is not None:
        completer.custom_matchers[:] = [
            m
            for m in completer.custom_matchers
            if getattr(m, "matcher_identifier", None) != IDENTIFIER
        ]


def _matcher_for(shell):
    @context_matcher(identifier=IDENTIFIER)
    # IPython's SimpleMatcherResult, as a plain dict: its optional keys are marked with
    # typing.NotRequired, which the type check for Python 3.10 cannot read.
    def llm_magic_matcher(context: CompletionContext) -> dict[str, Any]:
        found = complete(shell, context.text_until_cursor)
        if found is None:
            return {"completions": [], "suppress": False}
        fragment, completions = found
        # Ours are the answers in a magic's line: a file or Python name would be wrong there.
        # (IPython lets a matcher suppress the others only when it has completions.)
        return {
            "completions": completions,
            "matched_fragment": fragment,
            "suppress": bool(completions),
            "ordered": True,
        }

    return llm_magic_matcher


def complete(shell, text: str) -> tuple[str, list[SimpleCompletion]] | None:
    """(the fragment being completed, its completions) for a line of one of our magics up
    to the cursor; None for any other line."""
    words = _WORD.findall(text)
    if not words:
        return None
    magic = words[0].lstrip("%")
    if magic not in _MAGICS or (words[0].startswith("%%") != (magic == "llm_generate")):
        return None
    current = "" if text[-1:].isspace() or len(words) == 1 else words[-1]
    if len(words) == 1 and not text[-1:].isspace():
        return None  # still typing the magic's name: IPython's own matcher does that
    before = words[-1] if current == "" else (words[-2] if len(words) > 1 else "")
    if current.startswith("-"):
        return current, [
            SimpleCompletion(f, type="flag") for f in _flags(shell, magic) if f.startswith(current)
        ]
    if before in _VALUES and magic == "llm_load":
        return current, [
            SimpleCompletion(v, type="value") for v in _VALUES[before] if v.startswith(current)
        ]
    if before == "--revision" and magic == "llm_load":
        return current, _revisions(words, current)
    if (
        before.startswith("-")
        and _takes_value(shell, magic, before)
        and not (magic in ("llm_generate", "llm_adapter") and before in _MODEL_FLAGS)
    ):
        return None  # a value we know nothing about (--as, --out, --max-new-tokens)
    if magic == "llm_generate":
        # -m takes one name or several: the words since the last flag are its values.
        flag = next((w for w in reversed(words[: len(words) - bool(current)]) if w[:1] == "-"), "")
        if flag not in _MODEL_FLAGS:
            return None
        return current, _loaded_names(current, adapters=True)
    if magic == "llm_adapter":
        if before in _MODEL_FLAGS:
            return current, _loaded_names(current)
        action = words[1] if len(words) > 1 and words[1] != current else None
        if action == "unload":
            return current, _adapter_names(current)
        if action == "load":
            return current, _paths(current)
        return current, [
            SimpleCompletion(a, type="action")
            for a in ("load", "list", "unload")
            if a.startswith(current) and action is None
        ]
    if magic == "llm_unload":
        return current, _loaded_names(current)
    return current, _models(current)


# ---------------------------------------------------------------------------- candidates


def _flags(shell, magic: str) -> list[str]:
    parser = _parser(shell, magic)
    if parser is None:
        return []
    return [
        s for action in parser._actions for s in action.option_strings if s not in ("-h", "--help")
    ]


def _takes_value(shell, magic: str, flag: str) -> bool:
    parser = _parser(shell, magic)
    action = parser._option_string_actions.get(flag) if parser is not None else None
    return action is not None and action.nargs != 0


def _parser(shell, magic: str):
    """The magic_arguments parser of a registered magic (it prints `%magic?` too)."""
    kind = "cell" if magic == "llm_generate" else "line"
    method = shell.magics_manager.magics.get(kind, {}).get(magic)
    return getattr(method, "parser", None)


def _loaded_names(prefix: str, adapters: bool = False) -> list[SimpleCompletion]:
    """Aliases first, then the names the models were loaded with and their short forms
    (the last part of a path or Hub id): what `%llm_unload` and `-m` accept; with
    `adapters`, then MODEL:ADAPTER and MODEL:base for the models that have adapters."""
    entries = sorted(MODEL_CACHE.entries(), key=lambda e: -e.last_used)
    names: dict[str, str] = {}
    for e in entries:
        for alias in sorted(e.aliases):
            names.setdefault(alias, "alias")
    for e in entries:
        names.setdefault(e.name, "model")
        names.setdefault(e.name.rstrip("/").rsplit("/", 1)[-1], "model")
    if adapters:
        for completion in _adapter_names(prefix):
            names.setdefault(completion.text, "adapter")
        for e in entries:
            if e.adapters:
                names.setdefault(f"{_label(e)}:base", "adapters off")
    return [SimpleCompletion(n, type=t) for n, t in names.items() if n.startswith(prefix)]


def _label(entry) -> str:
    return min(entry.aliases) if entry.aliases else entry.name.rstrip("/").rsplit("/", 1)[-1]


def _adapter_names(prefix: str) -> list[SimpleCompletion]:
    """MODEL:ADAPTER for every adapter on a loaded model."""
    names = [
        f"{_label(e)}:{a}"
        for e in sorted(MODEL_CACHE.entries(), key=lambda e: -e.last_used)
        for a in e.adapters
    ]
    return [SimpleCompletion(n, type="adapter") for n in names if n.startswith(prefix)]


def _models(prefix: str) -> list[SimpleCompletion]:
    """What `%llm_load MODEL` may take: loaded models, cached Hub ids, converted .gguf
    originals and the demo model, then .gguf files and folders on disk."""
    from ..sources import discovery, gguf_cache

    found: dict[str, str] = {}
    for e in MODEL_CACHE.entries():
        found.setdefault(e.name, "loaded")
    for repo_id in _hub_ids():
        found.setdefault(repo_id, "hub cache")
    for copy in gguf_cache.converted_copies():
        if copy.gguf and copy.source_exists:
            found.setdefault(copy.gguf, "gguf (converted)")
    demo = discovery.demo()
    if demo is not None:
        found.setdefault(demo.path, "demo model")
    out = [SimpleCompletion(n, type=t) for n, t in found.items() if n.startswith(prefix)]
    taken = {c.text for c in out}
    out += [c for c in _paths(prefix) if c.text not in taken]
    return out


_hub_memo: dict[tuple, tuple[str, ...]] = {}


def _hub_ids() -> tuple[str, ...]:
    """Repository ids of the local Hub cache, rescanned only when its folder changes."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE)
    try:
        stamp = (str(root), root.stat().st_mtime_ns)
    except OSError:
        return ()
    if stamp not in _hub_memo:
        from ..sources import hub

        _hub_memo.clear()
        _hub_memo[stamp] = hub.cached_repo_ids()
    return _hub_memo[stamp]


def _revisions(words: list[str], prefix: str) -> list[SimpleCompletion]:
    """Branches, tags and commits cached for the model named on the line."""
    from ..sources import hub

    model = next((w for w in words[1:] if not w.startswith("-")), None)
    names: list[str] = []
    for m in hub.hub_models():
        if m.repo_id == model:
            for r in m.revisions:
                names += [*r.refs, r.commit]
    return [
        SimpleCompletion(n, type="revision") for n in dict.fromkeys(names) if n.startswith(prefix)
    ]


def _paths(prefix: str) -> list[SimpleCompletion]:
    """Folders (a model folder, or one on the way to it) and .gguf files under the
    folder being typed; hidden ones only when asked for with a leading dot."""
    text = prefix.strip("'\"")
    head, _, tail = text.rpartition("/")
    folder = Path(os.path.expanduser(head + "/" if head or text.startswith("/") else "."))
    try:
        entries = sorted(os.scandir(folder), key=lambda d: d.name)
    except OSError:
        return []
    out = []
    for entry in entries:
        if not entry.name.startswith(tail) or (
            entry.name.startswith(".") and not tail.startswith(".")
        ):
            continue
        shown = f"{head}/{entry.name}" if head or text.startswith("/") else entry.name
        try:
            if entry.is_dir():
                out.append(SimpleCompletion(shown + "/", type="folder"))
            elif entry.name.lower().endswith(".gguf"):
                out.append(SimpleCompletion(shown, type="gguf"))
        except OSError:
            continue
        if len(out) >= _MAX_PATHS:
            break
    return out
