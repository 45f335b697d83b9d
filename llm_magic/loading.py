"""Resolve MODEL (Hub id, local folder or .gguf file), call `from_pretrained`, time it.

Nothing here imports torch or transformers at module level: `import llm_magic` must
stay fast, so the heavy imports live inside the functions that need them.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import hardware
from ._compat import dtype_keyword
from .errors import LoadError
from .paths import visible_files
from .sources import gguf_cache, hub, sizing
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


# --------------------------------------------------------------------------------------
# Failure support (errors.py): a fast Hub reachability probe, and the facts a diagnosis
# needs about the request, its files and the machine.

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
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def failure_context(
    name: str, source: Source | None, dtype: str | None, device_map, revision: str | None
) -> dict:
    """Facts about a failed load for errors.diagnose_load; each gathered on its own so
    one that cannot be read leaves the others."""
    ctx: dict[str, Any] = {
        "model": name,
        "dtype": dtype,
        "device_map": device_map,
        "revision": revision,
    }
    folder = None
    if source is not None:
        ctx["kind"] = source.kind
        ctx["path"] = source.path
        if source.kind == "gguf":
            converted = gguf_cache.converted_folder(source.path, dtype) if dtype else None
            folder = converted if converted and converted.is_dir() else None
        elif source.path:
            folder = Path(source.path)
    else:
        parent = Path(str(name)).expanduser().absolute()
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        ctx["nearest_parent"] = str(parent)
    for gather in (_hub_facts, _machine_facts, _demo_facts):
        try:
            ctx.update(gather())
        except Exception:  # a fact we cannot read is left out; the diagnosis still stands
            pass
    if folder is not None and folder.is_dir():
        try:
            ctx.update(_folder_facts(folder, dtype))
        except Exception:
            pass
    return ctx


def _hub_facts() -> dict:
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    repos = list(hub.cached_repo_ids())
    disks = []
    for label, where in (
        ("HF_HOME", constants.HF_HOME),
        ("LLM_MAGIC_CACHE", str(gguf_cache.cache_root())),
    ):
        existing = Path(where)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        disks.append((label, where, shutil.disk_usage(existing).free))
    return {
        "offline": bool(constants.HF_HUB_OFFLINE),
        "endpoint": constants.ENDPOINT,
        "hf_cache": str(cache),
        "cached_repos": repos,
        "disks": disks,
    }


def _demo_facts() -> dict:
    """Where the demo model is, when installed: a model that loads with no network."""
    from .sources.demo import demo_model

    return {"demo_model": demo_model()}


def _machine_facts() -> dict:
    import sys

    facts: dict[str, Any] = {"ram_free": hardware.free_ram_bytes()}
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                facts["ram_total"] = int(line.split()[1]) * 1024
    torch = sys.modules.get("torch")
    if torch is not None:
        facts["torch_version"] = torch.__version__
        facts["torch_cuda"] = torch.version.cuda
        facts["gpu_count"] = torch.cuda.device_count() if torch.version.cuda else 0
        gpus = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                gpus.append((i, torch.cuda.get_device_name(i), free, total))
        facts["gpus"] = gpus
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        facts["transformers_version"] = transformers.__version__
    return facts


def _folder_facts(folder: Path, dtype: str | None) -> dict:
    facts: dict[str, Any] = {"files": visible_files(folder)}
    params, bad = 0, []
    for file in sorted(folder.glob("*.safetensors")):
        try:
            header, _ = sizing.read_safetensors_header(file)
        except (OSError, ValueError) as e:
            reason = (
                str(e).removeprefix(f"{file}: ").removeprefix("Error while deserializing header: ")
            )
            bad.append(f"{file} ({file.stat().st_size} bytes: {reason})")
            continue
        for key, value in header.items():
            if key != "__metadata__":
                count = 1
                for dim in value["shape"]:
                    count *= dim
                params += count
    facts["bad_files"] = bad
    if params and dtype in _DTYPE_BYTES:
        facts["weights_bytes"] = params * _DTYPE_BYTES[dtype]
    config = folder / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type:
            facts["fitting_auto_classes"] = _auto_classes_for(model_type)
    return facts


def _auto_classes_for(model_type: str) -> list[str]:
    """Auto classes whose mapping holds `model_type` (for a model that is not a causal LM)."""
    from transformers.models.auto import modeling_auto as m

    table = [
        ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
        ("AutoModelForImageTextToText", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"),
        ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
        ("AutoModelForSpeechSeq2Seq", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"),
        ("AutoModel", "MODEL_MAPPING_NAMES"),
    ]
    return [auto for auto, names in table if model_type in getattr(m, names, {})]
