"""The data engine: DuckDB, embedded and in-process, for projections, diffs and plan files at scale.

Every large computation of the sync (the desired-state checksums, the field-level diff, folding
acknowledged batches into the ledger's state snapshot, cutting a plan into requests) runs as SQL
on an in-memory DuckDB connection over Arrow and Parquet data, so a 10M-profile space never turns
into Python objects per profile. DuckDB spills to disk past its memory limit instead of failing.

Settings (environment, or `configure`): ``TOOLKIT_ENGINE_MEMORY`` (default ``1GB``: DuckDB's
own memory limit, which leaves room in a 2 GiB budget for pandas and Python),
``TOOLKIT_ENGINE_TEMP`` (spill directory; default a ``toolkit-duckdb`` folder in the system
temporary directory) and ``TOOLKIT_ENGINE_THREADS`` (default: DuckDB's choice, the cores).
"""
from __future__ import annotations

import ctypes
import gc
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa

from toolkit.errors import ConfigError

__all__ = ["connect", "using", "configure", "settings", "quote", "literal", "release_memory",
           "reporting"]

_overrides: dict[str, str | None] = {}


def settings() -> dict[str, str | None]:
    """The engine settings in force: memory limit, spill directory, threads."""
    env = os.environ
    return {
        "memory_limit": _overrides.get("memory_limit") or env.get("TOOLKIT_ENGINE_MEMORY") or "1GB",
        "temp_directory": (_overrides.get("temp_directory") or env.get("TOOLKIT_ENGINE_TEMP")
                           or str(Path(tempfile.gettempdir()) / "toolkit-duckdb")),
        "threads": _overrides.get("threads") or env.get("TOOLKIT_ENGINE_THREADS"),
    }


def configure(*, memory_limit: str | None = None, temp_directory: str | None = None,
              threads: int | None = None) -> dict[str, str | None]:
    """Override the engine settings for this process (``None`` keeps the current value)."""
    if memory_limit is not None:
        _overrides["memory_limit"] = str(memory_limit)
    if temp_directory is not None:
        _overrides["temp_directory"] = str(temp_directory)
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError("threads must be at least 1", field="threads")
        _overrides["threads"] = str(int(threads))
    return settings()


@contextmanager
def connect() -> Iterator[duckdb.DuckDBPyConnection]:
    """A fresh in-memory DuckDB connection with the engine settings; closed on exit."""
    s = settings()
    config = {"memory_limit": s["memory_limit"], "temp_directory": s["temp_directory"],
              # plans and snapshots are written in one deterministic order
              "preserve_insertion_order": "true"}
    if s["threads"]:
        config["threads"] = s["threads"]
    try:
        conn = duckdb.connect(":memory:", config=config)
    except duckdb.Error as exc:
        raise ConfigError(f"the data engine cannot start with these settings: {exc}",
                          hint="check TOOLKIT_ENGINE_MEMORY (e.g. 1GB) and TOOLKIT_ENGINE_TEMP "
                               "(a writable folder)") from None
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def using(db: "duckdb.DuckDBPyConnection | None" = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """``db`` itself when given (left open: one connection serves a whole plan), else a fresh
    connection closed on exit."""
    if db is not None:
        yield db
        return
    with connect() as conn:
        yield conn


@contextmanager
def reporting(db: duckdb.DuckDBPyConnection, bar, share: float,
              every: float = 0.25) -> Iterator[None]:
    """While one statement runs on ``db``, move ``bar`` (a tqdm bar) through ``share`` of its
    total as the engine reports the statement's progress; at the end of its share once done.
    A thread polls DuckDB's own estimate, which the engine computes only while this watches
    (and never prints: the bar is the toolkit's)."""
    if bar.disable:
        yield
        return
    start, done = bar.n, threading.Event()
    db.execute("SET enable_progress_bar = true; SET enable_progress_bar_print = false")

    def watch() -> None:
        while not done.wait(every):
            try:
                percent = db.query_progress()
            except duckdb.Error:   # between statements: nothing to report
                continue
            if percent > 0:
                bar.update(max(0.0, start + share * min(percent, 100.0) / 100 - bar.n))

    watcher = threading.Thread(target=watch, name="engine-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        db.execute("SET enable_progress_bar = false")
    bar.update(max(0.0, start + share - bar.n))


def release_memory() -> None:
    """Hand memory freed by one chunk of a large export back to the system before the next:
    Arrow's pool and the C allocator otherwise keep it, and a 10M-profile run would hold every
    chunk's leftovers at once."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing more to hand back
        pass


def quote(name: str) -> str:
    """``name`` as a DuckDB identifier (field names hold ':' and other punctuation)."""
    return '"' + str(name).replace('"', '""') + '"'


def literal(value: str | None) -> str:
    """``value`` as a DuckDB string literal (NULL for None)."""
    if value is None:
        return "NULL"
    return "'" + str(value).replace("'", "''") + "'"
