"""Where a sync ledger keeps its journal and its files: one SQLite file beside its Parquet files
(the embedded default), or a PostgreSQL schema that a team shares (``postgresql://…``).

Both give `toolkit.sync.ledger.Ledger` the same few verbs, so the ledger's rules (recorded before
sent, answered after, folded into a snapshot, refused when moved) are written once:

* ``query(sql, params)`` and ``write(fn)`` — reads, and one all-or-nothing transaction in which
  writers take turns (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory
  lock). The ledger's SQL is the subset both speak (``?`` parameters, ``ON CONFLICT`` upserts).
* ``exclusive(what)`` — one apply or settle at a time per ledger. SQLite: an OS lock on a file
  next to the ledger. PostgreSQL: a session-level advisory lock on its own connection, so a killed
  apply's lock goes with its session; the refusal names the holder (its ``application_name``).
* files by name — the state snapshots, the plan copies and the convergence record's left-out
  profiles (Parquet). SQLite keeps them beside the journal. PostgreSQL keeps their bytes in the
  ``files`` table (8 MiB parts, with size and SHA-256 in ``file_index``) and reads them through a
  local cache under ``./.toolkit/ledger-cache/`` — files never change once stored, so a cached
  copy of the right size is the file; a download is checked against its SHA-256.

A PostgreSQL URL's password never reaches a repr, an error, a plan or the ledger itself: the
ledger is shown by `redact`'s form of the URL.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import threading
import zlib
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolkit import dialects
from toolkit.engage.warehouse import _scrub, copy_in, copy_out, explain_connect_error, redact
from toolkit.errors import LedgerError

__all__ = ["SqliteJournal", "PostgresJournal", "is_ledger_url", "ledger_location",
           "DEFAULT_SCHEMA"]

DEFAULT_SCHEMA = "braze_sync"
_PART = 8 << 20                       # bytes per stored file part
_TOOLKIT_LOCKS = 0x42524A45           # advisory lock class: ASCII "BRJE"
_FRESH = timedelta(hours=1)           # a file or plan younger than this is never swept

_FIX_CORRUPT = ("restore it from a backup. Moving it aside also works for attributes (a new ledger "
                "resends every value once) but NOT for events: with an empty ledger every current "
                "member looks new, so 'Audience Entered' would be sent again; map audiences as "
                "attributes for that first run, or check Braze before approving any events")
_FIX_LOCKED = ("another apply or notebook kernel is writing to this ledger; wait for it to finish "
               "or stop it, then retry")
_FIX_BUSY = ("wait for the other apply to finish (a killed apply frees it at once), then run "
             "again: it resumes where the other one stopped")

# The journal's tables. SQLite files made before ``batch_index`` and the ``plans`` columns get
# them on open (ALTER TABLE); a PostgreSQL schema is created complete, with the file store.
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    field TEXT NOT NULL, uid TEXT NOT NULL, value TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (field, uid)){without_rowid};
CREATE TABLE IF NOT EXISTS batches (
    plan TEXT NOT NULL, batch TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
    objects INTEGER NOT NULL, items TEXT, reason TEXT, sends INTEGER NOT NULL DEFAULT 0,
    recorded_at TEXT NOT NULL, sent_at TEXT, answered_at TEXT, pending TEXT{batch_columns},
    PRIMARY KEY (plan, batch));
CREATE INDEX IF NOT EXISTS batches_status ON batches (status, kind);
CREATE INDEX IF NOT EXISTS batches_pending ON batches (plan) WHERE pending IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
    version INTEGER PRIMARY KEY, plan TEXT NOT NULL, batch TEXT NOT NULL, rows INTEGER NOT NULL,
    at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plans (
    plan TEXT PRIMARY KEY, file TEXT NOT NULL, fields TEXT NOT NULL, digest TEXT NOT NULL,
    recorded_at TEXT NOT NULL{plan_columns});
CREATE TABLE IF NOT EXISTS event_times (
    second TEXT PRIMARY KEY, reserved_at TEXT NOT NULL, plan TEXT);
"""
# columns added to ``plans`` after schema 2 was first released (added on open when missing)
_PLAN_COLUMNS = {"event_time": "TEXT", "create_users": "INTEGER"}
_SQLITE_SCHEMA = _TABLES.format(without_rowid=" WITHOUT ROWID", batch_columns="",
                                plan_columns="")
