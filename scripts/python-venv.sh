#!/usr/bin/env bash
# .venv: a virtualenv on Debian's python3 and its packages
# (--system-site-packages: SQLAlchemy, psycopg2, FastAPI, PyJWT, websockets,
# pytest come from apt; PyPI is not needed) with the outboxd package from
# clients/python installed. Rebuilt when the package's sources change; the
# Python examples and their tests run on .venv/bin/python. Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${OUTBOXD_BASE_PYTHON:-/usr/bin/python3}"
exec 9>.venv.lock
flock 9
stamp=$(cat clients/python/pyproject.toml $(find clients/python/src -name '*.py' -o -name py.typed | sort) | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.outboxd-stamp 2>/dev/null)" = "$stamp" ]; then
  echo "$PWD/.venv/bin/python"
  exit 0
fi
[ -x .venv/bin/python ] || "$py" -m venv --system-site-packages .venv
# --no-build-isolation: the build backend is Debian's setuptools; --no-index
# --no-deps: nothing is fetched (the dependencies are Debian's packages).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-index --no-deps ./clients/python >&2
rm -rf clients/python/build clients/python/src/outboxd.egg-info
echo "$stamp" > .venv/.outboxd-stamp
echo "$PWD/.venv/bin/python"
