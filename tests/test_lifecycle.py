"""Model lifecycle: %llm_models, %llm_unload (memory freed for real), the cache budget,
the pre-flight fit check, %unload_ext, and examples/memory.ipynb."""

from __future__ import annotations

import gc
import json
import os
import shutil
import struct
import weakref
from pathlib import Path

import pytest

import llm_magic
from llm_magic import MODEL_CACHE, hardware
from llm_magic.display import LoadCard, ModelsCard, UnloadCard
from llm_magic.engines import transformers_load
from llm_magic.errors import LLMError, LoadError
from llm_magic.sources import gguf_cache, resolve, sizing

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def _no_budget():
    MODEL_CACHE.set_budget(max_models=0, memory_budget=0)
    yield
    MODEL_CACHE.set_budget(max_models=0, memory_budget=0)


def cell(shell, code: str):
    """Run a cell as a user would (stored in history, so Out/_ keep its value)."""
    return shell.run_cell(code, store_history=True)


def ok(shell, code: str):
    result = cell(shell, code)
    assert result.error_before_exec is None and result.error_in_exec is None, result
    return result.result


def failed(shell, code: str) -> BaseException:
    result = cell(shell, code)
    assert result.error_in_exec is not None, f"{code!r} did not fail"
    return result.error_in_exec


def model_ref(name: str) -> weakref.ref:
    return weakref.ref(MODEL_CACHE.find(name).model)


def pretrained_models() -> list:
    import warnings

    from transformers import PreTrainedModel

    gc.collect()
    with warnings.catch_warnings():  # isinstance() on torch's deprecated lazy objects warns
        warnings.simplefilter("ignore", FutureWarning)
        return [o for o in gc.get_objects() if isinstance(o, PreTrainedModel)]


def corrupt_copy(src: Path, dst: Path) -> Path:
    """A copy whose shard has a valid header with one tensor's shape transposed: the model
    object is built, then loading its weights fails (a real corrupt-shard failure).
    Edited by hand: the safetensors library writes only consistent files."""
    shutil.copytree(src, dst)
    shard = dst / "model.safetensors"
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["transformer.wte.weight"]["shape"] = header["transformer.wte.weight"]["shape"][::-1]
    text = json.dumps(header, separators=(",", ":")).encode()
    shard.write_bytes(raw[:8] + text.ljust(n) + raw[8 + n :])
    return dst


# ------------------------------------------------------------------------------- unload


def test_unload_frees_the_model_although_out_and_a_traceback_held_it(shell, tiny_model_dir):
    shell.user_ns["path"] = str(tiny_model_dir)
    load_card = ok(shell, "%llm_load $path --as tiny")
    ref = model_ref("tiny")
    # Out/_ hold the model itself, and a failed forward pass keeps it in the traceback's
    # frames (sys.last_value, shell.last_execution_result) through `self`.
    ok(shell, "import llm_magic; llm_magic.MODEL_CACHE.find('tiny').model")
    error = failed(shell, "llm_magic.MODEL_CACHE.find('tiny').model(input_ids=[[1, 2]])")
    listing = ok(shell, "%llm_models")
    assert isinstance(listing, ModelsCard)
    kept = [load_card, listing]
    if (
        "llm_generate" in shell.magics_manager.magics["cell"]
    ):  # once the generation branch is merged
        kept.append(ok(shell, "%%llm_generate -m tiny --max-new-tokens 3 --greedy\nHello"))

    card = ok(shell, "%llm_unload tiny")

    assert ref() is None, "the model survived %llm_unload"
    assert isinstance(card, UnloadCard) and card.freed
    assert (
        f"unloaded tiny-gpt2 ({load_card.info.held_as}, as tiny)" in card.text()
        and "RSS" in card.text()
    )
    out = shell.user_ns["Out"]
    for value in kept:  # the cards (and a generation result) stay in Out: plain data only
        assert any(v is value for v in out.values()), value
    assert len(MODEL_CACHE) == 0
    # The error is still there to read (%tb), only its frames' locals are gone.
    import traceback

    assert "modeling_gpt2.py" in "".join(traceback.format_exception(error))


