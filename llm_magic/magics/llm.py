"""`LLMMagics`: the configuration (traits) and the model magics: `%llm_load`,
`%llm_models`, `%llm_unload`, `%llm_adapter`, `%%llm_generate`, `%llm_tb`. Each magic
parses its line, calls the plain API and wraps the result for display; the logic lives in
the other modules."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from traitlets import (
    Bool,
    CaselessStrEnum,
    Float,
    Int,
    TraitError,
    Unicode,
    Union,
    default,
    observe,
    validate,
)

from .. import api, hardware, runlog
from .. import quiet as quiet_output
from ..cache import MODEL_CACHE
from ..display import StatusLine
from ..engines import registry
from ..engines.base import LoadOptions
from ..errors import LLMError, full_traceback
from ..paths import short_name
from ..settings import GENERATE_OPTIONS, OPTIONS, Settings
from ..sources import gguf_cache, sizing
from ..sources.adapter import adapter_pairs
from .cells import (
    Stream,
    Waiting,
    batch_progress,
    generate_flags,
    generation_flags,
    option_trait,
    out_name,
    over_items,
    parse_line,
    prompt_shower,
    run_streamed,
    settings_from,
    shown_in_place,
    unquote,
    user_namespace,
)
from .side_by_side import Columns


@magics_class
class LLMMagics(Magics):
    """Magics for local language models. Configure with `%config LLMMagics.<trait> = ...`."""

    dtype = Unicode(
        "auto", help="Default --dtype for %llm_load: auto, bfloat16, float16 or float32."
    ).tag(config=True)
    device_map = Unicode(
        "auto", help="Default --device-map for %llm_load (auto, cpu, cuda, cuda:1, mps...)."
    ).tag(config=True)
    quiet = Bool(
        False, help="Load without progress or card unless asked (as --quiet on every %llm_load)."
    ).tag(config=True)
    engine = CaselessStrEnum(
        registry.local_names(),
        registry.DEFAULT,
        help="Default --engine of %llm_load: "
        + "; ".join(f"{e.name} ({e.summary})" for e in registry.ENGINES if not e.by_server),
    ).tag(config=True)
    max_models = Int(
        0,
        help="The most models the cache holds (0: no limit); "
        "loading one more unloads the least recently used.",
    ).tag(config=True)
    memory_budget = Union(
        [Int(), Unicode()],
        default_value=0,
        help="The most bytes of weights the cache holds, "
        "as a number or a string like '8GB' (0: no limit); "
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

    # Defaults of the generating cells (each flag overrides its trait for one cell): one
    # per configurable option of settings.OPTIONS (tests/test_settings.py checks).
    max_new_tokens = option_trait("max_new_tokens")
    temperature = option_trait("temperature")
    top_p = option_trait("top_p")
    top_k = option_trait("top_k")
    greedy = option_trait("greedy")
    system = option_trait("system", "")
    batch_size = option_trait("batch_size", 0)
    concurrency = option_trait("concurrency", 16)
    logprobs = option_trait("logprobs", 0)
    stream = Bool(
        True,
        help="Show the text as it is generated (False: as --no-stream on every %%llm_generate).",
    ).tag(config=True)
    max_history = Int(
        0,
        help="The most earlier turns %%llm_chat sends with a new one "
        "(0: as many as the context holds; "
        "the oldest are left out first).",
    ).tag(config=True)

    # Server models (%llm_load --server URL).
    server = Unicode(
        "",
        help="Default --server of %llm_load: "
        "the base URL of an OpenAI-compatible server (empty: none).",
    ).tag(config=True)
    api_key_env = Unicode(
        "",
        help="Default --api-key-env of %llm_load: the variable holding the server's key "
        "(empty: OPENAI_API_KEY when set, else no key).",
    ).tag(config=True)
    request_timeout = Float(
        300.0, help="Seconds to wait for a server's reply (each request; connecting: at most 10 s)."
    ).tag(config=True)

    @observe("concurrency", "request_timeout")
    def _apply_server_defaults(self, change):
        # Kept with the server engine, so llm_magic.generate() from plain Python honours it too.
        from ..engines.server import DEFAULTS as server_defaults

        setattr(
            server_defaults,
            {"concurrency": "concurrency", "request_timeout": "timeout"}[change["name"]],
            change["new"],
        )

    # The run log (llm_magic/runlog.py): every run appended to a SQLite file.
    reuse = option_trait("reuse")
    log = Bool(
        True,
        help="Log every run (generation, chat turn, --over item, score) to the run log, a "
        "SQLite file (LLMMagics.log_path). Default: on, unless LLM_MAGIC_LOG=0.",
    ).tag(config=True)
    log_path = Unicode(
        "",
        help="The run log's file (empty: $LLM_MAGIC_LOG_PATH, else runs.db in "
        "$LLM_MAGIC_CACHE, ~/.cache/llm_magic by default).",
    ).tag(config=True)

    @default("log")
    def _log_default(self):
        return runlog.enabled()

    @observe("log", "log_path")
    def _apply_log(self, change):
        # Kept with the log, so llm_magic.generate() from plain Python honours it too.
        runlog.configure(**{"enabled" if change["name"] == "log" else "path": change["new"]})

    @magic_arguments()
    @argument(
        "model",
        nargs="?",
        default=None,
        help="Hub id (org/name), a save_pretrained folder, or a .gguf file; "
        "with --server, the id the server serves (left out: the one it serves). "
        "Without it and without --server: what this machine can load now.",
    )
    @argument(
        "--server",
        default=None,
        help="Base URL of an OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, "
        "Ollama, transformers serve), e.g. http://gpu-node:8000/v1. "
        "Default: none, the model runs here (LLMMagics.server).",
    )
    @argument(
        "--api-key-env",
        default=None,
        help="The environment variable holding the server's key (its name, never "
        "the key). Default: OPENAI_API_KEY when set (LLMMagics.api_key_env).",
    )
    @argument(
        "--dtype",
        default=None,
        help="auto (hardware decides), bfloat16, float16, float32 (aliases bf16, fp16, fp32). "
        "Default: auto (LLMMagics.dtype).",
    )
    @argument(
        "--device-map",
        default=None,
        help="auto, cpu, cuda, cuda:1, mps, ... Default: auto (LLMMagics.device_map).",
    )
    @argument("--revision", default=None, help="Branch, tag or commit of a Hub model.")
    @argument(
        "--max-memory",
        default=None,
        help="Cap per device for device_map auto, e.g. 0=20GB,cpu=30GB; "
        "the rest is offloaded (slower).",
    )
    @argument(
        "--trust-remote-code",
        action="store_true",
        help="Run the model repository's own Python code (only for repos you trust).",
    )
    @argument(
        "--as",
        dest="alias",
        default=None,
        help="A short name for the cached model (for -m in %%%%llm_generate).",
    )
    @argument("--reload", action="store_true", help="Load again from disk, bypassing the cache.")
    @argument("--quiet", action="store_true", help="No progress and no card.")
    @argument(
        "--force",
        action="store_true",
        help="Load even when the pre-flight check says it will not fit.",
    )
    @argument(
        "--engine",
        choices=registry.local_names(),
        default=None,
        help="What generates: "
        + "; ".join(f"{e.name}: {e.summary}" for e in registry.ENGINES if not e.by_server)
        + f". Default: {registry.DEFAULT} (LLMMagics.engine).",
    )
    @argument(
        "--quantize",
        choices=("nf4", "fp4", "int8"),
        default=None,
        help="Load the linear layers in 4 bits (nf4, fp4) or 8 bits (int8) with bitsandbytes.",
    )
    @argument(
        "--verbose",
        action="store_true",
        help="On failure, show the full traceback under the error card.",
    )
    @argument(
        "--adapter",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help="An adapter to put on the model (repeatable): a PEFT folder (adapter_config.json "
        "and adapter_model.safetensors), or a GGUF LoRA file with --engine llama.cpp; with "
        "--server, a name the server serves. A cached model is not loaded again. Then "
        "-m MODEL:NAME generates with it (NAME: its folder's name unless given), -m "
        "MODEL:base without; the first is what -m MODEL alone means.",
    )
    @line_magic
    def llm_load(self, line: str):
        """Load a causal language model into the kernel's cache and show what was done."""
        args = parse_line(self.llm_load, line)
        if args.model is None and not (args.server or self.server):
            return api.available(self._load_defaults())
        dtype = args.dtype or self.dtype
        try:
            hardware.normalize_dtype(dtype)
        except ValueError as e:
            from IPython.core.error import UsageError

            raise UsageError(f"--dtype: {e}") from None
        quiet = args.quiet or self.quiet
        server = unquote(args.server or self.server) or None
        engine = args.engine or self.engine
        hf_bars = registry.shows_library_bars(engine, server)
        with (
            self._status(quiet, _first_words(args.model, server, hf_bars), hf_bars) as progress,
            _verbose_errors(args.verbose),
        ):
            options = LoadOptions(
                model=unquote(args.model) if args.model else None,
                engine=engine,
                dtype=dtype,
                device_map=args.device_map or self.device_map,
                revision=args.revision,
                trust_remote_code=args.trust_remote_code,
                max_memory=_parse_max_memory(args.max_memory),
                quantize=args.quantize,
                server=server,
                # The trait is the key of server models; a flag given is checked as given.
                api_key_env=unquote(args.api_key_env or (self.api_key_env if server else ""))
                or None,
                alias=args.alias,
                reload=args.reload,
                force=args.force,
                quiet=quiet,
                adapters=adapter_pairs([unquote(a) for a in args.adapter or []]),
            )
            handle, card = api.load_with_card(options=options, progress=progress)
            del handle  # the card, not the model, goes to Out: Out must not pin the weights
            return None if progress is None else progress.settle(card)

    def _load_defaults(self) -> LoadOptions:
        """What `%llm_load` takes for the flags a line leaves out (the traits)."""
        return LoadOptions(
            engine=self.engine,
            dtype=self.dtype,
            device_map=self.device_map,
            api_key_env=self.api_key_env or None,
        )

    @magic_arguments()
    @argument(
        "--disk",
        action="store_true",
        help="List the converted copies of .gguf files on disk instead (sizes, sources).",
    )
    @line_magic
    def llm_models(self, line: str = ""):
        """List the cached models (alias, id, revision, dtype, device, memory, last used),
        their total, free RAM and GPU memory, and the budget."""
        args = parse_line(self.llm_models, line)
        return gguf_cache.disk_card() if args.disk else api.models()

    @magic_arguments()
    @argument(
        "name", nargs="?", default=None, help="The alias or the name the model was loaded with."
    )
    @argument("--all", action="store_true", help="Unload every cached model.")
    @argument(
        "--disk",
        action="store_true",
        help="Delete converted .gguf copies from disk instead: NAME (as %%llm_models "
        "--disk lists it, or the .gguf's file name) or --all.",
    )
    @line_magic
    def llm_unload(self, line: str):
        """Unload a cached model and free its memory for real: the cache, output history
        (Out, _) and tracebacks let go of it; the card says how much memory came back."""
        args = parse_line(self.llm_unload, line)
        if args.all == bool(args.name):
            from IPython.core.error import UsageError

            raise UsageError("%llm_unload takes a NAME or --all (%llm_models lists the names)")
        if args.disk:
            return api.delete_copies(unquote(args.name or ""), all=args.all)
        return api.unload(unquote(args.name) if args.name else None, all=args.all)

    @no_var_expand  # `{name}` and `$x` in the line are ours to fill (or not), not IPython's
    @magic_arguments(
        name="%llm_generate"
    )  # IPython writes one "%" before it: a cell magic's usage reads %%
    @argument(
        "-m",
        "--model",
        nargs="+",
        default=None,
        help="Alias (--as) or name of a loaded model (MODEL:ADAPTER for one of its adapters, "
        "MODEL:base for none). Default: the one loaded or used last. Several (-m A B): the "
        "same prompt, settings and seed through each, side by side.",
    )
    @generation_flags
    @argument(
        "--over",
        default=None,
        help="Run the cell once per item of this list variable, {item} standing for the item; "
        "returns one result per item.",
    )
    @argument(
        "--no-fill",
        action="store_true",
        help="Send the cell as written: no {name} filling (for pasted code "
        "full of braces; {{ stays {{).",
    )
    @generate_flags
    @cell_magic
    def llm_generate(self, line: str, cell: str):
        """Generate from the cell's text with a loaded model (the chat template applied
        when the model has one). `{name}`, `{obj.attr}` and `{obj[key]}` are filled from the
        notebook's variables; `{{` and `}}` are literal braces. The text streams in as it
        is generated; Ctrl-C stops it, keeping what was generated. Returns the result
        (`.text`, token counts, timings, settings)."""
        args = parse_line(self.llm_generate, line)
        ns = user_namespace(self)
        out = out_name(args.out)
        over = over_items(args, ns)
        jupyter = getattr(self.shell, "kernel", None) is not None
        # --over shows a progress bar instead of the streamed text.
        sink = self.stream_sink(args) if over is None else None
        settings = settings_from(args, OPTIONS + GENERATE_OPTIONS, self, ns)
        on_prompt = prompt_shower(args.show_prompt)
        # --no-stream: a status line while it generates.
        waiting = Waiting(jupyter) if over is None and sink is None else None
        shown = sink or waiting  # one of them whenever there is no --over

        models = [unquote(m) for m in args.model or []]
        if len(models) > 1:
            return self._side_by_side(cell, models, args, settings, over, out, on_prompt)

        def call():
            with batch_progress(jupyter, len(over.items) if over is not None else 0) as progress:
                return api.generate(
                    cell.strip("\n"),
                    model=models[0] if models else None,
                    namespace=None if args.no_fill else ns,
                    over=over,
                    settings=settings,
                    stream=sink,
                    progress=progress,
                    on_prompt=on_prompt,
                    on_start=shown.start if shown is not None else None,
                )

        return run_streamed(
            call, sink, out, self.shell, waiting
        )  # shown once, as the cell's value; `_` and Out[n] hold it

    def _side_by_side(self, cell, models, args, settings, over, out, on_prompt):
        """`-m A B ...`: the cell through each model (api.compare), the answers in columns."""
        jupyter = getattr(self.shell, "kernel", None) is not None
        sink = Columns(jupyter, models, stream=self.stream and not args.no_stream)

        def call():
            with batch_progress(jupyter, len(over.items) if over is not None else 0) as progress:
                return api.compare(
                    cell.strip("\n"),
                    models,
                    namespace=None if args.no_fill else user_namespace(self),
                    over=over,
                    settings=settings,
                    stream=sink.begin,
                    on_result=sink.done,
                    progress=progress,
                    on_prompt=on_prompt,
                )

        return run_streamed(call, sink, out, self.shell)

    @magic_arguments()
    @argument(
        "action",
        choices=("load", "list", "unload"),
        help="load: put adapters on a loaded model; list: its adapters; unload: take one off.",
    )
    @argument(
        "adapters",
        nargs="*",
        metavar="ADAPTER",
        help="load: PATH or NAME=PATH (a PEFT folder, a GGUF LoRA file for llama.cpp, a "
        "served adapter's name for a server model); unload: NAME (or MODEL:NAME), or all.",
    )
    @argument(
        "-m",
        "--model",
        default=None,
        help="The loaded model (alias or name). Default: the one loaded or used last.",
    )
    @argument(
        "--default",
        action="store_true",
        help="load: make the (first) adapter the one -m MODEL alone means.",
    )
    @line_magic
    def llm_adapter(self, line: str):
        """Adapters on a model already loaded, without loading it again: `load` puts them on
        (each is then -m MODEL:NAME; -m MODEL:base switches them off), `list` shows them
        (rank, modules, size), `unload` takes one off and frees its memory."""
        args = parse_line(self.llm_adapter, line)
        model = unquote(args.model) if args.model else None
        given = [unquote(a) for a in args.adapters]
        if args.action == "list":
            return api.list_adapters(model)
        if not given:
            from IPython.core.error import UsageError

            what = "PATH or NAME=PATH" if args.action == "load" else "NAME (or MODEL:NAME), or all"
            raise UsageError(f"%llm_adapter {args.action} takes {what}")
        if args.action == "load":
            return api.load_adapter(given, model=model, default=args.default)
        return api.unload_adapter(given, model=model)

    def sampling_settings(self, args) -> Settings:
        """The Settings of a generating cell's sampling flags: each flag given, else its
        trait."""
        return settings_from(args, OPTIONS, self, user_namespace(self))

    def stream_sink(self, args) -> Stream | None:
        """Where the text streams (None: shown only when complete, --no-stream)."""
        return (
            Stream(getattr(self.shell, "kernel", None) is not None)
            if self.stream and not args.no_stream
            else None
        )

    @line_magic
    def llm_tb(self, line: str = ""):
        """Print the full traceback of the last llm_magic error (the card shows the short form)."""
        error = getattr(sys, "last_value", None)
        if error is None:
            print("no error yet")
            return
        # Credentials are cut out: the traceback quotes the cell's line, and a server's key
        # may have been echoed into a message.
        print(full_traceback(error, _known_keys()), file=sys.stderr)

    @contextmanager
    def _status(self, quiet: bool, first: str = "starting…", hf_bars: bool = True):
        """A load's status (None with --quiet): one line updated in place in Jupyter, lines
        on stderr in a terminal, beginning with `first`. The libraries' own progress bars
        are off meanwhile (`hf_bars`: the engine draws them): the status stands in for
        them, in Jupyter and in a terminal alike."""
        if quiet:
            yield None
            return
        jupyter = getattr(self.shell, "kernel", None) is not None
        status = _Status(
            self.shell, display(StatusLine(first), display_id=True) if jupyter else None
        )
        if not jupyter:
            status(first)
        try:
            # Importing transformers to hush its bars costs seconds: only where it draws them.
            with quiet_output.library_bars_off() if hf_bars else nullcontext():
                yield status
        finally:
            status.close()


