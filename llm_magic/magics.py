"""`LLMMagics`: traits and magics. Each magic parses its line, calls the plain API and
wraps the result for display; the logic lives in the other modules."""

from __future__ import annotations

import sys
import traceback
import warnings
from contextlib import contextmanager

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from traitlets import Bool, Int, TraitError, Unicode, Union, observe, validate

from . import api, hardware, sizing
from .cache import MODEL_CACHE
from .display import StatusLine
from .errors import LLMError


@magics_class
class LLMMagics(Magics):
    """Magics for local language models. Configure with `%config LLMMagics.<trait> = ...`."""

    dtype = Unicode("auto", help="Default --dtype for %llm_load: auto, bfloat16, float16 or float32.").tag(config=True)
    device_map = Unicode("auto", help="Default --device-map for %llm_load (auto, cpu, cuda, cuda:1, mps...).").tag(
        config=True
    )
    quiet = Bool(False, help="Load without progress or card unless asked (as --quiet on every %llm_load).").tag(
        config=True
    )
    max_models = Int(
        0, help="The most models the cache holds (0: no limit); loading one more unloads the least recently used."
    ).tag(config=True)
    memory_budget = Union(
        [Int(), Unicode()],
        default_value=0,
        help="The most bytes of weights the cache holds, as a number or a string like '8GB' (0: no limit); "
        "loading past it unloads the least recently used models first.",
    ).tag(config=True)

    @validate("memory_budget")
    def _parse_budget(self, proposal):
        try:
            return sizing.parse_bytes(proposal["value"])
        except ValueError as e:
            raise TraitError(f"LLMMagics.memory_budget: {e}") from None

    @observe("max_models", "memory_budget")
    def _apply_budget(self, change):
        # The budget lives on the cache, so llm_magic.load() from plain Python honours it too.
        MODEL_CACHE.set_budget(**{change["name"]: change["new"]})

    @magic_arguments()
    @argument("model", help="Hub id (org/name), a save_pretrained folder, or a .gguf file.")
    @argument(
        "--dtype",
        default=None,
        help="auto (hardware decides), bfloat16, float16, float32 (aliases bf16, fp16, fp32). "
        "Default: LLMMagics.dtype.",
    )
    @argument("--device-map", default=None, help="auto, cpu, cuda, cuda:1, mps, ... Default: LLMMagics.device_map.")
    @argument("--revision", default=None, help="Branch, tag or commit of a Hub model.")
    @argument(
        "--max-memory",
        default=None,
        help="Cap per device for device_map auto, e.g. 0=20GB,cpu=30GB; the rest is offloaded (slower).",
    )
    @argument(
        "--trust-remote-code", action="store_true", help="Run the model repository's own Python code (only for repos you trust)."
    )
    @argument("--as", dest="alias", default=None, help="A short name for the cached model (for -m in %%%%llm_generate).")
    @argument("--reload", action="store_true", help="Load again from disk, bypassing the cache.")
    @argument("--quiet", action="store_true", help="No progress and no card.")
    @argument("--force", action="store_true", help="Load even when the pre-flight check says it will not fit.")
    @argument("--verbose", action="store_true", help="On failure, show the full traceback under the error card.")
    @line_magic
    def llm_load(self, line: str):
        """Load a causal language model into the kernel's cache and show what was done."""
        args = parse_argstring(self.llm_load, line)
        dtype = args.dtype or self.dtype
        try:
            hardware.normalize_dtype(dtype)
        except ValueError as e:
            from IPython.core.error import UsageError

            raise UsageError(f"--dtype: {e}") from None
        quiet = args.quiet or self.quiet
        with self._status(quiet) as progress, _verbose_errors(args.verbose):
            handle, card = api.load_with_card(
                _unquote(args.model),
                dtype=dtype,
                device_map=args.device_map or self.device_map,
                revision=args.revision,
                trust_remote_code=args.trust_remote_code,
                alias=args.alias,
                reload=args.reload,
                progress=progress,
                max_memory=_parse_max_memory(args.max_memory),
                force=args.force,
            )
        del handle  # the card, not the model, goes to Out: Out must not pin the weights
        return None if quiet else card

    @magic_arguments()
    @line_magic
    def llm_models(self, line: str = ""):
        """List the cached models (alias, id, revision, dtype, device, memory, last used),
        their total, free RAM and GPU memory, and the budget."""
        parse_argstring(self.llm_models, line)
        return api.models()

    @magic_arguments()
    @argument("name", nargs="?", default=None, help="The alias or the name the model was loaded with.")
    @argument("--all", action="store_true", help="Unload every cached model.")
    @line_magic
    def llm_unload(self, line: str):
        """Unload a cached model and free its memory for real: the cache, output history
        (Out, _) and tracebacks let go of it; the card says how much memory came back."""
        args = parse_argstring(self.llm_unload, line)
        if args.all == bool(args.name):
            from IPython.core.error import UsageError

            raise UsageError("%llm_unload takes a NAME or --all (%llm_models lists the names)")
        return api.unload(_unquote(args.name) if args.name else None, all=args.all)

    @line_magic
    def llm_tb(self, line: str = ""):
        """Print the full traceback of the last llm_magic error (the card shows the short form)."""
        error = getattr(sys, "last_value", None)
        if error is None:
            print("no error yet")
            return
        print("".join(traceback.format_exception(type(error), error, error.__traceback__)), file=sys.stderr)

    @contextmanager
    def _status(self, quiet: bool):
        """A progress callback: one status line updated in place in Jupyter, lines on
        stderr in a terminal; in Jupyter the line is blanked when done, and the card
        (the magic's value) follows it."""
        if quiet:
            yield None
            return
        if getattr(self.shell, "kernel", None) is None:
            yield lambda message: print(f"… {message}", file=sys.stderr, flush=True)
            return
        handle = display(StatusLine("starting"), display_id=True)
        # transformers' own bars would stay in the cell as stderr text: the status line
        # stands in for them while this load runs.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="IProgress not found")
            from transformers.utils import logging as hf_logging

            bars_were_on = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                yield lambda message: handle.update(StatusLine(message))
            finally:
                handle.update({"text/plain": ""}, raw=True)
                if bars_were_on:
                    hf_logging.enable_progress_bar()