_POSTGRES_SCHEMA = _TABLES.format(
    without_rowid="", batch_columns=", batch_index INTEGER",
    plan_columns="".join(f", {c} {t}" for c, t in _PLAN_COLUMNS.items())) + """
CREATE TABLE IF NOT EXISTS file_index (
    name TEXT PRIMARY KEY, size BIGINT NOT NULL, sha256 TEXT NOT NULL, parts INTEGER NOT NULL,
    stored_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    name TEXT NOT NULL, part INTEGER NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (name, part));
CREATE TABLE IF NOT EXISTS state_tables (
    name TEXT PRIMARY KEY, tbl TEXT NOT NULL, fields TEXT NOT NULL, rows BIGINT NOT NULL,
    stored_at TEXT NOT NULL);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "ledger"


def is_ledger_url(value: Any) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL: a ledger on a server."""
    return isinstance(value, str) and value.split("://", 1)[0].lower() in (
        "postgresql", "postgres", "postgresql+psycopg")


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _try_lock(handle) -> bool:
    """Take an exclusive, non-blocking OS lock on an open file; False when another has it."""
    try:
        import fcntl  # lazy: platform-specific (POSIX)
    except ImportError:  # Windows
        import msvcrt  # lazy: platform-specific (Windows)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class SqliteJournal:
    """A ledger's journal in one SQLite file (WAL), its files beside it, named after it."""

    kind = "sqlite"

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.prefix = self.path.name + "."
        self.directory = self.path.parent
        self._lock = threading.RLock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create the ledger folder: {exc.strerror}",
                              file=str(self.directory),
                              hint="pass path=… to a writable place") from None
        try:
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL keeps every committed transaction across a killed process (not power loss),
            # which is the failure the resume logic is built for.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SQLITE_SCHEMA)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(batches)")}
            if "batch_index" not in columns:  # schema 1
                conn.execute("ALTER TABLE batches ADD COLUMN batch_index INTEGER")
            have = {r[1] for r in conn.execute("PRAGMA table_info(plans)")}
            for column, kind in _PLAN_COLUMNS.items():
                if column not in have:
                    conn.execute(f"ALTER TABLE plans ADD COLUMN {column} {kind}")
            conn.execute("PRAGMA quick_check(1)").fetchone()
        except sqlite3.DatabaseError as exc:
            raise self.error(exc, "opened") from None
        self._conn = conn

    def error(self, exc: BaseException, action: str) -> LedgerError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return LedgerError(f"the ledger is locked ({action})", file=self.location,
                               hint=_FIX_LOCKED)
        return LedgerError(f"the ledger cannot be {action}: {text}", file=self.location,
                           hint=_FIX_CORRUPT)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self.error(exc, "read") from None

    def write(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(conn)`` in one IMMEDIATE transaction (all or nothing)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._conn)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
                return out
            except sqlite3.DatabaseError as exc:
                raise self.error(exc, "written") from None

    def vacuum(self) -> None:
        with self._lock:
            self._conn.execute("VACUUM")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def exclusive(self, what: str):
        """An OS file lock next to the ledger, released even when the process is killed."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            handle = open(lock_path, "a+")
        except OSError as exc:
            raise LedgerError(f"cannot create the ledger lock file: {exc.strerror}",
                              file=str(lock_path), hint="make the ledger folder writable") from None
        try:
            if not _try_lock(handle):
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise LedgerError(f"the ledger is in use by {holder}; nothing was sent",
                                  file=self.location, hint=_FIX_BUSY)
            handle.seek(0)
            handle.truncate()
            handle.write(f"{what} pid {os.getpid()} since {_now()}")
            handle.flush()
            yield
        finally:
            handle.close()  # closing the descriptor releases the lock

    def holder(self) -> str | None:
        """Who holds the ledger for an apply or settle right now (None: nobody)."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        if not lock_path.exists():
            return None
        try:
            with open(lock_path, "a+") as handle:
                if _try_lock(handle):
                    return None
                handle.seek(0)
                return handle.read().strip() or "another process"
        except OSError:
            return None

    # -- files ---------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """The local path of stored file ``name`` (it may not exist)."""
        return self.directory / name

    def has(self, name: str) -> bool:
        return (self.directory / name).exists()

    def staging(self, name: str) -> Path:
        """Where to write a new file before `store` keeps it as ``name``."""
        target = self.directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.with_name(target.name + ".tmp")

    def store(self, staged: Path, name: str, *, table: bool = False) -> None:
        """Keep ``staged`` as ``name`` (``table``: a state snapshot, which only a server
        journal also loads into a table)."""
        _fsync(staged)
        os.replace(staged, self.directory / name)

    def cached(self, name: str) -> bool:
        """The file is on this machine already: reading it moves nothing."""
        return self.has(name)

    def size(self, name: str) -> int | None:
        try:
            return (self.directory / name).stat().st_size
        except OSError:
            return None

    def state_table(self, name: str) -> None:
        """Never: a file ledger's state is its Parquet file, read where it is."""
        return None

    def names(self, prefix: str) -> list[tuple[str, bool]]:
        """``(name, fresh)`` of stored files whose name starts with ``prefix`` (one folder
        level); ``fresh``: written within the last hour."""
        folder, _, start = prefix.rpartition("/")
        base = self.directory / folder if folder else self.directory
        cutoff = (datetime.now(timezone.utc) - _FRESH).timestamp()
        out = []
        for path in base.glob(start + "*"):
            if path.name.endswith(".tmp"):
                continue
            try:
                fresh = path.stat().st_mtime > cutoff
            except OSError:
                continue
            out.append(((folder + "/" if folder else "") + path.name, fresh))
        return out

    def remove(self, names: Sequence[str], keep_if: str | None = None) -> None:
        for name in names:
            (self.directory / name).unlink(missing_ok=True)

    def remove_folder(self, name: str) -> None:
        try:
            (self.directory / name).rmdir()
        except OSError:
            pass


