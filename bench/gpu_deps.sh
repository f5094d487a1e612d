#!/usr/bin/env bash
# Prepare .gpu-deps/ (git-ignored): the few pure-Python packages the engine's checks import beyond torch,
# transformers and peft, for a bare GPU machine without internet. Carry it with the device tool's
# `carry: [".gpu-deps"]`; bench/gpu_check.sh puts it on PYTHONPATH. About 8 MB.
set -eu
cd "$(dirname "$0")/.."
rm -rf .gpu-deps
python -m pip install -q --no-deps --target .gpu-deps --python-version 3.11 --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  "pydantic==$(python -c 'import pydantic; print(pydantic.VERSION)')" \
  "pydantic-core==$(python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
  "pydantic-settings==$(python -c 'import importlib.metadata as m; print(m.version("pydantic-settings"))')" \
  annotated-types typing-inspection python-dotenv \
  "pytest==$(python -c 'import pytest; print(pytest.__version__)')" pluggy iniconfig
du -sh .gpu-deps
