#!/usr/bin/env bash
# make demo: outboxd and the FastAPI example app together, on this machine.
#   outboxd   http://127.0.0.1:8002  (development key; DATABASE_URL as usual)
#   the app   http://127.0.0.1:8000  (log in as an operator, a supervisor or the admin)
# Before that it may apt-install Debian's Python packages (scripts/ensure-python.sh
# names them first) and makes .venv (scripts/python-venv.sh). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
scripts/ensure-python.sh      # apt-installs Debian's Python packages if missing (it says which first)
py=$(scripts/python-venv.sh)  # .venv: those packages + the outboxd Python package (clients/python)
go build -o bin/outboxd ./cmd/outboxd
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"
bin/outboxd &
ox=$!
trap 'kill $ox 2>/dev/null; wait $ox 2>/dev/null' EXIT
for _ in $(seq 100); do
  curl -fsS -o /dev/null http://127.0.0.1:8002/readyz 2>/dev/null && break
  kill -0 $ox 2>/dev/null || { echo "outboxd did not start" >&2; exit 1; }
  sleep 0.2
done
echo "outboxd on :8002; the app on http://127.0.0.1:8000/" >&2
cd examples/fastapi-app
OUTBOXD_WS_URL="${OUTBOXD_WS_URL:-ws://127.0.0.1:8002/ws/connect}" \
  "${OUTBOXD_PYTHON:-$py}" -m uvicorn app:app --host 127.0.0.1 --port "${APP_PORT:-8000}"