def _parse_max_memory(text: str | None) -> dict | None:
    """'0=20GB,cpu=30GB' -> {0: '20GB', 'cpu': '30GB'} (accelerate reads the sizes)."""
    if not text:
        return None
    caps = {}
    for part in _unquote(text).split(","):
        device, sep, size = part.partition("=")
        if not sep or not device.strip() or not size.strip():
            from IPython.core.error import UsageError

            raise UsageError(f"--max-memory: expected DEVICE=SIZE[,DEVICE=SIZE], e.g. 0=20GB,cpu=30GB; got {text!r}")
        device = device.strip()
        caps[int(device) if device.isdigit() else device] = size.strip()
    return caps


def watch_shell(shell) -> None:
    """Let the cache free what this shell keeps of an unloaded model: output history
    (`Out`, `_`, `_N`, in `user_ns` and its hidden copy), the display hook's own `_`, `__`,
    `___`, and the last cell's result and error."""
    MODEL_CACHE.namespaces += [shell.user_ns, shell.user_ns_hidden]
    MODEL_CACHE.holders.append(_shell_holder(shell))


def unwatch_shell(shell) -> None:
    mine = (shell.user_ns, shell.user_ns_hidden)
    MODEL_CACHE.namespaces[:] = [ns for ns in MODEL_CACHE.namespaces if not any(ns is m for m in mine)]
    MODEL_CACHE.holders[:] = [h for h in MODEL_CACHE.holders if getattr(h, "shell", None) is not shell]


def _shell_holder(shell):
    def scrub(is_target) -> list:
        hook = shell.displayhook
        for name in ("_", "__", "___"):
            if is_target(getattr(hook, name, None)):
                setattr(hook, name, "")
        result = getattr(shell, "last_execution_result", None)
        if result is None:
            return []
        if is_target(result.result):
            result.result = None
        return [result.error_before_exec, result.error_in_exec]

    scrub.shell = shell
    return scrub


@contextmanager
def _verbose_errors(verbose: bool):
    """With --verbose, an LLMError's card is followed by its full chained traceback."""
    try:
        yield
    except LLMError as e:
        e.verbose = verbose
        raise


def _unquote(text: str) -> str:
    """magic_arguments keeps quotes around a path with spaces; strip one matching pair."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text