class _Status:
    """Called with what a load is doing now. In Jupyter the line is one display updated in
    place, and `settle` puts the magic's value (the card) there, so the notebook keeps the
    card where the status was, not an emptied output beside it."""

    def __init__(self, shell, handle=None):
        self.shell = shell
        self.handle = handle  # the status display (Jupyter); None: lines on stderr

    def __call__(self, message: str) -> None:
        if self.handle is not None:
            self.handle.update(StatusLine(message))
        else:
            print(f"… {message}", file=sys.stderr, flush=True)

    def settle(self, value):
        """`value` shown in the status line's place; returned for Out and `_`, marked so
        that this cell does not show it a second time."""
        if self.handle is None:
            return value
        handle, self.handle = self.handle, None
        return shown_in_place(handle, value, self.shell)

    def close(self) -> None:
        """Not settled (the load failed): the line goes, the error card follows."""
        if self.handle is not None:
            self.handle.update({"text/plain": ""}, raw=True)
            self.handle = None


def _first_words(model: str | None, server: str | None, hf_bars: bool) -> str:
    """What a load does first, said at once: a kernel's first transformers load spends
    seconds importing torch and transformers before any status of its own."""
    if hf_bars and "transformers" not in sys.modules:
        return "importing torch and transformers (once per kernel)…"
    if server:
        return "asking the server what it serves…"
    return f"opening {short_name(unquote(model))}…" if model else "starting…"


