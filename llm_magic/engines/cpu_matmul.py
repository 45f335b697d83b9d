"""Batched matrix products for bf16/fp16 weights on CPUs that only emulate them.

Why: without avx512_bf16/AMX (bf16) or avx512_fp16/AMX (fp16), torch multiplies
half-precision matrices of many rows (a batch being decoded, its prompts being read) in
an emulated, compute-bound kernel: on AVX2, SmolLM2-135M decodes 8 rows at once barely
2x faster than one at a time, and reads a batch of prompts 5x slower than in float32.

For `--over` runs, each such `nn.Linear` is switched to fbgemm's fp16 GEMM (AVX2: reads
half-precision weights, multiplies and sums in float32) over a packed copy of its weight.
The arithmetic is the native kernel's: half-precision inputs, float32 sums, the output
rounded once to the model's dtype; the order of the sums differs, as between any two
kernels. fp16 holds every bf16 weight from 2^-14 to 65504 exactly (bf16 has fewer
mantissa bits); smaller ones become fp16 subnormals, off by at most 2^-25 (3e-8), far
below the bf16 step of any weight that moves an output. A layer with a weight past
65504 (fp16's largest) stays native. Measured here: 8-row products 4x faster, 300-row ones 10x.

The cost: packing takes ~13 ns a weight (2 s for 135M weights on 2 cores), so the packed
copy (the size of the weights) is made at the first `--over` run and kept with the cached
model, counted in its memory, until it is unloaded; it is made only when it fits in half
the free RAM and in the cache's memory budget.

One prompt at a time is never switched: it is as fast on the native kernel, and its
text stays token for token what plain `model.generate` gives.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..hardware import Hardware, free_ram_bytes

PACK_SHARE_OF_FREE_RAM = 0.5  # pack only when the copy takes at most this share of free RAM


def emulated(hw: Hardware, device_type: str, dtype: str) -> bool:
    """Whether matrix products in `dtype` on this device run in an emulated CPU kernel."""
    if device_type != "cpu":
        return False
    if dtype == "bfloat16":
        return not hw.cpu_native_bf16
    if dtype == "float16":
        return not hw.cpu_flags & {"avx512_fp16", "amx_fp16"}
    return False


@dataclass(eq=False)
class PackedWeights:
    """Packed copies of a model's half-precision CPU linear layers, by layer name."""

    layers: dict[str, Any]
    nbytes: int
    seconds: float  # to pack them
    kept_native: int  # layers with a weight past fp16's range
    dtype: str
    stamps: dict[str, tuple[int, int]]  # each weight's (address, version) when packed

    def current(self, model) -> bool:
        """Whether the model's weights are still the ones packed: an in-place edit (a
        fine-tuning step, load_state_dict) or a new tensor makes the copy stale."""
        return _stamps(model, self.stamps) == self.stamps

    def note(self) -> str:
        kept = (
            f"; {self.kept_native} layers kept native (weights past fp16's range)"
            if self.kept_native
            else ""
        )
        return (
            f"{self.dtype} is emulated on this CPU: {len(self.layers)} layers multiplied by "
            f"fbgemm's fp16 GEMM over weights packed once for batches ({self.seconds:.1f} s, "
            f"{self.nbytes / 1e6:.0f} MB, "
            f"kept with the model until it is unloaded){kept}"
        )


def pack(model, room_bytes: int | None = None) -> PackedWeights | None:
    """The packed copies of `model`'s half-precision CPU `nn.Linear`s, or None when there
    is nothing to pack, no fbgemm, or no room: more than `room_bytes` (when given) or more
    than half the free RAM."""
    import torch

    if not _fbgemm_fp16_available():
        return None
    layers = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and m.weight.dtype in (torch.bfloat16, torch.float16)
        and m.weight.device.type == "cpu"
        and "forward" not in vars(m)  # already wrapped (accelerate hooks): leave it
    }
    nbytes = sum(m.weight.numel() * 2 for m in layers.values())
    free = free_ram_bytes()
    if (
        not layers
        or (room_bytes is not None and nbytes > room_bytes)
        or (free is not None and nbytes > PACK_SHARE_OF_FREE_RAM * free)
    ):
        return None
    started = time.perf_counter()
    pool = ThreadPoolExecutor(max(1, torch.get_num_threads()))  # packing releases the GIL
    try:
        packed = dict(zip(layers, pool.map(_pack_if_in_range, layers.values()), strict=True))
    finally:  # on Ctrl-C: the layers not started yet are dropped, not waited for
        pool.shutdown(wait=True, cancel_futures=True)
    fits = {name: p for name, p in packed.items() if p is not None}
    if not fits:
        return None
    dtype = str(next(iter(layers.values())).weight.dtype).removeprefix("torch.")
    return PackedWeights(
        fits,
        sum(layers[n].weight.numel() * 2 for n in fits),
        time.perf_counter() - started,
        len(layers) - len(fits),
        dtype,
        _stamps(model, fits),
    )


def _stamps(model, names) -> dict[str, tuple[int, int]]:
    stamps = {}
    for name in names:
        try:
            weight = model.get_submodule(name).weight
        except AttributeError:  # the layer is gone
            continue
        try:
            version = weight._version
        except RuntimeError:  # a tensor made under inference_mode keeps no version counter
            version = -1
        stamps[name] = (weight.data_ptr(), version)
    return stamps


@contextlib.contextmanager
def packed_products(model, packed: PackedWeights | None) -> Iterator[None]:
    """Within the block, the packed layers of `model` multiply through fbgemm's fp16 GEMM.

    The switch is an instance attribute (`layer.forward`) removed on exit, so the model
    object is left as it was, also when the block raises or is interrupted.
    """
    switched = []
    try:
        for name, weights in packed.layers.items() if packed is not None else ():
            layer = model.get_submodule(name)
            switched.append(layer)
            layer.forward = functools.partial(_packed_forward, layer, weights)
        yield
    finally:
        for layer in switched:
            vars(layer).pop("forward", None)


@functools.cache
def _fbgemm_fp16_available() -> bool:
    import torch

    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
        torch.ops.quantized, "linear_prepack_fp16"
    )


def _pack_if_in_range(layer) -> Any:
    """fbgemm's packed fp16 copy of the layer, or None when a weight is past fp16's range."""
    import torch

    w = layer.weight.detach()
    if w.dtype != torch.float16 and float(w.abs().amax()) > torch.finfo(torch.float16).max:
        return None
    bias = None if layer.bias is None else layer.bias.detach().float()
    return torch.ops.quantized.linear_prepack_fp16(w.float(), bias)


def _packed_forward(layer: Any, packed: Any, x: Any) -> Any:
    import torch
    import torch.nn.functional as F

    # The packed copy is for inference: anything needing gradients takes the native path.
    if torch.is_grad_enabled() or x.dtype != layer.weight.dtype or x.shape[-1] == 0:
        return F.linear(x, layer.weight, layer.bias)
    y = torch.ops.quantized.linear_dynamic_fp16(x.reshape(-1, x.shape[-1]).float(), packed)
    return y.to(x.dtype).reshape(*x.shape[:-1], y.shape[-1])