def _signed(checksum: pa.Array) -> pa.Array:
    """DuckDB's unsigned 64-bit checksums as PostgreSQL's BIGINT: the same bits, signed (both
    sides of the server's comparison are converted alike, so equal stays equal)."""
    if pa.types.is_unsigned_integer(checksum.type):
        return pc.cast(checksum, pa.int64(), safe=False)
    return checksum


class _PgConn:
    """The sqlite3-like face (``execute``/``executemany`` with ``?`` parameters) the ledger's
    transactions use, over one psycopg connection."""

    def __init__(self, conn) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()):
        return self._conn.execute(sql.replace("?", "%s"), tuple(params))

    def executemany(self, sql: str, rows):
        rows = [tuple(r) for r in rows]
        cur = self._conn.cursor()
        if rows:
            cur.executemany(sql.replace("?", "%s"), rows)
        return cur


def _split_url(url: str, schema: str | None) -> tuple[str, str]:
    """(connection URL without the toolkit's own ``schema`` option, schema)."""
    parts = urlsplit(url)
    options = parse_qsl(parts.query, keep_blank_values=True)
    named = [v for k, v in options if k == "schema"]
    rest = [(k, v) for k, v in options if k != "schema"]
    schema = schema or (named[-1] if named else None) or os.environ.get(
        "BRAZE_LEDGER_SCHEMA") or DEFAULT_SCHEMA
    scheme = "postgresql" if parts.scheme.lower() in ("postgres", "postgresql+psycopg") else \
        parts.scheme
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment)), schema