def _known_keys() -> list[str | None]:
    """The keys this kernel's server models are reached with (read from the variables
    they name), and OPENAI_API_KEY: none of them is ever printed."""
    names = {e.key.api_key_env for e in MODEL_CACHE.entries()} | {"OPENAI_API_KEY"}
    return [os.environ.get(name) for name in names if name]


def _parse_max_memory(text: str | None) -> dict | None:
    """'0=20GB,cpu=30GB' -> {0: '20GB', 'cpu': '30GB'} (accelerate reads the sizes)."""
    if not text:
        return None
    caps = {}
    for part in unquote(text).split(","):
        device, sep, size = part.partition("=")
        if not sep or not device.strip() or not size.strip():
            from IPython.core.error import UsageError

            raise UsageError(
                "--max-memory: expected DEVICE=SIZE[,DEVICE=SIZE], "
                f"e.g. 0=20GB,cpu=30GB; got {text!r}"
            )
        device = device.strip()
        caps[int(device) if device.isdigit() else device] = size.strip()
    return caps


def watch_shell(shell) -> None:
    """Let the cache free what this shell keeps of an unloaded model: output history
    (`Out`, `_`, `_N`, in `user_ns` and its hidden copy), the display hook's own `_`, `__`,
    `___`, and the last cell's result and error."""
    MODEL_CACHE.namespaces += [shell.user_ns, shell.user_ns_hidden]
    MODEL_CACHE.holders.append(_ShellHolder(shell))


