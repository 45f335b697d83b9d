"""Resolve MODEL (Hub id, local folder or .gguf file), call `from_pretrained`, time it.

Nothing here imports torch or transformers at module level: `import llm_magic` must
stay fast, so the heavy imports live inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import gguf_cache, hardware, sizing
from .engines.base import ModelInfo
from .errors import PROBE_NOTE, LoadError

Progress = Callable[[str], None]

# A Hub id is "name" or "org/name"; anything else that does not exist on disk is a bad path.
_HUB_ID = re.compile(r"^[\w.\-]+(/[\w.\-]+)?$")


@dataclass(frozen=True)
class Source:
    """Where the weights come from, resolved before anything heavy is read."""

    kind: str  # "hub", "folder" or "gguf"
    name: str  # what the user typed
    path: str | None  # local folder to load from; for "gguf" the .gguf file itself
    revision: str | None = None  # commit of a cached snapshot, else what the user asked for
    cached: bool = False  # a Hub id whose snapshot is on disk: loaded from there, offline

    @property
    def identity(self) -> str:
        """What names these weights in the cache key."""
        if self.kind == "hub":  # a cached snapshot's revision is its commit
            return f"hub:{self.name}@{self.revision or 'main'}"
        if self.kind == "gguf":
            st = os.stat(self.path)
            return f"gguf:{self.path}:{st.st_size}:{st.st_mtime_ns}"
        return f"{self.kind}:{self.path}"


def resolve_source(name: str, revision: str | None = None) -> Source:
    """Turn MODEL into a Source; only an id that is not cached locally touches the network.

    A Hub id whose snapshot is already in the local Hugging Face cache resolves to that
    snapshot folder: transformers would otherwise retry the unreachable Hub for minutes,
    and HF_HUB_OFFLINE set after it is imported has no effect.
    """
    text = str(name).strip()
    if not text:
        raise LoadError(
            "no model given",
            fixes=["%llm_load HuggingFaceTB/SmolLM2-135M-Instruct", "%llm_load ./my_model_folder"],
        )
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise _missing_gguf(text, path)
        _check_gguf(text, path)
        return Source("gguf", text, str(path.resolve()), revision)
    if path.is_dir():
        _check_model_folder(text, path)
        return Source("folder", text, str(path.resolve()), revision)
    if path.exists() or not _HUB_ID.match(text) or text.startswith((".", "~")):
        raise _missing_path(text, path)
    snapshot = cached_snapshot(text, revision)
    if snapshot is not None:
        return Source("hub", text, str(snapshot), snapshot.name, cached=True)
    if not hub_reachable():
        # Fail in a second, not after minutes of retries (transformers retries each file
        # with backoff): ask huggingface_hub for the cached file only, which raises its
        # real LocalEntryNotFoundError for errors.diagnose_load to explain.
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            hf_hub_download(text, "config.json", revision=revision, local_files_only=True)
        except LocalEntryNotFoundError as e:
            e.add_note(f"{PROBE_NOTE} {constants.ENDPOINT}: asked for cached files only")
            raise
    return Source("hub", text, None, revision)


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The local snapshot folder of `repo_id` at `revision` (default main), or None.

    huggingface_hub's own cache lookup resolves the branch or tag to its commit; a
    snapshot without config.json is a partial download: the Hub must finish it."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        config = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except HFValidationError:  # not a valid repo id: nothing of it can be cached
        return None
    return Path(config).parent if isinstance(config, str) else None


_GGUF_MAGIC = b"GGUF"
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
)  # what from_pretrained reads from a folder


def _check_gguf(text: str, path: Path) -> None:
    """An empty or non-GGUF file, said as such before any reader fails on its bytes
    ("unpack requires a buffer of 24 bytes" says nothing to a user)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise LoadError(
            f"{text}: empty file",
            "the file has 0 bytes: a download or copy that did not finish",
            [
                f"download or copy {path.name} again",
                "the demo model, offline: %llm_load $path  (path = llm_magic.demo_model())",
            ],
        )
    if head[:4] != _GGUF_MAGIC:
        if head.startswith(b"version https://git-lfs"):
            cause = "it is a Git LFS pointer, not the file itself"
            fixes = [
                "git lfs pull  (in the repository it came from)",
                "or download the file itself again",
            ]
        else:
            kind = "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "binary data"
            cause = f"a .gguf file starts with the bytes 'GGUF'; this one starts with {kind}: {head[:16]!r}"
            fixes = [f"check what {path.name} is: file {path}", "download the .gguf again"]
        raise LoadError(f"{text}: not a GGUF file (no GGUF magic)", cause, fixes)


