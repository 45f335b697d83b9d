#!/usr/bin/env bash
# The main job: set up (if needed), then run examples/quickstart.ipynb in a real Jupyter
# kernel on the embedded default model (SmolLM2-135M-Instruct) and print its outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/run_notebook.py "${1:-examples/quickstart.ipynb}"
