#!/usr/bin/env bash
# A local stand-in for the `python:3.11-slim-bookworm` base image, for Docker hosts that can
# pull no image: Debian bookworm (minbase) from a Debian mirror with Python 3.11, venv,
# libpython (the official image's interpreter is built shared; Triton's python backend stub
# links it) and CA certificates, imported as TAG with the label `talkinghead.stand-in` set to
# STAMP (default: this script's checksum, so a changed script means a new image). Pass it to
# the base image build as PYTHON_IMAGE. Needs root and debootstrap.
# Usage: scripts/stand-in-python-image.sh [TAG] [MIRROR] [STAMP]
set -euo pipefail
tag=${1:-local/python:3.11-bookworm}
mirror=${2:-http://deb.debian.org/debian}
stamp=${3:-$(sha256sum "$0" | cut -c1-16)}
docker=${DOCKER:-docker}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,libpython3.11,ca-certificates \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# The official image's interpreter answers to `python`; the Dockerfiles call it so.
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | "$docker" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL talkinghead.stand-in=$stamp" \
  --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "$tag"
