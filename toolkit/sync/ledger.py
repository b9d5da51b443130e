"""The sync ledger: what one Braze workspace has acknowledged, and every batch sent to it.

Three parts, beside each other under ``./.toolkit/`` (one set per Braze workspace identity):

* a **journal** — one SQLite file (WAL mode): ``batches`` holds every batch of every applied
  plan, recorded *before* it is sent and updated after Braze answers (pending → sent →
  acknowledged | rejected | unknown | failed | resolved), so a crashed apply resumes without
  resending what Braze already took and never silently resends events; ``changes`` has one row
  per acknowledged batch (its count is the ledger ``version`` a plan records, so applying a plan
  made from an older picture of the workspace is refused); ``plans`` names the copy of each
  applied plan's operations kept in ``<ledger>.plans/``.
* the **state snapshot** — one Parquet file, one row per Braze user (``uid`` such as
  ``external_id:u1``): the last value Braze acknowledged for each *field* as JSON text (fields
  are ``attr:<attribute>``, ``member:<audience>``, ``trait:<key>``, ``cohort:<cohort_id>``, see
  `toolkit.sync.projection`) and a per-user ``checksum`` of those values, so a plan skips an
  unchanged user with one comparison (as Segment Reverse ETL's records table does).
* the **convergence record** — after a complete apply: the digest of the export Braze now holds,
  its findings and left-out profiles, and a hash of every profile's row (an Arrow file), so the
  next plan of the same export has nothing to do and a plan of a changed one diffs only the
  users whose row changed.

While sending, an acknowledged batch records only a reference to its rows of the plan copy (one
small write in the same transaction as its status); `materialize` folds everything acknowledged
into a new snapshot in one pass on the engine, written beside the old one and switched to in one
journal transaction — so the send loop never waits on per-user writes, and a crash at any point
loses nothing Braze acknowledged. A ledger written by schema 1 (state as SQLite rows) is
migrated on open.

**Whose ledger.** A ledger belongs to one Braze workspace — the instance and a workspace name
(``"<name>@<endpoint>"``, see `BrazeClient.workspace`), recorded in the journal — never to an API
key: a rotated key opens the same ledger, and a client for another instance or workspace name is
refused with the fix. A ledger made before workspaces were named (labelled ``"<endpoint>#<key
fingerprint>"``) opens with the key it was made with and is re-labelled (and, at its default
place, renamed) on the way.

**Event times.** Every plan stamps its events with one ``event_time``, and the ledger hands out
each whole second once (`reserve_event_time`), so the time Braze reports for an event
(``custom_events[].first/last``) names the plan that sent it; `toolkit.settle` relies on this.

The ledger never stores secrets: identities, values, statuses, key fingerprints and Braze's error
texts only.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from html import escape
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from toolkit import engine
from toolkit.engine import literal, quote
from toolkit.errors import LedgerError
from toolkit.secrets import read_env_file
from toolkit.sync.diff import checksum_sql
from toolkit.sync.journal import (_FIX_CORRUPT, PostgresJournal, SqliteJournal, _try_lock,
                                   is_ledger_url, ledger_location)

__all__ = ["Ledger", "Snapshot", "Rows", "default_ledger_path", "BATCH_STATUSES",
           "describe_workspace", "LEGACY_WORKSPACE", "reopen_ledger",
           "configured_ledger_url"]

SCHEMA_VERSION = 2
BATCH_STATUSES = ("pending", "sent", "acknowledged", "rejected", "unknown", "failed", "resolved")
# Findings about the moment a plan was made, not about its export: never replayed from a
# convergence record.
TRANSIENT_FINDINGS = frozenset({"uncertain_events_held", "api_key_changed", "event_time_moved"})
# Statuses after which a batch needs nothing more from this plan.
FINAL_STATUSES = ("acknowledged", "rejected", "resolved")
FOLD_PROGRESS_DELAY = 2.0   # seconds a fold runs before its bar shows (only large ones do)

_SET_META = ("INSERT INTO meta (key, value) VALUES (?, ?) "
             "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
# "<endpoint>#<8 hex digits of the key's sha256>": how workspaces were named before they had names
LEGACY_WORKSPACE = re.compile(r"(?P<endpoint>.+)#(?P<key>[0-9a-f]{8})")
_NAMED_WORKSPACE = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9 ._-]{0,63})@(?P<endpoint>\w+://.+)")
# (``state`` is schema 1's per-row state; it stays empty after the migration to snapshots.)


@dataclass(frozen=True)
class Snapshot:
    """The current state snapshot: its Parquet ``path``, the fields it has columns for, and the
    field digest its checksums were computed under (None: no usable checksums)."""

    path: Path
    columns: frozenset
    checksum_spec: str | None
    users: int


@dataclass(frozen=True)
class Rows:
    """Acknowledged state by reference: the rows of request ``index`` in the ledger's copy of
    the plan's operations, less the ``(uid, field)`` rows of objects Braze rejected."""

    index: int
    rows: int
    rejected: tuple = ()

    def encode(self) -> str:
        return json.dumps({"batch": self.index, "rows": self.rows,
                           "rejected": list(self.rejected)}, separators=(",", ":"))


