"""Silencing the libraries' own output while llm_magic shows its status (or, with
`--quiet`, nothing at all).

transformers draws a "Loading weights" bar through its logging module, the .gguf reader
draws its own `tqdm.auto` bar (which, in a kernel without ipywidgets, also warns
`TqdmWarning: IProgress not found`), and both log warnings to stderr. None of it is ours
to show in a cell that asked for quiet.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """transformers' and huggingface_hub's progress bars off (restored after), and tqdm's
    'IProgress not found' warning ignored: llm_magic's status line stands in for them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        from huggingface_hub import utils as hub_utils
        from transformers.utils import logging as hf_logging

        bars_were_on = hf_logging.is_progress_bar_enabled()
        hub_bars_were_off = hub_utils.are_progress_bars_disabled()
        hf_logging.disable_progress_bar()
        hub_utils.disable_progress_bars()
        try:
            yield
        finally:
            if bars_were_on:
                hf_logging.enable_progress_bar()
            if not hub_bars_were_off:
                hub_utils.enable_progress_bars()


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Nothing on stdout or stderr from this thread's libraries while the block runs:
    their bars off, their log level at errors, warnings ignored, and what they still
    write (the .gguf reader's own tqdm bar) caught and dropped. Failures still raise."""
    sink = io.StringIO()
    # Silenced before the first import too: importing transformers imports tqdm.auto,
    # which warns "IProgress not found" in a kernel without ipywidgets.
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        with library_bars_off():
            hf_logging.set_verbosity_error()
            try:
                yield
            finally:
                hf_logging.set_verbosity(level)


@contextlib.contextmanager
def bar_dropped(description: str) -> Iterator[None]:
    """stderr while the block runs, less the frames of the tqdm bar described by
    `description`: a library bar no switch turns off (the .gguf reader's). What else the
    block writes to stderr is written there when it ends."""
    caught = io.StringIO()
    real = sys.stderr
    try:
        with contextlib.redirect_stderr(caught):
            yield
    finally:
        rest = re.sub(rf"\r?{re.escape(description)}[^\r\n]*", "", caught.getvalue())
        if rest.strip():
            real.write(rest.lstrip("\n"))
            real.flush()
