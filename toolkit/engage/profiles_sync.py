"""Reader for Segment Profiles Sync tables materialised in a warehouse and exported as CSV or
parquet: ``profile_traits`` (one row per profile, a column per trait including audience and
computed-trait keys, ``merged_to``) and ``external_id_mapping`` (``canonical_segment_id``,
``external_id_type``, ``external_id_value``, ``timestamp``).

Profiles Sync does not say which trait columns are audiences. Unless ``audiences=`` names them,
a column is an audience when every value it holds is a boolean (``true``/``false``); every other
column is a trait. Rows with ``merged_to`` set were merged into another profile and are skipped.
The primary identifier of each type is the earliest mapped one (by ``timestamp``, then file order).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from toolkit.engage.assemble import assemble
from toolkit.engage.csv import CsvHeader, read_csv_table
from toolkit.engage.frames import Typed, identifier_frame, merge_report, rows_text, \
    type_python_values, type_string_column
from toolkit.engage.model import Findings
from toolkit.errors import ExportFormatError

__all__ = ["read_profiles_sync", "materialise", "find_tables", "TABLE_NAMES"]

TABLE_NAMES = ("profile_traits", "external_id_mapping")
_SUFFIXES = (".csv", ".parquet", ".pq")
_ID_TYPES = ("user_id", "email", "anonymous_id", "braze_id")


def find_tables(source: str | os.PathLike | Sequence) -> tuple[Path, Path] | None:
    """(profile_traits, external_id_mapping) paths in a directory or a pair of paths, or None."""
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
    elif Path(source).is_dir():
        paths = sorted(p for p in Path(source).iterdir() if p.suffix.lower() in _SUFFIXES)
    else:
        return None
    found = {}
    for name in TABLE_NAMES:
        hits = [p for p in paths if p.name.split(".", 1)[0].lower().endswith(name)]
        if hits:
            # prefer parquet when both formats of one table are present: it keeps types
            hits.sort(key=lambda p: (p.suffix.lower() == ".csv", p.name))
            found[name] = hits[0]
    if len(found) == 2:
        return found["profile_traits"], found["external_id_mapping"]
    return None


def _read_any(path: Path) -> tuple[pd.DataFrame, bool]:
    """A table as a DataFrame; True when the columns are text (CSV) rather than typed."""
    if not path.exists():
        raise ExportFormatError("file not found", file=str(path), hint="check the path")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            return arrow_frame(pq.read_table(path)), False
        except (pa.ArrowInvalid, OSError) as exc:
            raise ExportFormatError(f"not a readable parquet file ({str(exc).splitlines()[0]})",
                                    file=str(path), hint="export the table again") from None
    header = CsvHeader(path)
    if not header.has_rows:
        raise ExportFormatError("the table has a header but no rows", file=str(path), line=2,
        hint="export the table again; it should hold one row per profile")
    table = read_csv_table(header)
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get), True


def read_profiles_sync(source: str | os.PathLike | Sequence, *,
                       audiences: Iterable[str] | None = None) -> "EngageExport":  # noqa: F821
    """Read ``profile_traits`` + ``external_id_mapping`` (a directory holding both, or a pair)."""
    tables = find_tables(source)
    if tables is None:
        raise ExportFormatError(
            "expected both Profiles Sync tables: profile_traits and external_id_mapping",
            file=str(source), hint="pass a directory holding profile_traits.csv|parquet and "
                                   "external_id_mapping.csv|parquet, or a tuple of the two paths")
    traits_path, mapping_path = tables
    traits, traits_text = _read_any(traits_path)
    mapping, _ = _read_any(mapping_path)
    mtime = max(os.path.getmtime(traits_path), os.path.getmtime(mapping_path))
    return materialise(traits, mapping, traits_text=traits_text, audiences=audiences,
                       traits_at={"file": str(traits_path)},
                       mapping_at={"file": str(mapping_path)},
                       snapshot_at=pd.Timestamp(mtime, unit="s", tz="UTC"),
                       source=f"{traits_path} + {mapping_path.name} (profiles_sync)")


def arrow_frame(table: pa.Table) -> pd.DataFrame:
    """A typed Arrow table (parquet, a database) as the frame `materialise` reads."""
    # float columns stay Arrow-backed: there a NaN is a value, apart from a null (numpy floats
    # would make both NaN), so a NaN trait can be reported
    return table.to_pandas(types_mapper={pa.float64(): pd.ArrowDtype(pa.float64()),
                                         pa.float32(): pd.ArrowDtype(pa.float32())}.get)


def materialise(traits: pd.DataFrame, mapping: pd.DataFrame, *, traits_text: bool,
                audiences: Iterable[str] | None, traits_at: dict, mapping_at: dict,
                snapshot_at: pd.Timestamp | None, source: str) -> "EngageExport":  # noqa: F821
    """An `EngageExport` from the two tables as frames, wherever they were read from.

    `traits_text`: the trait columns are text to type (CSV), not typed values. `traits_at` /
    `mapping_at`: where each table came from, as error context (``{"file": path, "line": 1}`` or
    ``{"table": "schema.table"}``).
    """
    findings = Findings()
    theader = {**traits_at, "line": 1} if "file" in traits_at else traits_at
    mheader = {**mapping_at, "line": 1} if "file" in mapping_at else mapping_at
    tcols = {c.lower(): c for c in traits.columns}
    key_col = tcols.get("canonical_segment_id") or tcols.get("segment_id")
    if key_col is None:
        raise ExportFormatError("profile_traits has no canonical_segment_id column",
                                **theader, column="canonical_segment_id",
                                hint="materialise profile_traits with segmentio/profiles-sync-dbt")
    mcols = {c.lower(): c for c in mapping.columns}
    needed = ("external_id_type", "external_id_value")
    mkey = mcols.get("canonical_segment_id") or mcols.get("segment_id")
    if mkey is None or any(c not in mcols for c in needed):
        raise ExportFormatError(
            "external_id_mapping needs columns canonical_segment_id, external_id_type, "
            "external_id_value", **mheader,
            hint="materialise external_id_mapping with segmentio/profiles-sync-dbt")
    if "merged_to" in tcols:
        target = traits[tcols["merged_to"]]
        merged = target.notna() & (target.astype("string").str.strip() != "").fillna(False)
        if merged.any():
            findings.add("info", "merged_profile", f"{int(merged.sum()):,} profiles were merged "
                         "into others (merged_to) and are skipped", column="merged_to")
        row_numbers = np.flatnonzero(~merged.to_numpy()) + 1
        traits = traits.loc[~merged].reset_index(drop=True)
    else:
        row_numbers = np.arange(1, len(traits) + 1)
    seg = traits[key_col].astype("string")
    if seg.isna().any():
        first_bad = int(row_numbers[int(np.flatnonzero(seg.isna().to_numpy())[0])])
        raise ExportFormatError("a profile_traits row has no canonical_segment_id",
                                **({**traits_at, "line": first_bad + 1} if "file" in traits_at
                                   else {**traits_at, "row": first_bad}),
                                hint="every profile_traits row needs its canonical_segment_id")
    dup = seg.duplicated()
    if dup.any():
        # the first row of a profile is kept whole; say what the later rows held that is lost
        compared = {c: traits[c] for c in traits.columns if c != key_col}
        report = merge_report(compared, seg, row_numbers, first_non_blank=False)
        for sid, its_rows, conflicts in report.described:
            what = "; ".join(conflicts) if conflicts else "the rows agree"
            findings.add("warning", "duplicate_profile",
                         f"profile {sid} appears on {rows_text(its_rows)}; row {its_rows[0]} is "
                         f"kept: {what}", row=its_rows[1], column=key_col, segment_id=sid,
                         fix="materialise profile_traits again: it holds one row per profile")
        if report.repeated > len(report.described):
            findings.add("warning", "duplicate_profile",
                         f"{report.repeated:,} profiles appear on several rows, "
                         f"{report.conflicting:,} of them with values that disagree; the first "
                         f"row of each is kept (the first {len(report.described)} listed)",
                         column=key_col)
        keep = ~dup.to_numpy()
        traits, seg, row_numbers = (traits.loc[keep].reset_index(drop=True),
                                    seg[keep].reset_index(drop=True), row_numbers[keep])

    # identifiers: earliest first per type
    m = mapping.rename(columns={mkey: "sid", mcols["external_id_type"]: "type",
                                mcols["external_id_value"]: "value"})
    m["order"] = np.arange(len(m))
    if "timestamp" in mcols:
        m["ts"] = pd.to_datetime(m[mcols["timestamp"]], utc=True, errors="coerce",
                                 format="ISO8601")
        m = m.sort_values(["ts", "order"], na_position="last", kind="stable")
    m = m.dropna(subset=["sid", "type", "value"])
    m["type"] = m["type"].astype(str).str.lower()
    m["value"] = m["value"].astype(str)
    m.loc[m["type"] == "email", "value"] = m.loc[m["type"] == "email", "value"].str.lower()
    ids: dict[str, dict[str, tuple]] = {t: {} for t in _ID_TYPES}
    for t in _ID_TYPES:
        part = m[m["type"] == t]
        for sid, values in part.groupby("sid", sort=False)["value"]:
            ids[t][str(sid)] = tuple(dict.fromkeys(values))
    unknown = set(str(s) for s in m["sid"].unique()) - set(seg)
    if unknown:
        findings.add("info", "unmapped_profile", f"{len(unknown):,} profiles in "
                     "external_id_mapping have no profile_traits row and are left out",
                     column="canonical_segment_id")

    def first(t):
        return [ids[t].get(s, (None,))[0] for s in seg]
    ident = identifier_frame(seg, first("user_id"), first("email"), first("anonymous_id"),
                             first("braze_id"),
                             [ids["email"].get(s, ()) for s in seg],
                             [ids["anonymous_id"].get(s, ()) for s in seg],
                             pd.RangeIndex(len(seg)))

    wanted = set(audiences) if audiences is not None else None
    typed: dict[str, Typed] = {}
    comps = []
    skip = {key_col, tcols.get("merged_to"), *(tcols.get(c) for c in
                                               ("email", "user_id", "anonymous_id", "braze_id"))}
    for col in traits.columns:
        if col in skip:
            continue
        dtype = traits[col].dtype
        if traits_text:
            t = type_string_column(pa.chunked_array([pa.array(traits[col].to_numpy(
                dtype=object, na_value=None), type=pa.string())]))
        elif isinstance(dtype, pd.ArrowDtype) and pa.types.is_floating(dtype.pyarrow_dtype):
            t = type_string_column(pa.chunked_array([pa.array(traits[col].array)]))
        else:
            t = type_python_values(traits[col].astype(object).where(traits[col].notna(), None))
        is_audience = (col in wanted) if wanted is not None else t.value_type == "boolean"
        if is_audience and t.value_type != "boolean":
            t = type_python_values(pd.Series(t.values.astype(object)), audience=True)
        if is_audience:
            t.values = t.values.astype("boolean").fillna(False)
        typed[col] = t
        comps.append({"key": col, "kind": "audience" if is_audience else "trait"})
    if wanted:
        missing = wanted - set(typed)
        if missing:
            raise ExportFormatError(f"audience columns not in profile_traits: "
                                    f"{', '.join(sorted(missing))}", **theader,
                                    hint="name only columns of profile_traits in audiences=")
    return assemble(ident, typed, comps, events=None, snapshot_at=snapshot_at, source=source,
                    findings=findings, rows=row_numbers)
