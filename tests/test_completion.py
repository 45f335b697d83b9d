"""Tab completion of the magics' arguments, asked through IPython's own completer API
(`shell.Completer.completions`), as a terminal or Jupyter asks it."""

from __future__ import annotations

from IPython.core.completer import provisionalcompleter
from support.hub_server import HOLDOUT, TWO_REVS, V1

from llm_magic.magics import completion


def offered(shell, text: str) -> list[str]:
    with provisionalcompleter():
        return [c.text for c in shell.Completer.completions(text, len(text))]


def test_llm_load_offers_the_cached_hub_ids(shell, written_cache):
    assert offered(shell, "%llm_load holdout-") == [HOLDOUT]
    assert TWO_REVS in offered(shell, "%llm_load discovery-tests/")
    assert offered(shell, "%llm_load discovery-tests/two") == [TWO_REVS]


def test_completion_replaces_the_typed_fragment(shell, written_cache):
    text = "x = 1\n%llm_load holdout-"
    with provisionalcompleter():
        [c] = [c for c in shell.Completer.completions(text, len(text)) if c.text == HOLDOUT]
    assert text[: c.start] + c.text == "x = 1\n%llm_load " + HOLDOUT


def test_generate_m_and_unload_offer_aliases_and_short_names(shell, tiny_model_dir):
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --as tiny --device-map cpu --quiet")
    assert offered(shell, "%%llm_generate -m ") == [
        "tiny",
        str(tiny_model_dir),
        tiny_model_dir.name,
    ]
    assert offered(shell, "%%llm_generate --max-new-tokens 5 --model ti") == [
        "tiny",
        tiny_model_dir.name,
    ]
    assert offered(shell, "%llm_unload t") == ["tiny", tiny_model_dir.name]
    assert "tiny" not in offered(shell, "%%llm_generate --out ")  # a variable name, not a model


def test_flag_names_and_values(shell, written_cache):
    assert offered(shell, "%llm_load --dt") == ["--dtype"]
    assert {"--device-map", "--revision", "--as", "--reload"} <= set(
        offered(shell, "%llm_load x --")
    )
    assert offered(shell, f"%llm_load {TWO_REVS} --dtype bf") == ["bfloat16", "bf16"]
    assert set(offered(shell, f"%llm_load {TWO_REVS} --revision ")) == {"main", "v1", "a" * 40, V1}
    assert "--greedy" in offered(shell, "%%llm_generate --gr")
    assert offered(shell, "%llm_unload --a") == ["--all"]


def test_paths_offer_folders_and_gguf_files(shell, tmp_path):
    (tmp_path / "model_folder").mkdir()
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / ".hidden").mkdir()
    assert offered(shell, f"%llm_load {tmp_path}/") == [
        f"{tmp_path}/model.gguf",
        f"{tmp_path}/model_folder/",
    ]
    assert offered(shell, f"%llm_load {tmp_path}/.h") == [f"{tmp_path}/.hidden/"]


def test_other_lines_are_left_to_ipython(shell):
    shell.user_ns["llm_variable"] = 1
    assert "llm_variable" in offered(shell, "llm_var")
    assert "%llm_load" in offered(shell, "%llm_lo")


def test_unload_ext_removes_the_matcher(shell):
    ids = lambda: [getattr(m, "matcher_identifier", None) for m in shell.Completer.custom_matchers]  # noqa: E731
    assert ids().count(completion.IDENTIFIER) == 1
    shell.run_line_magic("reload_ext", "llm_magic")
    assert ids().count(completion.IDENTIFIER) == 1
    shell.run_line_magic("unload_ext", "llm_magic")
    assert completion.IDENTIFIER not in ids()
    shell.run_line_magic("load_ext", "llm_magic")  # the fixture unloads it again


def test_m_offers_each_of_several_names_and_the_adapters(shell, tiny_model_dir, tmp_path):
    from support.tiny_model import build_tiny_lora

    lora = build_tiny_lora(tiny_model_dir, tmp_path / "lora")
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --as tiny --adapter q={lora} --quiet")
    assert offered(shell, "%%llm_generate -m tiny:") == ["tiny:q", "tiny:base"]
    assert offered(shell, "%%llm_generate -m tiny:base tiny:") == ["tiny:q", "tiny:base"]
    assert "tiny" not in offered(shell, "%%llm_generate -m tiny --greedy ti")  # past -m's words
    assert offered(shell, "%llm_adapter unload ") == ["tiny:q"]
    assert offered(shell, "%llm_adapter li") == ["list"]
    assert offered(shell, "%llm_adapter list -m ti") == ["tiny", tiny_model_dir.name]
    (tmp_path / "other-lora").mkdir()
    assert f"{tmp_path}/other-lora/" in offered(shell, f"%llm_adapter load {tmp_path}/oth")
