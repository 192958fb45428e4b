#!/usr/bin/env bash
# Make a Debian bookworm base image with Python 3.11 from Debian's own packages, for machines
# that reach Debian's mirror but no image registry: `deploy/image/base.sh [TAG]`
# (default slimserve-base:bookworm). Needs root and debootstrap (`apt-get install debootstrap`).
# `python` is Debian's python3 (python-is-python3), so the Dockerfile's commands run unchanged.
set -euo pipefail
tag=${1:-slimserve-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror" >&2
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$tag"
echo "made $tag from Debian bookworm ($mirror)" >&2
