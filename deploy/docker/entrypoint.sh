#!/bin/sh
# Container entrypoint of the talkinghead images (run by tini): start every process with an
# empty metrics directory, so counters of a previous container run (the directory may be a
# volume that outlives it) are never added to this one's, then exec the command.
set -eu
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
  mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
  find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
fi
exec "$@"
