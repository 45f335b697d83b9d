"""Load failures → short cards with recovery tips.

Each catalogue entry is driven by the real bad input where this machine can produce it,
through a real InteractiveShell: the cell fails, the card names the cause and the fix,
the cache is as it was, and no half-loaded model survives. Failures this machine cannot
produce (CUDA OOM, RAM exhaustion, a full disk, Hub HTTP errors) are injected with the
real exception class at the narrowest boundary (`from_pretrained`), or built by the
library's own code (`hf_raise_for_status`) and passed to the pure `diagnose`.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import sys
import time
import warnings
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output
from support.tiny_model import copy_model

from llm_magic import MODEL_CACHE, errors
from llm_magic.errors import GENERATION, LOAD, GenerationError, LoadError, diagnose
from llm_magic.units import format_bytes

# ---------------------------------------------------------------------------- helpers


def cache_state():
    return [(e.key, e.model is not None) for e in MODEL_CACHE.entries()], MODEL_CACHE.last


def stray_models() -> list[str]:
    """PreTrainedModel objects alive that the cache does not own (a half-loaded model)."""
    from transformers import PreTrainedModel

    owned = {id(m) for e in MODEL_CACHE.entries() if e.model is not None for m in e.model.modules()}
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on lazy torch modules warns
        return [
            type(o).__name__
            for o in gc.get_objects()
            if isinstance(o, PreTrainedModel) and id(o) not in owned
        ]


@pytest.fixture
def loaded(shell, tiny_model_dir):
    """A shell with one model already cached (the cache a failure must leave alone)."""
    result = shell.run_cell(f"%llm_load {tiny_model_dir} --as base --quiet")
    assert result.success
    return shell


def fail(shell, line: str, error_type=LoadError) -> tuple[BaseException, str]:
    """Run a failing cell; return its exception and the text the user saw."""
    before = cache_state()
    with capture_output() as out:
        result = shell.run_cell(line)
    assert result.success is False, out.stdout
    assert isinstance(result.error_in_exec, error_type), repr(result.error_in_exec)
    assert cache_state() == before, "a failed load changed the cache"
    assert stray_models() == [], "a half-loaded model is still alive"
    text = out.stdout + out.stderr
    if isinstance(result.error_in_exec, errors.LLMError):
        card = "\n".join(result.error_in_exec._render_traceback_())
        assert card in text  # what IPython printed is the card, not a traceback
        assert terminal_rows(card) <= 15
        assert "Traceback (most recent call last)" not in text
    return result.error_in_exec, text


def terminal_rows(card: str, columns: int = 80) -> int:
    """How many rows the card takes in a terminal `columns` wide (long lines wrap)."""
    return sum(max(1, -(-len(line) // columns)) for line in card.splitlines())


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def original(error: BaseException) -> BaseException:
    assert error.__cause__ is not None, "the original exception must be chained"
    return error.__cause__


def chain_types(error: BaseException) -> list[str]:
    return [type(e).__name__ for e in errors.chain(error)]


# ------------------------------------------------------------------- Hub unreachable


def test_unknown_hub_id_offline_fails_fast_with_close_names(loaded, tiny_hub_id, closed_endpoint):
    """The session's Hub (HF_ENDPOINT, tests/conftest.py) is a closed port on loopback:
    what a user sees when the Hub cannot be reached, without a packet leaving."""
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
    import transformers  # noqa: F401  (its import time is not the failure's)
    from huggingface_hub import constants

    assert constants.ENDPOINT == closed_endpoint
    started = time.perf_counter()
    error, text = fail(loaded, "%llm_load llm-magic-tests/tiny-gpt3")
    # Fails fast: the Hub client's retries would wait 1 + 2 + 4 + 8 s between tries, so a
    # bound under 15 s shows none happened while leaving room for a loaded machine.
    assert time.perf_counter() - started < 15.0
    assert "LocalEntryNotFoundError" in chain_types(error)
    assert f"the Hub ({closed_endpoint}) could not be reached" in text
    assert "llm-magic-tests/tiny-gpt3 is not in the local cache" in text
    assert "did you mean: %llm_load llm-magic-tests/tiny-gpt2  (cached)" in text
    assert "%llm_load ./folder" in text and "%llm_load ./model.gguf" in text
    assert "HF_HUB_OFFLINE=1" not in text  # no help for a model that is not cached
    assert "no connection to the Hub: checked first" in text
    assert "%llm_tb" in text


def test_the_readme_example_offline_points_to_the_demo_model(loaded, smollm2_gguf):
    """The README's first %llm_load with no network: the card names the installed copy of
    the same model, and no line is cut inside a word."""
    error, text = fail(loaded, "%llm_load HuggingFaceTB/SmolLM2-135M-Instruct")
    card = error._render_traceback_()
    assert any(line.endswith(f"%llm_load {smollm2_gguf}") for line in card)
    assert "HF_HUB_OFFLINE=1" not in text
    shown = (
        next(line for line in card if "LocalEntryNotFoundError" in line).split(": ", 1)[1].split()
    )
    words = str(original(error)).split()
    assert shown[-1] == "…" and shown[:-1] == words[: len(shown) - 1]  # cut between words


def test_an_offline_hub_id_close_to_a_loaded_model_names_it(shell, smollm2_gguf):
    assert shell.run_cell(f"%llm_load {smollm2_gguf} --quiet").success
    error, text = fail(shell, "%llm_load HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "already loaded in this kernel: SmolLM2-135M-Instruct.Q4_1.gguf" in text


def test_hub_probe_gives_up_on_a_silent_endpoint(monkeypatch, silent_endpoint):
    from huggingface_hub import constants

    from llm_magic.sources import hub

    monkeypatch.setattr(constants, "ENDPOINT", silent_endpoint.url)  # accepts, never answers
    before = silent_endpoint.accepted
    started = time.perf_counter()
    assert hub.hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - started < 3.0  # gave up on its own, not on a refusal
    assert silent_endpoint.accepted > before  # it did connect: the silence is what it gave up on


def test_hub_probe_fails_at_once_on_a_refused_connection(closed_endpoint):
    from llm_magic.sources import hub

    started = time.perf_counter()
    assert hub.hub_reachable(timeout=30) is False
    assert time.perf_counter() - started < 10.0  # refused: no waiting for the timeout


def test_hub_probe_counts_an_error_status_as_reachable(monkeypatch, hub_error_endpoint):
    from huggingface_hub import constants

    from llm_magic.sources import hub

    monkeypatch.setattr(constants, "ENDPOINT", hub_error_endpoint)  # answers 404 to everything
    assert hub.hub_reachable(timeout=5) is True


# ---------------------------------------------------------- Hub HTTP errors (no Hub here)


def _hub_error(status: int, code: str | None):
    """The exception huggingface_hub raises for such a Hub answer, wrapped the way
    transformers wraps it (OSError from e)."""
    import httpx2
    from huggingface_hub.utils import hf_raise_for_status

    url = (
        os.environ["HF_ENDPOINT"] + "/org/model/resolve/main/config.json"
    )  # never requested: a Response's label
    response = httpx2.Response(
        status, headers={"X-Error-Code": code} if code else {}, request=httpx2.Request("HEAD", url)
    )
    try:
        hf_raise_for_status(response)
    except Exception as e:
        try:
            raise OSError(
                "org/model is not a local folder and is not a valid model identifier"
            ) from e
        except OSError as wrapped:
            return wrapped
    raise AssertionError("no error raised")


@pytest.mark.parametrize(
    "status, code, kind, cause, fix",
    [
        (
            404,
            "RepoNotFound",
            "RepositoryNotFoundError",
            "the Hub has no repository 'org/model'",
            "hf auth login",
        ),
        (
            404,
            "RevisionNotFound",
            "RevisionNotFoundError",
            "has no branch, tag or commit 'v9'",
            "drop --revision",
        ),
        (
            403,
            "GatedRepo",
            "GatedRepoError",
            "gated or private repository",
            "accept the licence at https://huggingface.co/org/model",
        ),
    ],
)
def test_hub_http_errors(status, code, kind, cause, fix):
    exc = _hub_error(status, code)
    assert kind in chain_types(exc)
    error = diagnose(exc, {"model": "org/model", "revision": "v9", "cached_repos": []}, LOAD)
    text = "\n".join(error.card_lines())
    assert error.matched == kind  # found below transformers' OSError: type first
    assert isinstance(error, LoadError) and cause in text and fix in text


# --------------------------------------------------------------- path does not exist


def nearest_folder_named(error: LoadError) -> tuple[Path, str]:
    """The folder the card's "nearest existing folder" fix names, and what it says it holds."""
    lines = [f for f in error.diagnosis.fixes if f.startswith("nearest existing folder: ")]
    assert len(lines) == 1, error.diagnosis.fixes
    named, _, holds = lines[0].removeprefix("nearest existing folder: ").partition(" (holds: ")
    return Path(named), holds.removesuffix(")")


