"""How the transformers engine loads: MODEL resolved to files (sources.resolve), the dtype
the hardware policy picks, the size read from the file headers, then `from_pretrained`,
timed and described as a ModelInfo for the card; `--quantize` through bitsandbytes.

Nothing here imports torch or transformers at module level: `import llm_magic` must
stay fast, so the heavy imports live inside the functions that need them."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import hardware
from .._compat import dtype_keyword
from ..cache import LoadedModel
from ..display import LoadCard
from ..errors import LoadError
from ..sources import gguf_cache, hub, sizing
from ..sources.gguf_cache import usable_copy
from ..sources.resolve import Source, checkpoint_dtype, resolve_source
from .base import CacheKey, Loaded, LoadOptions, LoadReport, ModelInfo, Plan, Progress
from .cards import load_card


class TransformersLoader:
    def plan(self, options: LoadOptions, progress: Progress | None) -> Plan:
        name = options.model
        if name is None:
            raise LoadError(
                "no model given",
                fixes=[
                    "%llm_load HuggingFaceTB/SmolLM2-135M-Instruct",
                    "%llm_load --server http://HOST:8000/v1  (a model on a server)",
                ],
            )
        _check_quantize(name, options.quantize)
        try:
            requested = hardware.normalize_dtype(options.dtype)
        except ValueError as e:
            raise LoadError(
                f"{name}: {e}", fixes=["--dtype auto lets the hardware decide"]
            ) from None
        source = resolve_source(name, options.revision)
        checkpoint = checkpoint_dtype(source.path if source.kind != "gguf" else None)
        choice = hardware.choose_dtype(hardware.probe(), checkpoint, requested, options.device_map)
        if source.kind == "gguf" and source.path is not None:
            if options.reload or usable_copy(source.path, choice.dtype) is None:
                gguf_cache.check_writable(source.path)  # before a conversion, not after it
        est = estimate(source, choice.dtype, options.quantize)
        unchecked = None
        if est is None:
            unchecked = (
                "not checked: no local files give the size before download"
                if source.path is None
                else "not checked: no safetensors headers to read the size from"
            )
        return Plan(
            _key(source, choice.dtype, options),
            name,
            estimate=est,
            unchecked=unchecked,
            source=source,
            state=choice,
        )

    def load(self, plan: Plan, options: LoadOptions, progress: Progress | None) -> Loaded:
        source = plan.source
        assert source is not None
        model, tokenizer, info, notes = load_model(
            source,
            plan.state,
            options.device_map,
            options.trust_remote_code,
            progress,
            dict(options.max_memory) if options.max_memory else None,
            reconvert=options.reload,
            quantize=options.quantize,
        )
        if source.kind == "hub" and not source.cached:
            # Now downloaded: key it by its snapshot's commit, as the next request will be.
            plan.key = _key(resolve_source(source.name, options.revision), info.dtype, options)
        from .transformers import TransformersEngine

        return Loaded(model, tokenizer, info, TransformersEngine, notes=notes)

    def card(self, entry: LoadedModel, report: LoadReport) -> LoadCard:
        return load_card(entry, report, _llama_cpp_hint(entry))


LOADER = TransformersLoader()


def _key(source: Source, dtype: str, options: LoadOptions) -> CacheKey:
    device_map = options.device_map
    return CacheKey(
        "transformers",
        source.identity,
        dtype,
        str(CacheKey.pairs(device_map) if not isinstance(device_map, str) else device_map),
        options.quantize,
        options.trust_remote_code,
        CacheKey.pairs(options.max_memory),
    )


def _check_quantize(model: str, quantize: str | None) -> None:
    """Refuse an unknown quantization, or a missing bitsandbytes, before anything is read."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_CHOICES:
        raise LoadError(
            f"--quantize {quantize}: not one of {', '.join(QUANTIZE_CHOICES)}",
            fixes=["--quantize nf4 (4-bit, the smallest that keeps quality)", "--quantize int8"],
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LoadError(
            f"could not load {model} with --quantize {quantize}",
            "the optional package bitsandbytes is not installed "
            "(it holds the 4-bit and 8-bit layers)",
            [
                'pip install "llm_magic[quantize]"  (or: pip install bitsandbytes)',
                "then restart the kernel and run %llm_load again",
                "or leave out --quantize",
            ],
        )


def estimate(source: Source, dtype: str, quantize: str | None = None) -> sizing.Estimate | None:
    """The bytes `source` will take at `dtype`, from file headers only; None when no local
    file tells (a Hub id not downloaded yet) or a header is unreadable (the load itself
    then reports the broken file)."""
    converted = usable_copy(source.path, dtype) if source.kind == "gguf" and source.path else None
    try:
        est = sizing.estimate(source, dtype, converted)
        return sizing.quantized(est, quantize) if est and quantize else est
    except (OSError, ValueError, KeyError, TypeError, ImportError):  # ImportError: no gguf package
        return None


def _llama_cpp_hint(entry: LoadedModel) -> tuple[tuple[str, str], ...]:
    """For a .gguf loaded with transformers while llama-cpp-python is installed: how much
    faster llama.cpp decodes it, as measured here (decode_speed), else that it can."""
    from . import decode_speed, llama_cpp

    if entry.info.kind != "gguf" or not llama_cpp.available():
        return ()
    return (("llama.cpp", decode_speed.llama_cpp_hint(entry.key.weights, entry.info)),)


# --- from_pretrained -------------------------------------------------------------------


def load_model(
    source: Source,
    dtype: hardware.DtypeChoice,
    device_map: str | Mapping[str, Any] = "auto",
    trust_remote_code: bool = False,
    progress: Progress | None = None,
    max_memory: dict[str | int, str] | None = None,
    reconvert: bool = False,
    quantize: str | None = None,
) -> tuple[Any, Any, ModelInfo, tuple[str, ...]]:
    """Read tokenizer and weights; returns (model, tokenizer, info, what was done on the way:
    notes for the card). A .gguf is read from
    its converted copy, made first when missing or damaged, or again with `reconvert`.
    `quantize` (nf4, fp4, int8) loads the linear layers quantized by bitsandbytes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress = progress or (lambda message: None)
    started = time.perf_counter()
    where = source.path
    notes: tuple[str, ...] = ()
    if source.kind == "gguf":
        if source.path is None:  # resolve_source gives every .gguf source its file
            raise LoadError(f"{source.name}: a .gguf source without its file")
        folder, notes = gguf_cache.ensure_converted(source.path, dtype.dtype, progress, reconvert)
        where = str(folder)
    remote = {} if source.cached or source.kind != "hub" else {"revision": source.revision}
    if where is None:
        where = source.name
        progress(f"downloading {source.name} from the Hub…")

    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, **remote)
    if _is_empty(tokenizer):
        raise LoadError(
            f"{source.name}: the tokenizer is empty",
            "the folder has weights but no tokenizer files "
            "(tokenizer.json, tokenizer_config.json, vocab files)",
            [
                "copy the tokenizer files in: "
                "AutoTokenizer.from_pretrained(ORIGINAL).save_pretrained(FOLDER)",
                "or load the model the folder was made from by its Hub id",
            ],
        )
    progress(f"reading weights of {source.name} ({dtype.dtype})…")
    placement: str | dict[str, Any] | None = (
        device_map if isinstance(device_map, str) else dict(device_map)
    )
    if (
        device_map == "auto"
        and not max_memory
        and hardware.target_kind(hardware.probe(), device_map) == "cpu"
    ):
        # No accelerator: "auto" places everything on the CPU anyway, and accelerate's
        # planning costs ~10% of a small model's load time (bench/).
        placement = None
    model = AutoModelForCausalLM.from_pretrained(
        where,
        device_map=placement,
        trust_remote_code=trust_remote_code,
        **{dtype_keyword(): getattr(torch, dtype.dtype)},
        **({"max_memory": dict(max_memory)} if max_memory else {}),  # accelerate edits it
        **({"quantization_config": quantization_config(quantize, dtype.dtype)} if quantize else {}),
        **remote,
    )
    _check_placed(model, source.name, max_memory)
    seconds = time.perf_counter() - started
    if source.kind == "hub" and not source.cached:
        where = str(hub.cached_snapshot(source.name, source.revision) or where)
    info = describe(model, tokenizer, source, dtype, seconds, trust_remote_code, where)
    if quantize:
        info = replace(
            info,
            num_params=_quantized_param_count(model),
            details=info.details + (("quantization", quantization_label(quantize, dtype.dtype)),),
            quantization=quantize,
        )
    return model, tokenizer, info, notes


def _check_placed(model, name: str, max_memory: dict | None) -> None:
    """Refuse a model that --max-memory put wholly on disk: its weights stay on the meta
    device and every generation would fail on them."""
    placed = {str(v) for v in (getattr(model, "hf_device_map", None) or {}).values()}
    if not placed or not placed <= {"disk"}:
        return
    caps = ",".join(f"{k}={v}" for k, v in (max_memory or {}).items())
    raise LoadError(
        f"{name}: --max-memory {caps} leaves no room for the model on any device",
        "every layer went to disk, and a model wholly on disk cannot generate here"
        " (its weights stay on the meta device)",
        [
            "raise the caps: at least the size of one layer must fit, e.g. cpu=2GB",
            "leave out --max-memory to use the memory that is free",
        ],
    )


# --quantize: bitsandbytes' 4-bit (NF4, FP4) and 8-bit (LLM.int8) linear layers.
QUANTIZE_CHOICES = ("nf4", "fp4", "int8")


def quantization_config(quantize: str, compute_dtype: str):
    """The BitsAndBytesConfig for `quantize`; the matrix products run in `compute_dtype`
    (the dtype the hardware policy chose). bitsandbytes quantizes every nn.Linear but the
    output head; embeddings and norms stay at `compute_dtype`."""
    import torch
    from transformers import BitsAndBytesConfig

    import_bitsandbytes_offline()
    if quantize == "int8":
        import logging

        logger = logging.getLogger("bitsandbytes.autograd._functions")
        if not any(isinstance(f, _SameWarningOnce) for f in logger.filters):
            logger.addFilter(_SameWarningOnce())
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantize,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
    )


# On a CPU with AVX512-BF16, importing bitsandbytes asks the Hub for a faster 4-bit kernel
# (through the `kernels` package) and, unable to have it, logs a long warning advising
# trust_remote_code. `kernels` reads LOCAL_KERNELS at each lookup: pointed at a local build
# that does not exist, the lookup fails at once, offline, and bitsandbytes runs its own CPU
# kernels, as it does wherever that build is missing.
_BNB_HUB_KERNEL = "kernels-community/quantization-bitsandbytes"
_NO_LOCAL_BUILD = os.path.join(os.devnull, "llm_magic-no-local-kernel")


def import_bitsandbytes_offline() -> None:
    """Import bitsandbytes (once per process) without its Hub kernel lookup or the
    warning that lookup leaves."""
    if "bitsandbytes" in sys.modules:
        return
    import logging

    given = os.environ.get("LOCAL_KERNELS")
    if given and _BNB_HUB_KERNEL + "=" in given:  # a build of the user's own: theirs to use
        import bitsandbytes  # noqa: F401

        return
    os.environ["LOCAL_KERNELS"] = ":".join(
        filter(None, [given, _BNB_HUB_KERNEL + "=" + _NO_LOCAL_BUILD])
    )
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its "Failed to load CPU gemm_4bit_forward" warning
    try:
        import bitsandbytes  # noqa: F401
    finally:
        logger.setLevel(level)
        if given is None:
            os.environ.pop("LOCAL_KERNELS", None)
        else:
            os.environ["LOCAL_KERNELS"] = given


def _quantized_param_count(model) -> int:
    """Parameters as the model has them: a 4-bit weight counts its packed bytes in
    numel(), its quant_state keeps the real shape."""
    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        total += state.shape.numel() if state is not None and hasattr(state, "shape") else p.numel()
    return total


class _SameWarningOnce:
    """A logging filter: LLM.int8 warns at every matrix product that it casts its inputs
    to float16 (hundreds of lines per generation); the card says it once instead."""

    def filter(self, record) -> bool:
        return "inputs will be cast" not in record.getMessage()


def quantization_label(quantize: str, compute_dtype: str) -> str:
    import importlib.metadata as md

    kind = {"nf4": "4-bit NF4", "fp4": "4-bit FP4", "int8": "8-bit LLM.int8"}[quantize]
    try:
        version = " " + md.version("bitsandbytes")
    except md.PackageNotFoundError:
        version = ""
    compute = (
        ", inputs cast to float16 for the 8-bit products"
        if quantize == "int8"
        else f", computing in {compute_dtype}"
    )
    return f"{quantize}: {kind} linear layers (bitsandbytes{version}){compute}"


def _is_empty(tokenizer) -> bool:
    """transformers returns a tokenizer with no vocabulary, and no error, for a folder
    without tokenizer files; it then encodes every text to nothing."""
    return getattr(tokenizer, "vocab_size", 1) == 0 or not tokenizer("Hello world")["input_ids"]


def describe(
    model,
    tokenizer,
    source: Source,
    dtype: hardware.DtypeChoice,
    seconds: float,
    trust_remote_code: bool,
    where: str,
) -> ModelInfo:
    """Facts for the card, derived from the loaded objects."""
    device_map = getattr(model, "hf_device_map", None) or {}
    placed = {str(v) for v in device_map.values()}
    # Off an accelerator, cpu is where the model runs: only the disk is offloaded to.
    on_accelerator = bool(placed - {"cpu", "disk"})
    offloaded = sorted(placed & ({"cpu", "disk"} if on_accelerator else {"disk"}))
    # Disk-offloaded weights sit on the meta device until used: name the disk instead.
    devices = sorted({str(p.device) for p in model.parameters()} - {"meta"})
    warnings = []
    if offloaded:
        n = sum(1 for v in device_map.values() if str(v) in offloaded)
        warnings.append(
            f"{n} module(s) offloaded to {' and '.join(offloaded)}: "
            "generation will be several times slower"
            " — free memory, use a smaller dtype, or raise max_memory"
        )
    hw = hardware.probe()
    if hw.gpus and all(d == "cpu" for d in devices):
        warnings.append(
            f"a GPU is present ({hw.gpus[0].name}) but the model is on cpu: "
            "--device-map auto uses it"
        )
    if dtype.warning:
        warnings.append(dtype.warning)
    if getattr(tokenizer, "pad_token_id", None) is None:
        warnings.append("tokenizer has no pad token: generation pads with the eos token")
    if getattr(model.config, "model_type", None) in _ENCODER_TYPES and not getattr(
        model.config, "is_decoder", False
    ):
        warnings.append(
            f"{model.config.model_type} is an encoder (masked LM): "
            f"transformers loaded it as {type(model).__name__},"
            " but it was not trained to continue text and will not generate sensible output"
        )
    commit = (
        source.revision
        if source.cached
        else getattr(model.config, "_commit_hash", None) or source.revision
    )
    return ModelInfo(
        name=source.name,
        kind=source.kind,
        class_name=type(model).__name__,
        num_params=sum(p.numel() for p in model.parameters()),
        memory_bytes=int(model.get_memory_footprint()),
        device=", ".join(devices + (["disk"] if "disk" in placed else [])),
        dtype=str(model.dtype).removeprefix("torch."),
        dtype_reason=dtype.reason,
        source=where,
        revision=commit,
        load_seconds=seconds,
        trust_remote_code=trust_remote_code,
        converted_from=source.path if source.kind == "gguf" else None,
        warnings=tuple(warnings),
        chat_template=bool(getattr(tokenizer, "chat_template", None)),
    )


# Encoders transformers loads silently as an LM head (BertLMHeadModel and kin).
_ENCODER_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "electra",
        "ernie",
        "megatron-bert",
        "roformer",
        "rembert",
        "data2vec-text",
        "xmod",
        "bert-generation",
        "big_bird",
        "roc_bert",
    }
)
