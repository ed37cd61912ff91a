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
exec .venv/bin/python -m pytest -q "$@"
