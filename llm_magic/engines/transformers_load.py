"""How the transformers engine loads: MODEL resolved to files, the dtype the hardware
policy picks, the size read from the file headers, then `from_pretrained`."""

from __future__ import annotations

import importlib.util

from .. import hardware, loading, sizing
from ..cache import LoadedModel
from ..display import LoadCard
from ..errors import LoadError
from ..gguf_cache import usable_copy
from ..loading import QUANTIZE_CHOICES, Source
from .base import CacheKey, Loaded, LoadOptions, LoadReport, Plan, Progress
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
        source = loading.resolve_source(name, options.revision)
        checkpoint = loading.checkpoint_dtype(source.path if source.kind != "gguf" else None)
        choice = hardware.choose_dtype(hardware.probe(), checkpoint, requested, options.device_map)
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
        model, tokenizer, info, notes = loading.load_model(
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
            plan.key = _key(
                loading.resolve_source(source.name, options.revision), info.dtype, options
            )
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
    from .. import decode_speed
    from . import llama_cpp

    if entry.info.kind != "gguf" or not llama_cpp.available():
        return ()
    return (("llama.cpp", decode_speed.llama_cpp_hint(entry.key.weights, entry.info)),)
