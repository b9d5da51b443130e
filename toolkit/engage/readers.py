"""`toolkit.load`: one entry point for every Engage export shape, auto-detected by content.

Detection, in order: a DataFrame is taken as profiles; a directory (or list of paths) holding
both Profiles Sync tables is ``profiles_sync``; any other directory or list is every usable file
in it, each loaded on its own and merged (`merge`); a file starting with ``{`` or ``[`` (after a
BOM, whitespace or gzip) is ``ndjson``; anything else is a CSV whose header decides its shape
(see `toolkit.engage.csv.detect_csv_kind`). ``kind=`` overrides detection.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from toolkit.engage import csv as csv_reader
from toolkit.engage import validation
from toolkit.engage.assemble import assemble
from toolkit.engage.events import read_events
from toolkit.engage.frames import (ID_LIST_DTYPE, PANDAS_DTYPE, Typed, computations_frame,
                                   derived_segment_id, empty_events, identifier_frame,
                                   type_python_values, union_id_lists)
from toolkit.engage.model import IDENTIFIER_COLUMNS, EngageExport, Finding, Findings
from toolkit.engage.profile_api import load_profile_api
from toolkit.engage.profiles_sync import find_tables, read_profiles_sync
from toolkit.engage.warehouse import is_database_url, read_database
from toolkit.errors import ExportFormatError

__all__ = ["load", "detect_kind", "merge", "KINDS", "Reader", "READERS", "register_reader"]

_USABLE = (".csv", ".tsv", ".txt", ".ndjson", ".jsonl", ".json", ".gz")


@dataclass(frozen=True)
class Reader:
    """How `load` reads one kind of export. ``sniff(path, head)`` says whether a file is of
    this kind from its first 4 KB (decompressed), None for kinds never detected from a file;
    ``read(path, options)`` reads it, ``options`` holding ``computation_key``,
    ``computation_id``, ``store`` and ``audiences`` (a reader uses those it understands)."""

    kind: str
    read: Callable[[Any, dict[str, Any]], EngageExport]
    sniff: Callable[[Path, bytes], bool] | None = None
    description: str = ""


READERS: dict[str, Reader] = {}   # kind -> reader; detection tries the sniffers in this order


def register_reader(kind: str, read: Callable[[Any, dict[str, Any]], EngageExport], *,
                    sniff: Callable[[Path, bytes], bool] | None = None, description: str = "",
                    first: bool = True) -> Reader:
    """Teach `load` a new kind of export (see docs/ARCHITECTURE.md, "Add a reader"). Its
    sniffer is tried before the built-in ones (``first``): the CSV sniffers take any text."""
    reader = Reader(kind, read, sniff, description)
    others = [(k, r) for k, r in READERS.items() if k != kind]
    READERS.clear()
    READERS.update([(kind, reader), *others] if first else [*others, (kind, reader)])
    return reader


@lru_cache(maxsize=64)
def _csv_kind(path: Path, mtime_ns: int, size: int) -> str:
    """The CSV kind of a file, worked out once however many CSV sniffers ask."""
    return csv_reader.detect_csv_kind(path)


def _csv_sniffer(kind: str) -> Callable[[Path, bytes], bool]:
    def sniff(path: Path, head: bytes) -> bool:
        stat = path.stat()
        return _csv_kind(path, stat.st_mtime_ns, stat.st_size) == kind
    return sniff


def _read_csv(kind: str) -> Callable[[Any, dict[str, Any]], EngageExport]:
    def read(path: Any, options: dict[str, Any]) -> EngageExport:
        return csv_reader.read_csv(path, kind, computation_key=options.get("computation_key"),
                                   computation_id=options.get("computation_id"),
                                   store=options.get("store"))
    return read


def _is_json(path: Path, head: bytes) -> bool:
    return head.lstrip(b"\xef\xbb\xbf").lstrip().startswith((b"{", b"["))


register_reader("ndjson", lambda path, options: read_events(path), sniff=_is_json,
                description="NDJSON or JSON of identify and track calls (gzip too)", first=False)
_CSV_DESCRIPTIONS = {"csv_formatted": "formatted audience CSV (one column per identifier)",
                     "csv_unformatted": "unformatted audience CSV (id_type, id_value rows)",
                     "csv_legacy": "legacy audience CSV", "csv_hashed": "hashed audience CSV",
                     "trait_csv": "computed-trait CSV"}
for _kind in csv_reader.CSV_KINDS:
    register_reader(_kind, _read_csv(_kind), sniff=_csv_sniffer(_kind),
                    description=_CSV_DESCRIPTIONS.get(_kind, _kind), first=False)
register_reader("profiles_sync",
                lambda path, options: read_profiles_sync(path, audiences=options.get("audiences")),
                description="Profiles Sync tables (profile_traits + external_id_mapping)",
                first=False)
register_reader("profile_api",
                lambda ids, options: load_profile_api(ids=ids, **options.get("profile_api", {})),
                description="profiles looked up in Segment's Profile API", first=False)
register_reader("dataframe",
                lambda frame, options: from_frame(frame, audiences=options.get("audiences")),
                description="a pandas DataFrame, one row per profile", first=False)
KINDS = tuple(READERS)   # the built-in kinds


def detect_kind(path: str | os.PathLike) -> str:
    """The export kind of a file or directory, judged by content (not by extension)."""
    path = Path(path)
    if path.is_dir():
        return "profiles_sync" if find_tables(path) else "directory"
    if not path.exists():
        raise ExportFormatError("file not found", file=str(path),
                                hint="check the path (relative paths start at the working "
                                     "directory)")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExportFormatError("the file is UTF-16 encoded; expected UTF-8", file=str(path),
                                line=1, hint="re-save the file as UTF-8 (Excel: CSV UTF-8)")
    if head[:4] == b"PAR1":
        raise ExportFormatError(
            "a parquet file on its own is not an Engage export this toolkit reads",
            file=str(path), hint="Profiles Sync needs both tables: pass the directory holding "
                                 "profile_traits and external_id_mapping, or a tuple of both")
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(4096)
        except (OSError, EOFError, zlib.error):
            raise ExportFormatError("the gzip file is damaged", file=str(path),
            hint="download the file again") from None
        if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"{", b"[")):
            raise ExportFormatError("a gzip file must hold NDJSON or JSON", file=str(path),
                                    hint="decompress CSV files before loading them")
    stripped = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if not stripped:
        raise ExportFormatError("the file is empty; expected an Engage CSV or NDJSON export",
                                file=str(path), line=1, hint="download the export again")
    if b"\x00" in head and not _is_json(path, head):
        raise ExportFormatError("unknown format: the file is binary, not CSV or NDJSON",
                                file=str(path), hint="load an Engage CSV, NDJSON or Profiles Sync "
                                                     "export")
    for reader in READERS.values():
        if reader.sniff is not None and reader.sniff(path, head):
            return reader.kind
    return csv_reader.detect_csv_kind(path)  # raises, naming what the file lacks


def load(path_or_frame: Any, kind: str | None = None, *, computation_key: str | None = None,
         audience: str | None = None, computation_id: str | None = None,
         audiences: Iterable[str] | None = None, store: bool | None = None,
         schema: str | None = None, **profile_api: Any) -> EngageExport:
    """Load an Engage export into an `EngageExport`.

    `path_or_frame`: a file, a directory, a list/tuple of paths, a DataFrame, or (with
    ``kind="profile_api"``) the profile ids to look up (then pass ``space_id=`` and ``token=``).
    `kind`: one of `KINDS` to skip detection. `computation_key` / `audience`: the audience (or
    trait) a single CSV holds, instead of the one its file name names. `audiences`: which
    Profiles Sync / DataFrame columns are audiences (default: the all-boolean ones).
    `store`: keep a formatted audience CSV's profiles on disk and read them in chunks (a
    `StoredExport`; default: from ``TOOLKIT_STORE_FROM`` bytes, see `toolkit.engage.store`).
    A database URL (``postgresql://…``, ``duckdb:///file.duckdb``) reads the Profiles Sync tables
    of `schema` in it (see `toolkit.engage.warehouse`).
    """
    if is_database_url(path_or_frame):
        return read_database(path_or_frame, schema=schema, audiences=audiences)
    if schema is not None:
        raise ExportFormatError("schema= is only for a database URL", hint="drop schema=, or "
                                "pass postgresql://… or duckdb:///… as the first argument")
    if kind is not None and kind not in READERS:
        raise ExportFormatError(f"unknown kind {kind!r}", hint=f"use one of {', '.join(READERS)}")
    key = computation_key or audience
    options = {"computation_key": key, "computation_id": computation_id, "store": store,
               "audiences": audiences, "profile_api": profile_api}
    if kind == "profile_api":
        return READERS[kind].read(path_or_frame, options)
    if profile_api:
        raise TypeError(f"unexpected arguments {', '.join(profile_api)} (only for "
                        "kind='profile_api')")
    if isinstance(path_or_frame, EngageExport):
        return path_or_frame
    if isinstance(path_or_frame, pd.DataFrame):
        return READERS["dataframe"].read(path_or_frame, options)
    if kind == "dataframe":
        raise ExportFormatError("kind='dataframe' needs a pandas DataFrame",
                                hint="pass the DataFrame itself")
    if isinstance(path_or_frame, (list, tuple)):
        paths = [Path(p) for p in path_or_frame]
        if not paths:
            raise ExportFormatError("no files given", hint="pass at least one path")
        if kind in (None, "profiles_sync") and find_tables(paths):
            return read_profiles_sync(paths, audiences=audiences)
        if kind == "profiles_sync":
            return read_profiles_sync(paths, audiences=audiences)
        if len(paths) == 1:
            return load(paths[0], kind, computation_key=key, computation_id=computation_id,
                        store=store)
        if key:
            raise ExportFormatError("computation_key= names the audience of ONE file",
                                    hint="name each file after its audience, or load them one "
                                         "at a time")
        return merge([load(p, kind) for p in paths])
    if not isinstance(path_or_frame, (str, os.PathLike)):
        raise ExportFormatError(f"cannot load a {type(path_or_frame).__name__}",
                                hint="pass a path, a list of paths or a DataFrame")
    path = Path(path_or_frame)
    if path.is_dir():
        if kind in (None, "profiles_sync") and find_tables(path):
            return read_profiles_sync(path, audiences=audiences)
        if kind == "profiles_sync":
            return read_profiles_sync(path, audiences=audiences)
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and any(p.name.lower().endswith(s) for s in _USABLE))
        if not files:
            raise ExportFormatError("the directory holds no Engage export (no .csv, .ndjson, "
                                    ".json files, nor Profiles Sync tables)", file=str(path),
                                    hint="point at the export files themselves")
        if len(files) == 1:
            return load(files[0], kind, computation_key=key, computation_id=computation_id,
                        store=store)
        return merge([load(p, kind) for p in files])
    kind = kind or detect_kind(path)
    if not path.exists() and kind != "profiles_sync":
        raise ExportFormatError("file not found", file=str(path), hint="check the path")
    return READERS[kind].read(path, options)


def from_frame(frame: pd.DataFrame, *, audiences: Iterable[str] | None = None) -> EngageExport:
    """An `EngageExport` from a DataFrame of profiles: identifier columns (``segment_id`` or
    ``key``, ``user_id``, ``email``, ``anonymous_id``, ``braze_id``) and one column per
    computation; boolean columns are audiences unless `audiences` names them."""
    df = frame.reset_index(drop=True)
    cols = {c.lower() if isinstance(c, str) else c: c for c in df.columns}
    if not any(c in cols for c in ("segment_id", "key", "user_id", "email", "anonymous_id",
                                   "braze_id")):
        raise ExportFormatError("the DataFrame has no identifier column",
                                column=", ".join(map(str, df.columns[:8])),
                                hint="include segment_id (or key), user_id, email or anonymous_id")
    if df.empty:
        raise ExportFormatError("the DataFrame has no rows", hint="load a non-empty export")
    n = len(df)

    def col(name):
        return df[cols[name]].astype("string") if name in cols else \
            pd.Series(pd.NA, index=df.index, dtype="string")
    user_id, email, anon, braze = col("user_id"), col("email").str.lower(), col("anonymous_id"), \
        col("braze_id")
    seg = col("segment_id") if "segment_id" in cols else col("key")
    seg = seg.fillna(derived_segment_id(user_id, email, anon))

    def id_list(name, primary):
        if name not in cols:
            return None  # the primary value alone
        values = df[cols[name]]
        if values.dtype == ID_LIST_DTYPE:
            return values
        return [v if isinstance(v, (list, tuple, np.ndarray)) else ([] if p is pd.NA else [p])
                for v, p in zip(values, primary)]
    ident = identifier_frame(seg, user_id, email, anon, braze, id_list("emails", email),
                             id_list("anonymous_ids", anon), pd.RangeIndex(n))
    findings = Findings()
    if ident["segment_id"].duplicated().any():
        raise ExportFormatError("the DataFrame has the same profile on several rows",
                                column="segment_id", row=int(np.flatnonzero(
                                    ident["segment_id"].duplicated().to_numpy())[0]) + 1,
                                hint="drop duplicates first: frame.drop_duplicates('segment_id')")
    skip = {"segment_id", "key", "user_id", "email", "anonymous_id", "braze_id", "emails",
            "anonymous_ids"}
    wanted = set(audiences) if audiences is not None else None
    typed: dict[str, Typed] = {}
    comps = []
    for name in df.columns:
        if isinstance(name, str) and name.lower() in skip:
            continue
        values = df[name]
        raw = pd.Series(values.astype(object).where(values.notna(), None), dtype=object)
        is_audience = (name in wanted) if wanted is not None else (
            values.dtype == bool or str(values.dtype) == "boolean")
        t = type_python_values(raw, audience=is_audience)
        typed[str(name)] = t
        comps.append({"key": str(name), "kind": "audience" if is_audience else "trait"})
    return assemble(ident, typed, comps, events=None, snapshot_at=pd.Timestamp.now(tz="UTC"),
                    source="DataFrame (dataframe)", findings=findings)


def merge(exports: Sequence[EngageExport]) -> EngageExport:
    """Union of several exports keyed by ``segment_id``: an audience column is False for profiles
    that came from other exports, a trait NA; a profile in several exports is merged (first
    non-missing identifier and trait value, union of emails and anonymous ids, member if any
    export says so)."""
    if not exports:
        raise ExportFormatError("nothing to merge",
        hint="pass at least one export")
    if len(exports) == 1:
        return exports[0]
    comps: dict[str, dict] = {}
    findings = Findings()
    for e in exports:
        label = e.source.split(" (")[0]
        label = Path(label).name if label else "(in memory)"
        for f in e.findings:
            findings.extend([Finding(f.severity, f.code, f"{label}: {f.message}", row=f.row,
                                     column=f.column, fix=f.fix, segment_id=f.segment_id)])
        for c in e.computations.to_dict("records"):
            prev = comps.get(c["key"])
            if prev is None:
                comps[c["key"]] = c
            elif prev["kind"] != c["kind"] or prev["value_type"] != c["value_type"]:
                findings.add("warning", "type_drift",
                             f"{label}: {c['key']!r} is {c['kind']} {c['value_type']} here but "
                             f"{prev['kind']} {prev['value_type']} in an earlier file; the first "
                             "is kept", column=c["key"],
                             fix="Braze locks an attribute's type on the first value it receives")
    frames = []
    for e in exports:
        p = e.profiles.copy()
        for key, c in comps.items():
            if key not in p:
                p[key] = pd.Series(False if c["kind"] == "audience" else pd.NA, index=p.index,
                                   dtype=PANDAS_DTYPE.get(c["value_type"], object)) \
                    if c["kind"] == "audience" else pd.Series(pd.NA, index=p.index, dtype=object)
            elif c["kind"] == "audience":
                p[key] = p[key].astype("boolean")
        frames.append(p)
    allp = pd.concat(frames, ignore_index=True)
    group = allp.groupby("segment_id", sort=False)
    out = group[[c for c in IDENTIFIER_COLUMNS if c != "segment_id"]].first()
    codes = group.ngroup().to_numpy()
    for col in ("emails", "anonymous_ids"):
        out[col] = union_id_lists(allp[col], codes, len(out)).set_axis(out.index)
    for key, c in comps.items():
        if c["kind"] == "audience":
            out[key] = group[key].max().astype("boolean")
        else:
            firsts = group[key].first()
            dtype = PANDAS_DTYPE.get(c["value_type"])
            if dtype is not None:
                try:
                    firsts = firsts.astype(dtype)
                except (TypeError, ValueError):
                    firsts = type_python_values(firsts.astype(object)).values
            out[key] = firsts
    out = out.reset_index()
    for c in IDENTIFIER_COLUMNS:
        out[c] = out[c].astype("string")
    ordered = out[[*IDENTIFIER_COLUMNS, "emails", "anonymous_ids", *comps]]
    events = [e.events for e in exports if len(e.events)]
    events_frame = pd.concat(events, ignore_index=True) if events else empty_events()
    snaps = [e.snapshot_at for e in exports if e.snapshot_at is not None]
    kinds = sorted({e.source.rsplit("(", 1)[-1].rstrip(")") for e in exports if "(" in e.source})
    merged = EngageExport(
        profiles=ordered.reset_index(drop=True),
        computations=computations_frame(comps.values()),
        events=events_frame, snapshot_at=max(snaps) if snaps else None,
        source=f"{len(exports)} exports merged ({', '.join(kinds)})", findings=findings)
    # profile-level checks (shared user_ids, anonymous-only…) re-run on the merged whole
    merged.findings = Findings(f for f in findings if f.code not in _RECOMPUTED)
    validation.check(merged, {}, rows=False)
    return merged


# Findings about whole profiles or computation keys, recomputed after a merge (a profile may now
# span several files, and each file would repeat the same key finding).
_RECOMPUTED = {"anonymous_only", "email_only", "hashed_identifier", "duplicate_user_id",
               "invalid_key"}
