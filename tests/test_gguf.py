"""The real SmolLM2-135M-Instruct .gguf: converted once, then loaded by the fast path,
also from a new process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import llm_magic
from llm_magic.loading import converted_folder

pytestmark = pytest.mark.slow


def test_gguf_converts_once_and_a_new_process_reuses_it(smollm2_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_MAGIC_CACHE", str(tmp_path / "cache"))
    messages: list[str] = []
    handle, card = llm_magic.load_with_card(
        smollm2_gguf, dtype="bfloat16", progress=messages.append
    )
    target = converted_folder(smollm2_gguf, "bfloat16")
    assert any("converting" in m for m in messages)
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()
    text = card.text()
    assert "SmolLM2-135M-Instruct.Q4_1.gguf  →  LlamaForCausalLM" in text
    assert f"converted   from {smollm2_gguf}" in text
    assert "134.5 M" in text and "device      cpu" in text and "dtype       bfloat16" in text
    assert handle.tokenizer.chat_template  # the instruct template survived the conversion
    stamp = (target / "model.safetensors").stat().st_mtime_ns

    second = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, llm_magic\n"
            "msgs = []\n"
            "h, card = llm_magic.load_with_card("
            "sys.argv[1], dtype='bfloat16', progress=msgs.append)\n"
            "print(json.dumps({'messages': msgs, 'source': h.info.source, 'card': card.text()}))",
            smollm2_gguf,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
        check=True,
    )
    report = json.loads(second.stdout.strip().splitlines()[-1])
    assert not any("converting" in m for m in report["messages"])
    assert report["source"] == str(target)
    assert "cache       new" in report["card"]
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp  # not written again
