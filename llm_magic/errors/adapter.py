"""The adapter catalogue: failures while putting an adapter on a loaded model
(`--adapter`, `%llm_adapter load`) that the checks before it did not catch (those raise
LoadError directly: a missing config, another base model's shapes, a rank the weights do
not have, peft missing).

context: model (the base), adapter (its name), path, method.
"""

from __future__ import annotations

from .card import Diagnosis, LoadError
from .rules import Catalogue, Context, Rule, pattern


def _what(ctx: Context) -> str:
    return f"could not put adapter {ctx.get('adapter') or '?'} on {ctx.get('model') or 'the model'}"


def _shape(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _what(ctx),
        "a rank or shape mismatch: the adapter's weights are not the sizes its layers in this "
        "model take (an adapter for another base model, or a config saved with other weights)",
        [
            "load the base model the adapter was made for (adapter_config.json's "
            "base_model_name_or_path)",
            "save the adapter again with PeftModel.save_pretrained(FOLDER)",
        ],
    )


def _targets(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _what(ctx),
        "the modules the adapter adapts are not in this model: an adapter for another base model",
        [
            "load the base model the adapter was made for (adapter_config.json's "
            "base_model_name_or_path)"
        ],
    )


def _missing(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _what(ctx),
        f"a package it needs is missing: {getattr(exc, 'name', None) or exc}",
        ['pip install "llm_magic[adapters]"', "then restart the kernel"],
    )


ADAPTER = Catalogue(
    rules=(
        Rule("missing_module", ("builtins.ImportError",), _missing),
        Rule("shape", ("builtins.RuntimeError",), _shape, pattern(r"size mismatch|shape")),
        Rule("shape_value", ("builtins.ValueError",), _shape, pattern(r"size mismatch|shape")),
        Rule(
            "targets",
            ("builtins.ValueError",),
            _targets,
            pattern(r"target modules .* not found|not found in the base model"),
        ),
    ),
    error_class=LoadError,
    what=_what,
)
