#!/bin/sh
# Build the router image with no network access during the build:
#   1. the wheels of meshrouter and its dependencies, pinned by
#      deploy/constraints.txt, into build/wheels (pip, on this machine);
#   2. docker build --network none --build-arg BASE=... (see the Dockerfile).
# Environment: BASE (default meshrouter-base:bookworm, see scripts/base-image.sh),
# TAG (default meshrouter:VERSION), EXTRAS (default "kube": the Kubernetes
# client for 'mesh kube-sync'; empty for a smaller image), DOCKER (default docker).
set -eu
cd "$(dirname "$0")/.."
BASE=${BASE:-meshrouter-base:bookworm}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
TAG=${TAG:-meshrouter:$VERSION}
EXTRAS=${EXTRAS-kube}
DOCKER=${DOCKER:-docker}
rm -rf build/wheels
spec=.
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir build/wheels \
    --constraint deploy/constraints.txt "$spec"
if [ -n "$EXTRAS" ]; then echo "[$EXTRAS]" > build/wheels/EXTRAS; else : > build/wheels/EXTRAS; fi
$DOCKER build --network none --build-arg BASE="$BASE" -t "$TAG" .
size=$($DOCKER image inspect --format '{{.Size}}' "$TAG")
layers=$($DOCKER image inspect --format '{{len .RootFS.Layers}}' "$TAG")
echo "built $TAG: $((size / 1000000)) MB in $layers layers (base $BASE)"
