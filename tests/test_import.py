"""`import llm_magic` and `%load_ext llm_magic` stay light: no torch, no transformers."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "accelerate")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(out.stdout.split())


def test_import_does_not_import_torch_or_transformers():
    loaded = _modules_after("import llm_magic")
    assert "llm_magic" in loaded
    assert not loaded & set(HEAVY)


def test_load_ext_does_not_import_torch_or_transformers():
    loaded = _modules_after(
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'llm_magic')\n"
        "assert 'llm_load' in ip.magics_manager.magics['line']"
    )
    assert "llm_magic.magics" in loaded
    assert not loaded & set(HEAVY)