def test_nonexistent_path_names_nearest_parent(loaded, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "smol").mkdir()
    (tmp_path / "models" / "notes.txt").write_text("")
    missing = tmp_path / "models" / "nope" / "model"
    error, text = fail(loaded, f"%llm_load {missing}")
    assert error.diagnosis.what == f"{missing}: no such file or folder"
    assert error.diagnosis.cause == "the path does not exist"
    named, holds = nearest_folder_named(error)
    # The folder named exists, is a parent of the missing path, and is the nearest one.
    assert named.is_dir() and named in missing.parents
    assert named == tmp_path / "models"
    assert holds == "notes.txt, smol"  # what is there, to spot the typo
    assert f"  → nearest existing folder: {named} (holds: notes.txt, smol)" in text.splitlines()


def test_a_path_like_hub_id_names_the_exact_load_command(loaded, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error, text = fail(loaded, "%llm_load ./org/some-model")
    named, _ = nearest_folder_named(error)
    assert named == tmp_path and named in (tmp_path / "org" / "some-model").parents
    assert "for the Hub id, drop the path prefix: %llm_load org/some-model" in error.diagnosis.fixes


def test_hub_offline_variable_is_named():
    from huggingface_hub.errors import LocalEntryNotFoundError

    exc = LocalEntryNotFoundError(
        "Cannot find the requested files in the disk cache and outgoing traffic has been disabled."
    )
    text = "\n".join(
        diagnose(
            exc, {"model": "org/m", "offline": True, "cached_repos": ["org/mm"]}, LOAD
        ).card_lines()
    )
    assert "HF_HUB_OFFLINE is set, and org/m is not in the local Hugging Face cache" in text
    assert "unset HF_HUB_OFFLINE" in text and "did you mean: %llm_load org/mm  (cached)" in text


def test_invalid_repo_id_is_explained():
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    with pytest.raises(HFValidationError) as info:
        validate_repo_id("org//name")
    text = "\n".join(
        diagnose(info.value, {"model": "org//name", "nearest_parent": "/data"}, LOAD).card_lines()
    )
    assert (
        "neither an existing path nor a valid Hub id" in text
        and "nearest existing folder: /data" in text
    )


def test_an_invalid_hub_id_names_the_nearest_existing_folder(loaded, tmp_path, monkeypatch):
    """An id shaped like org/name that huggingface_hub refuses ("--" is not allowed) fails
    in its validation, not in llm_magic's path check: the card still names the nearest
    folder that exists on the way to it, read as a path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad--id").mkdir()
    error, text = fail(loaded, "%llm_load bad--id/model")
    assert "'bad--id/model' is neither an existing path nor a valid Hub id" in text
    named, _ = nearest_folder_named(error)
    assert named == tmp_path / "bad--id"


# --------------------------------------------------- no weights, no config, no model_type


def test_folder_without_weights(loaded, tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "noweights", skip=("model.safetensors",))
    error, text = fail(loaded, f"%llm_load {folder}")
    assert "no file named model.safetensors" in str(original(error))
    assert f"{folder} has no weights file" in text and "save_pretrained" in text
    assert "the folder holds: config.json" in text


def test_folder_without_config(loaded, tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "noconfig", skip=("config.json",))
    error, text = fail(loaded, f"%llm_load {folder}")
    assert isinstance(original(error), ValueError)
    assert f"{folder} has no config.json" in text and "copy config.json" in text


def test_config_without_model_type(loaded, tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "nomodeltype")
    edit_config(folder, model_type=None)
    error, text = fail(loaded, f"%llm_load {folder}")
    assert "config.json in" in text and "has no model_type" in text and '"model_type"' in text


# ------------------------------------------------------------------- unknown architecture


def test_unknown_model_type(loaded, tiny_model_dir, tmp_path):
    import transformers

    folder = copy_model(tiny_model_dir, tmp_path / "fancy")
    edit_config(folder, model_type="fancynet")
    error, text = fail(loaded, f"%llm_load {folder}")
    assert "does not recognize this architecture" in str(original(error))
    assert (
        f"transformers {transformers.__version__} does not know the architecture 'fancynet'" in text
    )
    assert (
        "pip install -U transformers" in text
        and "--trust-remote-code" in text
        and "only for sources you trust" in text
    )


# ------------------------------------------------------------------- not a causal LM


def test_seq2seq_model_is_not_a_causal_lm(loaded, tiny_model_dir, tmp_path):
    from transformers import T5Config

    folder = copy_model(tiny_model_dir, tmp_path / "t5", skip=("config.json", "model.safetensors"))
    T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16).save_pretrained(folder)
    error, text = fail(loaded, f"%llm_load {folder}")
    assert "T5Config is not a causal language model" in text
    assert "transformers.AutoModelForSeq2SeqLM.from_pretrained" in text


def test_encoder_loaded_as_lm_head_gets_a_warning(shell, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    folder = tmp_path / "bert"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with capture_output() as out:
        result = shell.run_cell(f"%llm_load {folder}")
    assert result.success
    assert "BertLMHeadModel" in out.stdout
    assert (
        "bert is an encoder (masked LM)" in out.stdout
        and "will not generate sensible output" in out.stdout
    )


# -------------------------------------------------------------- corrupt / truncated weights


def test_truncated_safetensors_names_the_file(loaded, tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    error, text = fail(loaded, f"%llm_load {folder}")
    assert "SafetensorError" in chain_types(error)
    # The safetensors library's own verdict on the file, with its size.
    assert (
        f"corrupt or truncated: {weights} ({weights.stat().st_size} bytes: incomplete metadata"
        in text
    )


# --------------------------------------------------------------------- no tokenizer files


def test_folder_without_tokenizer(loaded, tiny_model_dir, tmp_path):
    folder = copy_model(
        tiny_model_dir, tmp_path / "notok", skip=("tokenizer.json", "tokenizer_config.json")
    )
    error, text = fail(loaded, f"%llm_load {folder}")
    assert "tokenizer" in text and "save_pretrained(FOLDER)" in text


@pytest.mark.parametrize("contents", [(), ("readme.txt",), ("readme.txt", ".ipynb_checkpoints/")])
def test_a_folder_with_no_config_and_no_weights_is_not_a_model_folder(loaded, tmp_path, contents):
    folder = tmp_path / "notes"
    folder.mkdir()
    for name in contents:
        (folder / name.rstrip("/")).mkdir() if name.endswith("/") else (folder / name).write_text(
            "hello"
        )
    error, text = fail(loaded, f"%llm_load {folder}")
    assert f"{folder}: not a model folder: no config.json and no weights" in text
    assert "tokenizer" not in text.split("→")[0]  # not blamed on the tokenizer
    assert f"the folder holds: {'readme.txt' if contents else 'nothing'}" in text
    assert ".ipynb_checkpoints" not in text and "save_pretrained" in text


def test_a_folder_holding_a_gguf_points_to_it(loaded, tmp_path, smollm2_gguf):
    folder = tmp_path / "dl"
    folder.mkdir()
    os.symlink(smollm2_gguf, folder / "smol.gguf")
    error, text = fail(loaded, f"%llm_load {folder}")
    assert "not a model folder" in text and f"%llm_load {folder / 'smol.gguf'}" in text


def test_an_empty_gguf_says_empty_file(loaded, tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"")
    error, text = fail(loaded, f"%llm_load {tmp_path / 'x.gguf'}")
    assert f"{tmp_path / 'x.gguf'}: empty file" in text and "0 bytes" in text
    assert "unpack" not in text


@pytest.mark.parametrize(
    "content, says",
    [
        (b"These are my notes about models.\n" * 4, "starts with text"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 93000000\n",
            "Git LFS pointer",
        ),
        (bytes(range(200, 256)) * 2, "starts with binary data"),
    ],
)
def test_a_file_that_is_not_gguf_says_no_gguf_magic(loaded, tmp_path, content, says):
    (tmp_path / "notes.gguf").write_bytes(content)
    error, text = fail(loaded, f"%llm_load {tmp_path / 'notes.gguf'}")
    assert "not a GGUF file (no GGUF magic)" in text and says in text


# ---------------------------------------------------------------------- device maps


def test_bad_device_map(loaded, tiny_model_dir):
    error, text = fail(loaded, f"%llm_load {tiny_model_dir} --device-map gpu7")
    assert (
        "'gpu7' is not a device name" in text and "one of: auto, balanced, sequential, cpu" in text
    )


CPU_ONLY_FIXES = [
    "run on the CPU: --device-map cpu  (or auto, which picks what exists)",
    "for an NVIDIA GPU, install a CUDA build: pip install torch --index-url https://download.pytorch.org/whl/cu126",
]


def test_cuda_on_cpu_only_torch_is_explained():
    # The exception a CPU-only torch raises for a CUDA device (on any torch build).
    exc = AssertionError("Torch not compiled with CUDA enabled")
    diagnosis = diagnose(
        exc, {"model": "m", "device_map": "cuda", "torch_version": "2.9.0+cpu"}, LOAD
    ).diagnosis
    assert diagnosis.cause == "this torch (2.9.0+cpu) is a CPU-only build: it cannot use a GPU"
    assert diagnosis.fixes == CPU_ONLY_FIXES


def _torch_is_cpu_only() -> bool:
    import torch

    return torch.version.cuda is None


@pytest.mark.skipif(
    not _torch_is_cpu_only(),
    reason="a CUDA build of torch cannot produce this failure; the card is "
    "checked from the exception itself in test_cuda_on_cpu_only_torch_is_explained",
)
def test_cuda_on_cpu_only_torch_frees_the_half_loaded_model(loaded, tiny_model_dir):
    error, text = fail(loaded, f"%llm_load {tiny_model_dir} --device-map cuda")
    assert isinstance(original(error), AssertionError)
    assert "is a CPU-only build" in error.diagnosis.cause
    assert error.diagnosis.fixes == CPU_ONLY_FIXES


def test_mps_unavailable_fails_after_the_model_exists_and_frees_it(loaded, tiny_model_dir):
    # transformers raises this while copying weights into the already-built model: the
    # exception's frames held it; fail() checks no PreTrainedModel outside the cache
    # survives, although the shell still holds the error in sys.last_value.
    error, text = fail(loaded, f"%llm_load {tiny_model_dir} --device-map mps")
    assert sys.last_value is error
    assert "MPS backend is not available" in text and "--device-map auto" in text


def test_no_gpu_visible_is_told_apart_from_cpu_only_build():
    exc = RuntimeError(
        "Found no NVIDIA driver on your system. "
        "Please check that you have an NVIDIA GPU and installed a driver"
    )
    text = "\n".join(
        diagnose(
            exc, {"model": "m", "device_map": "cuda", "torch_cuda": "12.6", "gpu_count": 0}, LOAD
        ).card_lines()
    )
    assert "built with CUDA 12.6 but sees no GPU" in text and "nvidia-smi" in text
    exc = RuntimeError("CUDA error: invalid device ordinal")
    text = "\n".join(
        diagnose(exc, {"model": "m", "device_map": "cuda:1", "gpu_count": 1}, LOAD).card_lines()
    )
    assert "names a GPU that does not exist: 1 visible (cuda:0..cuda:0)" in text


# -------------------------------------------------------------------------------- dtype


def test_unknown_dtype(loaded, tiny_model_dir):
    from IPython.core.error import UsageError

    error, text = fail(loaded, f"%llm_load {tiny_model_dir} --dtype float8", error_type=UsageError)
    assert "unknown dtype 'float8'" in text and "auto, bfloat16, float16, float32" in text


def test_bf16_on_pre_ampere_gpu_is_warned():
    from llm_magic.hardware import GPU, Hardware, choose_dtype

    t4 = Hardware(gpus=(GPU(0, "Tesla T4", (7, 5), 16 * 2**30),), cuda_built=True)
    choice = choose_dtype(t4, None, "bfloat16", "auto")
    assert choice.dtype == "bfloat16" and "use float16" in choice.warning
    assert choose_dtype(t4, None, "auto", "auto").dtype == "float16"


# ----------------------------------------------------------------------- out of memory


def _raise_on_weights(monkeypatch, exc: BaseException) -> None:
    """The narrowest boundary: reading the weights raises `exc` (this machine has no GPU
    and too much RAM to run out for real)."""
    import transformers

    def from_pretrained(*args, **kwargs):
        raise exc

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)


def _tiny_bytes(folder: Path, per_param: int) -> str:
    from safetensors.torch import load_file

    return format_bytes(
        sum(t.numel() for t in load_file(folder / "model.safetensors").values()) * per_param
    )


def test_cuda_out_of_memory(loaded, tiny_model_dir, monkeypatch):
    import torch

    message = (
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.77 GiB "
        "of which 1.12 GiB is free. Of the allocated memory 13.9 GiB is allocated by PyTorch"
    )
    _raise_on_weights(monkeypatch, torch.OutOfMemoryError(message))
    error, text = fail(loaded, f"%llm_load {tiny_model_dir} --dtype float16 --device-map cuda")
    assert "the GPU ran out of memory while loading the weights (already at float16)" in text
    assert f"the model needs about {_tiny_bytes(tiny_model_dir, 2)} at float16" in text
    assert "GPU 0: 1.12 GiB free of 15.77 GiB" in text
    entry = MODEL_CACHE.find("base")
    assert f"cached models: {entry.info.name} ({format_bytes(entry.info.memory_bytes)})" in text
    assert f"%llm_unload {entry.info.name}" in text and "max_memory" in text


def test_cpu_memory_error(loaded, tiny_model_dir, monkeypatch):
    _raise_on_weights(monkeypatch, MemoryError())
    error, text = fail(loaded, f"%llm_load {tiny_model_dir} --dtype float32 --device-map cpu")
    assert "the machine ran out of RAM" in text
    assert f"the model needs about {_tiny_bytes(tiny_model_dir, 4)} at float32" in text
    assert "RAM: " in text and " free of " in text
    assert "--dtype bfloat16" in text and "%llm_unload" in text


def test_generation_oom_is_diagnosed():
    import torch

    exc = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 512.00 MiB. GPU 0 has a total capacity of "
        "23.6 GiB of which 100.00 MiB is free."
    )
    error = diagnose(
        exc,
        {
            "model": "org/m",
            "prompt_tokens": 900,
            "max_new_tokens": 4096,
            "batch_size": 8,
            "loaded": [("org/m", 14 * 10**9)],
        },
        GENERATION,
    )
    text = "\n".join(error.card_lines())
    assert isinstance(error, GenerationError)
    assert (
        "generation with org/m failed" in text
        and "the GPU ran out of memory while generating" in text
    )
    assert (
        "prompt 900 tokens, --max-new-tokens 4096, batch 8" in text
        and "smaller --max-new-tokens" in text
    )
    assert "GPU 0: 100.00 MiB free of 23.6 GiB" in text
    plain = diagnose(ZeroDivisionError("division by zero"), {"model": "org/m"}, GENERATION)
    assert plain.diagnosis.cause is None


# ----------------------------------------------------------------- optional packages


def test_gguf_package_missing(loaded, smollm2_gguf, monkeypatch, tmp_path):
    # An interpreter without gguf: a None entry in sys.modules is how Python marks a
    # module as not importable (find_spec returns None, import raises ImportError).
    from transformers.utils.import_utils import is_gguf_available

    monkeypatch.setitem(sys.modules, "gguf", None)
    monkeypatch.setenv("LLM_MAGIC_CACHE", str(tmp_path / "fresh"))  # not converted yet
    is_gguf_available.cache_clear()  # transformers caches the answer for the process
    try:
        error, text = fail(loaded, f"%llm_load {smollm2_gguf}")
    finally:
        monkeypatch.undo()
        is_gguf_available.cache_clear()  # later tests see gguf again
    assert isinstance(original(error), ImportError)
    assert (
        "the optional package gguf is not installed" in text and "pip install 'gguf>=0.10'" in text
    )


def test_accelerate_missing():
    exc = ValueError("accelerate is required when loading a GGUF file `pip install accelerate`.")
    text = "\n".join(diagnose(exc, {"model": "m.gguf"}, LOAD).card_lines())
    assert (
        "the optional package accelerate is not installed" in text
        and "pip install accelerate" in text
    )


# ----------------------------------------------------------------------------- disk full


def test_disk_full(loaded, tiny_model_dir, monkeypatch):
    _raise_on_weights(
        monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/hf/blobs/abc.incomplete")
    )
    error, text = fail(loaded, f"%llm_load {tiny_model_dir} --reload")
    assert "the disk is full (writing /hf/blobs/abc.incomplete)" in text
    assert f"HF_HOME: {os.environ['HF_HOME']} (" in text and " free)" in text
    assert "HF_HOME=/big/disk/hf" in text and "the model needs about" in text


# ----------------------------------------------- unrecognised errors, traceback, chaining


def test_unrecognised_error_is_shown_plainly(loaded, tiny_model_dir, monkeypatch):
    _raise_on_weights(monkeypatch, TypeError("unexpected keyword 'frobnicate'"))
    error, text = fail(loaded, f"%llm_load {tiny_model_dir} --reload")
    card = "\n".join(error._render_traceback_())
    assert error.diagnosis.cause is None and "cause:" not in card and "→" not in card
    assert "TypeError: unexpected keyword 'frobnicate'" in card and card in text
    assert isinstance(original(error), TypeError)


def test_full_traceback_is_one_step_away(loaded, tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "noweights", skip=("model.safetensors",))
    fail(loaded, f"%llm_load {folder}")
    with capture_output() as out:
        loaded.run_line_magic("llm_tb", "")
    assert "The above exception was the direct cause of the following exception" in out.stderr
    assert "modeling_utils.py" in out.stderr and "OSError: Error no file named" in out.stderr

    with capture_output() as out:
        result = loaded.run_cell(f"%llm_load {folder} --verbose")
    assert result.success is False
    assert "cause:" in out.stdout and "Traceback (most recent call last)" in out.stdout
    assert "modeling_utils.py" in out.stdout


def test_ctrl_c_during_load_passes_through_and_frees_frames(loaded, tiny_model_dir, monkeypatch):
    _raise_on_weights(monkeypatch, KeyboardInterrupt())
    fail(loaded, f"%llm_load {tiny_model_dir} --reload", error_type=KeyboardInterrupt)


def test_matching_is_type_first_then_message():
    # An OSError whose message looks like "no weights" but whose cause is a full disk:
    # the errno (a type-level fact) wins over the message.
    disk = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise disk
        except OSError as e:
            raise OSError(
                "Error no file named model.safetensors, or pytorch_model.bin, found in directory x"
            ) from e
    except OSError as wrapped:
        error = diagnose(wrapped, {"model": "m"}, LOAD)
    assert "the disk is full" in error.diagnosis.cause


# ------------------------------------------------------------------------- the notebook


def test_errors_notebook_runs_and_shows_cards():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from run_notebook import cell_text, run

    notebook = run(Path(__file__).resolve().parents[1] / "examples" / "errors.ipynb")
    code = [c for c in notebook.cells if c.cell_type == "code"]
    failed = [c for c in code if any(o.output_type == "error" for o in c.outputs)]
    assert all("raises-exception" in c.metadata.get("tags", []) for c in failed)
    assert len(failed) == 4
    texts = [cell_text(c) for c in failed]
    assert all(t.startswith("✗ ") and "Traceback (most recent call last)" not in t for t in texts)
    assert "nearest existing folder" in texts[0]
    assert "could not be reached" in texts[1] or "has no repository" in texts[1]
    assert "corrupt or truncated" in texts[2] and "smol-truncated/model.safetensors" in texts[2]
    assert "CPU-only build" in texts[3]
    outputs = "".join(cell_text(c) for c in code)
    assert "The above exception was the direct cause" in outputs  # %llm_tb
    assert "1 model cached; 0 stray models" in outputs
    assert "Warning" not in outputs  # the stray scan trips no deprecated module attribute


# ----------------------- Hub HTTP errors again, end to end: a Hub that answers with errors


def test_hub_http_errors_end_to_end(tmp_path, hub_error_endpoint):
    """Real huggingface_hub and transformers code against a Hub that answers with errors
    (the endpoint is read when huggingface_hub is imported: hence a fresh process)."""
    import subprocess

    script = (
        "import llm_magic\n"
        "for model, revision in "
        "[('org/missing', None), ('org/gated', None), ('org/model', 'v9')]:\n"
        "    try:\n"
        "        llm_magic.load(model, revision=revision)\n"
        "    except llm_magic.LoadError as e:\n"
        "        print('\\n'.join(e.card_lines()))\n"
        "        print('CHAIN', [type(x).__name__ for x in llm_magic.errors.chain(e)])\n"
    )
    env = dict(os.environ, HF_ENDPOINT=hub_error_endpoint, HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    cards = out.stdout.split("✗ ")[1:]
    assert len(cards) == 3, out.stdout
    assert (
        "the Hub has no repository 'org/missing'" in cards[0]
        and "RepositoryNotFoundError" in cards[0]
    )
    assert "org/gated is a gated or private repository" in cards[1] and "hf auth login" in cards[1]
    assert "GatedRepoError" in cards[1]
    assert (
        "org/model has no branch, tag or commit 'v9'" in cards[2]
        and "RevisionNotFoundError" in cards[2]
    )
