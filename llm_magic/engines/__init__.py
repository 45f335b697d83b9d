"""Engines: where the tokens come from.

A cached model is served by an engine. Everything around it — prompt filling, settings,
the streaming display, Ctrl-C, results, error cards, the cache — is shared
(`generation.py`, `loader.py`, `api.py`, `magics/`) and never asks which engine it has.
An engine loads its model (`Loader`: plan, load, card) and answers one question: given the
prompt (chat messages, or raw text) and the settings, stream text pieces, then report the
tokens and why it stopped; and it can be interrupted. What it offers beyond that, it
declares (`Capabilities`).

- `transformers` (transformers.py, transformers_load.py): the model lives in the kernel
  (`handle.model` is a torch module).
- `llama.cpp` (llama_cpp.py): a .gguf run as it is, quantized, in the kernel.
- `server` (server.py, server_probe.py): an OpenAI-compatible server.

`registry.py` names them; `base.py` holds the interface and the plain data crossing it.
"""

from .base import (
    Budget,
    CacheKey,
    Capabilities,
    Completion,
    Engine,
    Loaded,
    Loader,
    LoadOptions,
    LoadReport,
    ModelInfo,
    Plan,
    ProgressCallback,
    Rendered,
    Request,
    Run,
    TextCallback,
)

__all__ = [
    "Budget",
    "CacheKey",
    "Capabilities",
    "Completion",
    "Engine",
    "LoadOptions",
    "LoadReport",
    "Loaded",
    "Loader",
    "ModelInfo",
    "Plan",
    "ProgressCallback",
    "Rendered",
    "Request",
    "Run",
    "TextCallback",
]
