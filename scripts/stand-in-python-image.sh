#!/usr/bin/env bash
# A local stand-in for the `python:3.11-slim-bookworm` base image, for Docker hosts that can
# pull no image: Debian bookworm (minbase) from a Debian mirror with Python 3.11, venv and CA
# certificates, imported as TAG. Pass it to the base image build as PYTHON_IMAGE. Needs root
# and debootstrap. Usage: scripts/stand-in-python-image.sh [TAG] [MIRROR]
set -euo pipefail
tag=${1:-local/python:3.11-bookworm}
mirror=${2:-http://deb.debian.org/debian}
docker=${DOCKER:-docker}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# The official image's interpreter answers to `python`; the Dockerfiles call it so.
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | "$docker" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "$tag"
