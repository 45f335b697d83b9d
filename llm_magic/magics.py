"""`LLMMagics`: traits and magics. Each magic parses its line, calls the plain API and
wraps the result for display; the logic lives in the other modules."""

from __future__ import annotations

import sys
import traceback
from contextlib import contextmanager

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from traitlets import Bool, Unicode

from . import api, hardware
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
        "--trust-remote-code", action="store_true", help="Run the model repository's own Python code (only for repos you trust)."
    )
    @argument("--as", dest="alias", default=None, help="A short name for the cached model (for -m in %%%%llm_generate).")
    @argument("--reload", action="store_true", help="Load again from disk, bypassing the cache.")
    @argument("--quiet", action="store_true", help="No progress and no card.")
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
            )
        del handle  # the card, not the model, goes to Out: Out must not pin the weights
        return None if quiet else card

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
        try:
            yield lambda message: handle.update(StatusLine(message))
        finally:
            handle.update({"text/plain": ""}, raw=True)


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
