#!/usr/bin/env bash
# Install the Debian packages whose commands are missing: `ensure-debian.sh CMD=PACKAGE ...`
# (e.g. haproxy=haproxy prosody=prosody). Needs root and apt-get; otherwise it says what
# to install and leaves the decision to the caller (exit 0: callers degrade or skip).
set -u
missing=()
for pair in "$@"; do
  cmd=${pair%%=*}; pkg=${pair#*=}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing Debian packages: ${missing[*]} (install them with: sudo apt-get install ${missing[*]})" >&2
  exit 0
fi
echo "installing Debian packages: ${missing[*]}" >&2
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null 2>&1 \
  || echo "could not install: ${missing[*]}" >&2
exit 0
