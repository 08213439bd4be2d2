#!/usr/bin/env bash
# The browser client (clients/js, an npm package) is tested with Debian's
# node and npm: npm ci, node --test, esbuild, tsc, npm pack.
# Install them if missing and we may (root with apt-get); otherwise say how.
set -euo pipefail
have() { command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; }
have && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's nodejs and npm for the browser client's tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  have && exit 0
fi
echo "node and npm not found: install them (apt-get install nodejs npm)" >&2
exit 1
