#!/usr/bin/env bash
# The whole test suite (what CI runs). Installs everything first.
# Pass pytest options through, e.g. `bash scripts/test.sh -m "not slow"` (quick tier).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Lint (pyflakes, pycodestyle, bugbear) and format: pyproject's [tool.ruff]
"${VENV:-.venv}/bin/ruff" check --quiet .
"${VENV:-.venv}/bin/ruff" format --check --quiet .
# The docs site (mkdocs.yml): a broken link, a missing page or an unresolved reference fails
"${VENV:-.venv}/bin/mkdocs" build --strict --quiet --site-dir site
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
