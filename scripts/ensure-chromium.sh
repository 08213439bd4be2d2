#!/usr/bin/env bash
# The browser end-to-end test drives Debian's chromium (headless). Install it
# if it is missing and we may (root with apt-get); otherwise say how.
set -euo pipefail
bin="${CHROMIUM_PATH:-/usr/bin/chromium}"
[ -x "$bin" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
  [ -x "$bin" ] && exit 0
fi
echo "chromium not found at $bin: install it (apt-get install chromium) or set CHROMIUM_PATH" >&2
exit 1
