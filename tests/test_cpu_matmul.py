"""Batched products for half-precision weights on CPUs that emulate them: when they are
used, that they compute what the native kernel computes, and that the model is left as it
was. Real nn.Linear layers, real SmolLM2 for the end-to-end run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from IPython.utils.capture import capture_output

import llm_magic
from llm_magic import hardware
from llm_magic.engines import cpu_matmul
from llm_magic.hardware import Hardware

AVX2 = Hardware(cpu_flags=frozenset({"avx2", "fma"}))
SAPPHIRE_RAPIDS = Hardware(
    cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"})
)
FBGEMM = cpu_matmul._fbgemm_fp16_available()


@pytest.mark.parametrize(
    "hw, device, dtype, expected",
    [
        (AVX2, "cpu", "bfloat16", True),
        (AVX2, "cpu", "float16", True),
        (AVX2, "cpu", "float32", False),
        (SAPPHIRE_RAPIDS, "cpu", "bfloat16", False),
        (SAPPHIRE_RAPIDS, "cpu", "float16", False),
        (AVX2, "cuda", "bfloat16", False),
        (AVX2, "mps", "float16", False),
    ],
)
def test_which_products_are_emulated(hw, device, dtype, expected):
    assert cpu_matmul.emulated(hw, device, dtype) is expected


def small_model(dtype=torch.bfloat16) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(96, 160), torch.nn.GELU(), torch.nn.Linear(160, 48, bias=False)
    ).to(dtype)


def run_packed(model, x, packed=None):
    packed = packed or cpu_matmul.pack(model)
    with torch.inference_mode(), cpu_matmul.packed_products(model, packed):
        return model(x), packed


@pytest.mark.skipif(
    not FBGEMM, reason="this torch build has no fbgemm fp16 GEMM: nothing is packed (tested below)"
)
@pytest.mark.parametrize("rows", [1, 8, 300])
def test_packed_products_compute_what_the_native_kernel_computes(rows):
    model = small_model()
    x = torch.randn(2, rows, 96).to(torch.bfloat16)
    with torch.inference_mode():
        native = model(x)
        native_first = model[0](x)
    packed_out, packed = run_packed(model, x)
    assert set(packed.layers) == {"0", "2"} and packed.kept_native == 0
    assert packed.nbytes == (96 * 160 + 160 * 48) * 2
    assert "2 layers multiplied by fbgemm's fp16 GEMM" in packed.note()
    assert packed_out.dtype == torch.bfloat16 and packed_out.shape == native.shape == (2, rows, 48)
    # One layer: the same arithmetic in another summation order, so the outputs differ at
    # most by the last bf16 step, and rarely.
    first, _ = run_packed(model[0], x, cpu_matmul.pack(model[0]))
    apart = (first.float() - native_first.float()).abs()
    assert bool((apart <= native_first.float().abs() * 2**-7 + 1e-6).all())
    assert float((apart > 0).float().mean()) < 0.05
    # The whole model: close to the exact product (float64, rounded like the model between layers).
    hidden = F.gelu(
        F.linear(x.double(), model[0].weight.double(), model[0].bias.double()).to(torch.bfloat16)
    )
    exact = F.linear(hidden.double(), model[2].weight.double())
    assert torch.allclose(packed_out.double(), exact, rtol=2e-2, atol=2e-2)
    assert torch.allclose(native.double(), exact, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not FBGEMM, reason="this torch build has no fbgemm fp16 GEMM")
def test_the_model_is_left_as_it_was_also_after_an_error():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    packed = cpu_matmul.pack(model)
    with pytest.raises(RuntimeError, match="inside"):
        with cpu_matmul.packed_products(model, packed):
            assert all("forward" in vars(m) for m in model if isinstance(m, torch.nn.Linear))
            raise RuntimeError("inside the block")
    assert not any("forward" in vars(m) for m in model.modules())
    after = model.state_dict()
    assert all(
        torch.equal(before[k], after[k]) and after[k].dtype == torch.bfloat16 for k in before
    )


@pytest.mark.skipif(not FBGEMM, reason="this torch build has no fbgemm fp16 GEMM")
def test_trained_like_weights_with_tiny_values_are_packed_and_stay_close():
    # Trained bf16 weights (std ~0.02) hold values below fp16's normal range (2^-14):
    # they become fp16 subnormals, off by at most 2^-25.
    torch.manual_seed(1)
    layer = torch.nn.Linear(512, 256, bias=False)
    with torch.no_grad():
        layer.weight.normal_(0, 0.02)
        layer.weight[0, :4] = torch.tensor([1e-7, -3e-6, 2e-5, 6e-5])
    layer = layer.to(torch.bfloat16)
    w = layer.weight.detach()
    assert bool(((w != 0) & (w.abs() < 2**-14)).any())
    assert float((w.to(torch.float16).float() - w.float()).abs().max()) <= 2**-25
    x = torch.randn(8, 512).to(torch.bfloat16)
    with torch.inference_mode():
        native = layer(x)
    out, packed = run_packed(layer, x)
    assert packed is not None and len(packed.layers) == 1
    apart = (out.float() - native.float()).abs()
    assert bool((apart <= native.float().abs() * 2**-7 + 1e-6).all())


@pytest.mark.skipif(not FBGEMM, reason="this torch build has no fbgemm fp16 GEMM")
def test_with_gradients_the_native_kernel_runs():
    model = small_model()
    x = torch.randn(8, 96).to(torch.bfloat16)
    with cpu_matmul.packed_products(model, cpu_matmul.pack(model)):
        y = model(x)  # grad mode on: the packed copy is inference-only
    assert y.requires_grad
    with torch.no_grad():
        assert torch.equal(y.detach(), model(x))


@pytest.mark.skipif(not FBGEMM, reason="this torch build has no fbgemm fp16 GEMM")
def test_a_weight_fp16_cannot_hold_stays_native():
    model = small_model()
    with torch.no_grad():
        model[2].weight[0, 0] = 1e30  # a bf16 value far past fp16's range
    x = torch.randn(8, 96).to(torch.bfloat16)
    with torch.inference_mode():
        native = model(x)
    out, packed = run_packed(model, x)
    assert set(packed.layers) == {"0"} and packed.kept_native == 1
    assert "1 layers multiplied" in packed.note() and "1 layers kept native" in packed.note()
    assert torch.isfinite(out).all() and torch.allclose(
        out.float(), native.float(), rtol=2e-2, atol=2e-2
    )


@pytest.mark.skipif(not FBGEMM, reason="this torch build has no fbgemm fp16 GEMM")
def test_a_packed_copy_knows_when_the_weights_changed():
    model = small_model()
    packed = cpu_matmul.pack(model)
    assert packed.current(model)
    with torch.no_grad():
        model[0].weight.mul_(2)  # in place, as an optimizer step or load_state_dict does
    assert not packed.current(model)
    packed = cpu_matmul.pack(model)
    model[2].weight = torch.nn.Parameter(model[2].weight.detach().clone())  # a new tensor
    assert not packed.current(model)


def test_nothing_is_packed_without_half_precision_or_room(monkeypatch):
    assert cpu_matmul.pack(small_model(torch.float32)) is None  # float32: nothing emulated
    assert cpu_matmul.pack(small_model(), room_bytes=1000) is None  # over the cache's budget
    monkeypatch.setattr(
        cpu_matmul, "free_ram_bytes", lambda: 1000
    )  # a machine with no room for the copy
    assert cpu_matmul.pack(small_model()) is None
    model = small_model()
    with cpu_matmul.packed_products(model, None):
        assert not any("forward" in vars(m) for m in model.modules())


OVER_PROMPTS = [
    "The capital of France",
    "The quick brown fox",
    "Hello world! Numbers like",
    "Paris",
]


def greedy_over(model: str):
    return llm_magic.generate(
        "{item}", model=model, over=OVER_PROMPTS, namespace={}, greedy=True, max_new_tokens=12
    )


@pytest.mark.skipif(
    not FBGEMM, reason="this torch build has no fbgemm fp16 GEMM: nothing is packed (tested below)"
)
def test_batches_where_the_cpu_emulates_bf16_use_packed_weights_repacked_after_an_edit(
    tiny_varied_dir,
):
    # Facts as data: an AVX2 CPU emulates bf16, whatever CPU runs the test.
    with hardware.assume(AVX2):
        entry = llm_magic.load(str(tiny_varied_dir), dtype="bfloat16", alias="t")
        first = greedy_over("t")
        packed = entry.packed
        assert packed is not None and set(packed.layers) == {"lm_head"}  # GPT-2's only nn.Linear
        assert all(r.products == packed.note() for r in first)
        assert entry.memory_bytes == entry.info.memory_bytes + packed.nbytes

        def fresh_packing() -> list[tuple[int, ...]]:
            """The token ids a copy packed from the weights as they are now gives."""
            kept, entry.packed = entry.packed, None
            try:
                return [r.token_ids for r in greedy_over("t")]
            finally:
                entry.packed = kept

        # An in-place edit (same tensor, new version): the stale copy would give the old text.
        with torch.no_grad():
            entry.model.lm_head.weight.copy_(entry.model.lm_head.weight.roll(1, dims=0))
        edited = greedy_over("t")
        assert [r.token_ids for r in edited] != [r.token_ids for r in first]
        assert [r.token_ids for r in edited] == fresh_packing()
        assert entry.packed is not packed and entry.packed.current(entry.model)
        # A new tensor (a new address) in the layer, its version counter at the old one's.
        repacked = entry.packed
        old = entry.model.lm_head.weight
        new = torch.nn.Parameter(old.detach().roll(1, dims=0).clone())
        with torch.no_grad():
            while new._version < old._version:
                new.add_(0)
        assert new._version == old._version
        entry.model.lm_head.weight = new
        again = greedy_over("t")
        assert [r.token_ids for r in again] != [r.token_ids for r in edited]
        assert [r.token_ids for r in again] == fresh_packing()
        assert entry.packed is not repacked


def test_batches_where_the_cpu_has_native_bf16_run_the_native_kernel(tiny_varied_dir):
    with hardware.assume(SAPPHIRE_RAPIDS):
        entry = llm_magic.load(str(tiny_varied_dir), dtype="bfloat16", alias="t")
        batch = greedy_over("t")
    assert entry.packed is None and all(r.products is None for r in batch)
    assert entry.memory_bytes == entry.info.memory_bytes


@pytest.mark.slow
@pytest.mark.skipif(not FBGEMM, reason="this torch build has no fbgemm fp16 GEMM")
def test_smollm2_batches_pack_once_and_the_memory_is_counted(shell, smollm2_gguf):
    with hardware.assume(
        AVX2
    ):  # a CPU that emulates bf16, as data: the packed path runs on any machine
        _smollm2_batches_pack_once(shell, smollm2_gguf)


def _smollm2_batches_pack_once(shell, smollm2_gguf):
    shell.run_line_magic("llm_load", f"{smollm2_gguf} --as smol --dtype bfloat16 --quiet")
    entry = llm_magic.MODEL_CACHE.find("smol")
    batch = llm_magic.generate(
        "What is the capital of {item}?",
        model="smol",
        over=["France", "Japan", "Italy"],
        namespace={},
        greedy=True,
        max_new_tokens=8,
    )
    single = llm_magic.generate(
        "What is the capital of France?", model="smol", greedy=True, max_new_tokens=8
    )
    assert "Paris" in batch[0].text and "Tokyo" in batch[1].text
    assert single.products is None  # one prompt: always the native kernel
    assert not any("forward" in vars(m) for m in entry.model.modules())
    packed = entry.packed
    assert (
        packed is not None and len(packed.layers) == 211 and packed.kept_native == 0
    )  # 30 layers x 7 + lm_head
    assert (
        all(r.products == packed.note() for r in batch)
        and batch[0].metadata()["products"] == packed.note()
    )
    assert entry.memory_bytes == entry.info.memory_bytes + packed.nbytes
    assert llm_magic.MODEL_CACHE.total_bytes() == entry.memory_bytes
    card = llm_magic.models()
    assert card.models[0].packed_bytes == packed.nbytes and "packed for batches" in card.text()
    llm_magic.generate(
        "{item}", model="smol", over=["a", "b"], namespace={}, greedy=True, max_new_tokens=2
    )
    assert entry.packed is packed  # packed once, reused
    with torch.no_grad():
        entry.model.lm_head.weight.mul_(1)  # an in-place edit of the weights
    llm_magic.generate(
        "{item}", model="smol", over=["a", "b"], namespace={}, greedy=True, max_new_tokens=2
    )
    assert entry.packed is not packed and entry.packed.current(entry.model)  # packed again
    with capture_output():
        shell.run_line_magic("llm_unload", "smol")
    assert len(llm_magic.MODEL_CACHE) == 0
