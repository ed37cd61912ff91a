#!/usr/bin/env bash
# The main job on the embedded default: install, then a whole travel job on the tiny model (SQLite, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/wan-worker demo "$@"
