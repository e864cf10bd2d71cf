#!/usr/bin/env bash
# Set up with the test tools, check style, then run the default test pass and the slow (learning-target) tests.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test ./scripts/setup.sh
./scripts/install-browser.sh  # Debian's chromium + chromium-driver for the browser test
export NO_ALBUMENTATIONS_UPDATE=1 CVTASKS_BROWSER_TESTS=required
# style first: the linter and the formatter ([tool.ruff] in pyproject.toml); `ruff format .` fixes the second
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
.venv/bin/python -m pytest -q -m slow "$@"
