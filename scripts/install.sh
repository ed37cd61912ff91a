#!/usr/bin/env bash
# Create .venv and install the worker's runtime into it (idempotent). Runtime only: the test and
# reference packages (pytest, diffusers, transformers, ...) come with scripts/test.sh.
# torch goes first, unless .venv already has one: the pinned build by default (the CPU build from this
# repository's local index; the CUDA build from PyPI on a GPU box), or, with TORCH_INDEX_URL set, the
# latest torch from that index (e.g. https://download.pytorch.org/whl/cu128 for CUDA 12.8).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/pip install -q torch --index-url "$TORCH_INDEX_URL"
  else
    .venv/bin/pip install -q "torch==2.13.0"
  fi
fi
.venv/bin/pip install -q -e .
