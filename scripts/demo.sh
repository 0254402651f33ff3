#!/usr/bin/env bash
# The main job on the embedded default: local Ray, local storage, synthetic data, a
# tiny model. Installs everything first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${VENV:-.venv}/bin/optical-ray" demo "$@"
