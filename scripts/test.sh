#!/usr/bin/env bash
# The whole test suite (what CI runs). Installs everything first.
# Pass pytest options through, e.g. `bash scripts/test.sh -m "not slow"` (quick tier).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
"${VENV:-.venv}/bin/ruff" check --quiet .  # pyflakes, pycodestyle, bugbear: pyproject [tool.ruff]
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
