#!/usr/bin/env bash
# The fast checks, before the tests: lint, format, types and the layer contracts, each
# named as it runs; the first that fails stops the run. Uses the .venv scripts/setup.sh
# makes (run that first: the README's test command, scripts/test.sh, does).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || { echo "no .venv: run bash scripts/setup.sh first" >&2; exit 1; }
step() {
  local name=$1
  shift
  local started=$SECONDS
  echo "== $name" >&2
  "$@"
  echo "   ok ($((SECONDS - started)) s)" >&2
}
step "ruff check" "$py" -m ruff check llm_magic tests bench
step "ruff format --check" "$py" -m ruff format --check llm_magic tests bench
step "mypy (llm_magic)" "$py" -m mypy
step "layer contracts (tests/test_layers.py)" "$py" tests/test_layers.py
