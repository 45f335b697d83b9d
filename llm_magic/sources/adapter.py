"""What an adapter names, resolved before any weights are read: a PEFT folder
(`adapter_config.json` beside `adapter_model.safetensors`, as `PeftModel.save_pretrained`
writes it) or a GGUF LoRA file (as llama.cpp's `convert_lora_to_gguf.py` writes it).

Its method, rank, alpha, the modules it adapts, the base model it names and its tensors'
shapes come from the config and the file headers only: a folder without its config, a
model given where an adapter was meant, or a config whose rank the weights do not have
fails here, said as such, before a library fails on it with a message about keys.

Nothing here imports torch, transformers or peft."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LoadError
from ..paths import nearest_existing, visible_files

# A name usable after the colon of `-m BASE:NAME`: no colon, no space; "base" means none.
_NAME = re.compile(r"^[A-Za-z0-9_][\w.\-]*$")
BASE = "base"  # `-m MODEL:base`: the model with its adapters switched off

_PEFT_PREFIX = "base_model.model."
# The tensors of one LoRA-adapted layer: PEFT's `<module>.lora_A.weight` and
# `<module>.lora_B.weight` (embeddings: lora_embedding_A / _B), llama.cpp's
# `<tensor>.lora_a` and `<tensor>.lora_b`.
_PEFT_LORA = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<ab>[AB])(?:\.weight)?$")
_GGUF_LORA = re.compile(r"^(?P<module>.+?)(?:\.weight)?\.lora_(?P<ab>[ab])$")


@dataclass(frozen=True)
class AdapterSource:
    """An adapter on disk, as its config and headers describe it."""

    name: str  # what `-m BASE:NAME` calls it
    path: str  # the folder (PEFT) or the file (GGUF), absolute
    format: str  # "peft" or "gguf"
    method: str  # "LORA", "IA3", ... (PEFT's peft_type)
    rank: int | None  # LoRA's r (the config's, else the weights')
    alpha: float | None
    modules: tuple[str, ...]  # the adapted modules (or tensors), in file order
    base_model: str | None  # the base model the adapter names (PEFT's base_model_name_or_path)
    weights: str | None  # the weights file
    size_bytes: int  # of the weights file
    # LoRA's (A, B) shapes by adapted module, numpy order: A is (r, in), B is (out, r).
    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    architecture: str | None = None  # a GGUF LoRA's general.architecture

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of module adapted (`c_attn`, `q_proj`, `attn_q`), without layer numbers."""
        seen: dict[str, None] = {}
        for module in self.modules:
            seen.setdefault(module.rsplit(".", 1)[-1], None)
        return tuple(seen)


def split_spec(text: str) -> tuple[str | None, str]:
    """`NAME=PATH` → (NAME, PATH); a bare PATH (or one that exists with a `=` in it) →
    (None, PATH)."""
    name, sep, rest = text.partition("=")
    if sep and rest and _NAME.match(name) and not Path(text).expanduser().exists():
        return name, rest
    return None, text


def adapter_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    """Adapters as (name, path) pairs, from what `llm_magic.load(adapters=...)` and the
    `--adapter` flags take: a mapping {name: path}, "NAME=PATH" or "PATH" strings,
    (name, path) pairs, or one string. Names left out come from the paths."""
    if not value:
        return ()
    if isinstance(value, str):
        value = [value]
    items = list(value.items()) if isinstance(value, Mapping) else list(value)
    pairs: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            name, path = split_spec(item)
        else:
            name, path = item
        path = str(path)
        name = name or default_name(path)
        check_name(name)
        if any(name == n for n, _ in pairs):
            raise LoadError(
                f"--adapter {name}: given twice",
                "each adapter needs a name of its own (-m MODEL:NAME)",
                ["--adapter one=PATH1 --adapter two=PATH2"],
            )
        pairs.append((name, path))
    return tuple(pairs)


def default_name(path: str) -> str:
    """The name an adapter gets when none is given: its folder's or file's name, with the
    characters `-m BASE:NAME` cannot hold replaced."""
    stem = Path(path.rstrip("/")).name.removesuffix(".gguf") or "adapter"
    name = re.sub(r"[^\w.\-]", "_", stem)
    return name if _NAME.match(name) and name != BASE else f"adapter_{name}"


def check_name(name: str, model: str = "MODEL") -> None:
    """Refuse a name `-m MODEL:NAME` could not call."""
    if name == BASE:
        raise LoadError(
            f"--adapter {name}=...: '{BASE}' is taken",
            f"-m {model}:{BASE} means the model with its adapters switched off",
            ["--adapter NAME=PATH with another name, e.g. --adapter tuned=PATH"],
        )
    if not _NAME.match(name):
        raise LoadError(
            f"--adapter {name}=...: not a name -m {model}:NAME can use",
            "a name is letters, digits, _, - and . (no colon, no space)",
            ["--adapter tuned=PATH"],
        )


