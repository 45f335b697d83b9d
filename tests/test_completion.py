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


def test_chat_completes_flags_models_and_conversations(shell, tiny_model_dir):
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --as tiny --device-map cpu --quiet")
    from llm_magic.conversations import CONVERSATIONS

    CONVERSATIONS.open("talk")
    CONVERSATIONS.open("travel")
    assert "--retry" in offered(shell, "%llm_chat --re")
    assert "--new" in offered(shell, "%%llm_chat --n")
    assert offered(shell, "%%llm_chat -m ti") == ["tiny", tiny_model_dir.name]
    assert offered(shell, "%%llm_chat --as t") == ["talk", "travel"]
    assert offered(shell, "%llm_chat --show tr") == ["travel"]
    assert offered(shell, "%llm_models --") == ["--disk"]


def test_engine_quantize_and_device_map_values(shell):
    assert offered(shell, "%llm_load x --engine ") == ["transformers", "llama.cpp"]
    assert offered(shell, "%llm_load x --quantize ") == ["nf4", "fp4", "int8"]
    maps = offered(shell, "%llm_load x --device-map ")
    assert maps[:2] == ["auto", "cpu"]
    import torch

    assert ("cuda" in maps) == (torch.version.cuda is not None and torch.cuda.is_available())


def test_over_offers_the_collections_in_the_namespace(shell):
    shell.user_ns.update(
        questions=["a", "b"], table={"x": 1}, word="text", count=3, rows=(1, 2), _hidden=[1]
    )
    assert offered(shell, "%%llm_generate --over ") == ["questions", "rows", "table"]
    assert offered(shell, "%%llm_generate --over q") == ["questions"]


def test_unload_disk_offers_the_copies(shell, tmp_path, monkeypatch, tiny_model_dir):
    from test_discovery import fake_conversion

    monkeypatch.setenv("LLM_MAGIC_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    folder = fake_conversion(gguf, "bfloat16", tiny_model_dir)
    assert offered(shell, "%llm_unload --disk ") == [folder.name, "model.gguf"]
    assert offered(shell, "%llm_unload --disk model.") == ["model.gguf"]


def test_paths_after_dot_slash(shell, tmp_path, monkeypatch):
    (tmp_path / "model_folder").mkdir()
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert offered(shell, "%llm_load ./") == ["./model.gguf", "./model_folder/"]
    assert offered(shell, "%llm_load ./model_f") == ["./model_folder/"]


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
