#!/usr/bin/env bash
# Creates (or reuses) .venv and installs crossway with the given extras. Safe to run any number of times.
# torch 2.13.0 is installed first, on its own, so no other requirement can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.crossway-$extras-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v "^WARNING: Location" || true
  if [ "$extras" = dev ]; then  # openai-whisper for the log-mel parity tests, without triton (GPU kernels, 1 GB)
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "openai-whisper==20250625" 2>&1 \
      | grep -v "^WARNING: Location" || true
  fi
  .venv/bin/python -c "import torch, crossway; assert torch.__version__.startswith('2.13.0'), torch.__version__"
  touch "$stamp"
fi
