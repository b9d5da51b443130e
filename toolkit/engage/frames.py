"""Shared building blocks of the Engage readers: value typing, identifier columns, assembly.

Every reader gathers raw identifiers and computation values its own way, then hands them to
`assemble`, which types the columns per the `EngageExport` contract, builds the computations
frame and runs the validation checks. Keeping that in one place is what makes the same shop read
from different formats come out identical.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from toolkit.engage.model import (COMPUTATION_COLUMNS, EVENT_COLUMNS, IDENTIFIER_COLUMNS,
                                  EngageExport, Findings)

# External id types Segment knows by default (docs: unify/identity-resolution/externalids), plus
# braze_id, which the Braze destination treats as an external id. Formatted CSV columns with these
# names (or their indexed variants email_1, email_2 …) are identifiers, every other column a trait.
EXTERNAL_ID_TYPES = ("user_id", "email", "anonymous_id", "braze_id", "android.id", "android.idfa",
                     "android.push_token", "ga_client_id", "ios.id", "ios.idfa", "ios.push_token",
                     "phone")
_INDEXED_ID = re.compile(r"^(?P<type>" + "|".join(re.escape(t) for t in EXTERNAL_ID_TYPES)
                         + r")(?:_(?P<n>\d+))?$")

NUMBER_RE = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
DATE_RE = (r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?"
           r"(?:Z|[+-]\d{2}:?\d{2})?$")
BOOL_STRINGS = {"true": True, "false": False}

PANDAS_DTYPE = {"boolean": "boolean", "string": "string", "number": "Float64",
                "datetime": "datetime64[ns, UTC]"}


def id_column_type(name: str) -> tuple[str, int] | None:
    """(`id type`, index) for an identifier column name like ``email_1``; None for a trait."""
    m = _INDEXED_ID.match(name.strip().lower())
    if not m:
        return None
    return m.group("type"), int(m.group("n") or 0)


def derived_segment_id(user_id: pd.Series, email: pd.Series, anonymous_id: pd.Series) -> pd.Series:
    """Stable profile key when the source carries no Segment id: ``user_id:<v>``, else
    ``email:<v>``, else ``anonymous_id:<v>`` — the Profile API's own ``type:value`` form."""
    out = ("user_id:" + user_id.astype("string"))
    out = out.fillna("email:" + email.astype("string"))
    return out.fillna("anonymous_id:" + anonymous_id.astype("string")).astype("string")


def tuples_from_columns(frame: pd.DataFrame, columns: Sequence[str], lower: bool = False) -> pd.Series:
    """One tuple per row of the non-missing, distinct values of `columns`, in column order."""
    if not columns:
        return pd.Series([()] * len(frame), index=frame.index, dtype=object)
    arrays = []
    for c in columns:
        s = frame[c].astype("string")
        if lower:
            s = s.str.lower()
        arrays.append(s.to_numpy(dtype=object, na_value=None))
    if len(arrays) == 1:
        values = [(v,) if v is not None else () for v in arrays[0]]
    else:
        values = [tuple(dict.fromkeys(v for v in row if v is not None)) for row in zip(*arrays)]
    return pd.Series(values, index=frame.index, dtype=object)


def tuples_from_arrow(columns: Sequence[pa.ChunkedArray], n: int) -> pd.Series:
    """Like `tuples_from_columns` for pyarrow text columns, fast on a million rows: 1-tuples are
    built in C (zip), and only rows with a second value go through Python."""
    if not columns:
        return pd.Series([()] * n, dtype=object)
    first = columns[0]
    values = list(zip(first.to_numpy(zero_copy_only=False)))
    for i in np.flatnonzero(first.is_null().to_numpy(zero_copy_only=False)).tolist():
        values[i] = ()
    if len(columns) > 1:
        extra = pc.is_valid(columns[1])
        for c in columns[2:]:
            extra = pc.or_(extra, pc.is_valid(c))
        rows = np.flatnonzero(extra.to_numpy(zero_copy_only=False))
        if len(rows):
            taken = [c.take(pa.array(rows)).to_pylist() for c in columns]
            for j, i in enumerate(rows.tolist()):
                values[i] = tuple(dict.fromkeys(v[j] for v in taken if v[j] is not None))
    return pd.Series(np.fromiter(values, dtype=object, count=n), dtype=object)


# -- value typing ------------------------------------------------------------------------------

