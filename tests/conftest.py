"""Fixtures shared by every test folder: a throwaway PostgreSQL server (see tests/pgserver.py)."""
from __future__ import annotations

import pytest

from tests.pgserver import PostgresServer
from toolkit.errors import ToolkitError


@pytest.fixture(scope="session")
def postgres_server():
    """A running PostgreSQL for the whole session (skips, saying how to install it, when none)."""
    server = PostgresServer()
    why = server.unavailable()
    if why:
        pytest.skip(why)
    try:
        server.start()
    except (ToolkitError, RuntimeError, OSError, ImportError) as exc:
        server.stop()
        pytest.skip(f"PostgreSQL could not be started: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """URL (with password) of an empty database on the session's PostgreSQL server."""
    return postgres_server.url
