#!/usr/bin/env bash
# System packages no wheel provides: espeak-ng (speech for the demo and tests), prometheus
# (prometheus and promtool: the scrape test and the alert-rule tests), docker-compose
# (validates docker-compose.yml without a Docker engine), and docker.io and debootstrap (the
# image test of `make test-system` starts its own dockerd and builds a stand-in base image).
# Installed with apt-get only where we are root and they are missing; elsewhere we say what
# to install.
set -u
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get"
  # The prometheus and docker.io packages enable services; tests start their own servers on
  # free ports, so keep them from starting where no init policy says so already.
  policy=/usr/sbin/policy-rc.d
  added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added_policy=1
  fi
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$added_policy" = 1 ] && rm -f "$policy"
else
  echo "warning: please install ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
fi
exit 0
