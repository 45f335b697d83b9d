"""Before any weights are read: how many bytes will the model need, and will they fit?

The size comes from file headers only, read by each format's own library (`safetensors`,
`gguf`): a safetensors shard starts with a table of tensor names, dtypes and shapes; a
GGUF file lists its tensors' shapes before their data. No tensor data is read, so the
check is quick even for a model of many gigabytes, and a model that cannot fit fails in
seconds instead of after minutes of loading.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..units import DTYPE_BYTES, format_bytes

# Bytes per element of the safetensors dtypes; floating ones are cast to the load dtype.
_SAFETENSORS_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}
_FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}

# Room left beside the weights for activations, the KV cache and the runtime (CUDA context,
# tokenizer): a model that only just fits would fail at its first generation.
HEADROOM_FRACTION = 0.10
HEADROOM_BYTES = 128 * 1000**2


@dataclass(frozen=True)
class Estimate:
    """The bytes a model will take once loaded (parameters and persistent buffers)."""

    bytes: int
    num_params: int
    dtype: str
    source: str  # "safetensors" or "gguf"
    files: tuple[str, ...]
    # The size of the headers the estimate comes from (no tensor data is read).
    header_bytes_read: int
    conversion_bytes: int = 0  # RAM a not-yet-converted .gguf takes while it is converted (fp32)

    @property
    def needed(self) -> int:
        """Weights plus headroom: what must be free for the load and a first generation."""
        return self.bytes + headroom(self.bytes)


def headroom(weights: int) -> int:
    return int(weights * HEADROOM_FRACTION) + HEADROOM_BYTES


def parse_bytes(value: int | float | str | None) -> int:
    """8_000_000_000, "8GB", "8 GiB", "512MB" -> bytes; 0, None or "" -> 0 (no limit)."""
    if value is None or value == "":
        return 0
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a size can't be negative: {value}")
        return int(value)
    match = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)(i?)b?\s*", str(value).lower())
    if not match:
        raise ValueError(f"not a size: {value!r} (write e.g. 8GB, 512MB or a number of bytes)")
    number, prefix, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** " kmgt".index(prefix or " "))


def estimate_safetensors(folder: str | Path, dtype: str) -> Estimate | None:
    """The size of a `save_pretrained` folder's weights at `dtype`, from its shard headers;
    None when the folder holds no safetensors files (e.g. only pytorch_model.bin)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        shards = [folder / n for n in names]
    else:
        shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        return None
    width = DTYPE_BYTES[dtype]
    total = params = read = 0
    for shard in shards:
        header, n = read_safetensors_header(shard)
        read += n
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = _product(entry["shape"])
            params += count
            kind = entry["dtype"]
            total += count * (width if kind in _FLOATING else _SAFETENSORS_BYTES.get(kind, 4))
    return Estimate(total, params, dtype, "safetensors", tuple(str(s) for s in shards), read)


def read_safetensors_header(path: str | Path) -> tuple[dict, int]:
    """The tensor table of a safetensors file ({name: {"dtype", "shape"}}, plus
    "__metadata__") and the size of its header, through the safetensors library.

    `safe_open` memory-maps the file and parses only the header; no tensor data is read.
    It refuses a damaged or truncated file outright (it checks that the tensors cover the
    file exactly), raised here as ValueError carrying the library's reason."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            table: dict = {"__metadata__": f.metadata() or {}}
            for name in f.keys():
                tensor = f.get_slice(name)
                table[name] = {"dtype": tensor.get_dtype(), "shape": tensor.get_shape()}
    except SafetensorError as e:
        raise ValueError(f"{path}: {e}") from e
    # The data fills the file after the header (the library checked it): what precedes
    # the data is the header.
    data = sum(
        _product(v["shape"]) * _SAFETENSORS_BYTES.get(v["dtype"], 0)
        for k, v in table.items()
        if k != "__metadata__"
    )
    return table, Path(path).stat().st_size - data


def estimate_gguf(path: str | Path, dtype: str) -> Estimate:
    """The size a .gguf will have once dequantized to `dtype` (transformers dequantizes
    every tensor on load), from the tensor table of its header."""
    params, read = read_gguf_tensor_counts(path)
    return Estimate(
        params * DTYPE_BYTES[dtype],
        params,
        dtype,
        "gguf",
        (str(path),),
        read,
        conversion_bytes=params * 4,
    )


def read_gguf_tensor_counts(path: str | Path) -> tuple[int, int]:
    """(elements in all tensors, size of the header in bytes) through the gguf package's
    reader. `GGUFReader` memory-maps the file and builds its tensor table from the header;
    no tensor data is read. It does decode every metadata value on the way (SmolLM2's
    49k-token vocabulary: about 2 s), which only a .gguf's first load pays, beside its
    conversion (tens of seconds): later loads size the converted safetensors copy."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return sum(int(t.n_elements) for t in reader.tensors), int(reader.data_offset)


class Located(Protocol):
    """Where a model's files are: what `estimate` reads of a `resolve.Source`."""

    @property
    def kind(self) -> str: ...

    @property
    def path(self) -> str | None: ...


def estimate(source: Located, dtype: str, converted: str | Path | None = None) -> Estimate | None:
    """Estimate for a `resolve.Source` at `dtype`; None where nothing local tells the size
    (a Hub id not downloaded yet, a folder of .bin files)."""
    if dtype not in DTYPE_BYTES:
        return None
    if source.path is None:
        return None
    if source.kind == "gguf":
        # After the first load the .gguf has a safetensors twin: its headers are exact.
        if converted is not None:
            return estimate_safetensors(converted, dtype)
        return estimate_gguf(source.path, dtype)
    return estimate_safetensors(source.path, dtype)


