"""A throwaway PostgreSQL server for tests: `toolkit.sandbox.postgres.LocalPostgres` with a fixed,
distinctive password that tests search every output for.

The `postgres_url` fixture in tests/conftest.py wraps it; `unavailable()` says why a server cannot
be had, and the fixture skips with that message.
"""
from __future__ import annotations

from toolkit.sandbox.postgres import DATABASE, INSTALL_HINT, USER, LocalPostgres, find_bin

__all__ = ["PostgresServer", "USER", "PASSWORD", "DATABASE", "INSTALL_HINT", "find_bin"]

PASSWORD = "pg-test-Secret-7f3a"   # a distinctive string: tests search outputs for it


class PostgresServer(LocalPostgres):
    """``with PostgresServer() as pg: pg.url`` — a running server whose password is `PASSWORD`."""

    def __init__(self) -> None:
        super().__init__(password=PASSWORD)