def python_kind(value: Any) -> str | None:
    """The Braze-relevant type of one JSON value; None for null."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "number"
    if isinstance(value, str):
        return "datetime" if re.match(DATE_RE, value) else "string"
    if isinstance(value, (pd.Timestamp,)):
        return "datetime"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "string"


class Typed:
    """A typed computation column and the row positions whose value did not fit its type."""

    def __init__(self, values: pd.Series, value_type: str, drift: list[tuple[int, Any, str]],
                 invalid_dates: list[tuple[int, Any]], string_booleans: list[tuple[int, Any]],
                 text_booleans: int = 0):
        self.values = values
        self.text_booleans = text_booleans  # CSV: "true"/"false" cells read as booleans
        self.rows: np.ndarray | None = None   # source row per position, when not the export's
        self.value_type = value_type
        self.drift = drift                    # (position, raw value, its kind)
        self.invalid_dates = invalid_dates    # (position, raw value)
        self.string_booleans = string_booleans  # (position, raw value)


def type_python_values(values: pd.Series, *, audience: bool = False) -> Typed:
    """Type a column of JSON values. The most common kind wins (Braze locks the attribute type on
    the first value it receives, so a minority kind is reported as drift, and left missing)."""
    raw = values.to_numpy(dtype=object)
    kinds = [python_kind(v) for v in raw]
    string_booleans = [(i, v) for i, (v, k) in enumerate(zip(raw, kinds))
                       if k == "string" and v.strip().lower() in BOOL_STRINGS]
    if audience:
        value_type = "boolean"
    else:
        counts = Counter(k for k in kinds if k is not None)
        if counts.get("string") and counts.get("datetime"):
            # a column of free text that happens to hold a date-looking value is still text
            if counts["string"] >= counts["datetime"]:
                counts["string"] += counts.pop("datetime")
        value_type = counts.most_common(1)[0][0] if counts else "string"
    drift = [(i, v, k) for i, (v, k) in enumerate(zip(raw, kinds))
             if k is not None and k != value_type
             and not (value_type == "string" and k == "datetime")]
    invalid_dates: list[tuple[int, Any]] = []
    if value_type == "boolean":
        out = pd.Series([v if k == "boolean" else pd.NA for v, k in zip(raw, kinds)],
                        index=values.index, dtype="boolean")
    elif value_type == "number":
        out = pd.Series([float(v) if k == "number" else None for v, k in zip(raw, kinds)],
                        index=values.index, dtype="Float64")
    elif value_type == "datetime":
        text = pd.Series([v if k == "datetime" else None for v, k in zip(raw, kinds)],
                         index=values.index, dtype=object)
        out = to_utc(text)
        bad = out.isna() & text.notna()
        invalid_dates = [(i, raw[i]) for i in np.flatnonzero(bad.to_numpy())]
    elif value_type == "string":
        out = pd.Series([v if k in ("string", "datetime") else None for v, k in zip(raw, kinds)],
                        index=values.index, dtype="string")
    else:  # list / object: kept as Python objects
        out = pd.Series([v if k == value_type else None for v, k in zip(raw, kinds)],
                        index=values.index, dtype=object)
    return Typed(out, value_type, drift, invalid_dates, string_booleans)


def to_utc(text: pd.Series) -> pd.Series:
    """ISO-8601 strings → datetime64[ns, UTC]; unparseable values become NaT."""
    out = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    return out.astype("datetime64[ns, UTC]")


def _text_kind(v: str) -> str:
    if v.lower() in BOOL_STRINGS:
        return "boolean"
    if re.match(NUMBER_RE, v):
        return "number"
    return "datetime" if re.match(DATE_RE, v) else "string"


_SAMPLE = 2_000


def type_string_column(column: pa.ChunkedArray, *, audience: bool = False) -> Typed:
    """Type a CSV column read as text, vectorised with pyarrow (the 1M-row path).

    The column's type is the most common kind in a sample of its first non-empty values; the
    whole column is then converted to that kind in one cast when every value fits, else checked
    value by value (values that do not fit are drift and become missing)."""
    col = column
    if audience:
        value_type = "boolean"
    else:
        sample = col.drop_null().slice(0, _SAMPLE).to_pylist()
        counts = Counter(_text_kind(v.strip()) for v in sample if v.strip())
        value_type = counts.most_common(1)[0][0] if counts else "string"
    if value_type == "string":
        out = pd.Series(col.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get))
        return Typed(out, "string", [], [], [])
    if value_type == "number":
        try:  # fast path: every value is a plain number
            return Typed(pd.Series(pc.cast(col, pa.float64()).to_pandas(
                types_mapper={pa.float64(): pd.Float64Dtype()}.get)), "number", [], [], [])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    if value_type == "datetime":
        try:  # fast path: every value is a real ISO-8601 date with a zone (…Z)
            out = pc.cast(col, pa.timestamp("ns", tz="UTC")).to_pandas()
            return Typed(pd.Series(out).astype("datetime64[ns, UTC]"), "datetime", [], [], [])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    col = pc.utf8_trim_whitespace(col)
    col = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
    drift: list[tuple[int, Any, str]] = []
    invalid_dates: list[tuple[int, Any]] = []
    n_bool = 0
    if value_type == "boolean":
        fits = pc.is_in(pc.utf8_lower(col), value_set=pa.array(["true", "false"]))
        n_bool = pc.sum(fits).as_py() or 0
    else:
        fits = pc.match_substring_regex(col, NUMBER_RE if value_type == "number" else DATE_RE)
    misfit = pc.and_(pc.is_valid(col), pc.invert(fits))
    if pc.any(misfit).as_py():
        positions = np.flatnonzero(misfit.to_numpy(zero_copy_only=False))
        raw = col.take(pa.array(positions)).to_pylist()
        drift = [(i, v, _text_kind(v)) for i, v in zip(positions.tolist(), raw)]
        col = pc.if_else(fits, col, pa.scalar(None, pa.string()))
    if value_type == "boolean":
        arr = pc.equal(pc.utf8_lower(col), "true")
        out = pd.Series(arr.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get))
    elif value_type == "number":
        out = pd.Series(pc.cast(col, pa.float64()).to_pandas(
            types_mapper={pa.float64(): pd.Float64Dtype()}.get))
    else:
        text = pd.Series(col.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get))
        out = to_utc(text)
        bad = (out.isna() & text.notna()).to_numpy()
        invalid_dates = [(int(i), text.iloc[i]) for i in np.flatnonzero(bad)]
    return Typed(out, value_type, drift, invalid_dates, [], text_booleans=n_bool)


# -- assembly ----------------------------------------------------------------------------------

def empty_events() -> pd.DataFrame:
    return pd.DataFrame({
        "segment_id": pd.Series(dtype="string"),
        "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
        "type": pd.Series(dtype="string"),
        "event": pd.Series(dtype="string"),
        "computation_key": pd.Series(dtype="string"),
        "computation_kind": pd.Series(dtype="string"),
        "value": pd.Series(dtype=object),
        "message_id": pd.Series(dtype="string"),
    }, columns=list(EVENT_COLUMNS))


def computations_frame(rows: Iterable[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(COMPUTATION_COLUMNS))
    for c in COMPUTATION_COLUMNS:
        frame[c] = frame[c].astype("string")
    frame["name"] = frame["name"].fillna(frame["key"])
    return frame.reset_index(drop=True)


def identifier_frame(segment_id, user_id, email, anonymous_id, braze_id, emails, anonymous_ids,
                     index, *, email_lowered: bool = False) -> pd.DataFrame:
    """The identifier part of `profiles`, dtypes per contract; emails lower-cased."""
    def s(v):
        if v is None:
            return pd.Series(pd.NA, index=index, dtype="string")
        if isinstance(v, pd.Series):
            return v.astype("string").set_axis(index)
        return pd.Series(v, index=index).astype("string")
    frame = pd.DataFrame({
        "segment_id": s(segment_id), "user_id": s(user_id),
        "email": s(email) if email_lowered else s(email).str.lower(),
        "anonymous_id": s(anonymous_id), "braze_id": s(braze_id),
    }, index=index)
    frame["emails"] = emails if emails is not None else tuples_from_columns(frame, ["email"])
    frame["anonymous_ids"] = (anonymous_ids if anonymous_ids is not None
                              else tuples_from_columns(frame, ["anonymous_id"]))
    return frame


def assemble(ids: pd.DataFrame, columns: dict[str, Typed], computations: list[dict], *,
             events: pd.DataFrame | None, snapshot_at, source: str, findings: Findings,
             rows: np.ndarray | None = None) -> EngageExport:
    """Build the `EngageExport` from an identifier frame and typed computation columns, then
    record the validation findings. `rows` maps positions to 1-based source rows."""
    from toolkit.engage import validation

    ids = ids.reset_index(drop=True)
    data = {c: ids[c] for c in (*IDENTIFIER_COLUMNS, "emails", "anonymous_ids")}
    for key, typed in columns.items():
        values = typed.values.reset_index(drop=True)
        data[key] = values
    profiles = pd.DataFrame(data)
    for comp in computations:
        comp.setdefault("value_type", columns[comp["key"]].value_type if comp["key"] in columns
                        else "boolean")
        comp.setdefault("computation_id", None)
        comp.setdefault("name", comp["key"])
    comps = computations_frame(computations)
    export = EngageExport(profiles=profiles, computations=comps,
                          events=events if events is not None else empty_events(),
                          snapshot_at=snapshot_at, source=source, findings=findings)
    validation.check(export, columns, rows=rows)
    return export


def row_of(rows: np.ndarray | None, position: int) -> int:
    return int(rows[position]) if rows is not None else position + 1
