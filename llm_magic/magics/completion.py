"""Tab completion for the magics' arguments, through IPython's matcher API (v2).

`%llm_load <TAB>` offers the models already loaded, the Hub ids of the local Hugging
Face cache, the converted `.gguf` originals, the demo model, and `.gguf` files and folders
on disk (`./` included); `-m`/`--model` (each of several, with `%%llm_generate`) and
`%llm_unload` offer the loaded models' aliases and names, and `MODEL:ADAPTER` for their
adapters; `%llm_adapter load` offers folders and .gguf files, `%llm_adapter unload` the
adapters; `%llm_unload --disk` the converted copies, `%%llm_chat --as`/`--show`/`--reset`
the conversations, `--over` the notebook's collections; `--<TAB>` offers a magic's flags
(read from its magic_arguments parser), and a flag's values where the parser lists them
(`--engine`, `--quantize`), `--dtype`, and `--device-map` as this machine's torch can place
a model (no cuda on a CPU-only build). No network, no torch import: answers come from
folder listings and the kernel's cache. Besides the magics package, the one module that
imports IPython: it plugs into the shell's completer.
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
# Each magic, and whether it runs as a line magic (%), a cell magic (%%) or both.
_MAGICS = {
    "llm_load": "line",
    "llm_unload": "line",
    "llm_models": "line",
    "llm_generate": "cell",
    "llm_chat": "both",
    "llm_adapter": "line",
}
_DTYPES = ("auto", "bfloat16", "float16", "float32", "bf16", "fp16", "fp32")
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
    cell = words[0].startswith("%%")
    runs_as = _MAGICS.get(magic)
    if runs_as is None or runs_as != "both" and cell != (runs_as == "cell"):
        return None
    current = "" if text[-1:].isspace() or len(words) == 1 else words[-1]
    if len(words) == 1 and not text[-1:].isspace():
        return None  # still typing the magic's name: IPython's own matcher does that
    before = words[-1] if current == "" else (words[-2] if len(words) > 1 else "")

    def values(names) -> tuple[str, list[SimpleCompletion]]:
        return current, [
            SimpleCompletion(v, type="value") for v in dict.fromkeys(names) if v.startswith(current)
        ]

    if current.startswith("-"):
        return current, [
            SimpleCompletion(f, type="flag") for f in _flags(shell, magic) if f.startswith(current)
        ]
    choices = _choices(shell, magic, before)
    if choices:
        return values(choices)
    if magic == "llm_load" and before == "--dtype":
        return values(_DTYPES)
    if magic == "llm_load" and before == "--device-map":
        return values(_device_maps())
    if magic == "llm_load" and before == "--revision":
        return current, _revisions(words, current)
    if magic == "llm_generate" and before == "--over":
        return values(_sized_variables(shell))
    if magic == "llm_chat" and before in ("--as", "--show", "--reset"):
        return current, _conversations(current)
    if magic == "llm_chat" and before in _MODEL_FLAGS:
        return current, _loaded_names(current)
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
        if "--disk" in words[1:]:
            return current, _copies(current)
        return current, _loaded_names(current)
    if magic == "llm_load":
        return current, _models(current)
    return None


# ---------------------------------------------------------------------------- candidates


def _flags(shell, magic: str) -> list[str]:
    parser = _parser(shell, magic)
    if parser is None:
        return []
    return [
        s for action in parser._actions for s in action.option_strings if s not in ("-h", "--help")
    ]


def _action(shell, magic: str, flag: str):
    parser = _parser(shell, magic)
    return parser._option_string_actions.get(flag) if parser is not None else None


def _takes_value(shell, magic: str, flag: str) -> bool:
    action = _action(shell, magic, flag)
    return action is not None and action.nargs != 0


def _choices(shell, magic: str, flag: str) -> tuple[str, ...]:
    """The values a flag's parser accepts, where it lists them (--engine, --quantize)."""
    action = _action(shell, magic, flag) if flag.startswith("-") else None
    return tuple(action.choices) if action is not None and action.choices else ()


def _parser(shell, magic: str):
    """The magic_arguments parser of a registered magic (it prints `%magic?` too)."""
    kind = "cell" if _MAGICS.get(magic) == "cell" else "line"
    method = shell.magics_manager.magics.get(kind, {}).get(magic)
    return getattr(method, "parser", None)


def _device_maps() -> tuple[str, ...]:
    """--device-map's values for this machine's torch: cuda only where torch was built
    for it, mps only on a Mac. Read without importing torch (its version file says what
    it was built for) unless it is imported already."""
    import sys

    maps = ["auto", "cpu"]
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = bool(torch.version.cuda or torch.version.hip) and torch.cuda.is_available()
    else:
        cuda = _torch_built_for_gpus()
    if cuda:
        maps += ["cuda", "cuda:0", "cuda:1", "balanced", "sequential"]
    if sys.platform == "darwin":
        maps.append("mps")
    return tuple(maps)


def _torch_built_for_gpus() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return False
    try:
        text = Path(spec.origin).with_name("version.py").read_text()
    except OSError:
        return True  # cannot tell: offer them
    built = re.findall(r"^(?:cuda|hip)\s*(?::[^=]*)?=\s*(\S+)", text, re.MULTILINE)
    return any(value != "None" for value in built)


def _sized_variables(shell) -> list[str]:
    """The notebook's variables --over can run over: lists, tuples, dicts, sets, ranges
    and other sized collections that are not text."""
    names = []
    for name, value in shell.user_ns.items():
        if name.startswith("_") or name in shell.user_ns_hidden:
            continue
        if isinstance(value, (str, bytes, type)) or not hasattr(value, "__len__"):
            continue
        if hasattr(value, "__iter__"):
            names.append(name)
    return sorted(names)


def _conversations(prefix: str) -> list[SimpleCompletion]:
    from ..conversations import CONVERSATIONS

    return [
        SimpleCompletion(n, type="conversation")
        for n in CONVERSATIONS.names()
        if n.startswith(prefix)
    ]


def _copies(prefix: str) -> list[SimpleCompletion]:
    """What `%llm_unload --disk` takes: the copies' names, and the .gguf files' names
    (all the copies of one)."""
    from ..sources import gguf_cache

    found: dict[str, str] = {}
    for copy in gguf_cache.converted_copies():
        found.setdefault(copy.name, "converted copy")
    for copy in gguf_cache.converted_copies():
        if copy.gguf:
            found.setdefault(os.path.basename(copy.gguf), "gguf (all its copies)")
    return [SimpleCompletion(n, type=t) for n, t in found.items() if n.startswith(prefix)]


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
