#!/usr/bin/env bash
# Build the slimserve image here: `make image` (IMAGE=slimserve:0.1.0 by default). Elsewhere
# `docker build -t slimserve:0.1.0 .` is all it takes; this script adds what a machine without
# a registry or without PyTorch's index needs:
# - the base: BASE_IMAGE (default python:3.11-slim) if it is here or can be pulled, else a
#   Debian base made by deploy/image/base.sh;
# - deploy/image/local/: the CPU torch wheel from pip's find-links folder, if there is one, and
#   the host's CA bundle, for the builder stage only (deploy/image/local/README.md);
# - IMAGE_REPOSITORY=DIR: carry that built repository instead of building one in the image.
# Without it the build runs `slimserve build` for the default repository: a quarter of an hour
# or more on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${IMAGE:-slimserve:0.1.0}
base=${BASE_IMAGE:-python:3.11-slim}
pull_timeout_s=${PULL_TIMEOUT_S:-30}

if ! docker info >/dev/null 2>&1; then
    echo "make image: no Docker engine answers (as root: apt-get install docker.io && dockerd &)" >&2
    exit 2
fi
if ! docker image inspect "$base" >/dev/null 2>&1 && ! timeout "$pull_timeout_s" docker pull -q "$base" >&2; then
    echo "make image: $base is not here and cannot be pulled; using a Debian base instead" >&2
    base=slimserve-base:bookworm
    docker image inspect "$base" >/dev/null 2>&1 || deploy/image/base.sh "$base"
fi

local_dir=deploy/image/local
rm -rf "$local_dir/wheels" "$local_dir/ca.crt" "$local_dir/model_repository"
mkdir -p "$local_dir/wheels"
for folder in ${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true); do
    for wheel in "$folder"/torch-2.13.0*-cp311-*.whl; do
        [ -f "$wheel" ] && cp "$wheel" "$local_dir/wheels/" && echo "make image: torch from $wheel" >&2
    done
done
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$local_dir/ca.crt"
if [ -n "${IMAGE_REPOSITORY:-}" ]; then
    [ -n "$(ls "$IMAGE_REPOSITORY"/*/model.yaml 2>/dev/null)" ] \
        || { echo "make image: $IMAGE_REPOSITORY holds no built model (*/model.yaml)" >&2; exit 2; }
    # Hard links where the file system allows (no copy of the graphs); dot-folders are builds in progress.
    mkdir -p "$local_dir/model_repository"
    for model in "$IMAGE_REPOSITORY"/*/; do
        cp -al "$model" "$local_dir/model_repository/" 2>/dev/null || cp -a "$model" "$local_dir/model_repository/"
    done
    echo "make image: carrying $IMAGE_REPOSITORY instead of building one" >&2
fi

started=$(date +%s)
docker build --network host --build-arg BASE_IMAGE="$base" -t "$image" .
echo "make image: built $image on $base in $(( $(date +%s) - started )) s" >&2
docker image ls "$image" >&2
