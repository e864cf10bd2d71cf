#!/usr/bin/env bash
# The issue-21 serving suite on a lent GPU, in one command (about 6 minutes; 8 at most: servers not
# started by --budget-s, default 420 s, are left out and said so). Results: benchmarks/results/<device>/
# (<task>.json and summary.md). On a machine without CUDA, or with --quick: the reduced CPU run
# (detection only, 64 images, results in benchmarks/results/cpu-quick/).
#
#   benchmarks/gpu_suite.sh [--quick] [more benchmarks/gpu_suite.py flags]
#
# Python: $PYTHON if set, else .venv/bin/python, else python3 if it already has the project's
# dependencies (torch, torchvision, grpc), else scripts/setup.sh makes .venv (needs the package index).
# Models are random-weight models of the quickstart architectures, built in seconds (speed only).
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
has_deps() { "$1" -c 'import torch, torchvision, grpc, cv2, segmentation_models_pytorch' 2>/dev/null; }
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ] && has_deps .venv/bin/python; then PYTHON=.venv/bin/python
  elif has_deps python3; then PYTHON=python3
  else scripts/setup.sh && PYTHON=.venv/bin/python
  fi
fi
"$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}", flush=True)'
if [[ " $* " != *" --quick "* ]] && ! "$PYTHON" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_suite.sh: no CUDA device here; running the reduced CPU suite (--quick)" >&2
  set -- --quick "$@"
fi
exec "$PYTHON" benchmarks/gpu_suite.py "$@"
