#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install cvtasks into it. Idempotent; EXTRAS=test adds test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "cvtasks needs Python >= 3.11"'
  "$PYTHON" -m venv .venv
fi
export NO_ALBUMENTATIONS_UPDATE=1
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch/torchvision are the CUDA builds (they run on CPU too): a large first download.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${EXTRAS:+[$EXTRAS]}"
