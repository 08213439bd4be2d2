#!/usr/bin/env bash
# The Python examples run on Debian's python3: python3-sqlalchemy and
# python3-psycopg2 (the producer), python3-fastapi, python3-uvicorn and
# python3-jwt (the FastAPI app). Install them if missing and we may;
# otherwise say how.
set -euo pipefail
py="${OUTBOXD_PYTHON:-/usr/bin/python3}"
ok() { "$py" -c 'import sqlalchemy, psycopg2, fastapi, uvicorn, jwt' 2>/dev/null; }
ok && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing python3-sqlalchemy and python3-psycopg2 for the Python example" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends python3 python3-sqlalchemy python3-psycopg2 \
    python3-fastapi python3-uvicorn python3-jwt >/dev/null
  ok && exit 0
fi
echo "$py cannot import sqlalchemy, psycopg2, fastapi, uvicorn, jwt: apt-get install python3-sqlalchemy python3-psycopg2 python3-fastapi python3-uvicorn python3-jwt (or set OUTBOXD_PYTHON)" >&2
exit 1