def _product(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# ---------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Fit:
    """Whether an estimated model fits the memory that is free where it will go."""

    fits: bool  # False: loading would fail or thrash (fail before loading unless forced)
    message: str  # the verdict line for the card
    offload_bytes: int = 0  # what device_map=auto will place on cpu instead of the GPU(s)


def check_fit(
    est: Estimate,
    target: str,
    free_ram: int | None,
    free_gpus: dict[str, int] | None = None,
    device_map: str | Mapping[str, Any] = "auto",
    reclaimable: dict[str, int] | None = None,
) -> Fit:
    """The verdict for `est` going to `target` ('cpu', 'cuda', 'mps').

    `free_gpus` maps 'cuda:0' -> free bytes; `reclaimable` maps a device ('cpu', 'cuda:0')
    -> bytes that models the budget unloads first will give back there.
    """
    back = reclaimable or {}
    ram = None if free_ram is None else free_ram + back.get("cpu", 0)
    need = est.needed
    weights = format_bytes(est.bytes)
    converting = est.conversion_bytes
    if converting and ram is not None and converting + headroom(converting) > ram:
        return Fit(
            False,
            f"does not fit: converting the .gguf needs {format_bytes(converting)} of RAM"
            f" (float32), {format_bytes(ram)} free",
        )
    if target in ("cpu", "mps"):
        if ram is None:
            return Fit(True, f"needs {weights}; free RAM unknown")
        if need <= ram:
            return Fit(True, f"fits on {target}: needs {weights}, {format_bytes(ram)} free")
        return Fit(False, f"does not fit: needs {_need(est)}, {format_bytes(ram)} free")

    gpus = {d: f + back.get(d, 0) for d, f in (free_gpus or {}).items()}
    if isinstance(device_map, Mapping):  # the user placed the modules: judge the total only
        total = sum(gpus.values()) + (ram or 0)
        if need <= total:
            return Fit(
                True, f"fits the given device map: needs {weights}, {format_bytes(total)} free"
            )
        return Fit(False, f"does not fit: needs {_need(est)}, {format_bytes(total)} free")
    dm = device_map.lower() if isinstance(device_map, str) else None
    wanted = _explicit_gpu(dm)
    if wanted is not None:  # one named GPU: nothing is offloaded, it fits there or not
        free = gpus.get(wanted)
        if free is None:
            return Fit(True, f"needs {weights}; free memory on {wanted} unknown")
        if need <= free:
            return Fit(True, f"fits on {wanted}: needs {weights}, {format_bytes(free)} free")
        return Fit(
            False, f"does not fit on {wanted}: needs {_need(est)}, {format_bytes(free)} free"
        )
    on_gpus = sum(gpus.values())
    names = ", ".join(gpus) or "cuda"
    if need <= on_gpus:
        return Fit(True, f"fits on {names}: needs {weights}, {format_bytes(on_gpus)} free")
    spill = need - on_gpus
    spills_to_cpu = dm in ("auto", "balanced", "balanced_low_0", "sequential")
    if spills_to_cpu and (ram is None or spill <= ram):
        return Fit(
            True,
            f"will offload {format_bytes(spill)} to cpu — generation slower"
            f" ({format_bytes(on_gpus)} free on {names})",
            spill,
        )
    total = on_gpus + (ram or 0) if spills_to_cpu else on_gpus
    return Fit(False, f"does not fit: needs {_need(est)}, {format_bytes(total)} free")


def _need(est: Estimate) -> str:
    return f"{format_bytes(est.bytes)} + {format_bytes(est.needed - est.bytes)} headroom"


def _explicit_gpu(dm: str | None) -> str | None:
    if dm is None:
        return None
    if dm == "cuda":
        return "cuda:0"
    if dm.startswith("cuda:"):
        return dm
    if dm.isdigit():
        return f"cuda:{dm}"
    return None


# ------------------------------------------------------------------ --quantize (bitsandbytes)

# Bytes per parameter of a quantized linear weight: 4-bit packs two per byte plus one fp32
# absmax per block of 64 (bitsandbytes' default, no double quantization); LLM.int8 one
# byte plus one fp32 scale per row (counted per element here: rows are long).
_QUANTIZED_BYTES = {"nf4": 0.5 + 4 / 64, "fp4": 0.5 + 4 / 64, "int8": 1.0}
# Kept at the compute dtype: embeddings and the output head (bitsandbytes converts
# nn.Linear layers only, and transformers leaves the head out), norms and biases.
_NOT_QUANTIZED = re.compile(r"(embed|wte|wpe|lm_head|output\.weight$|norm|ln_|bias$)")


def quantized(est: Estimate, quantize: str) -> Estimate:
    """`est` with the linear weights (2-D, not embeddings or the head) at the bytes
    `quantize` gives them, from the safetensors headers again (ms). An estimate from a
    .gguf not converted yet stays as it is: an overestimate, on the safe side."""
    if est.source != "safetensors":
        return est
    width = DTYPE_BYTES[est.dtype]
    saved = 0.0
    for shard in est.files:
        header, _ = read_safetensors_header(Path(shard))
        for name, entry in header.items():
            if (
                name == "__metadata__"
                or len(entry["shape"]) != 2
                or entry["dtype"] not in _FLOATING
            ):
                continue
            if _NOT_QUANTIZED.search(name):
                continue
            saved += _product(entry["shape"]) * (width - _QUANTIZED_BYTES[quantize])
    return Estimate(
        int(est.bytes - saved),
        est.num_params,
        est.dtype,
        est.source + f" ({quantize})",
        est.files,
        est.header_bytes_read,
        est.conversion_bytes,
    )