def file_digest(path: "str | os.PathLike[str]") -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _safe_name(workspace: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", workspace).strip("_") or "workspace"


def _state_version(name: str | None) -> int:
    """The ledger version a snapshot's name says it holds (-1: not a versioned snapshot)."""
    found = re.search(r"state-(\d{9})-", name or "")
    return int(found.group(1)) if found else -1


def describe_workspace(identity: str | None) -> str:
    """A workspace identity as a person reads it: "workspace 'prod' on https://…" or, for a
    ledger made before workspaces were named, "the workspace of key sha256:… on https://…"."""
    if identity is None:
        return "no workspace"
    named = _NAMED_WORKSPACE.fullmatch(identity)
    if named:
        return f"workspace {named['name']!r} on {named['endpoint']}"
    legacy = LEGACY_WORKSPACE.fullmatch(identity)
    if legacy:
        return f"the workspace of API key sha256:{legacy['key']} on {legacy['endpoint']}"
    return f"workspace {identity!r}"


def _endpoint_of(identity: str | None) -> str | None:
    for pattern in (_NAMED_WORKSPACE, LEGACY_WORKSPACE):
        m = pattern.fullmatch(identity or "")
        if m:
            return m["endpoint"]
    return None


def _mismatch(stored: str, wanted: str, location: str) -> LedgerError:
    """The refusal of a ledger opened for another workspace, with the fix for each case."""
    here, there = _endpoint_of(stored), _endpoint_of(wanted)
    named_stored = _NAMED_WORKSPACE.fullmatch(stored)
    named_wanted = _NAMED_WORKSPACE.fullmatch(wanted)
    message = (f"this ledger belongs to {describe_workspace(stored)} ({stored!r}), not to "
               f"{describe_workspace(wanted)} ({wanted!r}); nothing was read or sent")
    if here and there and here != there:
        hint = ("a ledger records what one workspace holds, so it cannot serve another instance: "
                "check BRAZE_REST_ENDPOINT / --endpoint, or use the ledger of the workspace you "
                f"target (default {default_ledger_path(wanted).relative_to(Path.cwd())})")
    elif named_stored and named_wanted:
        hint = (f"if both names mean the same workspace, set BRAZE_WORKSPACE={named_stored['name']}"
                f" (or --workspace {named_stored['name']!r}); if they are different workspaces, "
                "use the ledger of the one you target (pass no --ledger to get its default "
                "ledger)")
    elif LEGACY_WORKSPACE.fullmatch(stored) and named_wanted:
        hint = ("this ledger was made before workspaces were named, with another API key. If you "
                "rotated the key, open the ledger once with the old key: run `python -m toolkit "
                "plan …` with the old key in BRAZE_API_KEY and BRAZE_WORKSPACE="
                f"{named_wanted['name']} (nothing is sent to Braze; a revoked key works); the "
                "ledger is then re-labelled to the workspace name and works with any of its keys")
    else:
        hint = "use the ledger of the workspace you target (Ledger(client)), or another path"
    return LedgerError(message, file=location, hint=hint)


def _relocate(old: Path, new: Path) -> Path:
    """Move a ledger made before workspaces were named from its old default name to its new
    one: only the journal file moves (checkpointed first, under the ledger's lock); its state
    snapshot and plan copies keep their names, which the journal refers to. Returns where the
    ledger is now (its old place when it could not be moved: it opens from there)."""
    lock_path = old.with_name(old.name + ".lock")
    try:
        handle = open(lock_path, "a+")
    except OSError:
        return old
    try:
        if not _try_lock(handle):
            raise LedgerError("the ledger is in use by another process; it is moved to its new "
                              "name the next time it is free", file=str(old),
                              hint="wait for the other apply to finish, then run again")
        conn = sqlite3.connect(old, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('previous_name', ?)", (old.name,))
        finally:
            conn.close()
        for suffix in ("-wal", "-shm"):
            side = old.with_name(old.name + suffix)
            if side.exists():
                os.replace(side, new.with_name(new.name + suffix))
        os.replace(old, new)
    except (sqlite3.DatabaseError, OSError):
        return old if old.exists() else new   # opening it reports what is wrong, where it is
    finally:
        handle.close()
    lock_path.unlink(missing_ok=True)
    return new


def default_ledger_path(workspace: str, directory: "str | os.PathLike[str] | None" = None) -> Path:
    """``<directory or cwd>/.toolkit/ledger-<safe workspace>.sqlite``."""
    base = Path(directory) if directory is not None else Path.cwd()
    return base / ".toolkit" / f"ledger-{_safe_name(workspace)}.sqlite"


def configured_ledger_url(client: Any = None) -> str | None:
    """The team's shared ledger when one is configured: ``BRAZE_LEDGER_URL`` from the
    environment, else from the client's env file (``.env`` by default, as its API key).
    A setting that is not a ``postgresql://`` URL is refused, not taken for a file name."""
    value = os.environ.get("BRAZE_LEDGER_URL")
    env_file = getattr(client, "_env_file", None)
    if not value and env_file:
        value = read_env_file(env_file).get("BRAZE_LEDGER_URL")
    if not value:
        return None
    if not is_ledger_url(value):
        raise LedgerError("BRAZE_LEDGER_URL must be a postgresql:// URL; nothing was read or "
                          "sent", field="BRAZE_LEDGER_URL",
                          hint="write it as postgresql://user:password@host:5432/database (a "
                               "ledger file is passed as path=… or --ledger FILE instead)")
    return value


def reopen_ledger(location: str, workspace: Any) -> "Ledger":
    """The ledger a plan was made against, from the location the plan recorded: a file, or a
    server URL whose password the plan never kept — then ``BRAZE_LEDGER_URL`` must name the
    same server, database and schema (or the URL must need no password: PGPASSWORD,
    ~/.pgpass)."""
    if not is_ledger_url(location):
        return Ledger(path=location, workspace=workspace)
    configured = configured_ledger_url(workspace)
    if configured and ledger_location(configured) == location:
        return Ledger(configured, workspace=workspace)
    if "***" not in location:
        return Ledger(location, workspace=workspace)
    raise LedgerError("this plan was made against the shared ledger at "
                      f"{location}, and its password is not kept in plans; nothing was sent",
                      file=location,
                      hint="set BRAZE_LEDGER_URL to that ledger's URL (with its password, in "
                           "the environment or .env), or pass ledger='postgresql://…' to apply")


class Ledger:
    """What one Braze workspace acknowledged (a Parquet state snapshot), plus every batch sent
    to it (a journal): on this machine (SQLite, the default) or on a PostgreSQL server a team
    shares.

    ``Ledger(client_or_workspace)`` opens the default file for that workspace under
    ``./.toolkit/`` — or, when ``BRAZE_LEDGER_URL`` is set, the ledger at that URL;
    ``Ledger(path="x.sqlite", workspace=…)`` or ``Ledger("x.sqlite")`` opens a given file
    (``workspace`` is the identity text or the `BrazeClient`); ``Ledger("postgresql://…",
    workspace=…)`` opens (and creates) the ledger in schema ``braze_sync`` of that database
    (``schema=`` or ``?schema=…`` for another). Opening a ledger made for another workspace raises
    `LedgerError`; one made before workspaces were named is re-labelled when opened with the client
    (same key) it was made with.
    """

    def __init__(self, target: Any = None, *, path: "str | os.PathLike[str] | None" = None,
                 workspace: Any = None, directory: "str | os.PathLike[str] | None" = None,
                 timeout: float = 10.0, schema: str | None = None) -> None:
        client = None
        if target is not None:
            if hasattr(target, "workspace") and not isinstance(target, (str, os.PathLike)):
                client = target
            elif (isinstance(target, os.PathLike) or is_ledger_url(target)
                  or str(target).endswith((".sqlite", ".db"))):
                path = path or target
            else:
                workspace = workspace or str(target)
        if workspace is not None and not isinstance(workspace, str):
            client = workspace
            workspace = None
        if client is not None:
            workspace = workspace or client.workspace
        legacy = getattr(client, "legacy_workspace", None)
        if path is None and directory is None:
            path = configured_ledger_url(client)
        if path is None:
            if workspace is None:
                raise LedgerError("a ledger needs a Braze workspace or a file path",
                                  hint="pass the BrazeClient, its .workspace, or path=…")
            path = default_ledger_path(workspace, directory)
            old = default_ledger_path(legacy, directory) if legacy else None
            if old is not None and old != path and old.exists() and not path.exists():
                path = _relocate(old, path)
        self._closed = False
        self._lock = threading.RLock()
        if is_ledger_url(path):
            cache = Path(directory) / ".toolkit" / "ledger-cache" if directory else None
            self._journal = PostgresJournal(str(path), schema=schema, timeout=timeout,
                                            cache=cache)
        else:
            self._journal = SqliteJournal(Path(path), timeout)
        self.path: Path | None = self._journal.path
        self.relabelled_from: str | None = None
        self.workspace = self._claim(workspace, legacy)

    @property
    def location(self) -> str:
        """Where the ledger is, as shown to people: its file, or its server URL (password
        hidden) and schema."""
        return self._journal.location

    @property
    def shared(self) -> bool:
        """True when the ledger is on a server (several people and machines use it)."""
        return self._journal.kind != "sqlite"

    def _claim(self, workspace: str | None, legacy: str | None = None) -> str | None:
        meta = dict(self._query("SELECT key, value FROM meta"))
        if "schema" in meta and int(meta["schema"]) > SCHEMA_VERSION:
            raise LedgerError(f"the ledger was written by a newer toolkit (schema {meta['schema']})",
                              file=self.location, hint="upgrade the toolkit")
        stored = meta.get("workspace")
        if stored is not None and workspace is not None and stored != workspace:
            if legacy is None or stored != legacy:
                raise _mismatch(stored, workspace, self.location)
            # made before workspaces were named, opened with the key it was made with: from now
            # on it belongs to the workspace, whatever key reaches it
            self._write(lambda c: c.executemany(
                _SET_META,
                [("workspace", workspace), ("previous_workspace", stored),
                 ("relabelled_at", _now())]))
            self.relabelled_from = stored
            stored = workspace
        if stored is None and workspace is not None:
            self._write(lambda c: c.executemany(
                _SET_META,
                [("workspace", workspace), ("schema", str(SCHEMA_VERSION)), ("created_at", _now())]))
        elif "schema" in meta and int(meta["schema"]) < SCHEMA_VERSION:
            self._migrate()
        return stored or workspace

    # -- low-level access ----------------------------------------------------------------
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._journal.query(sql, params)

    def _write(self, fn) -> Any:
        """Run ``fn(conn)`` in one transaction (all or nothing); writers take turns."""
        with self._lock:
            return self._journal.write(fn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._journal.close()

    @contextmanager
    def exclusive(self, what: str = "apply"):
        """Hold this ledger for one writer process at a time (an OS file lock next to a SQLite
        ledger, an advisory lock on a PostgreSQL one — both released even when the process is
        killed). A second apply on the same ledger raises `LedgerError` instead of sending the
        same batches twice."""
        with self._journal.exclusive(what):
            yield self

    @property
    def in_use_by(self) -> str | None:
        """Who holds this ledger for an apply or settle right now — "apply pid 123 since …",
        or on a server "toolkit apply pid 123 on HOST (connected since …)" — or None."""
        return self._journal.holder()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Number of acknowledged state changes so far; grows by one per acknowledged batch."""
        return int(self._query("SELECT COALESCE(MAX(version), 0) FROM changes")[0][0])

    def _meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def _file(self, name: str) -> Path:
        """A local path of the ledger's stored file ``name`` (fetched from the server for a
        shared ledger)."""
        return self._journal.file(name)

    def _new_name(self, kind: str, tag: str = "", ext: str = "parquet") -> str:
        """A new stored file's name: ``<ledger>.<kind>-<tag>-<unique>.<ext>``."""
        # unique across processes and across ledger objects of one process (two folds at once)
        unique = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return f"{self._journal.prefix}{kind}-{tag + '-' if tag else ''}{unique}.{ext}"

    def snapshot(self) -> Snapshot | None:
        """The current state snapshot (after folding what is acknowledged), or None when Braze
        has acknowledged nothing yet."""
        self.materialize()
        name = self._meta("state_file")
        if not name:
            return None
        path = self._file(name)
        try:
            schema = pq.read_schema(path)
            users = pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise LedgerError(f"the ledger's state snapshot cannot be read: {exc}",
                              file=str(path), hint=_FIX_CORRUPT) from None
        columns = frozenset(n for n in schema.names if n not in ("uid", "checksum"))
        return Snapshot(path, columns, self._meta("state_spec") or None, users)

    def state_info(self) -> dict | None:
        """The current snapshot, described without reading it: ``name``, checksum ``spec``,
        stored ``size``, whether this machine has it ``cached``, and whether the server keeps
        it as a ``table`` (with its ``fields`` and ``users``). None: no acknowledged state."""
        self.materialize()
        name = self._meta("state_file")
        if not name:
            return None
        table = self._journal.state_table(name)
        return {"name": name, "spec": self._meta("state_spec") or None,
                "size": self._journal.size(name), "cached": self._journal.cached(name),
                "table": table is not None, "fields": table[1] if table else [],
                "users": table[2] if table else 0}

    def fields(self) -> list[str]:
        snap = self.snapshot()
        return sorted(snap.columns) if snap is not None else []

    def _read_state(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        snap = self.snapshot()
        if snap is None:
            return []
        with engine.connect() as db:
            return db.execute(sql.replace("{snapshot}", f"read_parquet({literal(str(snap.path))})"),
                              list(params)).fetchall()

    def state(self, field: str) -> pd.Series:
        """Last acknowledged JSON values of one field, indexed by uid."""
        uids, values = self.state_arrays(field)
        return pd.Series(values, index=pd.Index(uids, dtype=object, name="uid"), dtype=object,
                         name=field)

    def state_arrays(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        """(uids, JSON values) of one field as object arrays."""
        snap = self.snapshot()
        if snap is None or field not in snap.columns:
            return np.empty(0, dtype=object), np.empty(0, dtype=object)
        rows = self._read_state(f"SELECT uid, {quote(field)} FROM {{snapshot}} "
                                f"WHERE {quote(field)} IS NOT NULL ORDER BY uid")
        if not rows:
            return np.empty(0, dtype=object), np.empty(0, dtype=object)
        table = np.array(rows, dtype=object)
        return table[:, 0], table[:, 1]

    def user(self, uid: str) -> dict[str, Any]:
        """Everything acknowledged for one identity, decoded: ``{field: value}``."""
        snap = self.snapshot()
        if snap is None:
            return {}
        cols = sorted(snap.columns)
        if not cols:
            return {}
        rows = self._read_state(f"SELECT {', '.join(quote(c) for c in cols)} FROM {{snapshot}} "
                                "WHERE uid = ?", (uid,))
        if not rows:
            return {}
        return {f: json.loads(v) for f, v in zip(cols, rows[0]) if v is not None}

    def changes_since(self, version: int, *, excluding_plan: str | None = None) -> int:
        """State changes made after ``version`` by plans other than ``excluding_plan``."""
        rows = self._query("SELECT COUNT(*) FROM changes WHERE version > ? AND plan != ?",
                           (int(version), excluding_plan or ""))
        return int(rows[0][0])

    def materialize(self, progress: bool = False) -> int:
        """Fold acknowledged batches' state into a new snapshot (in change order, one pass on
        the engine, switched to in one journal transaction); returns how many users' values
        changed. When another process switched the snapshot meanwhile (a shared ledger, or a
        notebook beside an apply), the fold is made again on top of the new one.
        ``progress``: a bar, shown once the fold has taken more than two seconds (a fold of
        millions of operations; small ones stay silent)."""
        from tqdm.auto import tqdm  # lazy: tqdm.auto imports IPython when it is installed

        with self._lock:
            while True:
                rows = self._query(
                    "SELECT b.plan, b.batch, b.pending, c.version FROM batches b JOIN changes c "
                    "ON c.plan = b.plan AND c.batch = b.batch WHERE b.pending IS NOT NULL "
                    "ORDER BY c.version")
                if not rows:
                    return 0
                base = self._meta("state_file")
                with tqdm(total=100, desc="ledger: fold acknowledged state", unit="%",
                          delay=FOLD_PROGRESS_DELAY, disable=not progress, leave=True,
                          bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}]") as bar:
                    written, name = self._fold(rows, base, bar)
                spec = self._meta("checksum_digest") or ""

                def switch(conn) -> bool:
                    now = conn.execute("SELECT value FROM meta WHERE key = 'state_file'").fetchall()
                    if (now[0][0] if now else None) != base:
                        return False
                    conn.executemany(_SET_META, [("state_file", name), ("state_spec", spec)])
                    conn.executemany("UPDATE batches SET pending = NULL WHERE plan = ? AND "
                                     "batch = ?", [(p, b) for p, b, _, _ in rows])
                    return True

                if self._write(switch):
                    break
                self._journal.remove([name])
            self._remove_stale_files()
            return written

    def _fold(self, rows: list[tuple], current: str | None, bar) -> tuple[int, str]:
        explicit: list[tuple[str, str, str | None, int]] = []
        refs: dict[str, list[tuple[int, int]]] = {}
        rejected: list[tuple[str, int, str]] = []
        for plan, _batch, pending, version in rows:
            data = json.loads(pending)
            if isinstance(data, dict):
                refs.setdefault(plan, []).append((int(data["batch"]), int(version)))
                rejected += [(plan, int(data["batch"]), u, f) for u, f in data.get("rejected", [])]
            else:
                explicit += [(f, u, v, int(version)) for f, u, v in data]
        files = dict(self._query("SELECT plan, file FROM plans"))
        kinds = json.loads(self._meta("checksum_fields") or "[]")
        digest = self._meta("checksum_digest") or ""
        version = max(int(r[3]) for r in rows)
        name = self._new_name("state", f"{version:09d}")
        tmp = self._journal.staging(name)
        with engine.connect() as db:
            parts, sources = [], []
            if explicit:
                db.register("explicit_raw", pa.table({
                    "field": pa.array([e[0] for e in explicit], pa.string()),
                    "uid": pa.array([e[1] for e in explicit], pa.string()),
                    "after": pa.array([e[2] for e in explicit], pa.string()),
                    "version": pa.array([e[3] for e in explicit], pa.int64())}))
                parts.append("SELECT field, uid, after, version FROM explicit_raw")
            if rejected:
                db.register("rejected_raw", pa.table({
                    "plan": pa.array([r[0] for r in rejected], pa.string()),
                    "batch": pa.array([r[1] for r in rejected], pa.int64()),
                    "uid": pa.array([r[2] for r in rejected], pa.string()),
                    "field": pa.array([r[3] for r in rejected], pa.string())}))
            for plan, batches in refs.items():
                if plan not in files:
                    raise LedgerError(f"the ledger lost the operations of plan {plan}",
                                      file=self.location, hint=_FIX_CORRUPT)
                # an engine table, not an Arrow view: the engine can then say how far the
                # fold's scan of the plan's operations has come
                db.register("refs_raw", pa.table({
                    "batch": pa.array([b for b, _ in batches], pa.int64()),
                    "version": pa.array([v for _, v in batches], pa.int64())}))
                db.execute(f"CREATE TEMP TABLE refs_{len(parts)} AS SELECT * FROM refs_raw")
                db.unregister("refs_raw")
                src = literal(str(self._file(files[plan])))
                sources.append(src)
                skip = (f" AND NOT EXISTS (SELECT 1 FROM rejected_raw x WHERE x.plan = "
                        f"{literal(plan)} AND x.batch = o.batch AND x.uid = o.uid AND x.field = o.field)"
                        if rejected else "")
                parts.append(f"SELECT o.field, o.uid, o.after, r.version FROM read_parquet({src}) o "
                             f"JOIN refs_{len(parts)} r ON o.batch = r.batch WHERE true{skip}")
            # the fields the updates may name: each plan file's few-valued field column, read
            # alone (the pivot then says which of them were acknowledged, so the updates are
            # read once, straight into it)
            candidates = {e[0] for e in explicit}
            for src in sources:
                candidates.update(r[0] for r in db.execute(
                    f"SELECT DISTINCT field FROM read_parquet({src})").fetchall())
            candidates = sorted(candidates)
            # the latest acknowledged value of each (field, user) wins (arg_max_null keeps a
            # latest "forget" as NULL)
            pivot = ", ".join(
                f"arg_max_null(after, version) FILTER (WHERE field = {literal(f)}) AS "
                f"{quote('v:' + f)}, bool_or(field = {literal(f)}) AS {quote('h:' + f)}"
                for f in candidates)
            with engine.reporting(db, bar, 55):
                db.execute(f"CREATE TEMP TABLE upd AS SELECT uid, {pivot or 'count(*) AS n'} "
                           "FROM (" + " UNION ALL ".join(parts) + ") GROUP BY uid")
            seen = db.execute("SELECT " + ", ".join(
                f"coalesce(bool_or({quote('h:' + f)}), false)" for f in candidates)
                + " FROM upd").fetchall()[0] if candidates else ()
            new_fields = [f for f, acknowledged in zip(candidates, seen) if acknowledged]
            old = self._file(current) if current else None
            old_fields = ([n for n in pq.read_schema(old).names if n not in ("uid", "checksum")]
                          if old is not None else [])
            all_fields = sorted(set(old_fields) | set(new_fields))
            cols = []
            for f in all_fields:
                if f in new_fields and f in old_fields:
                    cols.append(f"CASE WHEN coalesce(u.{quote('h:' + f)}, false) THEN "
                                f"u.{quote('v:' + f)} ELSE s.{quote(f)} END AS {quote(f)}")
                elif f in new_fields:
                    cols.append(f"u.{quote('v:' + f)} AS {quote(f)}")
                else:
                    cols.append(f"s.{quote(f)} AS {quote(f)}")
            base = (f"read_parquet({literal(str(old))})" if old is not None else
                    "(SELECT NULL::VARCHAR AS uid WHERE false)")
            db.execute(f"CREATE TEMP VIEW merged AS SELECT coalesce(s.uid, u.uid) AS uid, "
                       f"{', '.join(cols)} FROM {base} s FULL OUTER JOIN upd u ON s.uid = u.uid")

            have = set(all_fields)
            checksum = (checksum_sql([tuple(k) for k in kinds],
                                     lambda f: quote(f) if f in have else "NULL", digest)
                        if kinds else "NULL::UBIGINT")
            with engine.reporting(db, bar, 35):
                db.execute(f"COPY (SELECT uid, {checksum} AS checksum, "
                           f"{', '.join(quote(f) for f in all_fields)} FROM merged) "
                           f"TO {literal(str(tmp))} (FORMAT parquet, COMPRESSION zstd)")
            written = db.execute("SELECT count(*) FROM upd").fetchall()[0][0]
        self._journal.store(tmp, name, table=True)
        bar.update(bar.total - bar.n)
        return int(written), name

    def _remove_stale_files(self) -> None:
        """Snapshots other than the current one, left-out files of old convergence records,
        and plan copies nothing refers to any more (a newer snapshot, or a plan with no batch
        recorded yet, is kept for an hour: another process may be about to use it)."""
        current = self._meta("state_file")
        record = self._meta("converged")
        kept = json.loads(record) if record else {}
        left, inputs = kept.get("left_out"), kept.get("inputs")
        prefixes = [self._journal.prefix, (self._meta("previous_name") or "") + "."]
        # a snapshot newer than the current one may be another process's fold, about to be
        # switched to: kept until it is old enough to be an orphan
        newest = _state_version(current)
        stale = [name for prefix in dict.fromkeys(p for p in prefixes if p != ".")
                 for kind in ("state-", "converged") for name, fresh in self._journal.names(
                     prefix + kind) if name not in (current, left, inputs) and not (
                     fresh and _state_version(name) >= newest)]
        self._journal.remove(stale, keep_if="name IN (SELECT value FROM meta WHERE key = "
                                            "'state_file')")
        cutoff = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(
            timespec="milliseconds")
        needed = {r[0] for r in self._query(
            "SELECT DISTINCT plan FROM batches WHERE pending IS NOT NULL OR (kind = 'events' AND "
            "status IN ('sent', 'unknown')) OR status IN ('pending', 'sent', 'unknown', 'failed')")}
        # a plan recorded moments ago may not have its batches recorded yet: its apply is
        # about to start
        for plan, file, recorded, batches in self._query(
                "SELECT p.plan, p.file, p.recorded_at, (SELECT count(*) FROM batches b WHERE "
                "b.plan = p.plan) FROM plans p"):
            if plan not in needed and (batches or recorded < cutoff):
                self._journal.remove([file])
                self._write(lambda c, p=plan: c.execute("DELETE FROM plans WHERE plan = ?", (p,)))
        previous = self._meta("previous_name")
        if previous:  # the plan copies of a ledger renamed from its old name, once all are gone
            self._journal.remove_folder(previous + ".plans")

    def _migrate(self) -> None:
        """Schema 1 kept state as SQLite rows: move them into a snapshot (no checksums yet:
        the first plan compares values, and the next fold writes checksums)."""
        count = self._query("SELECT COUNT(*) FROM state")[0][0]
        if count:
            rows = self._query("SELECT field, uid, value FROM state")
            name = self._new_name("state", "migrated")
            tmp = self._journal.staging(name)
            fields = sorted({r[0] for r in rows})
            with engine.connect() as db:
                db.register("rows_raw", pa.table({
                    "field": pa.array([r[0] for r in rows], pa.string()),
                    "uid": pa.array([r[1] for r in rows], pa.string()),
                    "value": pa.array([r[2] for r in rows], pa.string())}))
                pivot = ", ".join(f"max(value) FILTER (WHERE field = {literal(f)}) AS {quote(f)}"
                                  for f in fields)
                db.execute(f"COPY (SELECT uid, NULL::UBIGINT AS checksum, {pivot} FROM rows_raw "
                           f"GROUP BY uid ORDER BY uid) TO {literal(str(tmp))} "
                           "(FORMAT parquet, COMPRESSION zstd)")
            del rows
            self._journal.store(tmp, name)

            def switch(conn) -> None:
                conn.executemany(_SET_META,
                                 [("state_file", name), ("state_spec", "")])
                conn.execute("DELETE FROM state")
            self._write(switch)
        self._write(lambda c: c.execute(_SET_META, ("schema", str(SCHEMA_VERSION))))
        if count:
            with self._lock:
                self._journal.vacuum()

    # -- event times -----------------------------------------------------------------------
    @staticmethod
    def _second(when: datetime) -> str:
        return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def reserve_event_time(self, base: datetime) -> datetime:
        """A time for a new plan's events: ``base``, or the latest earlier time whose whole
        second no other plan of this ledger was given — so the time Braze reports for an event
        names the plan that sent it (see `toolkit.settle`). Earlier, never later: Braze records
        an event stamped in the future at the time it arrives, which would hide the stamp."""
        if base.tzinfo is None:
            base = base.replace(tzinfo=timezone.utc)

        def pick(conn) -> datetime:
            when = base
            while conn.execute("SELECT 1 FROM event_times WHERE second = ?",
                               (self._second(when),)).fetchone():
                when -= timedelta(seconds=1)
            conn.execute("INSERT INTO event_times (second, reserved_at) VALUES (?, ?)",
                         (self._second(when), _now()))
            return when

        return self._write(pick)

    def event_time_owner(self, event_time: str) -> str | None:
        """The plan already applied with events stamped in ``event_time``'s second, if any."""
        try:
            when = datetime.fromisoformat(event_time.replace("Z", "+00:00"))
        except (TypeError, ValueError):
            return None
        rows = self._query("SELECT plan FROM event_times WHERE second = ? AND plan IS NOT NULL",
                           (self._second(when),))
        return rows[0][0] if rows else None

    def note_key(self, fingerprint: str) -> str | None:
        """Record the fingerprint of the API key now used with this ledger; returns the one
        used before when it differs (a rotated key — or a key of another workspace given the
        same name), else None. Fingerprints only: the key itself is never stored."""
        previous = self._meta("key_fingerprint")
        if previous != fingerprint:
            self._write(lambda c: c.execute(
                _SET_META, ("key_fingerprint", fingerprint)))
        return previous if previous not in (None, fingerprint) else None

    # -- convergence ---------------------------------------------------------------------
    def record_converged(self, plan) -> bool:
        """Remember that Braze now holds everything ``plan``'s export asks for: the plan was
        applied completely (or had nothing to send) from this ledger's current version, with no
        event awaiting settle. A later plan of an export with the same input digest then knows,
        without projecting or diffing, that it has nothing to send; it reuses this plan's
        findings and left-out profiles (the same input gives the same ones). The plan's inputs
        file (its export's row hashes, `toolkit.sync.projection.inputs_table`) is kept too, when
        its sha256 is the one the plan's fingerprinted manifest names: a plan of a *changed*
        export then projects and diffs only the users whose row changed
        (`converged_inputs`). Returns whether it was recorded."""
        digest = plan.manifest.get("input_digest")
        if not digest or self.awaiting_settle()[0]:
            return False
        self.materialize()
        name = self._new_name("converged", plan.id)
        tmp = self._journal.staging(name)
        if plan.left_path is not None and plan.left_path.exists():
            shutil.copyfile(plan.left_path, tmp)
        else:
            pq.write_table(pa.table({c: pa.array([], pa.string()) for c in (
                "segment_id", "uid", "rule", "code", "reason")}), tmp)
        self._journal.store(tmp, name)
        previous = self._meta("converged")
        before = json.loads(previous) if previous else {}
        inputs = self._store_inputs(plan)
        if (inputs is None and before.get("digest") == digest
                and plan.manifest.get("converged_with") == before.get("plan")
                and before.get("version") == self.version):
            inputs = before.get("inputs")   # answered from that very record: its inputs hold
        record = {"digest": digest, "version": self.version, "plan": plan.id,
                  "left_out": name, "inputs": inputs, "recorded_at": _now(),
                  "findings": [{k: getattr(f, k) for k in ("severity", "code", "message", "row",
                                                            "column", "fix", "segment_id")}
                               for f in plan.findings if f.code not in TRANSIENT_FINDINGS],
                  **{k: plan.manifest.get(k) for k in (
                      "fields", "field_digest", "profiles", "users", "cohorts")}}
        self._write(lambda c: c.execute(_SET_META, ("converged", json.dumps(
            record, ensure_ascii=False, default=str))))
        # the record it replaces needs its files no more
        self._journal.remove([f for f in (before.get("left_out"), before.get("inputs"))
                              if f and f not in (name, inputs)])
        return True

    def _store_inputs(self, plan) -> str | None:
        """Keep the plan's inputs file (`toolkit.sync.projection.inputs_table`) when it is the
        one the plan was made with (its sha256 is in the fingerprinted manifest); its name."""
        src = getattr(plan, "inputs_path", None)
        want = plan.manifest.get("inputs_digest")
        if src is None or not want or not Path(src).exists() or file_digest(src) != want:
            return None
        name = self._new_name("converged", plan.id + "-inputs", "arrow")
        tmp = self._journal.staging(name)
        shutil.copyfile(src, tmp)
        self._journal.store(tmp, name)
        return name

    def _converged_record(self) -> dict:
        """The convergence record while it is of the ledger's current version, else {}."""
        text = self._meta("converged")
        try:
            record = json.loads(text) if text else {}
        except ValueError:
            return {}
        return record if record.get("version") == self.version else {}

    def converged(self, digest: str) -> dict | None:
        """The convergence record (see `record_converged`) when it is for an export with input
        ``digest`` and still true: nothing acknowledged since, nothing awaiting settle, its
        left-out file in place. None otherwise (the plan then takes the full path)."""
        record = self._converged_record()
        if not record or record.get("digest") != digest:
            return None
        path = self._file(str(record.get("left_out")))
        if not path.exists() or self.awaiting_settle()[0]:
            return None
        return dict(record, left_out=path)

    def converged_digest(self) -> str | None:
        """The input digest a plan could be answered for from the convergence record (see
        `converged`), None when no plan can be: a plan then reads its export once, without
        first hashing it to ask."""
        digest = self._converged_record().get("digest")
        return str(digest) if digest and self.converged(str(digest)) is not None else None

    def converged_inputs(self) -> Path | None:
        """The inputs of the export the ledger last converged to, while that is still true
        (nothing acknowledged since, nothing awaiting settle): a plan of a changed export then
        projects and diffs only the users whose row changed. None otherwise (or for a record
        made without them): the plan takes the full path."""
        record = self._converged_record()
        if not record.get("inputs") or self.awaiting_settle()[0]:
            return None
        path = self._file(str(record["inputs"]))
        return path if path.exists() else None

    # -- plans and batches ---------------------------------------------------------------
    def record_plan(self, plan) -> None:
        """Keep a copy of ``plan``'s operations beside the ledger (acknowledged batches refer
        to its rows) and make its fields the ones per-user checksums are computed over. Its
        event time and update mode are kept with it (`toolkit.settle` reads them)."""
        name = f"{self._journal.prefix}plans/{plan.id}.parquet"
        if not self._journal.has(name):
            tmp = self._journal.staging(name)
            shutil.copyfile(plan.ops_path, tmp)
            self._journal.store(tmp, name)
        fields = json.dumps(sorted(plan.fields))
        event_time = plan.options.get("event_time")
        has_events = any(b.kind == "events" for b in plan.batches())

        def write(c) -> None:
            c.execute("INSERT INTO plans (plan, file, fields, digest, recorded_at, event_time, "
                      "create_users) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                      (plan.id, name, fields, plan.field_digest or "", _now(), event_time,
                       int(bool(plan.options.get("create_users")))))
            c.executemany(_SET_META,
                          [("checksum_fields", fields),
                           ("checksum_digest", plan.field_digest or "")])
            if has_events and event_time:
                second = self._second(datetime.fromisoformat(event_time.replace("Z", "+00:00")))
                c.execute("INSERT INTO event_times (second, reserved_at, plan) VALUES (?, ?, ?) "
                          "ON CONFLICT (second) DO UPDATE SET plan = excluded.plan "
                          "WHERE event_times.plan IS NULL", (second, _now(), plan.id))

        self._write(write)

    def record_batches(self, plan: str, batches: Iterable[tuple]) -> None:
        """Register a plan's batches as pending (``(batch, kind, objects, items_json[, index])``,
        ``index`` being the request's number in the plan's operations file); batches already
        known from an earlier, interrupted apply keep their status."""
        now = _now()
        self._write(lambda c: c.executemany(
            "INSERT INTO batches (plan, batch, kind, status, objects, items, recorded_at, "
            "batch_index) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(plan, b[0], b[1], b[2], b[3], now, b[4] if len(b) > 4 else None) for b in batches]))

    def batch_statuses(self, plan: str) -> dict[str, str]:
        return dict(self._query("SELECT batch, status FROM batches WHERE plan = ?", (plan,)))

    def batches(self, plan: str | None = None) -> pd.DataFrame:
        """Every recorded batch (of one plan, or all) as a DataFrame, without item lists."""
        cols = ["plan", "batch", "kind", "status", "objects", "reason", "sends", "recorded_at",
                "sent_at", "answered_at"]
        sql = f"SELECT {', '.join(cols)} FROM batches"
        rows = self._query(sql + " WHERE plan = ?", (plan,)) if plan else self._query(sql)
        return pd.DataFrame(rows, columns=cols)

    def mark_sent(self, plan: str, batches: "str | Sequence[str]") -> None:
        """Record, durably, that ``batches`` are about to leave: their outcome is unknown until
        `finish` records Braze's answer."""
        names = [batches] if isinstance(batches, str) else list(batches)
        now = _now()
        self._write(lambda c: c.executemany(
            "UPDATE batches SET status = 'sent', sends = sends + 1, sent_at = ? "
            "WHERE plan = ? AND batch = ?", [(now, plan, b) for b in names]))

    def finish(self, plan: str, batch: str, status: str, *,
               state: "Iterable[tuple[str, str, str | None]] | Rows" = (),
               reason: str | None = None) -> int:
        """Record Braze's answer for ``batch`` and, in the same transaction, the state it
        acknowledged: ``(field, uid, json value or None to forget)`` triples, or `Rows` of the
        plan's operations. Returns the new version."""
        return self.finish_many(plan, [(batch, status, state, reason)])

    def finish_many(self, plan: str, answers: Sequence[tuple]) -> int:
        """`finish` for several batches ``(batch, status, state, reason)`` in one transaction;
        the version grows by one per batch that changed state. Returns the new version."""
        prepared = []
        for batch, status, state, reason in answers:
            if status not in BATCH_STATUSES:
                raise ValueError(f"unknown batch status {status!r}")
            if isinstance(state, Rows):
                count = state.rows - len(state.rejected)
                pending = state.encode() if count > 0 else None
            else:
                state = list(state)
                count = len(state)
                pending = json.dumps(state, separators=(",", ":")) if state else None
            prepared.append((batch, status, count, pending, reason))

        def write(conn) -> int:
            version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM changes").fetchall()[0][0]
            now = _now()
            changes = []
            for batch, _, count, pending, _ in prepared:
                if pending is not None:
                    version += 1
                    changes.append((version, plan, batch, count, now))
            conn.executemany("INSERT INTO changes VALUES (?, ?, ?, ?, ?)", changes)
            # a batch answered without being recorded first (a hand-made state change) gets a row
            conn.executemany(
                "INSERT INTO batches (plan, batch, kind, status, objects, recorded_at) "
                "VALUES (?, ?, 'other', 'pending', ?, ?) ON CONFLICT DO NOTHING",
                [(plan, batch, count, now) for batch, _, count, _, _ in prepared])
            # pending = NULL when nothing was acknowledged, so a batch answered twice (resolve)
            # never carries stale state
            conn.executemany("UPDATE batches SET status = ?, reason = ?, answered_at = ?, "
                             "pending = ? WHERE plan = ? AND batch = ?",
                             [(status, reason, now, pending, plan, batch)
                              for batch, status, _, pending, reason in prepared])
            return version

        return self._write(write)

    def _items(self, plan: str, items: str | None, index: int | None) -> list[tuple]:
        """``(field, uid, after)`` of one batch: its item list, or its rows of the plan copy."""
        if items:
            return [tuple(i) for i in json.loads(items)]
        files = dict(self._query("SELECT plan, file FROM plans WHERE plan = ?", (plan,)))
        if index is None or plan not in files:
            return []
        with engine.connect() as db:
            return db.execute("SELECT field, uid, after FROM read_parquet(?) WHERE batch = ?",
                              [str(self._file(files[plan])), int(index)]).fetchall()

    def uncertain_events(self) -> pd.DataFrame:
        """Event batches that left but whose outcome is unknown (crash, timeout): their events
        may or may not be in Braze. Plans leave these users' events out until `resolve` says.
        ``items`` lists each event as ``[field, braze user, value after]`` (JSON)."""
        rows = self._query(
            "SELECT plan, batch, status, objects, items, sent_at, batch_index FROM batches "
            "WHERE kind = 'events' AND status IN ('sent', 'unknown') ORDER BY plan, batch")
        out = [(p, b, s, n, json.dumps(self._items(p, items, index)), at)
               for p, b, s, n, items, at, index in rows]
        return pd.DataFrame(out, columns=["plan", "batch", "status", "objects", "items",
                                          "sent_at"])

    def awaiting_settle(self) -> tuple[int, int]:
        """(batches, events) of event batches whose outcome is unknown: what `toolkit.settle`
        has to decide before their events can be planned again."""
        batches, events = self._query(
            "SELECT count(*), coalesce(sum(objects), 0) FROM batches WHERE kind = 'events' AND "
            "status IN ('sent', 'unknown')")[0]
        return int(batches), int(events)

    def held_items(self) -> pa.Table:
        """``(field, uid)`` of every event held by an uncertain event batch."""
        pairs = [(f, u) for items in self.uncertain_events()["items"]
                 for f, u, _ in json.loads(items)]
        return pa.table({"field": pa.array([p[0] for p in pairs], pa.string()),
                         "uid": pa.array([p[1] for p in pairs], pa.string())})

    def uncertain_items(self) -> set[tuple[str, str]]:
        """``(field, uid)`` pairs held by uncertain event batches."""
        held = self.held_items()
        return set(zip(held.column("field").to_pylist(), held.column("uid").to_pylist()))

    def uncertain_batches(self) -> list[dict]:
        """Each uncertain event batch with what `toolkit.settle` needs to decide it: ``plan``,
        ``batch``, ``status``, ``objects``, ``sent_at``, the plan's ``event_time`` and
        ``create_users`` (None when the ledger did not keep them), and ``events``: one
        ``(braze user, event name, field)`` per event (empty when the ledger holds only the
        batch's item list, which has no event names)."""
        rows = self._query(
            "SELECT b.plan, b.batch, b.status, b.objects, b.items, b.sent_at, b.batch_index, "
            "p.file, p.event_time, p.create_users FROM batches b LEFT JOIN plans p "
            "ON p.plan = b.plan WHERE b.kind = 'events' AND b.status IN ('sent', 'unknown') "
            "ORDER BY b.plan, b.batch")
        out = []
        for plan, batch, status, objects, items, sent_at, index, file, event_time, create in rows:
            events: list[tuple[str, str, str]] = []
            if not items and file and index is not None:
                with engine.connect() as db:
                    events = [tuple(r) for r in db.execute(
                        "SELECT uid, name, field FROM read_parquet(?) WHERE batch = ?",
                        [str(self._file(file)), int(index)]).fetchall()]
            out.append({"plan": plan, "batch": batch, "status": status, "objects": int(objects),
                        "sent_at": sent_at, "event_time": event_time,
                        "create_users": None if create is None else bool(create),
                        "events": events})
        return out

    def find_uncertain(self, spec: str) -> tuple[str, str]:
        """``(plan, batch)`` of the uncertain event batch named ``spec``: ``PLAN/BATCH`` (the
        plan's id and the batch's name, as `settle` prints them) or a batch name alone when
        only one uncertain batch has it."""
        plan, _, batch = spec.strip().rpartition("/")
        rows = self._query("SELECT plan, batch FROM batches WHERE kind = 'events' AND status IN "
                           "('sent', 'unknown') AND batch = ?" + (" AND plan = ?" if plan else ""),
                           (batch, plan) if plan else (batch,))
        if len(rows) == 1:
            return rows[0][0], rows[0][1]
        waiting = [f"{p}/{b}" for p, b in self._query(
            "SELECT plan, batch FROM batches WHERE kind = 'events' AND status IN "
            "('sent', 'unknown') ORDER BY plan, batch")]
        listed = ", ".join(waiting[:10]) + (f" … (+{len(waiting) - 10})" if len(waiting) > 10
                                            else "")
        if rows:
            raise LedgerError(f"{len(rows)} uncertain event batches are named {batch!r}",
                              batch=spec, file=self.location,
                              hint="name it with its plan: " + ", ".join(
                                  f"{p}/{b}" for p, b in rows))
        raise LedgerError("no uncertain event batch with that name", batch=spec,
                          file=self.location,
                          hint=(f"the batches awaiting a decision are: {listed}" if waiting else
                                "no event batch awaits a decision: nothing to settle"))

    def resolve(self, plan: Any, batch: str, *, landed: bool, reason: str | None = None) -> None:
        """Settle an uncertain event batch after checking Braze: ``landed=True`` records its
        state as acknowledged (nothing will resend it); ``landed=False`` forgets it, so the
        next plan includes those events again. ``plan`` is the plan's id or the `Plan`;
        ``reason`` is kept with the batch (default: "settled by hand: …")."""
        plan = getattr(plan, "id", plan)
        if not isinstance(plan, str):
            raise LedgerError(f"resolve() takes a plan id or a Plan, not {type(plan).__name__}",
                              batch=batch, hint="pass plan.id, or the id shown by settle")
        rows = self._query("SELECT kind, status, items, batch_index FROM batches "
                           "WHERE plan = ? AND batch = ?", (plan, batch))
        if not rows or rows[0][1] not in ("sent", "unknown"):
            state = (f"it is {rows[0][1]}" if rows else "the ledger has no batch of that name "
                                                         "in that plan")
            raise LedgerError(f"no uncertain batch {plan}/{batch}: {state}", batch=batch,
                              plan=plan, file=self.location,
                              hint="`python -m toolkit settle` lists the batches awaiting a "
                                   "decision (ledger.uncertain_events() in code)")
        items = self._items(plan, rows[0][2], rows[0][3]) if landed else []
        self.finish(plan, batch, "resolved" if landed else "failed", state=items,
                    reason=reason or ("settled by hand: " + ("landed" if landed
                                                              else "did not land")))

    # -- display -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        snap = self.snapshot()
        per_field: dict[str, int] = {}
        if snap is not None and snap.columns:
            cols = sorted(snap.columns)
            counts = self._read_state("SELECT " + ", ".join(f"count({quote(c)})" for c in cols)
                                      + " FROM {snapshot}")[0]
            per_field = {c: int(n) for c, n in zip(cols, counts) if n}
        statuses = dict(self._query("SELECT status, COUNT(*) FROM batches GROUP BY status"))
        return {"path": self.location, "workspace": self.workspace, "version": self.version,
                "fields": per_field, "batches": statuses}

    def __repr__(self) -> str:
        if self._closed:
            return f"<Ledger {self.location} workspace={self.workspace!r} (closed)>"
        s = self.summary()
        return (f"<Ledger {s['path']} workspace={s['workspace']!r} version={s['version']} "
                f"fields={len(s['fields'])} batches={sum(s['batches'].values())}>")

    def _repr_html_(self) -> str:
        if self._closed:
            return (f"<div class='toolkit-ledger'><b>Sync ledger</b> (closed) for "
                    f"<code>{escape(str(self.workspace))}</code><br><small>"
                    f"{escape(self.location)}</small></div>")
        s = self.summary()
        fields = "".join(f"<tr><td>{escape(k)}</td><td>{v:,}</td></tr>"
                         for k, v in sorted(s["fields"].items()))
        batches = ", ".join(f"{escape(k)} {v:,}" for k, v in sorted(s["batches"].items()))
        waiting, events = self.awaiting_settle()
        settle = (f"<p><b>{events:,} event(s) in {waiting:,} batch(es) await settling</b>: run "
                  "<code>python -m toolkit settle</code> (or <code>toolkit.settle(ledger, "
                  "client)</code>).</p>" if waiting else "")
        holder = self.in_use_by
        busy = f"<p><b>In use by {escape(holder)}</b>: an apply or settle is running.</p>" \
            if holder else ""
        where = "shared ledger" if self.shared else "ledger on this machine"
        return (f"<div class='toolkit-ledger'><b>Sync ledger</b> for "
                f"<code>{escape(str(s['workspace']))}</code> · version {s['version']:,}<br>"
                f"<small>{where}: {escape(s['path'])}</small>{busy}"
                f"<table><tr><th>field</th><th>users</th></tr>{fields}</table>"
                f"<p>Batches: {batches or 'none'}</p>{settle}</div>")
