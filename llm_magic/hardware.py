"""Probe the machine into plain data, and the dtype policy that reads it.

`choose_dtype` is a pure function of (hardware facts, checkpoint dtype, request) so that
every branch can be tested on a CPU-only machine with the facts given as data.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DTYPE_ALIASES = {
    "auto": "auto",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}
DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    capability: tuple[int, int]
    total_bytes: int

    @property
    def native_bf16(self) -> bool:
        # torch.cuda.is_bf16_supported() says True on T4/V100 through emulation:
        # Ampere (8.0) is where bf16 tensor cores start.
        return self.capability >= (8, 0)


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPU, ...] = ()
    mps: bool = False
    cuda_built: bool = False
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    machine: str = ""

    @property
    def cpu_native_bf16(self) -> bool:
        return bool(self.cpu_flags & {"avx512_bf16", "amx_bf16", "bf16"})

    @property
    def cpu_fast_half_kernels(self) -> bool:
        """Whether half-precision weights decode faster than fp32 on this CPU.

        Measured on AVX2 without native bf16 (bench/): batch-1 decode is memory-bound,
        and bf16 weights, read at half the bytes, decode 1.2-1.5x faster than fp32;
        compute-bound work (long prompts) is 3-5x faster in fp32 there; `--over` batches
        get fast products from cpu_matmul instead.
        """
        return self.cpu_native_bf16 or "avx2" in self.cpu_flags


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str
    reason: str
    warning: str | None = None


def normalize_dtype(name: str) -> str:
    """'bf16' -> 'bfloat16'; an unknown name raises ValueError listing the choices."""
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPE_ALIASES:
        raise ValueError(
            f"unknown dtype {name!r}: choose one of {', '.join(DTYPE_CHOICES)} "
            "(aliases bf16, fp16, fp32)"
        )
    return DTYPE_ALIASES[key]


def target_kind(hw: Hardware, device_map: str | Mapping[str, Any] | None) -> str:
    """Which kind of device the weights will mostly live on: 'cuda', 'mps' or 'cpu'."""
    if isinstance(device_map, Mapping):
        values = {str(v) for v in device_map.values()}
        if any(v.isdigit() or v.startswith("cuda") for v in values):
            return "cuda"
        return "mps" if "mps" in values else "cpu"
    dm = (device_map or "auto").lower()
    if dm.startswith("cuda") or dm.isdigit():
        return "cuda"
    if dm == "mps":
        return "mps"
    if dm in ("auto", "balanced", "balanced_low_0", "sequential"):
        if hw.gpus:
            return "cuda"
        return "mps" if hw.mps else "cpu"
    return "cpu"


def choose_dtype(
    hw: Hardware,
    checkpoint_dtype: str | None,
    requested: str = "auto",
    device_map: str | Mapping[str, Any] | None = "auto",
) -> DtypeChoice:
    """The dtype to load with, and why. `requested` wins over the policy, with a warning
    when the hardware runs it badly."""
    requested = normalize_dtype(requested)
    kind = target_kind(hw, device_map)
    gpu = hw.gpus[0] if hw.gpus else None
    if requested != "auto":
        return DtypeChoice(requested, "asked for", _poor_fit_warning(hw, kind, gpu, requested))

    if kind == "cuda" and gpu is not None:
        if gpu.native_bf16:
            if checkpoint_dtype == "float16":
                return DtypeChoice(
                    "bfloat16", f"{gpu.name} has native bf16; same width as the float16 checkpoint"
                )
            return DtypeChoice(
                "bfloat16",
                f"{gpu.name} (sm {gpu.capability[0]}.{gpu.capability[1]}) has native bf16",
            )
        return DtypeChoice(
            "float16",
            f"{gpu.name} (sm {gpu.capability[0]}.{gpu.capability[1]}) has no native bf16; "
            "float16 runs on its tensor cores",
        )
    if kind == "mps":
        return DtypeChoice("float16", "Apple GPU (MPS): float16 is its fast path")
    # float16 on a CPU is emulated and slow: a float16 checkpoint is cast (same width).
    cast = (
        "; cast from the float16 checkpoint (float16 is emulated on CPUs)"
        if checkpoint_dtype == "float16"
        else ""
    )
    if hw.cpu_native_bf16:
        return DtypeChoice("bfloat16", "CPU has native bf16 (AMX / AVX512-BF16)" + cast)
    if hw.cpu_fast_half_kernels:
        return DtypeChoice(
            "bfloat16",
            "no native bf16 on this CPU, but one-prompt decoding is memory-bound "
            "and bf16 reads half the bytes: "
            "1.2-1.5x fp32's tokens/s on AVX2; long prompts run faster with --dtype float32" + cast,
        )
    widened = (
        f"; widened from the checkpoint's {checkpoint_dtype}"
        if checkpoint_dtype in ("bfloat16", "float16")
        else ""
    )
    return DtypeChoice("float32", "CPU has no fast half-precision kernels" + widened)


def _poor_fit_warning(hw: Hardware, kind: str, gpu: GPU | None, dtype: str) -> str | None:
    if kind == "cpu" and dtype == "float16":
        return "float16 on CPU is emulated and slow: use bfloat16 or float32"
    if kind == "cpu" and dtype == "bfloat16" and not hw.cpu_fast_half_kernels:
        return "bfloat16 is emulated on this CPU and runs slower than float32"
    if kind == "cuda" and gpu is not None and dtype == "bfloat16" and not gpu.native_bf16:
        return f"bfloat16 is emulated on {gpu.name} (below sm 8.0): use float16"
    if kind == "mps" and dtype == "bfloat16":
        return "bfloat16 on MPS needs macOS 14+ and runs slower than float16"
    return None


_assumed: list[Hardware] = []  # facts given by `assume`, innermost last


def probe() -> Hardware:
    """The machine's facts (or those given to `assume`); cached, since they do not change
    within a process."""
    return _assumed[-1] if _assumed else _probe_host()


@contextlib.contextmanager
def assume(facts: Hardware):
    """Within the block, every choice llm_magic makes from the hardware (the dtype, packed
    products for batches, the fit check's target) reads `facts` instead of this machine's.

    Why: so each hardware-chosen path can be run, and tested, on any machine, with the
    facts given as data. Only the choices change: the work still runs on this machine's
    devices (assuming a GPU does not give torch one).
    """
    _assumed.append(facts)
    try:
        yield facts
    finally:
        _assumed.pop()


@functools.cache
def _probe_host() -> Hardware:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(GPU(i, props.name, (props.major, props.minor), props.total_memory))
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return Hardware(
        gpus=tuple(gpus),
        mps=mps,
        cuda_built=torch.version.cuda is not None,
        cpu_flags=frozenset(_cpu_flags()),
        machine=platform.machine(),
    )


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return {"bf16"} if _darwin_has_bf16() else set()
    return set()


def _darwin_has_bf16() -> bool:
    try:
        import subprocess

        out = subprocess.run(
            ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=2
        )
        return out.stdout.strip() == "1"
    except (OSError, subprocess.SubprocessError):
        return False


def free_ram_bytes() -> int | None:
    """Available RAM (MemAvailable on Linux), or None where it can't be read cheaply."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# ------------------------------------------------------------------ memory, as it is now


def process_rss_bytes() -> int | None:
    """This process's resident set size (Linux /proc; None where it can't be read cheaply)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def free_gpu_bytes() -> dict[str, int]:
    """'cuda:N' -> bytes free for this process: the driver's free memory plus what torch's
    caching allocator holds reserved but unused (it hands that out first)."""
    import sys

    # Probing imports torch; without torch imported yet and no GPU, skip the CUDA calls.
    if "torch" not in sys.modules and not _probe_host().gpus:
        return {}
    import torch

    if not torch.cuda.is_available():
        return {}
    free = {}
    for i in range(torch.cuda.device_count()):
        driver_free, _total = torch.cuda.mem_get_info(i)
        spare = torch.cuda.memory_reserved(i) - torch.cuda.memory_allocated(i)
        free[f"cuda:{i}"] = int(driver_free + max(spare, 0))
    return free


def cuda_memory() -> dict[str, tuple[int, int]]:
    """'cuda:N' -> (allocated, reserved) by torch in this process; {} without CUDA in use.
    Never initialises CUDA just to answer."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {
        f"cuda:{i}": (int(torch.cuda.memory_allocated(i)), int(torch.cuda.memory_reserved(i)))
        for i in range(torch.cuda.device_count())
    }


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads of one core count once):
    llama.cpp decodes fastest with one thread per physical core."""
    allowed = (
        set(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else set(range(os.cpu_count() or 1))
    )
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            block: dict[str, str] = {}
            for line in [*f, ""]:
                key, _, value = line.partition(":")
                if key.strip():
                    block[key.strip()] = value.strip()
                    continue
                if block.get("processor", "").isdigit() and int(block["processor"]) in allowed:
                    cores.add(
                        (block.get("physical id", "0"), block.get("core id", block["processor"]))
                    )
                block = {}
    except OSError:
        pass
    return len(cores) or len(allowed) or 1
