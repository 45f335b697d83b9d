"""The dtype policy, with hardware facts given as data so every branch runs on a CPU."""

import pytest

from llm_magic.hardware import GPU, Hardware, choose_dtype, normalize_dtype, target_kind

A100 = GPU(0, "NVIDIA A100", (8, 0), 40 << 30)
T4 = GPU(0, "Tesla T4", (7, 5), 16 << 30)
AVX2_CPU = Hardware(cpu_flags=frozenset({"avx2", "fma"}))
AMX_CPU = Hardware(cpu_flags=frozenset({"avx2", "avx512f", "amx_bf16", "avx512_bf16"}))
OLD_CPU = Hardware(cpu_flags=frozenset({"sse4_2"}))


def test_ampere_gets_bf16():
    choice = choose_dtype(Hardware(gpus=(A100,), cuda_built=True), "float32")
    assert choice.dtype == "bfloat16"
    assert "native bf16" in choice.reason and choice.warning is None


def test_float16_checkpoint_on_bf16_gpu_stays_half_width():
    choice = choose_dtype(Hardware(gpus=(A100,), cuda_built=True), "float16")
    assert choice.dtype == "bfloat16"
    assert "same width" in choice.reason


def test_pre_ampere_gets_float16_by_capability_not_is_bf16_supported():
    # torch.cuda.is_bf16_supported() is True on a T4 through emulation; the policy reads sm 7.5.
    choice = choose_dtype(Hardware(gpus=(T4,), cuda_built=True), "bfloat16")
    assert choice.dtype == "float16"
    assert "7.5" in choice.reason


def test_explicit_bf16_on_pre_ampere_wins_with_warning():
    choice = choose_dtype(Hardware(gpus=(T4,), cuda_built=True), None, "bf16")
    assert choice.dtype == "bfloat16"
    assert "emulated" in choice.warning and "float16" in choice.warning


def test_mps_gets_float16():
    assert choose_dtype(Hardware(mps=True), "float32").dtype == "float16"


def test_cpu_with_native_bf16_gets_bf16():
    choice = choose_dtype(AMX_CPU, "float32")
    assert choice.dtype == "bfloat16" and "native bf16" in choice.reason


def test_avx2_cpu_default_is_bf16_for_memory_bound_decode():
    # Measured (bench/): batch-1 decode 1.6x faster in bf16 than fp32 on AVX2 without native bf16.
    choice = choose_dtype(AVX2_CPU, "float32")
    assert choice.dtype == "bfloat16"
    assert "no native bf16" in choice.reason and "memory-bound" in choice.reason
    assert choice.warning is None


@pytest.mark.parametrize("cpu", ["AMX_CPU", "AVX2_CPU"])
def test_a_float16_checkpoint_cast_to_bf16_on_a_cpu_says_so(cpu):
    choice = choose_dtype(globals()[cpu], "float16")
    assert choice.dtype == "bfloat16" and "cast from the float16 checkpoint" in choice.reason
    assert "float16 checkpoint" not in choose_dtype(globals()[cpu], "bfloat16").reason


def test_cpu_without_fast_half_kernels_gets_float32_and_says_it_widened():
    choice = choose_dtype(OLD_CPU, "bfloat16")
    assert choice.dtype == "float32"
    assert "widened" in choice.reason


def test_explicit_float16_on_cpu_warns():
    choice = choose_dtype(AVX2_CPU, None, "fp16")
    assert choice.dtype == "float16"
    assert "slow" in choice.warning


def test_explicit_float32_is_taken_without_warning():
    choice = choose_dtype(AVX2_CPU, "bfloat16", "float32")
    assert (choice.dtype, choice.reason, choice.warning) == ("float32", "asked for", None)


def test_device_map_cpu_on_a_gpu_machine_uses_the_cpu_policy():
    hw = Hardware(gpus=(A100,), cuda_built=True, cpu_flags=frozenset({"sse4_2"}))
    assert target_kind(hw, "cpu") == "cpu"
    assert choose_dtype(hw, "float32", device_map="cpu").dtype == "float32"
    assert target_kind(hw, "cuda:1") == "cuda"
    assert target_kind(hw, {"": 0}) == "cuda"


@pytest.mark.parametrize(
    "name,expected",
    [("bf16", "bfloat16"), ("FP16", "float16"), ("torch.float32", "float32"), ("auto", "auto")],
)
def test_dtype_aliases(name, expected):
    assert normalize_dtype(name) == expected


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="fp8.*auto, bfloat16, float16, float32"):
        normalize_dtype("fp8")


def test_assumed_facts_are_what_probe_answers_until_the_block_ends():
    from llm_magic import hardware

    host = hardware.probe()
    avx2, old = Hardware(cpu_flags=frozenset({"avx2"})), Hardware(cpu_flags=frozenset({"sse4_2"}))
    with hardware.assume(avx2):
        assert hardware.probe() is avx2
        with pytest.raises(RuntimeError, match="inside"):
            with hardware.assume(old):
                assert hardware.probe() is old
                raise RuntimeError("inside")
        assert hardware.probe() is avx2  # restored, also after an error
    assert hardware.probe() is host