def visible_files(folder: Path) -> list[str]:
    """The folder's entries a user would list (no .ipynb_checkpoints, .cache, dotfiles)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _check_model_folder(text: str, path: Path) -> None:
    """A folder with neither config.json nor any weights is no model folder: say that,
    rather than let the tokenizer loader fail first and be blamed."""
    if (path / "config.json").is_file() or any(
        p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir()
    ):
        return
    files = visible_files(path)
    fixes = []
    ggufs = sorted(p for p in path.iterdir() if p.suffix == ".gguf")
    fixes += [f"it holds a .gguf: %llm_load {ggufs[0]}"] if ggufs else []
    inner = sorted(p.parent for p in path.glob("*/config.json"))
    fixes += [f"a model folder inside it: %llm_load {inner[0]}"] if inner else []
    fixes.append(
        "a model folder is what save_pretrained writes: config.json, model.safetensors, tokenizer files"
    )
    fixes.append("offline, the demo model: %llm_load $path  (path = llm_magic.demo_model())")
    raise LoadError(
        f"{text}: not a model folder: no config.json and no weights",
        None,
        fixes,
        [
            f"the folder holds: {', '.join(files[:8]) or 'nothing'}"
            + (" ..." if len(files) > 8 else "")
        ],
    )


def _missing_path(text: str, path: Path) -> LoadError:
    parent = path.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    near = sorted(p.name for p in parent.iterdir())[:8] if parent.is_dir() else []
    fixes = [
        f"nearest existing folder: {parent}" + (f" (holds: {', '.join(near)})" if near else "")
    ]
    if _HUB_ID.match(text.lstrip("./~")):
        fixes.append(f"for the Hub id, drop the path prefix: %llm_load {text.lstrip('./~')}")
    return LoadError(f"{text}: no such file or folder", "the path does not exist", fixes)


def _missing_gguf(text: str, path: Path) -> LoadError:
    """A .gguf that is gone: where it was looked for, and the converted copies it left
    (plain safetensors folders that load without it)."""
    error = _missing_path(text, path)
    left = [
        c
        for c in gguf_cache.converted_copies()
        if c.gguf == str(path.resolve()) and c.problem is None
    ]
    if not left:
        return error
    d = error.diagnosis
    return LoadError(
        f"{text}: the .gguf file is gone",
        f"nothing is at {path.resolve()}; {len(left)} converted cop{'y' if len(left) == 1 else 'ies'} of it remain in the cache",
        [
            f"put the .gguf back at {path.resolve()} (or give its new path)",
            f"or load the converted copy, a plain safetensors folder: %llm_load {left[0].folder}",
            f"or delete the copies: %llm_unload --disk {path.name}",
            *d.fixes[:1],
        ],
    )


def checkpoint_dtype(folder: str | None) -> str | None:
    """The dtype recorded in the folder's config.json, if any (no weights are read)."""
    if folder is None:
        return None
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return str(value) if value else None


# The converted-copy cache lives in gguf_cache; these names stay for callers of loading.
converted_cache_root = gguf_cache.cache_root
converted_folder = gguf_cache.converted_folder
_CONVERTED_MARK = gguf_cache.MARK


def dtype_keyword() -> str:
    """transformers >= 4.56 takes `dtype=`; older ones `torch_dtype=` (never pass both)."""
    import transformers

    major, minor = (int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def load_model(
    source: Source,
    dtype: hardware.DtypeChoice,
    device_map: str | dict = "auto",
    trust_remote_code: bool = False,
    progress: Progress | None = None,
    max_memory: dict | None = None,
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
        where = str(cached_snapshot(source.name, source.revision) or where)
    info = describe(model, tokenizer, source, dtype, seconds, trust_remote_code, where)
    if quantize:
        info = replace(
            info,
            num_params=_quantized_param_count(model),
            details=info.details + (("quantization", quantization_label(quantize, dtype.dtype)),),
        )
    return model, tokenizer, info, notes


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


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hub endpoint answers an HTTP request (any status) within `timeout`
    seconds, through the proxy the environment names. A TCP connect alone is not
    enough: some networks accept every connection and then say nothing. Name
    resolution has no timeout of its own, so the attempt runs in a daemon thread and is
    abandoned when the time is up. False when HF_HUB_OFFLINE is set."""
    import threading
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    result: list[bool] = []

    def attempt() -> None:
        try:
            urllib.request.urlopen(
                urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout
            ).close()
            result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # it answered, if only with an error status
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=attempt, name="llm_magic-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


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
            converted = converted_folder(source.path, dtype) if dtype else None
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

    from .discovery import hub_models

    cache = Path(constants.HF_HUB_CACHE)
    repos = [m.repo_id for m in hub_models()]
    disks = []
    for label, where in (
        ("HF_HOME", constants.HF_HOME),
        ("LLM_MAGIC_CACHE", str(converted_cache_root())),
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
    from . import demo_model

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
