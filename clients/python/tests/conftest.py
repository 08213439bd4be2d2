"""Fixtures on the real PostgreSQL in DATABASE_URL (migrated) and, for the
consumer, a running outboxd at OUTBOXD_URL signing with SECRET_KEY —
go test ./clients/python provides all three."""
import os

import psycopg2
import pytest
from sqlalchemy import create_engine


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail("%s is not set: run these tests through `go test ./clients/python`, which starts "
                    "PostgreSQL's test database and outboxd" % name)
    return value


@pytest.fixture(scope="session")
def database_url():
    return _env("DATABASE_URL")


@pytest.fixture(scope="session")
def engine(database_url):
    eng = create_engine(database_url.replace("postgres://", "postgresql://", 1), future=True)
    yield eng
    eng.dispose()


@pytest.fixture
def pg(database_url):
    """A psycopg2 connection; the test commits what it wants kept."""
    conn = psycopg2.connect(database_url)
    yield conn
    conn.rollback()
    conn.close()


@pytest.fixture(scope="session")
def outboxd_url():
    return _env("OUTBOXD_URL")


@pytest.fixture(scope="session")
def secret():
    return _env("SECRET_KEY")
