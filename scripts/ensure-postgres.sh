#!/usr/bin/env bash
# Makes sure the PostgreSQL the tests and the default config use is up:
# starts the local Debian cluster if it is down, and fails with a clear
# message if there is none. TEST_DATABASE_URL/DATABASE_URL point elsewhere
# to use another server.
set -euo pipefail
url="${TEST_DATABASE_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}}"
ready() { pg_isready -q -d "$url" 2>/dev/null; }
if ready; then exit 0; fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "PostgreSQL is down: starting cluster $ver/main" >&2
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 30); do ready && exit 0; sleep 1; done
fi
echo "PostgreSQL is not reachable at ${url%%\?*}: install and start it (Debian: apt-get install postgresql), or set TEST_DATABASE_URL" >&2
exit 1
