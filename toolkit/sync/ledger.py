"""The sync ledger: what one Braze workspace has acknowledged, and every batch sent to it.

One SQLite file (WAL mode) per Braze workspace identity (``client.workspace``). It holds

* ``state`` — per user identity (``uid`` such as ``external_id:u1``) and *field* the last value
  Braze acknowledged, as JSON text. Fields are ``attr:<attribute>`` (custom attribute or profile
  field value), ``member:<audience>`` (membership sent as enter/exit events), ``trait:<key>``
  (trait value sent as a "Trait Computed" event) and ``cohort:<cohort_id>`` (partner cohort
  membership). Plans diff the export against this.
* ``batches`` — every batch of every applied plan, recorded *before* it is sent and updated
  after Braze answers (pending → sent → acknowledged | rejected | unknown | failed), so a crashed
  apply resumes without resending what Braze already took, and never silently resends events.
* ``changes`` — one row per state change; its count is the ledger ``version`` a plan records, so
  applying a plan made from an older picture of the workspace is refused.

While sending, an acknowledged batch's state travels with its batch record (one small JSON
write in the same transaction as its status), and is folded into ``state`` in bulk the next time
state is read (`materialize`) — so the send loop never waits on a million B-tree inserts, and a
crash at any point loses nothing Braze acknowledged.

The ledger never stores secrets: identities, values, statuses and Braze's error texts only.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from toolkit.errors import LedgerError

__all__ = ["Ledger", "default_ledger_path", "BATCH_STATUSES"]

SCHEMA_VERSION = 1
BATCH_STATUSES = ("pending", "sent", "acknowledged", "rejected", "unknown", "failed", "resolved")
# Statuses after which a batch needs nothing more from this plan.
FINAL_STATUSES = ("acknowledged", "rejected", "resolved")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    field TEXT NOT NULL, uid TEXT NOT NULL, value TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (field, uid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    plan TEXT NOT NULL, batch TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
    objects INTEGER NOT NULL, items TEXT, reason TEXT, sends INTEGER NOT NULL DEFAULT 0,
    recorded_at TEXT NOT NULL, sent_at TEXT, answered_at TEXT, pending TEXT,
    PRIMARY KEY (plan, batch));
CREATE INDEX IF NOT EXISTS batches_status ON batches (status, kind);
CREATE INDEX IF NOT EXISTS batches_pending ON batches (plan) WHERE pending IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
    version INTEGER PRIMARY KEY, plan TEXT NOT NULL, batch TEXT NOT NULL, rows INTEGER NOT NULL,
    at TEXT NOT NULL);
"""

_FIX_CORRUPT = ("restore it from a backup. Moving it aside also works for attributes (a new ledger "
                "resends every value once) but NOT for events: with an empty ledger every current "
                "member looks new, so 'Audience Entered' would be sent again; map audiences as "
                "attributes for that first run, or check Braze before approving any events")
