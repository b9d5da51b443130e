"""Engine-backed exports: profiles kept in a Parquet file and read in chunks, for spaces too large for memory.

`toolkit.load` of a large Engage CSV (from ``TOOLKIT_STORE_FROM`` bytes, default 400 MB — about
2.5M profiles — or with ``store=True``) reads it in chunks of ``TOOLKIT_CHUNK_ROWS`` profiles
(default 500,000), normalises each chunk exactly as the in-memory reader does (identifier
lists, typed computations, findings) and appends it to a Parquet file in the export cache
(``TOOLKIT_CACHE``, default ``./.toolkit/exports``; one file per source file, rewritten by
each load; files not written for ``TOOLKIT_CACHE_DAYS``, default 7, are removed). The result, a `StoredExport`, is an
`EngageExport` whose profiles stay on disk: the projection, the plan and the preview walk
`chunks`, and summaries and counts run as SQL on the engine (`sql`, `sample`).
``export.profiles`` still gives a pandas DataFrame, read on first use, up to
``TOOLKIT_PROFILES_LIMIT`` profiles (default 3,000,000); beyond it, it says so and points to
``export.sample(n)`` and ``export.sql("…")`` instead of filling the machine's memory.

Rows of one profile on both sides of a chunk boundary are not merged (within a chunk they are,
as in memory); a finding says how many such profiles there are, and the plan's one rule for
shared identifiers (the last row wins) decides what Braze receives.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from toolkit import engine
from toolkit.engage.model import (EVENT_COLUMNS, IDENTIFIER_COLUMNS, EngageExport, Findings,
                                  export_html)
from toolkit.errors import ExportTooLarge, ExportValidationError

__all__ = ["StoredExport", "store_settings", "CHUNK_ROWS"]

CHUNK_ROWS = 500_000
STORE_FROM_BYTES = 400_000_000
PROFILES_LIMIT = 3_000_000


def store_settings() -> dict:
    """Where and from what size exports are kept on disk (environment, else defaults)."""
    env = os.environ
    return {"cache": Path(env.get("TOOLKIT_CACHE") or Path(".toolkit") / "exports"),
            "store_from": int(env.get("TOOLKIT_STORE_FROM") or STORE_FROM_BYTES),
            "chunk_rows": int(env.get("TOOLKIT_CHUNK_ROWS") or CHUNK_ROWS),
            "profiles_limit": int(env.get("TOOLKIT_PROFILES_LIMIT") or PROFILES_LIMIT)}


def cache_path(source: Path, kind: str, key: str) -> Path:
    """The cache file of one source file's stored profiles (named after its path and how it
    was read)."""
    ident = f"{source.resolve()}|{kind}|{key}|1"
    name = hashlib.sha256(ident.encode()).hexdigest()[:20]
    return store_settings()["cache"] / f"{source.stem[:40]}-{name}.parquet"


def prune_cache(keep: Path, days: float = 7.0) -> list[Path]:
    """Remove stored exports last written more than ``days`` ago (``TOOLKIT_CACHE_DAYS``) from
    the cache folder of ``keep``, so daily loads of new files do not fill the disk."""
    days = float(os.environ.get("TOOLKIT_CACHE_DAYS") or days)
    cutoff = time.time() - days * 86400
    removed = []
    for path in keep.parent.glob("*.parquet"):
        try:
            if path != keep and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except OSError:   # in use elsewhere or already gone: left alone
            continue
    return removed


def to_pandas(table: pa.Table, dtypes: dict[str, object], start: int = 0) -> pd.DataFrame:
    """A chunk of stored profiles as the pandas frame the in-memory reader makes (same dtypes,
    index = profile positions in the export)."""
    cols = {}
    for name in table.column_names:
        dtype = dtypes.get(name)
        arr = table.column(name)
        if dtype is not None and hasattr(dtype, "__from_arrow__"):
            cols[name] = pd.Series(dtype.__from_arrow__(arr), name=name)
        else:
            cols[name] = arr.to_pandas()
    index = pd.RangeIndex(start, start + table.num_rows)
    return pd.DataFrame({k: v.set_axis(index) for k, v in cols.items()}, index=index)


class StoredExport(EngageExport):
    """An `EngageExport` whose profiles live in a Parquet file (see the module docstring)."""

    def __init__(self, path: Path, computations: pd.DataFrame, *, rows: int,
                 dtypes: dict[str, object], snapshot_at=None, source: str = "",
                 findings: Findings | None = None) -> None:
        self.path = Path(path)
        self.rows = int(rows)
        self.dtypes = dict(dtypes)
        self.computations = computations
        self.events = pd.DataFrame(columns=list(EVENT_COLUMNS))
        self.snapshot_at = snapshot_at
        self.source = source
        self.findings = findings if findings is not None else Findings()
        self._profiles: pd.DataFrame | None = None

    # -- the profiles ----------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        return list(self.dtypes)

    @property
    def profile_count(self) -> int:
        return self.rows

    @property
    def profiles(self) -> pd.DataFrame:  # type: ignore[override]
        """Every profile as a pandas DataFrame, read on first use; refused beyond
        ``TOOLKIT_PROFILES_LIMIT`` profiles (see `sample` and `sql`)."""
        if self._profiles is None:
            limit = store_settings()["profiles_limit"]
            if self.rows > limit:
                raise ExportTooLarge(
                    f"{self.rows:,} profiles are too many to hold as one pandas DataFrame "
                    f"(the limit is {limit:,}); they stay on disk in {self.path.name}",
                    field="profiles", hint='look at them with export.sample(1000) or count them '
                    'with export.sql("SELECT count(*) FROM profiles WHERE …"); raise '
                    'TOOLKIT_PROFILES_LIMIT if this machine has the memory')
            self._profiles = to_pandas(pq.read_table(self.path), self.dtypes)
        return self._profiles

    @profiles.setter
    def profiles(self, value: pd.DataFrame) -> None:
        self._profiles = value

    def chunks(self, columns: list[str] | None = None,
               rows: int | None = None) -> Iterator[pd.DataFrame]:
        """The profiles, ``rows`` at a time (default ``TOOLKIT_CHUNK_ROWS``), as pandas frames
        indexed by their position in the export; only ``columns`` when given."""
        size = rows or store_settings()["chunk_rows"]
        file = pq.ParquetFile(self.path, pre_buffer=False)
        try:
            start = 0
            for batch in file.iter_batches(batch_size=size, columns=columns):
                yield to_pandas(pa.Table.from_batches([batch]), self.dtypes, start)
                start += batch.num_rows
        finally:
            file.close()

    def take(self, positions: np.ndarray, columns: list[str] | None = None) -> pd.DataFrame:
        """The profiles at ``positions`` (a few rows: read through the engine, not the file)."""
        positions = np.unique(np.asarray(positions, dtype=np.int64))
        cols = ", ".join(engine.quote(c) for c in (columns or self.columns))
        with engine.connect() as db:
            db.register("wanted", pa.table({"p": positions}))
            table = db.sql(
                f"SELECT file_row_number AS __pos, {cols} FROM read_parquet("
                f"{engine.literal(str(self.path))}, file_row_number = true) WHERE "
                "file_row_number IN (SELECT p FROM wanted) ORDER BY file_row_number"
            ).to_arrow_table()
        frame = to_pandas(table.drop(["__pos"]), self.dtypes)
        return frame.set_axis(pd.Index(table.column("__pos").to_numpy(), dtype=np.int64))

    # -- views computed on the engine ------------------------------------------------------
    def _query(self, query: str, params: list | None = None) -> pd.DataFrame:
        with engine.connect() as db:
            db.execute(f"CREATE VIEW profiles AS SELECT * FROM read_parquet("
                       f"{engine.literal(str(self.path))})")
            db.register("computations", self.computations)
            db.register("events", self.events)
            try:
                return db.execute(query, params or []).df()
            except duckdb.Error as exc:
                raise ExportValidationError(f"the query failed: {str(exc).splitlines()[0]}",
                                            field="query",
                                            hint="tables: profiles, computations, events; "
                                                 "quote column names with \"…\"") from None

    def sql(self, query: str) -> pd.DataFrame:
        if not isinstance(query, str) or not query.strip():
            raise ExportValidationError("the query is empty", field="query",
                                        hint='export.sql("SELECT count(*) FROM profiles")')
        return self._query(query)

    def sample(self, n: int = 1000, *, seed: int = 0) -> pd.DataFrame:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ExportValidationError(f"n must be a non-negative integer, not {n!r}",
                                        field="n", hint="export.sample(1000)")
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(self.rows, size=min(n, self.rows), replace=False))
        return self.take(picked)

    def summary(self) -> pd.DataFrame:
        rows = []
        for comp in self.computations.to_dict("records"):
            col = engine.quote(comp["key"])
            if comp["kind"] == "audience":
                with_value, members = self._query(
                    f"SELECT count({col}), count(*) FILTER (WHERE {col}) FROM profiles"
                ).iloc[0].tolist()
                detail = f"{int(members):,} members"
            else:
                members = None
                with_value, distinct = self._query(
                    f"SELECT count({col}), count(DISTINCT {col}) FROM profiles").iloc[0].tolist()
                detail = f"{int(distinct):,} distinct values"
            rows.append({"key": comp["key"], "kind": comp["kind"],
                         "value_type": comp["value_type"], "profiles_with_value": int(with_value),
                         "members": None if members is None else int(members), "detail": detail})
        return pd.DataFrame(rows, columns=["key", "kind", "value_type", "profiles_with_value",
                                           "members", "detail"])

    def identifier_coverage(self) -> dict[str, int]:
        present = [c for c in IDENTIFIER_COLUMNS if c in self.dtypes]
        braze = "braze_id IS NOT NULL OR " if "braze_id" in self.dtypes else ""
        usable = f"({braze}user_id IS NOT NULL)"
        row = self._query(
            "SELECT " + ", ".join(f"count({c})" for c in present)
            + f", count(*) FILTER (WHERE {usable}), count(*) FILTER (WHERE NOT {usable} AND "
            "email IS NULL AND anonymous_id IS NOT NULL), count(*) FROM profiles").iloc[0].tolist()
        out = {c: int(v) for c, v in zip(present, row)}
        out["braze_usable"], out["anonymous_only"], out["profiles"] = (int(v) for v in row[-3:])
        return out

    def __repr__(self) -> str:
        snap = self.snapshot_at.isoformat() if self.snapshot_at is not None else "unknown"
        return (f"<StoredExport {self.source}: {self.rows:,} profiles on disk, "
                f"{len(self.audiences)} audiences, {len(self.traits)} traits, "
                f"{len(self.findings)} findings, snapshot {snap}>")

    def _repr_html_(self) -> str:
        return export_html(self, self.source,
                           f"{self.rows:,} profiles (kept on disk: <code>export.sample(n)</code>, "
                           f"<code>export.sql(…)</code>) · {len(self.audiences)} audiences · "
                           f"{len(self.traits)} traits")


def shifted(findings: Findings, offset: int) -> list:
    """A chunk's findings with their row numbers moved to the whole file's."""
    return [replace(f, row=f.row + offset) if f.row is not None else f for f in findings]
