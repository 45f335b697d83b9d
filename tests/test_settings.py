"""One `Settings` from the magic to the engine, one `LoadOptions` from `%llm_load` to the
loader: the option lists are written once, and the flags, traits and keywords made from
them must not drift apart."""

from __future__ import annotations

import typing
from dataclasses import fields

import pytest

import llm_magic
from llm_magic.engines import registry
from llm_magic.engines.base import LoadKeywords, LoadOptions
from llm_magic.magics import LLMMagics
from llm_magic.settings import (
    GENERATE_OPTIONS,
    OPTIONS,
    SamplingKeywords,
    Settings,
    SettingsKeywords,
    make,
)


def _flags(shell, magic: str, kind: str = "cell") -> set[str]:
    method = shell.magics_manager.magics[kind][magic]
    return {o for action in method.parser._actions for o in action.option_strings}


def test_the_keywords_are_the_fields():
    assert set(typing.get_type_hints(SettingsKeywords)) == {f.name for f in fields(Settings)}
    assert set(typing.get_type_hints(SamplingKeywords)) == {o.name for o in OPTIONS}
    assert set(typing.get_type_hints(LoadKeywords)) == {f.name for f in fields(LoadOptions)} - {
        "model"
    }


def test_every_option_is_a_field_a_flag_and_where_configurable_a_trait(shell):
    settings_fields = {f.name for f in fields(Settings)}
    generate = _flags(shell, "llm_generate")
    chat = _flags(shell, "llm_chat")
    traits = LLMMagics.class_traits(config=True)
    for option in OPTIONS + GENERATE_OPTIONS:
        assert option.name in settings_fields
        assert option.flag in generate
        if option in OPTIONS:
            assert option.flag in chat
        if option.configurable:
            trait = traits[option.name]
            assert option.help in trait.help
            # A trait's 0 stands for "the engine chooses" (None in Settings).
            assert trait.default_value == option.default or option.default is None
        else:
            assert option.name not in traits
    # Every field a cell can set has its option (seed, stop, raw are flags without traits).
    assert settings_fields == {o.name for o in OPTIONS + GENERATE_OPTIONS}


def test_engine_choices_come_from_the_registry(shell):
    method = shell.magics_manager.magics["line"]["llm_load"]
    (engine,) = [a for a in method.parser._actions if "--engine" in a.option_strings]
    assert tuple(engine.choices) == registry.local_names() == ("transformers", "llama.cpp")
    assert tuple(LLMMagics.class_traits()["engine"].values) == registry.local_names()
    with pytest.raises(llm_magic.LoadError, match="--engine vllm: no such engine"):
        llm_magic.load("gpt2", engine="vllm")


def test_flags_and_traits_become_one_settings_value(shell, tiny_model_dir, monkeypatch):
    """What the engine receives: the flag where given, else the notebook's trait."""
    from llm_magic import generation

    seen: list[Settings] = []
    real = generation.generate

    def spy(engine, prompt, settings, **kwargs):
        seen.append(settings)
        return real(engine, prompt, settings, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    shell.run_line_magic("llm_load", f"{tiny_model_dir} --as tiny")
    shell.run_line_magic("config", "LLMMagics.top_k = 7")
    shell.run_line_magic("config", "LLMMagics.system = 'Be brief.'")
    shell.run_cell_magic(
        "llm_generate", "--max-new-tokens 3 --seed 5 --stop '\\n' --temperature 0.5", "Hi"
    )
    assert seen[-1] == Settings(
        max_new_tokens=3,
        temperature=0.5,
        top_k=7,
        seed=5,
        stop=("\n",),
        system="Be brief.",
        concurrency=16,
    )
    shell.run_cell_magic("llm_generate", "--greedy --raw --batch-size 2 --system ''", "Hi")
    assert seen[-1].greedy and seen[-1].raw and seen[-1].batch_size == 2
    assert seen[-1].system is None and seen[-1].top_k == 7


def test_python_api_takes_settings_and_keywords(tiny_model_dir):
    llm_magic.load(str(tiny_model_dir), alias="tiny")
    base = Settings(greedy=True, max_new_tokens=4)
    one = llm_magic.generate("Hello", model="tiny", settings=base)
    two = llm_magic.generate("Hello", model="tiny", settings=base, max_new_tokens=2)
    assert one.new_tokens == 4 and two.new_tokens == 2 and two.settings["greedy"]
    assert one.token_ids[:2] == two.token_ids
    with pytest.raises(TypeError, match="did you mean max_new_tokens"):
        llm_magic.generate("Hello", model="tiny", max_new_token=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="did you mean dtype"):
        llm_magic.load(str(tiny_model_dir), dtpye="float32")  # type: ignore[call-arg]


def test_bad_values_are_refused_before_any_work():
    with pytest.raises(llm_magic.GenerationError, match="--concurrency 0: must be at least 1"):
        make(concurrency=0)
    with pytest.raises(llm_magic.GenerationError, match="--batch-size -1: must be at least 1"):
        make(batch_size=-1)
    assert make(stop="\n\n").stop == ("\n\n",) and make(system="").system is None
