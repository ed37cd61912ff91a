#!/usr/bin/env bash
# The test command: make sure Postgres is up, install the project with its test extras, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
bash scripts/install.sh
.venv/bin/pip install -q -e ".[dev]"
# torchvision's RAFT, the reference of ours (tests/test_raft.py): unpacked beside the venv, not installed
# (its compiled operators do not load with the CPU torch, and transformers would import it).
if [ ! -d .venv/reference/torchvision ]; then
  .venv/bin/pip download -q --no-deps "torchvision==0.28.0" -d .venv/reference/wheels
  .venv/bin/python -m zipfile -e .venv/reference/wheels/torchvision-0.28.0-*.whl .venv/reference/
fi
exec .venv/bin/python -m pytest -q "$@"