def unwatch_shell(shell) -> None:
    mine = (shell.user_ns, shell.user_ns_hidden)
    MODEL_CACHE.namespaces[:] = [
        ns for ns in MODEL_CACHE.namespaces if not any(ns is m for m in mine)
    ]
    MODEL_CACHE.holders[:] = [
        h for h in MODEL_CACHE.holders if not (isinstance(h, _ShellHolder) and h.shell is shell)
    ]


class _ShellHolder:
    """A cache holder: drops a model's results from the shell's display hook and last cell
    result, and returns the last cell's errors (their frames may hold it). `shell` says
    whose, for `unwatch_shell`."""

    def __init__(self, shell) -> None:
        self.shell = shell

    def __call__(self, is_target: Callable[[Any], bool]) -> list[Any]:
        hook = self.shell.displayhook
        for name in ("_", "__", "___"):
            if is_target(getattr(hook, name, None)):
                setattr(hook, name, "")
        result = getattr(self.shell, "last_execution_result", None)
        if result is None:
            return []
        if is_target(result.result):
            result.result = None
        return [result.error_before_exec, result.error_in_exec]


@contextmanager
def _verbose_errors(verbose: bool):
    """With --verbose, an LLMError's card is followed by its full chained traceback."""
    try:
        yield
    except LLMError as e:
        e.verbose = verbose
        raise