def test_unload_names_a_user_variable_that_still_holds_the_model(shell, tiny_model_dir):
    shell.user_ns["path"] = str(tiny_model_dir)
    ok(shell, "%llm_load $path --as tiny")
    ok(shell, "import llm_magic; m = llm_magic.MODEL_CACHE.find('tiny').model")
    ref = model_ref("tiny")

    card = ok(shell, "%llm_unload tiny")

    assert not card.freed and card.held_by == ("m",)
    assert "still referenced by m" in card.text() and "del m" in card.text()
    assert len(MODEL_CACHE) == 0
    ok(shell, "del m")
    gc.collect()
    assert ref() is None


def test_unload_by_the_name_the_cards_show(shell, tiny_model_dir):
    shell.user_ns["path"] = str(tiny_model_dir)
    ok(shell, "%llm_load $path")  # no alias: the cards name it by the folder
    ref = model_ref(str(tiny_model_dir))
    assert tiny_model_dir.name in ok(shell, "%llm_models").text()
    card = ok(shell, f"%llm_unload {tiny_model_dir.name}")
    assert card.freed and ref() is None and len(MODEL_CACHE) == 0


def test_unload_unknown_name_lists_the_cached_ones(shell, tiny_model_dir):
    shell.user_ns["path"] = str(tiny_model_dir)
    ok(shell, "%llm_load $path --as tiny")
    error = failed(shell, "%llm_unload nope")
    assert isinstance(error, LLMError)
    text = "\n".join(error._render_traceback_())
    assert "no cached model named 'nope'" in text and "tiny" in text and str(tiny_model_dir) in text
    assert len(MODEL_CACHE) == 1

    from IPython.core.error import UsageError

    assert isinstance(cell(shell, "%llm_unload").error_in_exec, UsageError)


def test_unload_all_and_unload_ext_free_everything(shell, tiny_model_dir, tiny_hub_id):
    shell.user_ns["path"] = str(tiny_model_dir)
    ok(shell, "%llm_load $path")
    ok(shell, f"%llm_load {tiny_hub_id}")
    refs = [weakref.ref(e.model) for e in MODEL_CACHE.entries()]
    ok(shell, "import llm_magic; llm_magic.MODEL_CACHE.current().model")  # Out holds one
    assert len(refs) == 2

    card = ok(shell, "%llm_unload --all")
    assert card.freed and len(card.models) == 2 and all(r() is None for r in refs)

    ok(shell, "%llm_load $path")
    ref = weakref.ref(MODEL_CACHE.current().model)
    ok(shell, "llm_magic.MODEL_CACHE.current().model")
    ok(shell, "%unload_ext llm_magic")
    assert ref() is None and len(MODEL_CACHE) == 0
    ok(shell, "%load_ext llm_magic")  # the fixture unloads it again


def test_failed_load_leaves_no_model_object(shell, tiny_model_dir, tmp_path):
    shell.user_ns["path"] = str(tiny_model_dir)
    ok(shell, "%llm_load $path --as good")
    shell.user_ns["bad"] = str(corrupt_copy(tiny_model_dir, tmp_path / "corrupt"))

    failed(shell, "%llm_load $bad")
    # The error is kept (sys.last_value, for %tb) but its frames no longer pin the
    # half-built model; the cache is as it was.
    good = {id(m) for m in MODEL_CACHE.find("good").model.modules()}
    assert [type(m).__name__ for m in pretrained_models() if id(m) not in good] == []
    assert len(MODEL_CACHE) == 1


# ------------------------------------------------------------------------------- listing


def test_llm_models_lists_models_free_memory_and_escapes_html(shell, tiny_model_dir, tmp_path):
    odd = shutil.copytree(tiny_model_dir, tmp_path / "tiny<b>")
    shell.user_ns["path"], shell.user_ns["odd"] = str(tiny_model_dir), str(odd)
    ok(shell, "%llm_load $path --as first --dtype float32")
    ok(shell, '%llm_load "$odd" --as second --dtype bfloat16')  # stated: the sizes below are bf16's

    card = ok(shell, "%llm_models")
    text = card.text()
    lines = text.splitlines()
    assert lines[0].split() == [
        "alias",
        "model",
        "revision",
        "engine,",
        "dtype",
        "device",
        "memory",
        "last",
        "used",
    ]
    second = next(line for line in lines if " second " in line)
    assert (
        second.startswith("*") and "bfloat16" in second and "cpu" in second and "284 KB" in second
    )
    first = next(line for line in lines if " first " in line)
    assert "float32" in first and "568 KB" in first
    assert "2 models cached, 852 KB in all" in text
    assert "free: RAM " in text
    html = card._repr_mimebundle_()["text/html"]
    assert "tiny&lt;b&gt;" in html and "tiny<b>" not in html

    assert ok(shell, "%llm_unload --all").freed
    assert ok(shell, "%llm_models").text().startswith("0 models cached, 0 B in all")


