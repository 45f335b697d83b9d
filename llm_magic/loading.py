"""Load a resolved Source (sources.resolve) with transformers: `from_pretrained`, timed,
described as a ModelInfo for the card; `--quantize` through bitsandbytes.

Nothing here imports torch or transformers at module level: `import llm_magic` must
stay fast, so the heavy imports live inside the functions that need them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from . import hardware
from ._compat import dtype_keyword
from .errors import LoadError
from .sources import gguf_cache, hub
from .sources.resolve import Source

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ModelInfo:
    """Plain facts about a loaded model: what the cards show. Holds no tensor or model."""

    name: str
    kind: str
    class_name: str
    num_params: int
    memory_bytes: int
    device: str
    dtype: str
    dtype_reason: str
    source: str
    revision: str | None
    load_seconds: float
    trust_remote_code: bool = False
    converted_from: str | None = None  # the .gguf file, for a converted model
    warnings: tuple[str, ...] = field(default_factory=tuple)
    chat_template: bool | None = None  # whether the tokenizer has one (None: not known)
    load_notes: tuple[
        str, ...
    ] = ()  # what this load did on the way (a copy converted again): its card only
    engine: str = "transformers"  # engines/: what generates with it
    details: tuple[
        tuple[str, str], ...
    ] = ()  # more card rows (engine, quantization, context, threads)


def load_model(
    source: Source,
    dtype: hardware.DtypeChoice,
    device_map: str | dict = "auto",
    trust_remote_code: bool = False,
    progress: Progress | None = None,
    max_memory: dict | None = None,
    reconvert: bool = False,
    quantize: str | None = None,
) -> tuple[Any, Any, ModelInfo]:
    """Read tokenizer and weights; returns (model, tokenizer, info). A .gguf is read from
    its converted copy, made first when missing or damaged, or again with `reconvert`.
    `quantize` (nf4, fp4, int8) loads the linear layers quantized by bitsandbytes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress = progress or (lambda message: None)
    started = time.perf_counter()
    where = source.path
    notes: tuple[str, ...] = ()
    if source.kind == "gguf":
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
            "the folder has weights but no tokenizer files (tokenizer.json, tokenizer_config.json, vocab files)",
            [
                "copy the tokenizer files in: AutoTokenizer.from_pretrained(ORIGINAL).save_pretrained(FOLDER)",
                "or load the model the folder was made from by its Hub id",
            ],
        )
    progress(f"reading weights of {source.name} ({dtype.dtype})…")
    if (
        device_map == "auto"
        and not max_memory
        and hardware.target_kind(hardware.probe(), device_map) == "cpu"
    ):
        # No accelerator: "auto" places everything on the CPU anyway, and accelerate's
        # planning costs ~10% of a small model's load time (bench/).
        device_map = None
    model = AutoModelForCausalLM.from_pretrained(
        where,
        device_map=device_map,
        trust_remote_code=trust_remote_code,
        **{dtype_keyword(): getattr(torch, dtype.dtype)},
        **({"max_memory": max_memory} if max_memory else {}),
        **({"quantization_config": quantization_config(quantize, dtype.dtype)} if quantize else {}),
        **remote,
    )
    seconds = time.perf_counter() - started
    if source.kind == "hub" and not source.cached:
        where = str(hub.cached_snapshot(source.name, source.revision) or where)
    info = describe(model, tokenizer, source, dtype, seconds, trust_remote_code, where)
    if quantize:
        info = replace(
            info,
            num_params=_quantized_param_count(model),
            details=info.details + (("quantization", quantization_label(quantize, dtype.dtype)),),
        )
    return model, tokenizer, replace(info, load_notes=notes)


# --quantize: bitsandbytes' 4-bit (NF4, FP4) and 8-bit (LLM.int8) linear layers.
QUANTIZE_CHOICES = ("nf4", "fp4", "int8")


def quantization_config(quantize: str, compute_dtype: str):
    """The BitsAndBytesConfig for `quantize`; the matrix products run in `compute_dtype`
    (the dtype the hardware policy chose). bitsandbytes quantizes every nn.Linear but the
    output head; embeddings and norms stay at `compute_dtype`."""
    import torch
    from transformers import BitsAndBytesConfig

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
    offloaded = sorted(placed & {"cpu", "disk"})
    # Disk-offloaded weights sit on the meta device until used: name the disk instead.
    devices = sorted({str(p.device) for p in model.parameters()} - {"meta"})
    warnings = []
    if "disk" in placed or (offloaded and len(placed) > 1):
        n = sum(1 for v in device_map.values() if str(v) in offloaded)
        warnings.append(
            f"{n} module(s) offloaded to {' and '.join(offloaded)}: generation will be several times slower"
            " — free memory, use a smaller dtype, or raise max_memory"
        )
    hw = hardware.probe()
    if hw.gpus and all(d == "cpu" for d in devices):
        warnings.append(
            f"a GPU is present ({hw.gpus[0].name}) but the model is on cpu: --device-map auto uses it"
        )
    if dtype.warning:
        warnings.append(dtype.warning)
    if getattr(tokenizer, "pad_token_id", None) is None:
        warnings.append("tokenizer has no pad token: generation pads with the eos token")
    if getattr(model.config, "model_type", None) in _ENCODER_TYPES and not getattr(
        model.config, "is_decoder", False
    ):
        warnings.append(
            f"{model.config.model_type} is an encoder (masked LM): transformers loaded it as {type(model).__name__},"
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
