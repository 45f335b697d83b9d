"""Imported by Python at start-up in subprocesses of the test session (tests/conftest.py puts
this folder on their PYTHONPATH): installs tests/support/network_guard.py's guard there too,
so a kernel or worker that tried to reach another machine is refused and reported to the
test."""

import importlib.util
import os
import sys
from pathlib import Path

if os.environ.get("LLM_MAGIC_NETWORK_GUARD_LOG"):
    # Loaded by file, under a private name: the subprocess's sys.path stays as it was.
    _spec = importlib.util.spec_from_file_location(
        "_llm_magic_network_guard", Path(__file__).parents[1] / "network_guard.py"
    )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _module
    _spec.loader.exec_module(_module)
    _module.install_in_subprocess()
