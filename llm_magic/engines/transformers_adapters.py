"""PEFT adapters (LoRA and kin) on a loaded transformers model, through the functions
peft offers integrations (`peft.functional`, as transformers' own integration uses them):
the adapter's layers are injected into the model's modules, so the base weights are read
once and each adapter adds only its own; switching one on or off flips a flag per layer.

Before anything is injected, the adapter's shapes (read from its header) are checked
against the model's modules: an adapter made for another base model fails with a card,
the model untouched. peft is imported inside the functions (optional extra
`llm_magic[adapters]`)."""

from __future__ import annotations

import time
import warnings
from typing import Any

from ..errors import LoadError
from ..paths import short_name
from ..sources.adapter import AdapterSource
from ..units import format_bytes
from .base import AdapterInfo

INSTALL = 'pip install "llm_magic[adapters]"  (or: pip install peft)'


def missing_peft(model: str) -> LoadError:
    return LoadError(
        f"could not put an adapter on {short_name(model)}: peft is not installed",
        "transformers reads PEFT adapters (LoRA, IA³, ...) through the optional package peft",
        [INSTALL, "then restart the kernel and run the cell again"],
    )


def check_peft(model: str) -> None:
    """Refuse before anything is read when peft cannot be imported."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise missing_peft(model) from None


def attach(model: Any, source: AdapterSource, model_name: str) -> AdapterInfo:
    """Inject the adapter's layers into `model` and load its weights; on any failure the
    model is left as it was (the adapter's layers taken out again)."""
    check_peft(model_name)
    check_fits(model, source, model_name)
    from peft import PeftConfig, inject_adapter_in_model
    from peft.functional import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    started = time.perf_counter()
    config = PeftConfig.from_pretrained(source.path)
    config.inference_mode = True
    before = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    device = next(model.parameters()).device
    try:
        with warnings.catch_warnings():
            # peft warns that a second adapter makes several: that is the point here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(config, model, adapter_name=source.name)
        weights = load_peft_weights(source.path, device=str(device))
        result = set_peft_model_state_dict(model, weights, adapter_name=source.name)
        del weights
        missing = [k for k in getattr(result, "missing_keys", ()) if f".{source.name}" in k]
        if missing:
            raise LoadError(
                f"{source.name}: the weights file lacks {len(missing)} of the adapter's tensors",
                f"adapter_config.json names modules the weights do not cover, e.g. {missing[0]}",
                [
                    "the config and the weights come from different saves: save the adapter "
                    "again with PeftModel.save_pretrained(FOLDER)"
                ],
            )
    except BaseException:
        remove(model, source.name, source.method)
        raise
    added = [p for p in model.parameters() if id(p) not in before]
    added += [b for b in model.buffers() if id(b) not in before]
    return AdapterInfo(
        name=source.name,
        path=source.path,
        format="peft",
        method=source.method,
        rank=source.rank,
        alpha=source.alpha,
        kinds=source.kinds,
        modules=len(source.shapes) or len(source.modules),
        memory_bytes=sum(t.numel() * t.element_size() for t in added),
        base_model=source.base_model,
        load_seconds=time.perf_counter() - started,
    )


def remove(model: Any, name: str, method: str = "LORA") -> None:
    """Take adapter `name` out of `model`; once none is left, the wrapped modules are
    given back their own layers, so the model is the one that was loaded."""
    from peft.functional import delete_adapter
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
    from peft.tuners.tuners_utils import BaseTunerLayer

    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(method, f"{method.lower()}_")  # type: ignore[call-overload]
    if any(_holds(m, name) for m in model.modules() if isinstance(m, BaseTunerLayer)):
        delete_adapter(model, adapter_name=name, prefix=prefix)
    for path, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and not _holds(module, None):
            parent, _, child = path.rpartition(".")
            setattr(
                model.get_submodule(parent) if parent else model, child, module.get_base_layer()
            )


def _holds(layer: Any, name: str | None) -> bool:
    """Whether a peft layer holds adapter `name` (None: any adapter)."""
    for attr in layer.adapter_layer_names:
        found = getattr(layer, attr, None) or {}
        if (name in found) if name is not None else len(found):
            return True
    return False


def switch(model: Any, name: str | None) -> None:
    """Adapter `name` on (the others off); None: every adapter off (the base model)."""
    from peft.functional import set_adapter
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if name is None:
        for layer in layers:
            layer.enable_adapters(False)
        return
    for layer in layers:
        layer.enable_adapters(True)
    set_adapter(model, name, inference_mode=True)  # frozen: no gradients kept for it


def check_fits(model: Any, source: AdapterSource, model_name: str) -> None:
    """The adapter's modules must be the model's, with the sizes its LoRA weights expect:
    else it was made for another base model, and loading it would fail part-way (or, for
    a size that happens to match, give nonsense)."""
    if not source.shapes:
        return
    modules = dict(model.named_modules())
    absent = [m for m in source.shapes if m not in modules]
    if absent:
        raise _other_model(
            source,
            model,
            model_name,
            f"{len(absent)} of its "
            f"{len(source.shapes)} modules are not in the model, e.g. "
            f"{absent[0]}",
        )
    for module, (a, b) in source.shapes.items():
        sizes = _in_out(modules[module])
        if sizes is None:
            continue
        wanted = (a[-1] if a else None, b[0] if b else None)
        if wanted != sizes:
            raise _other_model(
                source,
                model,
                model_name,
                f"its {module} takes {wanted[0]} inputs and makes {wanted[1]} outputs; "
                f"the model's takes {sizes[0]} and makes {sizes[1]}",
            )


def _in_out(module: Any) -> tuple[int, int] | None:
    """(inputs, outputs) of a layer LoRA adapts: nn.Linear, transformers' Conv1D (GPT-2),
    nn.Embedding (ids in, vectors out); None for others (not checked here)."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    if hasattr(base, "in_features") and hasattr(base, "out_features"):
        return int(base.in_features), int(base.out_features)
    if type(base).__name__ == "Conv1D" and hasattr(base, "nf"):
        return int(base.weight.shape[0]), int(base.nf)
    if hasattr(base, "num_embeddings") and hasattr(base, "embedding_dim"):
        return int(base.num_embeddings), int(base.embedding_dim)
    return None


def _other_model(source: AdapterSource, model: Any, model_name: str, why: str) -> LoadError:
    named = f"; it names {source.base_model} as its base" if source.base_model else ""
    return LoadError(
        f"{source.name}: an adapter for another base model than {short_name(model_name)}",
        f"{why}{named}",
        [
            f"load the base model it was made for, then the adapter: %llm_load BASE "
            f"--adapter {source.name}={source.path}"
            if not source.base_model
            else f"%llm_load {source.base_model} --adapter {source.name}={source.path}",
            f"this model is a {type(model).__name__} "
            f"({format_bytes(model.get_memory_footprint())}); the adapter adapts "
            f"{', '.join(source.kinds[:4])}",
        ],
    )