def resolve_adapter(name: str | None, path: str) -> AdapterSource:
    """The adapter at PATH (a PEFT folder or a GGUF LoRA file), named NAME or after PATH."""
    where = Path(path).expanduser()
    name = name or default_name(path)
    check_name(name)
    if not where.exists():
        raise _missing(path, where)
    if where.is_dir():
        return _peft(name, where.absolute())
    if where.suffix == ".gguf":
        return _gguf(name, where.absolute())
    raise LoadError(
        f"--adapter {path}: not an adapter",
        "an adapter is a folder written by PeftModel.save_pretrained (adapter_config.json "
        "and adapter_model.safetensors), or a GGUF LoRA file for --engine llama.cpp",
        [f"the folder that holds it: --adapter {where.parent}"],
    )


def _missing(text: str, path: Path) -> LoadError:
    parent = nearest_existing(path)
    near = visible_files(parent)[:8] if parent.is_dir() else []
    return LoadError(
        f"--adapter {text}: no such file or folder",
        "the path does not exist",
        [f"nearest existing folder: {parent}" + (f" (holds: {', '.join(near)})" if near else "")],
    )


# --- PEFT folders --------------------------------------------------------------------


def _peft(name: str, folder: Path) -> AdapterSource:
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise _not_an_adapter_folder(folder)
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise LoadError(
            f"{config_file}: unreadable",
            f"{type(e).__name__}: {e}",
            ["write it again: PeftModel.save_pretrained(FOLDER)"],
        ) from e
    if not isinstance(config, dict):
        raise LoadError(f"{config_file}: not a PEFT config (a JSON object is expected)")
    method = str(config.get("peft_type") or "?").upper()
    if method in _PROMPT_METHODS:
        raise LoadError(
            f"{folder.name}: a {method} adapter cannot ride on a loaded model",
            f"{method} learns virtual prompt tokens; only adapters that add weights to "
            "layers (LoRA, IA³, LoHa, LoKr, ...) can be switched on and off on a loaded model",
            ["load it with peft itself: PeftModel.from_pretrained(handle.model, FOLDER)"],
        )
    weights = next(
        (
            folder / f
            for f in ("adapter_model.safetensors", "adapter_model.bin")
            if (folder / f).is_file()
        ),
        None,
    )
    if weights is None:
        raise LoadError(
            f"{folder.name}: adapter_config.json but no weights",
            "an adapter folder holds adapter_model.safetensors (or adapter_model.bin) "
            "beside its config",
            [
                f"files there: {', '.join(visible_files(folder)[:8])}",
                "save it again: PeftModel.save_pretrained(FOLDER)",
            ],
        )
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    modules: list[str] = []
    if weights.suffix == ".safetensors":
        shapes, modules = _peft_shapes(weights)
    rank = config.get("r") if isinstance(config.get("r"), int) else None
    _check_rank(folder.name, rank, config.get("rank_pattern") or {}, shapes)
    if rank is None and shapes:
        rank = next(iter(shapes.values()))[0][0]
    alpha = config.get("lora_alpha")
    return AdapterSource(
        name=name,
        path=str(folder),
        format="peft",
        method=method,
        rank=rank,
        alpha=float(alpha) if isinstance(alpha, (int, float)) else None,
        modules=tuple(modules) or _config_targets(config),
        base_model=config.get("base_model_name_or_path") or None,
        weights=str(weights),
        size_bytes=weights.stat().st_size,
        shapes=shapes,
    )


# PEFT methods that learn prompt tokens rather than weights inside layers.
_PROMPT_METHODS = {
    "PROMPT_TUNING",
    "P_TUNING",
    "PREFIX_TUNING",
    "MULTITASK_PROMPT_TUNING",
    "ADAPTION_PROMPT",
    "CPT",
}


def _not_an_adapter_folder(folder: Path) -> LoadError:
    files = visible_files(folder)
    if "config.json" in files:
        return LoadError(
            f"{folder.name}: a model folder, not an adapter",
            "it has config.json (a whole model) and no adapter_config.json",
            [
                f"load it as a model: %llm_load {folder}",
                "an adapter folder holds adapter_config.json and adapter_model.safetensors "
                "(PeftModel.save_pretrained writes them)",
            ],
        )
    return LoadError(
        f"{folder.name}: no adapter_config.json",
        "a PEFT adapter folder holds adapter_config.json beside adapter_model.safetensors",
        [
            f"files there: {', '.join(files[:8])}" if files else "the folder is empty",
            "save the adapter with PeftModel.save_pretrained(FOLDER): it writes both",
        ],
    )