def test_llm_models_marks_the_model_generate_uses_after_the_current_one_is_unloaded(
    shell, tiny_model_dir
):
    ok(shell, f"%llm_load {tiny_model_dir} --as older --dtype float32 --quiet")
    ok(shell, f"%llm_load {tiny_model_dir} --as newer --dtype bfloat16 --quiet")
    ok(shell, "%llm_unload newer")
    marked = [line for line in ok(shell, "%llm_models").text().splitlines() if "older" in line]
    assert marked and marked[0].startswith("*")  # the one %%llm_generate takes now
    result = ok(shell, "%%llm_generate --greedy --max-new-tokens 2\nHello")
    assert result.dtype == "float32"  # it is the one that generated


# ------------------------------------------------------------------------------- budget


def test_max_models_one_unloads_the_first_model(shell, tiny_model_dir, tiny_hub_id):
    ok(shell, "%config LLMMagics.max_models = 1")
    assert MODEL_CACHE.max_models == 1
    shell.user_ns["path"] = str(tiny_model_dir)
    ok(shell, "%llm_load $path --as first --dtype bfloat16")  # 284 KB on any CPU
    first = model_ref("first")

    card = ok(shell, f"%llm_load {tiny_hub_id}")

    assert first() is None
    assert [e.name for e in MODEL_CACHE.entries()] == [tiny_hub_id]
    assert isinstance(card, LoadCard)
    assert any(
        "unloaded first (transformers bfloat16, 284 KB)" in n and "budget of 1 model" in n
        for n in card.notes()
    )
    assert "unloaded" in card.text()


def test_memory_budget_from_plain_python_and_as_a_string(shell, tiny_model_dir):
    ok(shell, "%config LLMMagics.memory_budget = '600KB'")
    assert MODEL_CACHE.memory_budget == 600_000
    ok(shell, "%config LLMMagics.memory_budget = 8_000_000")
    assert MODEL_CACHE.memory_budget == 8_000_000
    from traitlets import TraitError

    with pytest.raises(TraitError, match="not a size: 'lots'"):
        shell.magics_manager.registry["LLMMagics"].memory_budget = "lots"
    assert MODEL_CACHE.memory_budget == 8_000_000

    MODEL_CACHE.set_budget(memory_budget=600_000)
    big = llm_magic.load(str(tiny_model_dir), dtype="float32")  # 568 KB
    ref = weakref.ref(big.model)
    del big
    small, card = llm_magic.load_with_card(
        str(tiny_model_dir), dtype="bfloat16"
    )  # 284 KB: 852 KB > 600 KB
    assert ref() is None and MODEL_CACHE.entries() == [small]
    assert any("568 KB" in n and "600 KB" in n for n in card.notes())


# ------------------------------------------------------------------------------- fit check


