#!/usr/bin/env bash
# The browser client's unit tests run on Debian's node (node --test).
# Install it if it is missing and we may (root with apt-get); otherwise say how.
set -euo pipefail
command -v node >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's nodejs for the browser client's tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends nodejs >/dev/null
  command -v node >/dev/null 2>&1 && exit 0
fi
echo "node not found: install it (apt-get install nodejs)" >&2
exit 1