def _peft_shapes(
    weights: Path,
) -> tuple[dict[str, tuple[tuple[int, ...], tuple[int, ...]]], list[str]]:
    """LoRA's (A, B) shapes by module (the model's own module path), and every adapted
    module in file order, from the safetensors header."""
    from .sizing import read_safetensors_header

    try:
        table, _ = read_safetensors_header(weights)
    except (OSError, ValueError) as e:
        raise LoadError(
            f"{weights.parent.name}: {weights.name} is damaged",
            str(e),
            ["save the adapter again: PeftModel.save_pretrained(FOLDER)"],
        ) from e
    halves: dict[str, dict[str, tuple[int, ...]]] = {}
    modules: dict[str, None] = {}
    for key, entry in table.items():
        if key == "__metadata__":
            continue
        bare = key.removeprefix(_PEFT_PREFIX)
        found = _PEFT_LORA.match(bare)
        module = found["module"] if found else bare.rsplit(".", 1)[0]
        modules.setdefault(module, None)
        if found:
            halves.setdefault(module, {})[found["ab"]] = tuple(entry["shape"])
    shapes = {m: (h["A"], h["B"]) for m, h in halves.items() if "A" in h and "B" in h}
    return shapes, list(modules)


def _config_targets(config: Mapping[str, Any]) -> tuple[str, ...]:
    targets = config.get("target_modules")
    if isinstance(targets, str):
        return (targets,)
    return tuple(sorted(str(t) for t in targets or ()))


def _check_rank(
    label: str,
    rank: int | None,
    pattern: Mapping[str, Any],
    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
) -> None:
    """The weights must have the config's rank, and A and B must agree on it: a config
    saved with other weights would load into layers of the wrong size."""
    for module, (a, b) in shapes.items():
        inner = (a[0] if a else None, b[-1] if b else None)
        if inner[0] != inner[1]:
            raise LoadError(
                f"{label}: the LoRA weights of {module} do not agree on a rank",
                f"lora_A is {' × '.join(map(str, a))} and lora_B {' × '.join(map(str, b))}: "
                "A's rows and B's columns are the rank and must be equal",
                ["the file is damaged or was edited: save the adapter again"],
            )
        if rank is not None and not pattern and inner[0] != rank:
            raise LoadError(
                f"{label}: rank mismatch — adapter_config.json says r={rank}, "
                f"the weights have rank {inner[0]}",
                f"{module}.lora_A is {' × '.join(map(str, a))}: its first dimension is the rank",
                [
                    "the config and the weights come from different saves: save the adapter "
                    "again with PeftModel.save_pretrained(FOLDER)",
                    f'or set "r": {inner[0]} in adapter_config.json if the weights are the ones '
                    "you mean",
                ],
            )


# --- GGUF LoRA files -----------------------------------------------------------------


def _gguf(name: str, path: Path) -> AdapterSource:
    try:
        from gguf import GGUFReader
    except ImportError:
        raise LoadError(
            f"--adapter {path.name}: reading a GGUF LoRA needs the gguf package",
            fixes=['pip install "llm_magic[llama-cpp]"  (or: pip install gguf)'],
        ) from None
    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise LoadError(
            f"{path.name}: not a readable GGUF file",
            f"{type(e).__name__}: {e}",
            ["check the file: it may be truncated"],
        ) from e
    meta = {key: _field_value(f) for key, f in reader.fields.items() if not key.startswith("GGUF.")}
    kind, adapter_type = meta.get("general.type"), meta.get("adapter.type")
    if kind != "adapter" or adapter_type != "lora":
        raise LoadError(
            f"{path.name}: a GGUF model, not a LoRA adapter",
            f"its general.type is {kind or 'not set (a model)'}; a LoRA file says "
            "general.type = adapter and adapter.type = lora",
            [
                f"load it as a model: %llm_load {path} --engine llama.cpp",
                "make a GGUF LoRA from a PEFT folder with llama.cpp's "
                "convert_lora_to_gguf.py FOLDER --base BASE_MODEL_FOLDER",
            ],
        )
    halves: dict[str, dict[str, tuple[int, ...]]] = {}
    for tensor in reader.tensors:
        found = _GGUF_LORA.match(tensor.name)
        if found:  # the reader gives ggml's order (innermost first): numpy's is reversed
            shape = tuple(int(n) for n in reversed(list(tensor.shape)))
            halves.setdefault(found["module"], {})[found["ab"]] = shape
    shapes = {m: (h["a"], h["b"]) for m, h in halves.items() if "a" in h and "b" in h}
    _check_rank(path.name, None, {}, shapes)
    alpha = meta.get("adapter.lora.alpha")
    rank = next(iter(shapes.values()))[0][0] if shapes else None
    return AdapterSource(
        name=name,
        path=str(path),
        format="gguf",
        method="LORA",
        rank=rank,
        alpha=float(alpha) if isinstance(alpha, (int, float)) else None,
        modules=tuple(shapes),
        base_model=meta.get("general.base_model.0.name") or None,
        weights=str(path),
        size_bytes=path.stat().st_size,
        shapes=shapes,
        architecture=meta.get("general.architecture"),
    )


def _field_value(f: Any) -> Any:
    """A GGUF header field's value: a string, a number, or None for arrays."""
    try:
        if len(f.types) != 1:
            return None
        part = f.parts[f.data[0]]
        if f.types[0].name == "STRING":
            return bytes(part).decode("utf-8", "replace")
        return part.tolist()[0]
    except (IndexError, AttributeError, TypeError):
        return None
