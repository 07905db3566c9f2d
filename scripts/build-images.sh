#!/usr/bin/env bash
# Builds the CPU images from the repository's Dockerfiles: talkinghead/base, then api, ingest,
# preprocess, trainer and renderer on it (trainer-cuda and triton need NVIDIA base images;
# build them the same way where those can be pulled). Usage: scripts/build-images.sh [VERSION]
# Build arguments come from the environment where set: PYTHON_IMAGE, TORCH_VERSION,
# TORCH_INDEX_URL, WHEELHOUSE_URL (see deploy/docker/base.Dockerfile). BUILD_NETWORK=host lets
# the build reach a wheelhouse served on this host's loopback. DOCKER names the client.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-0.1.0}
docker=${DOCKER:-docker}
common=()
[ -n "${BUILD_NETWORK:-}" ] && common+=(--network "$BUILD_NETWORK")
base_args=()
for name in PYTHON_IMAGE TORCH_VERSION TORCH_INDEX_URL WHEELHOUSE_URL; do
  [ -n "${!name:-}" ] && base_args+=(--build-arg "$name=${!name}")
done
export DOCKER_BUILDKIT=1  # COPY --chmod and parallel stages
"$docker" build "${common[@]}" "${base_args[@]}" -f deploy/docker/base.Dockerfile \
  -t "talkinghead/base:$version" .
for service in api ingest preprocess trainer renderer; do
  "$docker" build "${common[@]}" --build-arg "BASE_IMAGE=talkinghead/base:$version" \
    -f "deploy/docker/$service.Dockerfile" -t "talkinghead/$service:$version" .
done
