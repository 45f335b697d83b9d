"""The facts a failed load is explained with (errors.diagnose(..., LOAD) reads them): the
request, the local caches and their disks, the machine, the demo model, and the files of
the folder that failed. Each is gathered on its own, so one that cannot be read leaves
the others.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import hardware
from ..paths import nearest_existing, visible_files
from ..units import DTYPE_BYTES
from . import gguf_cache, hub, sizing
from .demo import demo_model
from .resolve import Source


def failure_context(
    name: str,
    source: Source | None,
    dtype: str | None,
    device_map: str | Mapping[str, Any] | None,
    revision: str | None,
) -> dict[str, Any]:
    """Facts about a failed load for errors.diagnose(..., LOAD); each gathered on its own so
    one that cannot be read leaves the others."""
    ctx: dict[str, Any] = {
        "model": name,
        "dtype": dtype,
        "device_map": device_map,
        "revision": revision,
    }
    folder: Path | None = None
    if source is not None:
        ctx["kind"] = source.kind
        ctx["path"] = source.path
        if source.kind == "gguf" and source.path is not None:
            converted = gguf_cache.converted_folder(source.path, dtype) if dtype else None
            folder = converted if converted and converted.is_dir() else None
        elif source.path:
            folder = Path(source.path)
    else:
        ctx["nearest_parent"] = str(nearest_existing(str(name)))
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


def _hub_facts() -> dict[str, Any]:
    """The Hub's endpoint and offline switch, the cached repositories, and the free space
    on the disks of both caches."""
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    repos = list(hub.cached_repo_ids())
    disks = []
    for label, where in (
        ("HF_HOME", constants.HF_HOME),
        ("LLM_MAGIC_CACHE", str(gguf_cache.cache_root())),
    ):
        disks.append((label, where, shutil.disk_usage(nearest_existing(where)).free))
    return {
        "offline": bool(constants.HF_HUB_OFFLINE),
        "endpoint": constants.ENDPOINT,
        "hf_cache": str(cache),
        "cached_repos": repos,
        "disks": disks,
    }


def _demo_facts() -> dict[str, Any]:
    """Where the demo model is, when installed: a model that loads with no network."""
    return {"demo_model": demo_model()}


def _machine_facts() -> dict[str, Any]:
    """RAM, and the torch and transformers versions and GPUs where they are imported
    already (a failure report never imports them itself)."""
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


def _folder_facts(folder: Path, dtype: str | None) -> dict[str, Any]:
    """The folder's files, the safetensors files that do not read, and the bytes the
    weights take at `dtype`, from their headers."""
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
    if params and dtype in DTYPE_BYTES:
        facts["weights_bytes"] = params * DTYPE_BYTES[dtype]
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
