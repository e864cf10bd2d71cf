#!/usr/bin/env bash
# Smoke-test the compose stack on a machine with a Docker engine: build, start every service,
# wait until each is healthy, call each one with the cvtasks client, check the metrics, stop.
#
#   ./scripts/compose_smoke.sh            # GPU host (NVIDIA Container Toolkit)
#   ./scripts/compose_smoke.sh --cpu      # CPU-only host (adds docker-compose.cpu.yml)
#
# Needs ./model_store with a model of each task (`cvtasks demo --out demo_output && cp -r
# demo_output/model_store .`) and the local venv (./scripts/setup.sh) for the client.
# BASE_IMAGE=... picks another base image for the build (e.g. one built locally when no registry
# is reachable); the default is the Dockerfile's CUDA runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
files=(-f docker-compose.yml)
if [ "${1:-}" = "--cpu" ]; then files+=(-f docker-compose.cpu.yml); fi
compose() { docker compose "${files[@]}" "$@"; }
CLI=.venv/bin/cvtasks
for task in detection segmentation captioning generation classification; do
  if ! grep -qs "\"task\": \"$task\"" model_store/*/config.json; then
    echo "model_store has no $task model; run: cvtasks demo --out demo_output && cp -r demo_output/model_store ." >&2
    exit 2
  fi
done
# The services run as uid 10001 with ./model_store mounted read-only: everything in it must be
# readable by others (the model files are written owner-only, 0600).
if [ -n "$(find -L model_store \( -type f ! -perm -o+r \) -o \( -type d ! -perm -o+rx \) | head -n 1)" ]; then
  echo "model_store is not readable by the containers' user (uid 10001); run: chmod -R a+rX model_store" >&2
  exit 2
fi

if [ -n "${BASE_IMAGE:-}" ]; then docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" -t cvtasks:latest .; fi
compose up -d $([ -z "${BASE_IMAGE:-}" ] && echo --build)
trap 'compose logs --tail 50; compose down' EXIT

deadline=$((SECONDS + ${SMOKE_TIMEOUT_S:-600}))
for service in detection segmentation captioning generation classification; do
  id=$(compose ps -q "$service")
  until [ "$(docker inspect --format '{{.State.Health.Status}}' "$id")" = healthy ]; do
    if [ $SECONDS -gt $deadline ]; then echo "$service did not become healthy" >&2; exit 1; fi
    if [ "$(docker inspect --format '{{.RestartCount}}' "$id")" != 0 ]; then
      echo "$service crashed and was restarted (its logs follow)" >&2; exit 1
    fi
    sleep 5
  done
  echo "$service: healthy"
done

work=$(mktemp -d)
.venv/bin/python -c "
from models.synth import generate_shapes
generate_shapes('$work', splits={'test': 2}, image_size=128, seed=0)"
image="$work/images/test/000001.png"
$CLI detect "$image" --server localhost:50051 > "$work/detect.json"
$CLI segment "$image" --server localhost:50052 --out "$work/seg" > /dev/null
$CLI caption "$image" --server localhost:50053 > "$work/caption.json"
$CLI generate --count 4 --server localhost:50054 --out "$work/gen" > /dev/null
$CLI classify "$image" --server localhost:50055 > "$work/classify.json"
# The detect call above must be counted (the health checks alone make cvtasks_requests_total lines
# too). Saved first: `curl | grep -q` fails under pipefail when grep exits before curl has written all.
curl -fsS localhost:9464/metrics > "$work/metrics.txt" || { echo "no metrics on :9464" >&2; exit 1; }
grep -q '^cvtasks_requests_total{method="/cvtasks.v1.DetectionService/' "$work/metrics.txt" \
  || { echo "the Detect call is not in the metrics on :9464" >&2; exit 1; }
echo "detections: $(.venv/bin/python -c "import json; print(len(json.load(open('$work/detect.json'))[0]['detections']))")"
echo "caption: $(.venv/bin/python -c "import json; print(json.load(open('$work/caption.json'))[0]['captions'][0]['text'])")"
echo "class: $(.venv/bin/python -c "import json; print(json.load(open('$work/classify.json'))[0]['labels'][0]['class'])")"
echo "compose smoke test passed"
