#!/usr/bin/env bash
# Set up, then run the main job on the embedded default: synthetic data -> train a quickstart
# detector on CPU -> serve it over gRPC -> detect held-out images -> annotated images + JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/cvtasks demo --out "${1:-demo_output}"