def _estimate_for(path: str, dtype: str) -> sizing.Estimate:
    return transformers_load.estimate(resolve.resolve_source(path), dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_estimate_within_10_percent_of_the_footprint_tiny(tiny_model_dir, dtype):
    est = _estimate_for(str(tiny_model_dir), dtype)
    handle = llm_magic.load(str(tiny_model_dir), dtype=dtype, device_map="cpu")
    footprint = handle.model.get_memory_footprint()
    assert abs(est.bytes - footprint) <= 0.10 * footprint, (est.bytes, footprint)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_estimate_within_10_percent_of_the_footprint_smollm2(smollm2_gguf, dtype):
    from_gguf = sizing.estimate_gguf(smollm2_gguf, dtype)  # before any conversion
    handle = llm_magic.load(smollm2_gguf, dtype=dtype, device_map="cpu")
    footprint = handle.model.get_memory_footprint()
    from_safetensors = _estimate_for(smollm2_gguf, dtype)  # the converted folder now exists
    assert from_safetensors.source == "safetensors"
    for est in (from_gguf, from_safetensors):
        assert abs(est.bytes - footprint) <= 0.10 * footprint, (est, footprint)


def test_estimate_reads_every_shard_of_a_sharded_checkpoint(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(
        sharded, max_shard_size="100KB"
    )
    assert (sharded / "model.safetensors.index.json").is_file()
    est = sizing.estimate_safetensors(sharded, "float32")
    assert (
        len(est.files) > 1
        and est.bytes == sizing.estimate_safetensors(tiny_model_dir, "float32").bytes
    )


def test_estimate_of_a_gguf_not_converted_yet_reads_its_header(smollm2_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_MAGIC_CACHE", str(tmp_path))  # no converted twin here
    est = transformers_load.estimate(resolve.resolve_source(smollm2_gguf), "bfloat16")
    assert est.source == "gguf" and est.num_params == 134_515_008
    assert est.bytes == 2 * est.num_params and est.conversion_bytes == 4 * est.num_params
    assert not any(tmp_path.iterdir()), "estimating must not convert"


def test_gguf_tensor_counts_from_the_gguf_reader(smollm2_gguf):
    elements, header = sizing.read_gguf_tensor_counts(smollm2_gguf)
    assert elements == 134_515_008  # SmolLM2-135M's parameters
    assert (
        1_000_000 < header < 0.03 * os.path.getsize(smollm2_gguf)
    )  # the 49k-token vocabulary, then the data


def test_damaged_safetensors_header_is_a_value_error_with_the_librarys_reason(
    tiny_model_dir, tmp_path
):
    damaged = tmp_path / "model.safetensors"
    damaged.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(ValueError, match=f"{damaged}: .*header too large"):
        sizing.read_safetensors_header(damaged)
    header, size = sizing.read_safetensors_header(tiny_model_dir / "model.safetensors")
    assert (
        header["__metadata__"] == {"format": "pt"}
        and header["transformer.wte.weight"]["dtype"] == "F32"
    )
    # The size against the format's definition (8-byte length, then that much JSON).
    first = json.loads((tiny_model_dir / "model.safetensors").read_bytes()[8:size])
    assert {k: v["shape"] for k, v in first.items() if k != "__metadata__"} == {
        k: v["shape"] for k, v in header.items() if k != "__metadata__"
    }


def _page_cache_bytes(path: Path) -> int:
    """Bytes of `path` held in the page cache: what has been read of it, by read() or
    through a memory map alike (mincore over a fresh private mapping)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        start = ctypes.c_char.from_buffer(mapped)
        if libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        del start  # releases the buffer, so the mapping can close
    return sum(v & 1 for v in vec) * mmap.PAGESIZE


def _evict(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


@pytest.mark.skipif(
    not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise and mincore (Linux)"
)
def test_estimate_reads_no_tensor_data(smollm2_gguf, tmp_path):
    """The readers memory-map the files: what they read shows in the page cache, not in
    read() counts. Private copies, so no other process keeps their pages cached."""
    llm_magic.load(
        smollm2_gguf, device_map="cpu", dtype="bfloat16"
    )  # make sure the converted folder exists
    MODEL_CACHE.clear()
    folder = shutil.copytree(
        gguf_cache.converted_folder(smollm2_gguf, "bfloat16"), tmp_path / "converted"
    )
    gguf = Path(shutil.copy(smollm2_gguf, tmp_path / "model.gguf"))
    for read, data in (
        (lambda: sizing.estimate_safetensors(folder, "float32"), folder / "model.safetensors"),
        (lambda: sizing.estimate_gguf(gguf, "float32"), gguf),
    ):
        _evict(data)
        before = _page_cache_bytes(data)
        if before > 0.03 * data.stat().st_size:
            pytest.skip("the page cache does not let go of the file here")
        est = read()
        read_now = _page_cache_bytes(data) - before
        assert est.bytes > 100_000_000
        # Headers only: SmolLM2's safetensors header is 30 KB of a 538 MB file; the GGUF
        # header (with its 49k-token vocabulary) 1.8 MB of 98 MB; the kernel reads ahead
        # of what is touched (8 MB here): reading the tensors would cache all of the file.
        assert read_now < 16 * 2**20 and read_now < 0.25 * data.stat().st_size, (data, read_now)


def test_load_card_shows_the_fit_verdict(tiny_model_dir):
    _, card = llm_magic.load_with_card(str(tiny_model_dir), device_map="cpu", dtype="bfloat16")
    assert card.fit.startswith("fits on cpu: needs 284 KB, ") and card.fit.endswith(" free")
    assert "fit check" in card.text()


def test_does_not_fit_fails_before_loading_with_fixes(shell, tiny_model_dir, tmp_path, monkeypatch):
    other = shutil.copytree(tiny_model_dir, tmp_path / "other")
    shell.user_ns["path"], shell.user_ns["other"] = str(tiny_model_dir), str(other)
    ok(shell, "%llm_load $other --as resident --dtype bfloat16")
    calls = []
    real_load_model = transformers_load.load_model
    monkeypatch.setattr(
        transformers_load, "load_model", lambda *a, **k: calls.append(a) or real_load_model(*a, **k)
    )
    # The narrowest boundary: the machine reports almost no free RAM.
    monkeypatch.setattr(hardware, "free_ram_bytes", lambda: 1_000_000)

    error = failed(shell, "%llm_load $path --dtype float32 --device-map cpu")

    assert isinstance(error, LoadError) and calls == []
    text = "\n".join(error._render_traceback_())
    assert "will not fit in memory" in text
    assert "does not fit: needs 568 KB + 128 MB headroom, 1 MB free" in text
    assert "--dtype bfloat16 halves it to 284 KB" in text
    assert "%llm_unload resident frees 284 KB" in text
    assert "--force" in text
    assert len(MODEL_CACHE) == 1

    card = ok(shell, "%llm_load $path --dtype float32 --device-map cpu --force")
    assert len(calls) == 1 and "loading anyway (--force)" in card.fit


def test_fit_verdicts_for_gpus_as_data():
    est = sizing.Estimate(10 * 10**9, 5 * 10**9, "bfloat16", "safetensors", (), 0)
    need = est.needed
    gpu = {"cuda:0": need + 1}
    assert sizing.check_fit(est, "cuda", 64 * 10**9, gpu, "auto").message.startswith(
        "fits on cuda:0: needs 10.0 GB"
    )
    small = {"cuda:0": need - 3 * 10**9}
    fit = sizing.check_fit(est, "cuda", 64 * 10**9, small, "auto")
    assert (
        fit.fits
        and fit.offload_bytes == 3 * 10**9
        and fit.message.startswith("will offload 3.0 GB to cpu — generation slower")
    )
    fit = sizing.check_fit(est, "cuda", 64 * 10**9, small, "cuda:0")
    assert not fit.fits and fit.message.startswith("does not fit on cuda:0: needs 10.0 GB")
    fit = sizing.check_fit(est, "cuda", 1 * 10**9, small, "auto")
    assert not fit.fits and fit.message.startswith("does not fit: needs 10.0 GB")
    # What the budget will unload first counts as free.
    assert sizing.check_fit(est, "cuda", 0, small, "cuda:0", {"cuda:0": 3 * 10**9}).fits


def test_parse_bytes():
    assert sizing.parse_bytes("8GB") == 8 * 10**9
    assert sizing.parse_bytes("8 GiB") == 8 * 2**30
    assert sizing.parse_bytes("512mb") == 512 * 10**6
    assert sizing.parse_bytes(1234) == 1234 and sizing.parse_bytes("") == 0
    with pytest.raises(ValueError):
        sizing.parse_bytes("eight")


# ------------------------------------------------------------------------------- notebook


def test_memory_notebook_runs(smollm2_gguf):
    import sys

    sys.path.insert(0, str(EXAMPLES))
    from run_notebook import cell_text, run

    notebook = run(EXAMPLES / "memory.ipynb")
    shown = {c.get("id"): cell_text(c) for c in notebook.cells if c.cell_type == "code"}
    text = "\n".join(shown.values())
    assert "Traceback" not in text and "Error" not in text, text
    assert "2 models cached" in shown["list-two"], shown["list-two"]
    assert "float32" in shown["list-two"] and "bfloat16" in shown["list-two"]
    assert shown["unload"].startswith(
        "✓ unloaded SmolLM2-135M-Instruct.Q4_1.gguf (transformers float32, as big)"
    ), shown["unload"]
    assert "RSS" in shown["unload"]
    assert "model is gone: True" in shown["weakref"]
    assert "1 model cached" in shown["list-one"]
    assert "cache       new" in shown["reload"] and "fit check" in shown["reload"]
    assert "unloaded big" in shown["budget"] and "budget of 1 model" in shown["budget"]
    assert "1 model cached" in shown["list-budget"] and "budget: 1 model" in shown["list-budget"]
    assert "cached after %unload_ext: 0" in shown["unload-ext"]


def test_budget_from_ipython_config_applies_when_the_extension_loads(shell):
    ok(shell, "%unload_ext llm_magic")
    shell.config.LLMMagics.max_models = 3
    shell.config.LLMMagics.memory_budget = "2GB"
    ok(shell, "%load_ext llm_magic")
    assert (MODEL_CACHE.max_models, MODEL_CACHE.memory_budget) == (3, 2 * 10**9)


def test_unload_ext_says_what_it_freed_in_one_line_and_removes_the_magics(shell, tiny_model_dir):
    from IPython.core.error import UsageError
    from IPython.utils.capture import capture_output

    ok(shell, f"%llm_load {tiny_model_dir} --quiet")
    size = MODEL_CACHE.total_bytes()
    with capture_output() as out:
        ok(shell, "%unload_ext llm_magic")
    from llm_magic.units import format_bytes

    assert out.stdout.splitlines() == [
        f"llm_magic unloaded: 1 model, {format_bytes(size)} freed; "
        "%load_ext llm_magic to use it again"
    ]
    for line in ("%llm_load x", "%llm_models", "%%llm_generate\nhi"):
        with capture_output():
            result = shell.run_cell(line)
        assert isinstance(result.error_in_exec, UsageError), line  # the magics are gone
    ok(shell, "%load_ext llm_magic")  # and come back
    ok(shell, "%llm_models")


def test_one_name_for_two_cached_models_asks_which(shell, tiny_model_dir):
    from IPython.utils.capture import capture_output

    from llm_magic import GenerationError, LLMError

    ok(shell, f"%llm_load {tiny_model_dir} --dtype float32 --quiet")
    ok(shell, f"%llm_load {tiny_model_dir} --dtype bfloat16 --as half --quiet")
    for line, error_type in (
        ("%llm_unload tiny-gpt2", LLMError),
        ("%%llm_generate -m tiny-gpt2 --max-new-tokens 2\nHi", GenerationError),
    ):
        with capture_output() as out:
            result = cell(shell, line)
        assert isinstance(result.error_in_exec, error_type), line
        assert "2 cached models have that name" in out.stdout
        assert "float32 on cpu" in out.stdout and "bfloat16 on cpu (as half)" in out.stdout
    assert len(MODEL_CACHE) == 2  # nothing unloaded on a guess
    card = ok(shell, "%llm_unload half")  # an alias names one
    assert len(card.models) == 1 and len(MODEL_CACHE) == 1
    assert (
        card.title() == "unloaded tiny-gpt2 (transformers bfloat16, as half)"
    )  # which of the two, said
    ok(shell, "%llm_unload tiny-gpt2")  # one left: no question


def test_llm_models_stays_narrow_and_marks_a_default_only_when_there_is_one(shell, tiny_model_dir):
    ok(shell, f"%llm_load {tiny_model_dir} --as first --dtype float32 --quiet")
    ok(shell, f"%llm_load {tiny_model_dir} --as second --quiet")
    text = ok(shell, "%llm_models").text()
    table = text.split("\n2 models cached")[0]
    assert str(tiny_model_dir) not in table and "tiny-gpt2" in table  # the short name in the table
    assert max(len(line) for line in table.splitlines()) <= 100
    assert f"from tiny-gpt2: {tiny_model_dir}" in text  # the full path, under it
    assert "(* = default" in text
    html = ok(shell, "%llm_models")._repr_mimebundle_()["text/html"]
    assert f"title='{tiny_model_dir}'" in html and "white-space:nowrap" in html
    ok(shell, "%llm_unload second")  # the default goes: the * moves to the one generate uses
    text = ok(shell, "%llm_models").text()
    marked = [line for line in text.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and "first" in marked[0] and "(* = default" in text
