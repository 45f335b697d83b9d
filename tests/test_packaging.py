"""The package as users meet it: a wheel built from the sources, installed into a fresh
virtual environment with the core dependencies only, then `%load_ext llm_magic`, a load
and a generation there, in a new process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the checkout gets no build/ folder)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "llm_magic", src / "llm_magic", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("dist")
    # The running interpreter's setuptools builds it when recent enough (no download);
    # otherwise pip fetches one into an isolated build environment.
    try:
        import setuptools

        isolation = [] if int(setuptools.__version__.split(".")[0]) >= 77 else ["--use-pep517"]
    except ImportError:
        isolation = ["--use-pep517"]
    flags = ["--no-build-isolation"] if not isolation else isolation
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *flags, "-q", "-w", str(out), str(src)],
        check=True,
        timeout=300,
    )
    [built] = out.glob("llm_magic-*.whl")
    return built


def test_wheel_metadata_and_files(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {
        "llm_magic/py.typed",
        "llm_magic/sources/discovery.py",
        "llm_magic/magics/completion.py",
    } <= names
    assert not any(n.startswith("tests/") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert (
        "Classifier: Framework :: IPython" in metadata
        and "Classifier: Framework :: Jupyter" in metadata
    )
    extras = {
        line.split(": ", 1)[1]
        for line in metadata.splitlines()
        if line.startswith("Provides-Extra: ")
    }
    assert {"gguf", "server", "llama-cpp", "quantize", "all"} <= extras
    assert 'Requires-Dist: openai>=1.0; extra == "server"' in metadata


def core_requirements(wheel: Path) -> list[str]:
    """The wheel's own Requires-Dist lines outside any extra."""
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(
            next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        ).decode()
    return [
        line.split(": ", 1)[1]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ") and "extra ==" not in line
    ]


def core_site(requirements: list[str], folder: Path) -> Path:
    """A folder holding (as links into this interpreter's site-packages) exactly the
    distributions `requirements` need, their dependencies included, and nothing else."""
    import importlib.metadata as md
    import re

    from packaging.requirements import Requirement

    folder.mkdir()
    todo, seen = [Requirement(r) for r in requirements], set()
    while todo:
        req = todo.pop()
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key in seen:
            continue
        seen.add(key)
        dist = md.distribution(req.name)  # PackageNotFoundError: set-up lacks a core dependency
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if not (folder / top).exists():
                (folder / top).symlink_to(dist.locate_file(top))
        todo += [
            q
            for q in map(Requirement, dist.requires or [])
            if q.marker is None or q.marker.evaluate({"extra": ""})
        ]
    return folder


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_loads_and_generates(wheel, tmp_path, tiny_model_dir):
    """pip installs the wheel with nothing but its core dependencies in reach. Downloading
    them from PyPI (torch among them) takes more than three minutes, too long for every
    CI run: the fresh venv sees this environment's copies of exactly those distributions
    (and their dependencies) through a .pth, and pip runs with --no-index, so a core
    dependency missing from them fails the install. LLM_MAGIC_TEST_PYPI_INSTALL=1 installs
    them from the package index instead, as a user's pip does."""
    venv = tmp_path / "venv"
    # No pip or setuptools of its own (they would shadow the core's): this pip installs into it.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300
    )
    python = venv / "bin" / "python"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "-c",
        str(REPO / "constraints.txt"),
    ]
    # The wheel, not this checkout: on PYTHONPATH, the checkout (and the llm_magic.egg-info an
    # editable install leaves in it) would make pip call llm_magic installed already.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if os.environ.get("LLM_MAGIC_TEST_PYPI_INSTALL") == "1":
        subprocess.run([*pip, str(wheel)], check=True, timeout=1200, env=env)
    else:
        site = next((venv / "lib").glob("python3*/site-packages"))
        (site / "llm_magic_core_dependencies.pth").write_text(
            f"{core_site(core_requirements(wheel), tmp_path / 'core')}\n"
        )
        subprocess.run([*pip, "--no-index", str(wheel)], check=True, timeout=300, env=env)
    script = textwrap.dedent("""
        import importlib.util, json, sys
        import llm_magic
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "llm_magic")
        card = ip.run_line_magic(
            "llm_load", sys.argv[1] + " --device-map cpu --dtype float32 --as tiny"
        )
        result = ip.run_cell_magic(
            "llm_generate",
            "-m tiny --max-new-tokens 5 --greedy --no-stream",
            "The capital of France",
        )
        extras = ("gguf", "openai", "llama_cpp")
        print(json.dumps({
            "module": llm_magic.__file__, "card": card.text(), "tokens": result.new_tokens,
            "extras": {name: importlib.util.find_spec(name) is not None for name in extras},
        }))
    """)
    out = subprocess.run(
        [str(python), "-c", script, str(tiny_model_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["module"].startswith(str(venv))
    assert result["card"].startswith("✓") and "GPT2LMHeadModel" in result["card"]
    assert 1 <= result["tokens"] <= 5
    assert result["extras"] == {
        "gguf": False,
        "openai": False,
        "llama_cpp": False,
    }  # core dependencies only
