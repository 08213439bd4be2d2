#!/usr/bin/env bash
# The Python package (clients/python) and the Python examples run on
# Debian's python3 and these Debian packages — nothing from PyPI:
#   python3-sqlalchemy python3-psycopg2   emit, the SQLAlchemy producer
#   python3-fastapi python3-uvicorn       the FastAPI example
#   python3-jwt                           tokens
#   python3-websockets                    the asyncio consumer, python3 -m outboxd tail
#   python3-pytest python3-venv           the package's tests, .venv
# Installs the missing ones if we may (root with apt-get), saying so first;
# otherwise says how.
set -euo pipefail
py="${OUTBOXD_BASE_PYTHON:-/usr/bin/python3}"
pkgs="python3 python3-venv python3-sqlalchemy python3-psycopg2 python3-fastapi python3-uvicorn python3-jwt python3-websockets python3-pytest"
ok() { "$py" -c 'import sqlalchemy, psycopg2, fastapi, uvicorn, jwt, websockets, pytest, venv, ensurepip' 2>/dev/null; }
ok && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages for outboxd's Python package and examples: $pkgs" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  ok && exit 0
fi
echo "$py cannot import sqlalchemy, psycopg2, fastapi, uvicorn, jwt, websockets, pytest, venv: apt-get install $pkgs (or set OUTBOXD_BASE_PYTHON)" >&2
exit 1
