#!/usr/bin/env bash
# The GPU suite (docs/engine.md, "GPU"): one H200, under 8 minutes, JSON lines on stdout.
#
#   bash bench/gpu_suite.sh            # on the GPU machine, from anywhere in the repository
#   bash bench/gpu_suite.sh --tiny     # the same code paths at tiny sizes on the CPU (about a minute)
#
# Runs bench/gpu.py (forward modes at 480p/720p, a whole Wan 2.2 14B VACE segment in bf16 and fp8,
# fp8 under 48 and 24 GiB budgets, diffusers where installed) with the machine's python3 and its
# torch (or .venv's where present) unless PYTHON is set; downloads nothing (random weights at the real shapes). Optional wheels
# (sageattention for the 8-bit attention backend, diffusers for the reference forward) are
# installed from $WHEELS_DIR with --no-deps --no-index when it is set. The JSON lines are also
# written to $OUT/gpu_suite.jsonl (OUT defaults to /tmp), the environment to gpu_suite_env.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then  # the project's venv where there is one (a developer box), else the machine's
    PYTHON=python3
    [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
OUT=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
# compiled kernels are cached across runs of the suite on one machine, as the engine does under --models-dir
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$OUT/inductor_cache}

if [ -n "${WHEELS_DIR:-}" ]; then
    "$PYTHON" -m pip install -q --no-deps --no-index "$WHEELS_DIR"/*.whl
fi
"$PYTHON" - >"$OUT/gpu_suite_env.json" <<'PY'
import importlib.util, json, platform, torch
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__,
    "cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    "packages": {name: importlib.util.find_spec(name) is not None for name in ("sageattention", "diffusers", "torchao")},
}))
PY
cat "$OUT/gpu_suite_env.json"
# 470 s for the Python side: it starts no new measurement after 410 s (skipped ones are listed), in
# the order segment (bf16, fp8, 48 GiB, 24 GiB), forward 480p, forward 720p, diffusers
timeout 470 "$PYTHON" bench/gpu.py --max-seconds 410 "$@" | tee "$OUT/gpu_suite.jsonl"