_FIX_LOCKED = ("another apply or notebook kernel is writing to this ledger; wait for it to finish "
               "or stop it, then retry")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _safe_name(workspace: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", workspace).strip("_") or "workspace"


def _try_lock(handle) -> bool:
    """Take an exclusive, non-blocking OS lock on an open file; False when another has it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt
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


def default_ledger_path(workspace: str, directory: "str | os.PathLike[str] | None" = None) -> Path:
    """``<directory or cwd>/.toolkit/ledger-<safe workspace>.sqlite``."""
    base = Path(directory) if directory is not None else Path.cwd()
    return base / ".toolkit" / f"ledger-{_safe_name(workspace)}.sqlite"


class Ledger:
    """What one Braze workspace acknowledged, plus every batch sent to it (SQLite, WAL).

    ``Ledger(client_or_workspace)`` opens the default file for that workspace under
    ``./.toolkit/``; ``Ledger(path="x.sqlite", workspace=…)`` or ``Ledger("x.sqlite")`` opens a
    given file. Opening a file made for another workspace raises `LedgerError`.
    """

    def __init__(self, target: Any = None, *, path: "str | os.PathLike[str] | None" = None,
                 workspace: str | None = None, directory: "str | os.PathLike[str] | None" = None,
                 timeout: float = 10.0) -> None:
        if target is not None:
            if hasattr(target, "workspace") and not isinstance(target, (str, os.PathLike)):
                workspace = workspace or target.workspace
            elif isinstance(target, os.PathLike) or str(target).endswith((".sqlite", ".db")):
                path = path or target
            else:
                workspace = workspace or str(target)
        if path is None:
            if workspace is None:
                raise LedgerError("a ledger needs a Braze workspace or a file path",
                                  hint="pass the BrazeClient, its .workspace, or path=…")
            path = default_ledger_path(workspace, directory)
        self.path = Path(path)
        self._closed = False
        self._lock = threading.RLock()
        self._conn = self._open(timeout)
        self.workspace = self._claim(workspace)

    # -- opening -----------------------------------------------------------------------
    def _error(self, exc: BaseException, action: str) -> LedgerError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return LedgerError(f"the ledger is locked ({action})", file=str(self.path),
                               hint=_FIX_LOCKED)
        return LedgerError(f"the ledger cannot be {action}: {text}", file=str(self.path),
                           hint=_FIX_CORRUPT)

    def _open(self, timeout: float) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create the ledger folder: {exc.strerror}",
                              file=str(self.path.parent),
                              hint="pass path=… to a writable place") from None
        try:
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL keeps every committed transaction across a killed process (not power loss),
            # which is the failure the resume logic is built for.
            conn.execute("PRAGMA synchronous=NORMAL")
            # A million users' state is ~100 MB of B-tree: keep the hot pages in memory.
            conn.execute("PRAGMA cache_size=-131072")
            conn.executescript(_SCHEMA)
            conn.execute("PRAGMA quick_check(1)").fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._error(exc, "opened") from None
        return conn

    def _claim(self, workspace: str | None) -> str | None:
        meta = dict(self._query("SELECT key, value FROM meta"))
        if "schema" in meta and int(meta["schema"]) > SCHEMA_VERSION:
            raise LedgerError(f"the ledger was written by a newer toolkit (schema {meta['schema']})",
                              file=str(self.path), hint="upgrade the toolkit")
        stored = meta.get("workspace")
        if stored is not None and workspace is not None and stored != workspace:
            raise LedgerError(
                f"this ledger belongs to workspace {stored!r}, not {workspace!r}",
                file=str(self.path),
                hint="use the ledger of the workspace you target (Ledger(client)), or another path")
        if stored is None and workspace is not None:
            self._write(lambda c: c.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("workspace", workspace), ("schema", str(SCHEMA_VERSION)), ("created_at", _now())]))
        return stored or workspace

    # -- low-level access ----------------------------------------------------------------
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._error(exc, "read") from None

    def _write(self, fn) -> Any:
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
                raise self._error(exc, "written") from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()

    @contextmanager
    def exclusive(self, what: str = "apply"):
        """Hold this ledger for one writer process at a time (an OS file lock next to the
        ledger, released even when the process is killed). A second apply on the same ledger
        raises `LedgerError` instead of sending the same batches twice."""
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
                raise LedgerError(
                    f"the ledger is in use by {holder}; nothing was sent", file=str(self.path),
                    hint="wait for the other apply to finish (a killed apply frees it at once), "
                         "then run again: it resumes where the other one stopped")
            handle.seek(0)
            handle.truncate()
            handle.write(f"{what} pid {os.getpid()} since {_now()}")
            handle.flush()
            yield self
        finally:
            handle.close()  # closing the descriptor releases the lock

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Number of acknowledged state changes so far; grows by one per acknowledged batch."""
        return int(self._query("SELECT COALESCE(MAX(version), 0) FROM changes")[0][0])

    def fields(self) -> list[str]:
        self.materialize()
        return [r[0] for r in self._query("SELECT DISTINCT field FROM state ORDER BY field")]

    def state(self, field: str) -> pd.Series:
        """Last acknowledged JSON values of one field, indexed by uid."""
        uids, values = self.state_arrays(field)
        return pd.Series(values, index=pd.Index(uids, dtype=object, name="uid"), dtype=object,
                         name=field)

    def state_arrays(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        """(uids, JSON values) of one field as object arrays — what the planner diffs against."""
        self.materialize()
        rows = self._query("SELECT uid, value FROM state WHERE field = ?", (field,))
        if not rows:
            return np.empty(0, dtype=object), np.empty(0, dtype=object)
        table = np.array(rows, dtype=object)
        return table[:, 0], table[:, 1]

    def user(self, uid: str) -> dict[str, Any]:
        """Everything acknowledged for one identity, decoded: ``{field: value}``."""
        self.materialize()
        return {f: json.loads(v) for f, v in
                self._query("SELECT field, value FROM state WHERE uid = ?", (uid,))}

    def changes_since(self, version: int, *, excluding_plan: str | None = None) -> int:
        """State changes made after ``version`` by plans other than ``excluding_plan``."""
        rows = self._query("SELECT COUNT(*) FROM changes WHERE version > ? AND plan != ?",
                           (int(version), excluding_plan or ""))
        return int(rows[0][0])

    def materialize(self) -> int:
        """Fold acknowledged batches' pending state into ``state`` (in change order, one
        transaction); returns how many state rows were written."""
        if not self._query("SELECT 1 FROM batches WHERE pending IS NOT NULL LIMIT 1"):
            return 0

        def write(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "SELECT b.plan, b.batch, b.pending, c.version FROM batches b JOIN changes c "
                "ON c.plan = b.plan AND c.batch = b.batch WHERE b.pending IS NOT NULL "
                "ORDER BY c.version").fetchall()
            latest: dict[tuple[str, str], tuple[str | None, int]] = {}
            for _plan, _batch, pending, version in rows:
                for field, uid, value in json.loads(pending):
                    latest[(field, uid)] = (value, version)
            sets = sorted((f, u, v, ver) for (f, u), (v, ver) in latest.items() if v is not None)
            deletes = [(f, u) for (f, u), (v, _) in latest.items() if v is None]
            conn.executemany("INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?)", sets)
            conn.executemany("DELETE FROM state WHERE field = ? AND uid = ?", deletes)
            conn.executemany("UPDATE batches SET pending = NULL WHERE plan = ? AND batch = ?",
                             [(p, b) for p, b, _, _ in rows])
            return len(sets) + len(deletes)

        return self._write(write)

    # -- batches -------------------------------------------------------------------------
    def record_batches(self, plan: str, batches: Iterable[tuple[str, str, int, str | None]]) -> None:
        """Register a plan's batches as pending (``(batch, kind, objects, items_json)``);
        batches already known from an earlier, interrupted apply keep their status."""
        now = _now()
        self._write(lambda c: c.executemany(
            "INSERT OR IGNORE INTO batches (plan, batch, kind, status, objects, items, recorded_at)"
            " VALUES (?, ?, ?, 'pending', ?, ?, ?)",
            [(plan, b, k, n, items, now) for b, k, n, items in batches]))

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
               state: Iterable[tuple[str, str, str | None]] = (), reason: str | None = None) -> int:
        """Record Braze's answer for ``batch`` and, in the same transaction, the state it
        acknowledged (``(field, uid, json value or None to forget)``). Returns the new version."""
        return self.finish_many(plan, [(batch, status, state, reason)])

    def finish_many(self, plan: str,
                    answers: Sequence[tuple[str, str, Iterable[tuple[str, str, str | None]],
                                            str | None]]) -> int:
        """`finish` for several batches ``(batch, status, state, reason)`` in one transaction;
        the version grows by one per batch that changed state. Returns the new version."""
        answers = [(b, status, list(state), reason) for b, status, state, reason in answers]
        for _, status, _, _ in answers:
            if status not in BATCH_STATUSES:
                raise ValueError(f"unknown batch status {status!r}")

        encoded = [json.dumps(state, separators=(",", ":")) if state else None
                   for _, _, state, _ in answers]

        def write(conn: sqlite3.Connection) -> int:
            version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM changes").fetchone()[0]
            now = _now()
            changes = []
            for (batch, _, state, _), pending in zip(answers, encoded):
                if pending is not None:
                    version += 1
                    changes.append((version, plan, batch, len(state), now))
            conn.executemany("INSERT INTO changes VALUES (?, ?, ?, ?, ?)", changes)
            # a batch answered without being recorded first (a hand-made state change) gets a row
            conn.executemany(
                "INSERT OR IGNORE INTO batches (plan, batch, kind, status, objects, recorded_at) "
                "VALUES (?, ?, 'other', 'pending', ?, ?)",
                [(plan, batch, len(state), now) for batch, _, state, _ in answers])
            # pending = NULL when nothing was acknowledged, so a batch answered twice (resolve)
            # never carries stale state
            conn.executemany("UPDATE batches SET status = ?, reason = ?, answered_at = ?, "
                             "pending = ? WHERE plan = ? AND batch = ?",
                             [(status, reason, now, pending, plan, batch)
                              for (batch, status, _, reason), pending in zip(answers, encoded)])
            return version

        return self._write(write)

    def uncertain_events(self) -> pd.DataFrame:
        """Event batches that left but whose outcome is unknown (crash, timeout): their events
        may or may not be in Braze. Plans leave these users' events out until `resolve` says."""
        rows = self._query(
            "SELECT plan, batch, status, objects, items, sent_at FROM batches "
            "WHERE kind = 'events' AND status IN ('sent', 'unknown') ORDER BY plan, batch")
        return pd.DataFrame(rows, columns=["plan", "batch", "status", "objects", "items",
                                           "sent_at"])

    def uncertain_items(self) -> set[tuple[str, str]]:
        """``(field, uid)`` pairs held by uncertain event batches."""
        out: set[tuple[str, str]] = set()
        for items in self.uncertain_events()["items"]:
            for field, uid, _value in json.loads(items or "[]"):
                out.add((field, uid))
        return out

    def resolve(self, plan: str, batch: str, *, landed: bool) -> None:
        """Settle an uncertain event batch after checking Braze: ``landed=True`` records its
        state as acknowledged (nothing will resend it); ``landed=False`` forgets it, so the
        next plan includes those events again."""
        rows = self._query("SELECT kind, status, items FROM batches WHERE plan = ? AND batch = ?",
                           (plan, batch))
        if not rows or rows[0][1] not in ("sent", "unknown"):
            raise LedgerError("no uncertain batch with that name", batch=batch, plan=plan,
                              hint="see ledger.uncertain_events() for the batches to settle")
        items = [tuple(i) for i in json.loads(rows[0][2] or "[]")] if landed else []
        self.finish(plan, batch, "resolved" if landed else "failed", state=items,
                    reason="settled by hand: " + ("landed" if landed else "did not land"))

    # -- display -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        self.materialize()
        per_field = dict(self._query("SELECT field, COUNT(*) FROM state GROUP BY field"))
        statuses = dict(self._query("SELECT status, COUNT(*) FROM batches GROUP BY status"))
        return {"path": str(self.path), "workspace": self.workspace, "version": self.version,
                "fields": per_field, "batches": statuses}

    def __repr__(self) -> str:
        if self._closed:
            return f"<Ledger {self.path} workspace={self.workspace!r} (closed)>"
        s = self.summary()
        return (f"<Ledger {s['path']} workspace={s['workspace']!r} version={s['version']} "
                f"fields={len(s['fields'])} batches={sum(s['batches'].values())}>")

    def _repr_html_(self) -> str:
        if self._closed:
            return (f"<div class='toolkit-ledger'><b>Sync ledger</b> (closed) for "
                    f"<code>{escape(str(self.workspace))}</code><br><small>"
                    f"{escape(str(self.path))}</small></div>")
        s = self.summary()
        fields = "".join(f"<tr><td>{escape(k)}</td><td>{v:,}</td></tr>"
                         for k, v in sorted(s["fields"].items()))
        batches = ", ".join(f"{escape(k)} {v:,}" for k, v in sorted(s["batches"].items()))
        return (f"<div class='toolkit-ledger'><b>Sync ledger</b> for "
                f"<code>{escape(str(s['workspace']))}</code> · version {s['version']:,}<br>"
                f"<small>{escape(s['path'])}</small>"
                f"<table><tr><th>field</th><th>users</th></tr>{fields}</table>"
                f"<p>Batches: {batches or 'none'}</p></div>")
