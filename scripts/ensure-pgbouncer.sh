#!/usr/bin/env bash
# The PgBouncer end-to-end test runs Debian's pgbouncer (1.18) in front of
# the test database. Install it if it is missing and we may (root with
# apt-get); otherwise say how. The package's own service is not used: the
# test starts its own pgbouncer on a free port.
set -euo pipefail
bin="${PGBOUNCER_PATH:-/usr/sbin/pgbouncer}"
[ -x "$bin" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's pgbouncer for the pooler test" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
  [ -x "$bin" ] && exit 0
fi
echo "pgbouncer not found at $bin: install it (apt-get install pgbouncer) or set PGBOUNCER_PATH" >&2
exit 1
