#!/usr/bin/env bash
# Smoke tests of the built images, run by .github/workflows/containers.yml (needs docker and curl):
#
#   containers/smoke.sh serve IMAGE              train a tiny model with the serving image itself
#                                                (offline, no download), serve it, then /healthz,
#                                                /readyz, one /predict of 60 texts, and SIGTERM:
#                                                the drain must end with exit status 0
#   containers/smoke.sh drift IMAGE              sent drift --fail-on-drift over that prediction log
#                                                and the tiny model's reference: a verdict (exit 0
#                                                or 4), not an error (1, 2) or too little data (5)
#   containers/smoke.sh train IMAGE              sent fetch + sent train --launch auto on the CPU
#
# IMAGE is an image ID or IMAGE@sha256:... (what the build step handed on). `serve` must run before
# `drift`: they share the work folder SMOKE_DIR (default ./smoke-work).
set -euo pipefail

kind=${1:?usage: containers/smoke.sh serve|drift|train IMAGE}
image=${2:?usage: containers/smoke.sh serve|drift|train IMAGE}
work=$(realpath -m "${SMOKE_DIR:-smoke-work}")
port=${SMOKE_PORT:-18080}
name="sent-smoke-$$"
mkdir -p "$work"
chmod 777 "$work"  # the images run as uid 10001

in_image() {  # in_image ENTRYPOINT ARGS...: run one sent step in the work folder
  local entry=$1
  shift
  docker run --rm -v "$work:/work" -w /work -e HOME=/tmp --entrypoint "$entry" "$image" "$@"
}

wait_for() {  # wait_for PATH SECONDS: until GET PATH answers 200
  local path=$1 deadline=$((SECONDS + $2))
  until curl -fsS "http://127.0.0.1:$port$path" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "smoke: $path did not answer 200 within $2 s" >&2
      docker logs "$name" >&2 || true
      return 1
    fi
    sleep 1
  done
}

case "$kind" in
  serve)
    in_image sent fetch --profile tiny
    in_image sent train --profile tiny
    in_image sent eval --profile tiny   # the drift reference for the drift image
    docker run -d --name "$name" -p "127.0.0.1:$port:8080" -v "$work:/work" -w /work -e HOME=/tmp \
      "$image" --profile tiny --model models/candidate --set paths.prediction_log=/work/logs/predictions
    trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
    wait_for /healthz 60
    wait_for /readyz 180
    texts=$(python3 -c 'import json; print(json.dumps({"texts": ["a moving, beautifully acted film", "a dull mess"] * 30}))')
    answer=$(curl -fsS -X POST "http://127.0.0.1:$port/predict" -H 'Content-Type: application/json' -d "$texts")
    python3 -c 'import json, sys; body = json.loads(sys.argv[1]); assert len(body["predictions"]) == 60, body; print("smoke: /predict", body["predictions"][0], body["model"])' "$answer"
    docker stop --time 10 "$name" >/dev/null   # SIGTERM, then SIGKILL after 10 s, as on Cloud Run
    status=$(docker inspect --format '{{.State.ExitCode}}' "$name")
    docker logs "$name" 2>&1 | tail -n 5
    if [ "$status" != 0 ]; then
      echo "smoke: sent serve exited $status after SIGTERM, not 0 (a clean drain)" >&2
      exit 1
    fi
    ;;
  drift)
    status=0
    docker run --rm -v "$work:/work" -w /work -e HOME=/tmp "$image" --profile tiny --model models/candidate \
      --current /work/logs/predictions --output-dir /work/reports/drift --fail-on-drift || status=$?
    if [ "$status" != 0 ] && [ "$status" != 4 ]; then
      echo "smoke: sent drift exited $status; expected a verdict (0 no drift, 4 drift)" >&2
      exit 1
    fi
    test -s "$work/reports/drift/drift.json"
    ;;
  train)
    in_image sent fetch --profile tiny
    docker run --rm -v "$work:/work" -w /work -e HOME=/tmp "$image" --profile tiny
    test -s "$work/models/candidate/sent.json"
    ;;
  *)
    echo "usage: containers/smoke.sh serve|drift|train IMAGE" >&2
    exit 2
    ;;
esac
echo "smoke: $kind image OK"
