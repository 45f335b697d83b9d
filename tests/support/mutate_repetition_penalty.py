"""A held-out mutation, as a pytest plugin: every `generate` call llm_magic makes gets
`repetition_penalty=1.05` (plain `model.generate` calls from the tests are left alone).

The equality tests must fail with it and pass without it:

    PYTHONPATH=tests python -m pytest -p support.mutate_repetition_penalty \
        tests/test_generation.py -k equals

Never loaded unless asked for with `-p`.
"""

from __future__ import annotations

import sys

from transformers.generation.utils import GenerationMixin

PENALTY = 1.05
_plain_generate = GenerationMixin.generate


def _generate_with_penalty(self, *args, **kwargs):
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller == "llm_magic" or caller.startswith("llm_magic."):
        kwargs["repetition_penalty"] = PENALTY
    return _plain_generate(self, *args, **kwargs)


def pytest_configure(config):
    GenerationMixin.generate = _generate_with_penalty


def pytest_unconfigure(config):
    GenerationMixin.generate = _plain_generate
