#!/usr/bin/env bash
# System packages no wheel provides: espeak-ng (speech for the demo and tests). Installed
# with apt-get only where we are root and it is missing; elsewhere we say what to install.
set -u
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "warning: please install ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
fi
exit 0
