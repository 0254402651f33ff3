#!/usr/bin/env bash
# The whole test suite (what CI runs). Installs everything first.
# Pass pytest options through, e.g. `bash scripts/test.sh -m "not slow"` (quick tier).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Lint (pyflakes, pycodestyle, bugbear) and format: pyproject's [tool.ruff]
"${VENV:-.venv}/bin/ruff" check --quiet .
"${VENV:-.venv}/bin/ruff" format --check --quiet .
# The docs site (mkdocs.yml): a broken link or anchor, a page left out of the nav or an
# unresolved reference fails. Not --quiet: it hides the warnings that --strict counts.
if ! docs_log=$(NO_MKDOCS_2_WARNING=1 "${VENV:-.venv}/bin/mkdocs" build --strict --site-dir site 2>&1); then
    echo "$docs_log" >&2
    exit 1
fi
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