def ledger_location(url: str, schema: str | None = None) -> str:
    """How a ledger URL is shown and recorded in plans: password hidden, schema named."""
    bare, schema = _split_url(url, schema)
    shown = redact(bare)
    return f"{shown}{'&' if '?' in shown else '?'}schema={schema}"


class PostgresJournal:
    """A ledger's journal and files in one schema of a PostgreSQL database (``braze_sync`` by
    default; ``?schema=…`` in the URL, ``schema=``, or ``BRAZE_LEDGER_SCHEMA``)."""

    kind = "postgresql"

    def __init__(self, url: str, *, schema: str | None = None, timeout: float = 10.0,
                 cache: "str | os.PathLike[str] | None" = None) -> None:
        self._url, self.schema = _split_url(url, schema)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", self.schema):
            raise LedgerError(f"{self.schema!r} is not a usable schema name", field="schema",
                              hint="use letters, digits and underscores (e.g. braze_sync)")
        self.location = ledger_location(self._url, self.schema)
        self.prefix = ""
        self.path = None
        self.timeout = timeout
        # one lock key per schema (int4, non-negative: pg_locks shows it as an oid)
        self.key = zlib.crc32(self.schema.encode()) & 0x7FFFFFFF
        parts = urlsplit(self._url)
        where = f"{parts.hostname or 'local'}-{parts.port or 5432}-{parts.path.strip('/')}"
        self.directory = (Path(cache) if cache is not None else Path.cwd() / ".toolkit" /
                          "ledger-cache") / _safe(f"{where}-{self.schema}")
        self._lock = threading.RLock()
        try:
            import psycopg  # lazy: the PostgreSQL driver only for postgresql:// ledgers
        except ImportError:
            raise LedgerError("a ledger on PostgreSQL needs psycopg", file=self.location,
                              hint="pip install 'psycopg[binary]'") from None
        self.psycopg = psycopg
        self._conn = self._connect("toolkit ledger")
        self._setup()

    def _connect(self, name: str):
        params = dict(parse_qsl(urlsplit(self._url).query))
        extra = {"application_name": name[:63]}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = max(1, int(self.timeout))
        try:
            conn = self.psycopg.connect(self._url, autocommit=True, **extra)
        except self.psycopg.Error as exc:
            message, hint = explain_connect_error(exc, self._url)
            raise LedgerError(f"the ledger's server: {message}; nothing was read or sent",
                              file=self.location, hint=hint) from None
        return conn

    def _setup(self) -> None:
        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                                   (_TOOLKIT_LOCKS, self.key + 1 & 0x7FFFFFFF))
                exists = self._conn.execute(
                    "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone()
                if not exists:
                    self._conn.execute(f'CREATE SCHEMA "{self.schema}"')
                self._conn.execute(f'SET search_path TO "{self.schema}"')
                for statement in filter(str.strip, _POSTGRES_SCHEMA.split(";")):
                    self._conn.execute(statement)
        except self.psycopg.errors.InsufficientPrivilege as exc:
            raise LedgerError(
                f"the ledger's user may not create or use schema {self.schema!r} "
                f"({_scrub(str(exc), self._url)}); nothing was read or sent", file=self.location,
                hint=f'ask the database owner to run: CREATE SCHEMA "{self.schema}" AUTHORIZATION '
                     "<this user>; (or GRANT USAGE, CREATE ON SCHEMA … TO <this user>)") from None
        except self.psycopg.Error as exc:
            raise self.error(exc, "opened") from None
        self._conn.execute(f'SET search_path TO "{self.schema}"')

    def error(self, exc: BaseException, action: str) -> LedgerError:
        text = _scrub(str(exc), self._url)
        if isinstance(exc, self.psycopg.OperationalError):
            return LedgerError(f"the ledger's server went away ({action}): {text}",
                               file=self.location,
                               hint="check the server and the network, then run again: an "
                                    "interrupted apply resumes where it stopped")
        return LedgerError(f"the ledger cannot be {action}: {text}", file=self.location,
                           hint="check the schema's tables (a toolkit of this version creates "
                                "them); " + _FIX_CORRUPT)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql.replace("?", "%s"), tuple(params)).fetchall()
            except self.psycopg.Error as exc:
                raise self.error(exc, "read") from None

    def write(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(conn)`` in one transaction; writers of this ledger take turns (an advisory
        lock held until the transaction ends), as SQLite's ``BEGIN IMMEDIATE`` makes them."""
        with self._lock:
            try:
                with self._conn.transaction():
                    self._conn.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                                       (_TOOLKIT_LOCKS, self.key + 1 & 0x7FFFFFFF))
                    return fn(_PgConn(self._conn))
            except self.psycopg.Error as exc:
                raise self.error(exc, "written") from None

    def vacuum(self) -> None:
        """Nothing to do: the server reclaims space itself (autovacuum)."""

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def exclusive(self, what: str):
        """A session-level advisory lock on a connection of its own: the server drops it with
        the session, so a killed apply frees the ledger at once."""
        label = f"toolkit {what} pid {os.getpid()} on {socket.gethostname()}"
        conn = self._connect(label)
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                               (_TOOLKIT_LOCKS, self.key)).fetchone()[0]
            if not got:
                who = self._holder(conn) or "another process"
                raise LedgerError(f"the ledger is in use by {who}; nothing was sent",
                                  file=self.location, hint=_FIX_BUSY)
        except self.psycopg.Error as exc:
            conn.close()
            raise self.error(exc, "locked for " + what) from None
        except BaseException:
            conn.close()
            raise
        try:
            yield
        finally:
            try:  # released at once (closing alone frees it only when the server notices)
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_TOOLKIT_LOCKS, self.key))
            except self.psycopg.Error:
                pass  # the session is gone, and the lock with it
            conn.close()

    def _holder(self, conn) -> str | None:
        row = conn.execute(
            "SELECT a.application_name, a.backend_start FROM pg_locks l JOIN pg_stat_activity a "
            "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s "
            "AND l.granted LIMIT 1", (_TOOLKIT_LOCKS, self.key)).fetchone()
        if row is None:
            return None
        return (f"{row[0]} (connected since {row[1]:%Y-%m-%d %H:%M:%S %Z})" if row[0]
                else "another process")

    def holder(self) -> str | None:
        """Who holds the ledger for an apply or settle right now (None: nobody)."""
        with self._lock:
            try:
                return self._holder(self._conn)
            except self.psycopg.Error as exc:
                raise self.error(exc, "read") from None

    # -- files ---------------------------------------------------------------------------
    def _index(self, name: str) -> tuple | None:
        rows = self.query("SELECT size, sha256, parts FROM file_index WHERE name = ?", (name,))
        return rows[0] if rows else None

    def has(self, name: str) -> bool:
        return self._index(name) is not None

    def file(self, name: str) -> Path:
        """A local copy of stored file ``name`` (downloaded into the cache when missing; a
        path that does not exist when the ledger has no such file)."""
        local = self.directory / name
        found = self._index(name)
        if found is None:
            return local
        size, sha, parts = found
        if local.exists() and local.stat().st_size == size:
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f"{local.name}.{os.getpid()}.download")
        digest = hashlib.sha256()
        with self._lock:
            try:
                # binary results: bytea arrives as its bytes, not as hex text twice the size
                with open(tmp, "wb") as out, self._conn.cursor(binary=True) as cur:
                    for part in range(int(parts)):
                        row = cur.execute(
                            "SELECT data FROM files WHERE name = %s AND part = %s",
                            (name, part)).fetchone()
                        if row is None:
                            break
                        digest.update(row[0])
                        out.write(row[0])
            except self.psycopg.Error as exc:
                tmp.unlink(missing_ok=True)
                raise self.error(exc, "read") from None
        if digest.hexdigest() != sha or tmp.stat().st_size != size:
            tmp.unlink(missing_ok=True)
            raise LedgerError(f"the ledger's stored file {name!r} is damaged (its bytes do not "
                              "match their recorded SHA-256)", file=self.location,
                              hint=_FIX_CORRUPT)
        os.replace(tmp, local)
        self._prune_cache()
        return local

    def _prune_cache(self) -> None:
        """Drop cached copies of files the ledger no longer has (snapshots folded over, plan
        copies done with), so a machine's cache holds about one version of the state, not
        every version it ever read. Files being written (``.tmp``, ``.download``) are left."""
        stored = {name for name, _ in self.names("")}
        for path in self.directory.rglob("*.parquet"):
            name = path.relative_to(self.directory).as_posix()
            if name not in stored:
                path.unlink(missing_ok=True)

    def staging(self, name: str) -> Path:
        target = self.directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.with_name(f"{target.name}.{os.getpid()}.tmp")

    def store(self, staged: Path, name: str, *, table: bool = False) -> None:
        """Upload ``staged`` as ``name`` (one transaction: all parts or none), then keep it
        in the cache; ``table``: a state snapshot, also loaded into a table of its own so a
        plan's diff can run in the server (`changed_users`)."""
        digest = hashlib.sha256()
        size = staged.stat().st_size
        parts = max(1, -(-size // _PART))

        def upload(conn) -> None:
            conn.execute("DELETE FROM files WHERE name = ?", (name,))
            conn.execute("DELETE FROM file_index WHERE name = ?", (name,))
            with open(staged, "rb") as fh:
                for part in range(parts):
                    chunk = fh.read(_PART)
                    digest.update(chunk)
                    conn.execute("INSERT INTO files (name, part, data) VALUES (?, ?, ?)",
                                 (name, part, chunk))
            conn.execute("INSERT INTO file_index (name, size, sha256, parts, stored_at) "
                         "VALUES (?, ?, ?, ?, ?)", (name, size, digest.hexdigest(), parts, _now()))

        self.write(upload)
        os.replace(staged, self.directory / name)
        if table:
            self._load_state_table(self.directory / name, name)

    def cached(self, name: str) -> bool:
        """A copy of the stored file of this size is in this machine's cache."""
        found = self._index(name)
        local = self.directory / name
        return found is not None and local.exists() and local.stat().st_size == found[0]

    def size(self, name: str) -> int | None:
        """The stored file's size in bytes (None: no such file)."""
        found = self._index(name)
        return int(found[0]) if found is not None else None

    # -- state tables: the diff run in the server --------------------------------------
    def _load_state_table(self, path: Path, name: str) -> None:
        """Load a state snapshot (Parquet: uid, checksum, one column per field) into a table
        of its own (``c0``, ``c1``… named in ``state_tables``); checksums are kept as signed
        64-bit integers with the same bits."""
        file = pq.ParquetFile(path)
        fields = [n for n in file.schema_arrow.names if n not in ("uid", "checksum")]
        table = "state_" + hashlib.sha256(name.encode()).hexdigest()[:24]
        target = f'"{self.schema}"."{table}"'

        def batches():
            for batch in file.iter_batches(batch_size=65_536):
                yield pa.record_batch([batch.column("uid"), _signed(batch.column("checksum")),
                                       *(batch.column(f) for f in fields)],
                                      names=["uid", "checksum",
                                             *(f"c{i}" for i in range(len(fields)))])

        def load(conn) -> None:
            raw = conn._conn
            raw.execute(f"DROP TABLE IF EXISTS {target}")
            raw.execute(dialects.render(dialects.state_table_sql(self.schema, table, len(fields)),
                                        "postgresql"))
            copy_in(raw, target, batches())
            # no index: the diff joins every user (a hash join), and an index on the keys would
            # add a third of the table's size for nothing; the fold made the keys unique
            raw.execute(f"ANALYZE {target}")
            conn.execute("INSERT INTO state_tables (name, tbl, fields, rows, stored_at) VALUES "
                         "(?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET tbl = excluded.tbl, "
                         "fields = excluded.fields, rows = excluded.rows",
                         (name, table, json.dumps(fields), file.metadata.num_rows, _now()))

        self.write(load)
        file.close()

    def state_table(self, name: str) -> tuple[str, list[str], int] | None:
        """(qualified table, its fields in column order, rows) of a snapshot's state table,
        or None when it has none (a snapshot stored by an earlier version)."""
        rows = self.query("SELECT tbl, fields, rows FROM state_tables WHERE name = ?", (name,))
        if not rows:
            return None
        tbl, fields, count = rows[0]
        return f'"{self.schema}"."{tbl}"', json.loads(fields), int(count)

    def changed_users(self, name: str, desired, fields: list[str]):
        """Run the diff's comparison in the server: ``desired`` (Arrow record batches of
        ``uid``, ``checksum``) goes into a temporary table, and only the users whose checksum
        differs from the snapshot's come back, with the snapshot's value of each of ``fields``
        as ``s0``, ``s1``… Returns (Arrow table, bytes sent, bytes received)."""
        found = self.state_table(name)
        if found is None:
            raise LedgerError(f"the ledger's state {name!r} has no table in the server",
                              file=self.location, hint="plan again: the diff then runs here")
        table, stored, _ = found
        columns = [f"c{stored.index(f)}" if f in stored else None for f in fields]
        sql = dialects.render(dialects.changed_users_sql("desired_in", table, columns),
                              "postgresql")

        def signed(batches):
            for batch in batches:
                yield pa.record_batch([batch.column("uid"), _signed(batch.column("checksum"))],
                                      names=["uid", "checksum"])

        received = [0]
        types = [("uid", pa.string()), *((f"s{k}", pa.string()) for k in range(len(fields)))]
        with self._lock:
            try:
                with self._conn.transaction():
                    self._conn.execute("CREATE TEMP TABLE desired_in (uid TEXT, checksum BIGINT) "
                                       "ON COMMIT DROP")
                    sent = copy_in(self._conn, "desired_in", signed(desired))
                    self._conn.execute("ANALYZE desired_in")
                    out = pa.Table.from_batches(
                        list(copy_out(self._conn, sql, types, counter=received)),
                        schema=pa.schema(types))
            except self.psycopg.Error as exc:
                raise self.error(exc, "read") from None
        return out, sent, received[0]

    def names(self, prefix: str) -> list[tuple[str, bool]]:
        cutoff = (datetime.now(timezone.utc) - _FRESH).isoformat(timespec="milliseconds")
        return [(n, at > cutoff) for n, at in self.query(
            "SELECT name, stored_at FROM file_index WHERE starts_with(name, ?)", (prefix,))]

    def remove(self, names: Sequence[str], keep_if: str | None = None) -> None:
        """Delete stored files (and their cached copies); ``keep_if``: a SQL condition on
        ``name`` checked in the same transaction (a file that became current is kept)."""
        names = list(names)
        if not names:
            return
        guard = f" AND NOT ({keep_if})" if keep_if else ""

        def delete(conn) -> list[str]:
            gone = []
            for name in names:
                if conn.execute(f"DELETE FROM file_index WHERE name = ?{guard} RETURNING name",
                                (name,)).fetchone():
                    conn.execute("DELETE FROM files WHERE name = ?", (name,))
                    for (table,) in conn.execute("DELETE FROM state_tables WHERE name = ? "
                                                 "RETURNING tbl", (name,)).fetchall():
                        conn.execute(f'DROP TABLE IF EXISTS "{self.schema}"."{table}"')
                    gone.append(name)
            return gone

        for name in self.write(delete):
            (self.directory / name).unlink(missing_ok=True)

    def remove_folder(self, name: str) -> None:
        """Nothing to do: stored names have no folders on the server."""
