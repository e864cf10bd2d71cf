#!/usr/bin/env bash
# Set up with the test tools, then run the default test pass and the slow (learning-target) tests.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test ./scripts/setup.sh
export NO_ALBUMENTATIONS_UPDATE=1
.venv/bin/python -m pytest -q "$@"
.venv/bin/python -m pytest -q -m slow "$@"
