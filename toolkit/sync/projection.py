"""The desired-state projection: what Braze should hold per user, computed once for preview and plan.

`project(export, mapping, …)` resolves every profile to a Braze user key with one identity
policy (external_id = user_id, else braze_id, else alias, else email), applies **one** rule to
profiles that share a key (the last row of the export wins; a finding names both rows and the
values that disagree), and produces, per Braze user, one JSON text per ledger *field*:

* ``attr:<attribute>`` — custom attribute / profile field value (audiences: ``true``/``false``),
* ``member:<audience>`` — membership sent as enter/exit events,
* ``trait:<key>`` — a trait value sent as a "Trait Computed" event,
* ``cohort:<cohort_id>`` — partner cohort membership.

The result is an Arrow table (one row per Braze user, never Python objects per profile) plus the
profiles left out with one set of reasons. JSON texts are built column-wise with Arrow and are
byte-identical to ``json.dumps(value, ensure_ascii=False)`` of the value the mapping converts
to, so they compare equal to what earlier ledgers stored.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolkit import __version__, engine
from toolkit.braze import payload_rules
from toolkit.braze.state import braze_user_keys
from toolkit.engage.model import Findings

__all__ = ["Projection", "FieldSpec", "project", "owners", "shared_keys", "json_texts",
           "input_digest", "row_hashes", "InputHashes", "PreviousInput", "InputsFile",
           "read_inputs", "LEFT_OUT_COLUMNS", "project_once", "OnePass", "input_shape"]

LEFT_OUT_COLUMNS = ["segment_id", "uid", "rule", "code", "reason"]
SHARED_IDENTIFIER_EXAMPLES = 5
# The profile columns the projection reads besides the mapped computations.
IDENTITY_COLUMNS = ("segment_id", "user_id", "braze_id", "email", "anonymous_id")
# Raise when the projection's output for the same input changes: stored input digests (the
# ledger's record of an export it has converged to) then stop matching, and plans take the
# full path once.
PROJECTION_VERSION = 2


def dumps(value: Any) -> str:
    """Canonical JSON text: what the ledger stores and what payloads carry."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                      allow_nan=False)


# --------------------------------------------------------------------------------------------
# identity

def owners(keys: pd.Series, db=None) -> tuple[np.ndarray, np.ndarray]:
    """The one rule for profiles that resolve to the same Braze user: the **last** row wins.

    Returns (owner, shadowed): ``owner`` is a boolean mask of the profiles whose values Braze
    receives (one per key), ``shadowed`` the masks of profiles that lose to a later row."""
    arr = _key_array(keys)
    lose, _ = shared_keys(arr, db)
    shadowed = np.zeros(len(arr), dtype=bool)
    shadowed[lose] = True
    has = pc.is_valid(arr).to_numpy(zero_copy_only=False)
    return has & ~shadowed, shadowed


def _key_array(keys) -> "pa.Array | pa.ChunkedArray":
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        return keys     # as it is: the engine scans chunks without a copy
    return pa.array(keys.array) if isinstance(keys, pd.Series) else pa.array(keys)


def shared_keys(keys, db=None) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the rows that lose to a later row with the same key, the winning row's
    position for each). Computed on the engine (a hash aggregate on every core): shared keys
    are rare, so only those rows come back."""
    arr = _key_array(keys)
    with engine.using(db) as conn:
        conn.register("owner_keys", pa.table({"k": arr, "p": np.arange(len(arr), dtype=np.int64)}))
        found = conn.execute(
            "WITH shared AS (SELECT k, max(p) AS last FROM owner_keys WHERE k IS NOT NULL "
            "GROUP BY k HAVING count(*) > 1) "
            "SELECT o.p, s.last FROM owner_keys o JOIN shared s ON o.k = s.k WHERE o.p <> s.last "
            "ORDER BY o.p").fetchnumpy()
        conn.unregister("owner_keys")
    return (np.asarray(found["p"], dtype=np.int64),
            np.asarray(found["last"], dtype=np.int64))


def export_keys(export, db=None, *, email_opt_in: bool = False,
                alias_label: str | None = None) -> "ExportKeys":
    """Every profile's Braze key and what the one rule for shared keys makes of them, a chunk
    at a time keeping a 64-bit hash per profile (80 MB for 10M profiles; an export kept on
    disk never has all its keys in memory): rows whose hashes repeat are the few candidates,
    compared by their real keys, so a hash collision is never taken for a shared identifier.
    An export in one piece keeps its keys too."""
    ident = [c for c in IDENTITY_COLUMNS if c in export.columns]
    n = export.profile_count
    kh = np.zeros(n, np.uint64)      # filled a chunk at a time: never two copies
    has_key = np.zeros(n, bool)
    whole = None
    start = 0
    with engine.using(db) as conn:
        for i, chunk in enumerate(export.chunks(ident)):   # in export order
            keys = _keys_of(chunk, email_opt_in, alias_label)
            has = pc.is_valid(keys).to_numpy(zero_copy_only=False)
            has_key[start:start + len(has)] = has
            kh[start:start + len(has)] = _hash_keys(conn, keys, has)
            start += len(has)
            whole = keys if i == 0 else None
            del keys, chunk
            if i:
                engine.release_memory()
        candidates = _repeated_keys(kh, has_key)
    lose, winner, key_of = _shared_among(export, candidates, ident, email_opt_in, alias_label)
    return ExportKeys(lose, winner, has_key, key_of, whole, kh)


def _hash_keys(conn, keys: pa.Array, has: np.ndarray) -> np.ndarray:
    """The engine's 64-bit hash of every key (0 where there is none), straight from Arrow: no
    Python string per profile."""
    out = np.zeros(len(keys), np.uint64)
    if has.any():
        conn.register("key_chunk", pa.table({"k": pc.filter(keys, pa.array(has))}))
        out[has] = np.asarray(conn.execute("SELECT hash(k) AS h FROM key_chunk")
                              .fetchnumpy()["h"], dtype=np.uint64)
        conn.unregister("key_chunk")
    return out


def _repeated_keys(kh: np.ndarray, has_key: np.ndarray) -> np.ndarray:
    """Positions (sorted) of the profiles whose key hash another profile's repeats."""
    values = np.sort(kh[has_key])
    twice = values[1:][values[1:] == values[:-1]]
    if not len(twice):
        return np.zeros(0, np.int64)
    return np.flatnonzero(has_key & np.isin(kh, np.unique(twice)))


def _rows_at(export, positions: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """The rows at ``positions`` (sorted) of ``columns``, a chunk at a time."""
    parts = []
    for chunk in export.chunks(columns):
        start = int(chunk.index[0]) if len(chunk) else 0
        lo, hi = np.searchsorted(positions, [start, start + len(chunk)])
        parts.append(chunk.iloc[positions[lo:hi] - start])
    return pd.concat(parts) if len(parts) != 1 else parts[0]


def _keys_of(chunk: pd.DataFrame, email_opt_in: bool, alias_label: str | None) -> pa.Array:
    arr = pa.array(braze_user_keys(chunk, email_opt_in=email_opt_in,
                                   alias_label=alias_label)[0].array)
    return (arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr).cast(pa.string())


def _shared_among(export, candidates: np.ndarray, ident: list[str], email_opt_in: bool,
                  alias_label: str | None, *, rows_of_losers: bool = False):
    """Of the candidate rows, those whose real key a later row shares (last row wins): their
    positions, each one's winner, and the keys of the first few (and with ``rows_of_losers``
    a frame of every loser's segment_id and key ``k``, by position)."""
    empty = np.zeros(0, dtype=np.int64)
    if not len(candidates):
        none = pd.DataFrame({"segment_id": pd.Series(dtype=object),
                             "k": pd.Series(dtype=object)})
        return (empty, empty, {}, none) if rows_of_losers else (empty, empty, {})
    rows = export.take(candidates, ident)
    keys = braze_user_keys(rows, email_opt_in=email_opt_in, alias_label=alias_label)[0]
    frame = pd.DataFrame({"k": keys.to_numpy(dtype=object), "p": rows.index.to_numpy()})
    frame["last"] = frame.groupby("k")["p"].transform("max")
    losers = frame[frame["p"] != frame["last"]].sort_values("p")
    key_of = dict(zip(losers["p"].head(SHARED_IDENTIFIER_EXAMPLES).tolist(),
                      losers["k"].head(SHARED_IDENTIFIER_EXAMPLES).tolist()))
    found = (losers["p"].to_numpy(dtype=np.int64), losers["last"].to_numpy(dtype=np.int64),
             key_of)
    if not rows_of_losers:
        return found
    at = pd.Index(losers["p"].to_numpy(dtype=np.int64))
    ids = (rows["segment_id"].reindex(at) if "segment_id" in rows.columns
           else pd.Series(None, index=at, dtype=object))
    return (*found, pd.DataFrame({"segment_id": ids.array,
                                  "k": losers["k"].to_numpy(dtype=object)}, index=at))


@dataclass
class ExportKeys:
    """The keys of an export's profiles as the one rule sees them: rows that ``lose`` to a
    later row with the same key and each one's ``winner``, which rows have a key at all, the
    keys of the first losers (for the finding) and, for an export in one piece, the keys."""

    lose: np.ndarray
    winner: np.ndarray
    has_key: np.ndarray
    key_of: dict
    keys: "pa.Array | None" = None
    kh: "np.ndarray | None" = None   # the engine's hash of every profile's key (0: none)

    def owner(self) -> np.ndarray:
        owner = self.has_key.copy()
        owner[self.lose] = False
        return owner

    def shadowed(self) -> np.ndarray:
        out = np.zeros(len(self.has_key), dtype=bool)
        out[self.lose] = True
        return out


def _disagreements(export, key_of: dict, lose: np.ndarray, winner: np.ndarray,
                   columns: list[str]) -> str:
    """A few profiles that lose beside the row that wins, naming the values that disagree
    (only those rows are read)."""
    pairs = list(zip(lose[:SHARED_IDENTIFIER_EXAMPLES], winner[:SHARED_IDENTIFIER_EXAMPLES]))
    wanted = [c for c in dict.fromkeys(["segment_id", *columns]) if c in export.columns]
    rows = export.take(np.array([p for pair in pairs for p in pair], dtype=np.int64), wanted)
    ids = rows["segment_id"] if "segment_id" in rows.columns else None
    parts = []
    for p, w in pairs:
        p, w = int(p), int(w)
        diffs = []
        for col in columns:
            a, b = rows.at[p, col], rows.at[w, col]
            if not (pd.isna(a) and pd.isna(b)) and (pd.isna(a) or pd.isna(b) or a != b):
                diffs.append(f"{col} {_show(a)} vs {_show(b)}")
        name = (lambda i: f"{ids.at[i]} (row {i + 1})") if ids is not None else (
            lambda i: f"row {i + 1}")
        parts.append(f"{name(p)} loses to {name(w)} for {key_of[p]}"
                     + (": " + ", ".join(diffs) if diffs else " (same values)"))
    return "; ".join(parts)


def _show(value: Any) -> str:
    return "blank" if pd.isna(value) else repr(value.item() if hasattr(value, "item") else value)


# --------------------------------------------------------------------------------------------
# the input digest

def _hashable(column: pd.Series) -> pa.Array:
    """A column as an Arrow array the engine can hash (lists and dicts as their JSON text)."""
    if column.dtype == object:
        return pa.array([None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                         else json.dumps(v, sort_keys=True, default=repr) for v in column],
                        pa.large_string())
    return pa.array(column)


@dataclass
class InputHashes:
    """What `row_hashes` read: the input ``digest`` (equal digests, equal projections), the
    ``shape`` digest (everything but the rows: mapping, options, columns and their types,
    computations) and a 64-bit hash of every profile's row — its identifier and mapped columns,
    not its position — in export order (``rows``, uint64)."""

    digest: str
    shape: str
    rows: np.ndarray


def row_hashes(export, mapping, *, email_opt_in: bool = False, alias_label: str | None = None,
               cohorts_available: bool = True, db=None) -> InputHashes:
    """Hash everything `project` reads (see `InputHashes`), one pass over the export on the
    engine: a 64-bit hash of each row (as the per-user checksums of the ledger are), and the
    digest over those hashes in order (the last row wins a shared identifier) and the shape."""
    hasher = _RowHasher(export, mapping)
    with engine.using(db) as conn:
        for chunk in export.chunks(hasher.columns):
            hasher.add(conn, chunk)
    return hasher.finish(email_opt_in=email_opt_in, alias_label=alias_label,
                         cohorts_available=cohorts_available)


class _RowHasher:
    """`row_hashes` a chunk at a time, so that one pass over an export can hash its rows while
    it does other work (`project_once`)."""

    def __init__(self, export, mapping) -> None:
        self.export, self.mapping = export, mapping
        self.keys = [r.key for r in mapping.rules]
        self.columns = list(dict.fromkeys(
            [c for c in IDENTITY_COLUMNS if c in export.columns]
            + [k for k in self.keys if k in export.columns]))
        self.ordered = hashlib.sha256()
        self.rows = np.zeros(export.profile_count, dtype=np.uint64)  # filled a chunk at a time
        self.start = 0
        self.dtypes: list = []

    def add(self, conn, chunk: pd.DataFrame) -> np.ndarray:
        """Hash the next chunk (in export order); returns its rows' hashes."""
        columns = self.columns
        self.dtypes = self.dtypes or [[c, str(chunk[c].dtype)] for c in columns]
        if not len(chunk):
            return np.zeros(0, np.uint64)
        values = ", ".join(f"c{i}" for i in range(len(columns))) or "NULL"
        arrays = {f"c{i}": _hashable(chunk[c]) for i, c in enumerate(columns)}
        # one row in, one hash out, in order (the engine keeps the insertion order)
        conn.register("digest_input", pa.table(arrays))
        h = np.asarray(conn.execute(f"SELECT hash({values}) AS h FROM digest_input")
                       .fetchnumpy()["h"], dtype=np.uint64)
        conn.unregister("digest_input")
        self.rows[self.start:self.start + len(h)] = h    # chunks come in export order
        self.start += len(h)
        self.ordered.update(h.astype("<u8", copy=False).data)
        return h

    def shape(self, *, email_opt_in: bool, alias_label: str | None,
              cohorts_available: bool) -> tuple[dict, str]:
        comps = self.export.computations
        comps = comps[comps["key"].isin(self.keys)] if "key" in comps.columns else comps
        head = {"projection": PROJECTION_VERSION, "toolkit": __version__,
                "columns": self.dtypes,
                "computations": json.loads(comps.to_json(orient="records", date_format="iso")),
                "mapping": self.mapping.to_dict(),
                "options": {"email_opt_in": bool(email_opt_in), "alias_label": alias_label,
                            "cohorts_available": bool(cohorts_available)}}
        return head, hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode()
                                    ).hexdigest()

    def finish(self, *, email_opt_in: bool, alias_label: str | None,
               cohorts_available: bool) -> InputHashes:
        head, shape = self.shape(email_opt_in=email_opt_in, alias_label=alias_label,
                                 cohorts_available=cohorts_available)
        head["rows"] = [len(self.rows), self.ordered.hexdigest()]
        digest = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode()
                                ).hexdigest()
        return InputHashes(digest, shape, self.rows)


def input_digest(export, mapping, *, email_opt_in: bool = False, alias_label: str | None = None,
                 cohorts_available: bool = True, db=None) -> str:
    """A digest of everything `project` reads: the identifier and mapped columns row by row (in
    order: the last row wins a shared identifier), their types, the mapped computations, the
    mapping and the options. Equal digests mean equal projections, so a ledger that recorded
    convergence to one (`Ledger.converged`) lets an unchanged export skip the projection and
    the diff. See `row_hashes`."""
    return row_hashes(export, mapping, email_opt_in=email_opt_in, alias_label=alias_label,
                      cohorts_available=cohorts_available, db=db).digest


# --------------------------------------------------------------------------------------------
# JSON texts, column-wise

def _python_texts(values: np.ndarray) -> list[str | None]:
    return [None if v is None else dumps(v) for v in values]


def _lit(text: str) -> pa.Scalar:
    return pa.scalar(text, pa.large_string())


def _needing_escape(arr: pa.Array) -> np.ndarray:
    """Positions of the values of a large_string array holding a character json.dumps escapes
    (``"``, ``\\``, control characters), from one pass over the bytes: far cheaper than a regex
    per value, and exact (UTF-8 continuation bytes are never below 0x80)."""
    _, offsets_buf, data_buf = arr.buffers()
    if data_buf is None or not len(arr):
        return np.empty(0, dtype=np.int64)
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0]:offsets[-1]]
    hits = np.flatnonzero((data < 0x20) | (data == 0x22) | (data == 0x5C))
    if not len(hits):
        return np.empty(0, dtype=np.int64)
    rows = np.unique(np.searchsorted(offsets, hits + offsets[0], side="right") - 1)
    return rows[pc.is_valid(arr).to_numpy(zero_copy_only=False)[rows]]


def _string_texts(arr: pa.Array) -> pa.Array:
    """JSON string literals of a string array, escaping only the rare values that need it."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    quoted = pc.binary_join_element_wise(_lit('"'), arr, _lit('"'), _lit(""))
    idx = _needing_escape(arr)
    if len(idx):
        fixed = pa.array(_python_texts(arr.take(pa.array(idx)).to_numpy(zero_copy_only=False)),
                         pa.large_string())
        quoted = _put(quoted, idx, fixed)
    return quoted


def _put(target: pa.Array, idx: np.ndarray, values: pa.Array) -> pa.Array:
    """``target`` with positions ``idx`` replaced by ``values``."""
    out = target.to_numpy(zero_copy_only=False).astype(object)
    out[idx] = values.to_numpy(zero_copy_only=False)
    return pa.array(out, pa.large_string())


def _number_texts(values: pd.Series) -> pa.Array:
    """JSON numbers as `payload_rules.to_json_values` makes them: integral values as integers,
    the rest as Python's repr of the float."""
    arr = values.to_numpy(dtype="float64", na_value=np.nan)
    present = ~np.isnan(arr)
    integral = present & np.isfinite(arr) & (np.floor(arr) == arr) & (np.abs(arr) < 2 ** 53)
    ints = pa.array(np.where(integral, arr, 0).astype(np.int64)).cast(pa.large_string())
    floats = pa.array(np.where(integral | ~present, 0.0, arr)).cast(pa.large_string())
    out = pc.if_else(pa.array(integral), ints, floats)
    # Arrow and Python agree on the shortest digits, not on when to switch to exponents.
    exponent = pc.match_substring(floats, "e").to_numpy(zero_copy_only=False)
    odd = present & ~integral & (exponent | (np.abs(arr) < 1e-4) | (np.abs(arr) >= 2 ** 53))
    if odd.any():
        idx = np.flatnonzero(odd)
        out = _put(out, idx, pa.array([repr(float(x)) for x in arr[idx]], pa.large_string()))
    return pc.if_else(pa.array(present), out, pa.scalar(None, pa.large_string()))


def _time_texts(values: pd.Series, *, date_only: bool) -> pa.Array:
    when = values.dt.tz_convert("UTC") if isinstance(values.dtype, pd.DatetimeTZDtype) else values
    arr = pa.array(when.dt.tz_localize(None) if getattr(when.dt, "tz", None) is not None else when)
    arr = pc.floor_temporal(arr.cast(pa.timestamp("ns")), unit="millisecond").cast(
        pa.timestamp("ms"), safe=False)
    if date_only:  # braze-api §1.3 dob "YYYY-MM-DD"
        text = pc.strftime(arr, format='"%Y-%m-%d"')
    else:
        # Arrow prints a millisecond timestamp as "YYYY-MM-DD HH:MM:SS.mmm" (much faster than
        # strftime); Braze's ISO-8601 wants the T and the Z
        iso = pc.replace_substring(arr.cast(pa.string()), " ", "T", max_replacements=1)
        text = pc.binary_join_element_wise(_lit('"'), iso.cast(pa.large_string()), _lit('Z"'),
                                           _lit(""))
    return text.cast(pa.large_string())


def json_texts(conv: payload_rules.Conversion, *, field: str | None = None) -> pa.Array:
    """The JSON text of every converted value (null where nothing is sent), column-wise."""
    vals = conv.values
    if conv.json_type == "boolean":
        b = pa.array(vals.astype("boolean"))
        return pc.if_else(b, pa.scalar("true", pa.large_string()),
                          pa.scalar("false", pa.large_string()))
    if conv.json_type == "number":
        return _number_texts(vals)
    if conv.json_type == "time" and (isinstance(vals.dtype, pd.DatetimeTZDtype)
                                     or pd.api.types.is_datetime64_dtype(vals.dtype)):
        return _time_texts(vals, date_only=field == "dob")
    if conv.json_type == "string" and not vals.dtype == object:
        return _string_texts(pa.array(vals.astype("string"), pa.large_string()))
    objs = payload_rules.to_json_values(conv, field=field)
    present = ~pd.isna(objs)
    out = np.full(len(objs), None, dtype=object)
    if present.any():
        out[present] = _python_texts(objs[present])
    return pa.array(out, pa.large_string())


# --------------------------------------------------------------------------------------------
# the projection

@dataclass(frozen=True)
class FieldSpec:
    """One ledger field the mapping produces, and how a change to it is sent.

    ``kind`` is ``membership`` (the desired text is ``true``/``false``; only ``true`` counts) or
    ``value`` (the desired text is the JSON value; null means no value)."""

    field: str
    rule: str
    seq: int
    kind: str                 # membership | value
    op: str                   # attribute | event | cohort
    column: str               # desired-text column in the projection table
    refused: str | None = None  # boolean column: value refused (left out, never unset)
    name: str = ""            # attribute name, trait event name or cohort id
    enter_event: str = ""
    exit_event: str = ""
    exit_text: str = "false"  # audience attribute exit value as JSON text
    exit_after: str | None = "false"
    props_true: str = ""
    props_false: str = ""
    props_prefix: str = ""    # trait event properties = prefix + value text + suffix
    props_suffix: str = ""


@dataclass
class Projection:
    """Desired Braze state: ``table`` has one row per Braze user (``pos`` = the profile's row in
    the export, ``uid``, ``segment_id``, then each field's desired text and refusal mask)."""

    table: "pa.Table | Path"     # in memory, or a Parquet file for an export kept on disk
    fields: list[FieldSpec]
    left_out: pd.DataFrame
    findings: Findings = field(default_factory=Findings)
    cohorts: list[dict] = field(default_factory=list)
    profiles: int = 0
    user_count: int | None = None
    owner: "np.ndarray | None" = None      # which profiles Braze receives (one per user)
    keys: "ExportKeys | None" = None       # every profile's key as the one rule saw them
    # a projection of the changed rows alone (``project(previous=…)``): the type conflicts its
    # unchanged users had, and how many users it projected
    earlier_conflicts: "pd.DataFrame | None" = None
    projected: int | None = None

    @property
    def users(self) -> int:
        if self.user_count is not None:
            return self.user_count
        return self.table.num_rows

    def spec_digest(self) -> str:
        """A digest of the fields and their kinds: checksums are comparable only under one."""
        text = dumps([[f.field, f.kind] for f in sorted(self.fields, key=lambda f: f.field)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# what a ledger keeps of the export it converged to

INPUTS_FORMAT = "engage-braze-inputs/1"
CONFLICT_CODE = "type_conflict"
CONFLICT_REASON = "value type differs from the type Braze holds for this attribute"
_ROWS_SCHEMA = pa.schema([("h", pa.uint64()), ("kh", pa.uint64()), ("owner", pa.bool_())])
_ENTRIES_SCHEMA = pa.schema([("h", pa.uint64()), ("pos", pa.int64()), ("site", pa.int32()),
                             ("segment_id", pa.string()), ("uid", pa.string()),
                             ("rule", pa.string()), ("code", pa.string()),
                             ("reason", pa.string())])


def _plain_text(values) -> pa.Array:
    arr = pa.array(values.array if isinstance(values, pd.Series) else values)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr.cast(pa.string())


class InputsFile:
    """What a ledger keeps of an export beside its convergence record, so that a plan of a
    changed export projects and diffs only the users whose row changed — written while the
    plan is made, as two Arrow IPC streams one after the other:

    1. every profile's row hash, key hash (null: no key) and whether Braze receives its values
       (``owner``), in export order — uncompressed (hashes do not compress), so they are read
       back by mapping the file, not decoding it; written as soon as the keys are known, so
       the plan holds none of it while it diffs;
    2. every profile left out for its own row — its row hash and position, the site that left
       it out and the left-out row — and the type conflicts found (``site`` = the field's
       number). Profiles left out for sharing an identifier are not kept: they depend on other
       rows and are found again."""

    def __init__(self, path: Path, shape: str) -> None:
        self.path = Path(path)
        self.shape = shape
        self._sink = pa.OSFile(str(self.path), "wb")

    def write_rows(self, hashes: InputHashes, keys: "ExportKeys") -> None:
        """Stream 1; afterwards ``hashes.rows`` and ``keys.kh`` are views of the file."""
        schema = _ROWS_SCHEMA.with_metadata({"format": INPUTS_FORMAT, "shape": self.shape})
        owner = keys.owner()
        table = pa.table({"h": pa.array(hashes.rows, pa.uint64()),
                          "kh": pa.array(keys.kh, pa.uint64(), mask=~keys.has_key),
                          "owner": pa.array(owner)}, schema=schema)
        with pa.ipc.new_stream(self._sink, schema) as writer:
            writer.write_table(table)
        self._sink.flush()
        del table
        rows = _read_rows(self.path)
        hashes.rows = _uint64s(rows["h"])
        keys.kh = _uint64s(rows["kh"])

    def write_entries(self, hashes: InputHashes, projection: "Projection",
                      conflicts: pd.DataFrame | None) -> None:
        """Stream 2, and the file is complete."""
        h = hashes.rows

        def entries(frame: pd.DataFrame, site, code=None, reason=None) -> pa.Table:
            pos = frame["pos"].to_numpy(dtype=np.int64)
            k = len(frame)
            return pa.table({
                "h": pa.array(h[pos], pa.uint64()), "pos": pa.array(pos),
                "site": pa.array(site, pa.int32()),
                "segment_id": _plain_text(frame["segment_id"]), "uid": _plain_text(frame["uid"]),
                "rule": _plain_text(frame["rule"]),
                "code": (_plain_text(frame["code"]) if code is None
                         else pa.array([code] * k, pa.string())),
                "reason": (_plain_text(frame["reason"]) if reason is None
                           else pa.array([reason] * k, pa.string()))}, schema=_ENTRIES_SCHEMA)

        parts = [_ENTRIES_SCHEMA.empty_table()]
        left = projection.left_out
        if len(left):
            left = left[left["code"].astype(object) != "shared_identifier"]
            parts.append(entries(left, left["site"].to_numpy(np.int32)))
        if conflicts is not None and len(conflicts):
            parts.append(entries(conflicts, conflicts["k"].to_numpy(np.int32), CONFLICT_CODE,
                                 CONFLICT_REASON))
        options = pa.ipc.IpcWriteOptions(compression="lz4")
        with pa.ipc.new_stream(self._sink, _ENTRIES_SCHEMA, options=options) as writer:
            writer.write_table(pa.concat_tables(parts))
        self.close()

    def close(self) -> None:
        if not self._sink.closed:
            self._sink.close()


def _uint64s(column) -> np.ndarray:
    """A uint64 column's values as numpy, without a copy (nulls read as the values beneath)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.frombuffer(arr.buffers()[1], dtype=np.uint64)[arr.offset:arr.offset + len(arr)]


def _read_rows(path: Path) -> pa.Table:
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()


def read_inputs(path: "str | Path") -> tuple[pa.Table, pa.Table]:
    """(rows, left-out entries) of an `InputsFile`; the rows keep its schema's metadata."""
    source = pa.memory_map(str(path))
    rows = pa.ipc.open_stream(source).read_all()
    entries = pa.ipc.open_stream(source).read_all()
    return rows, entries


@dataclass
class PreviousInput:
    """An `InputsFile` read back: what the ledger knows of the export it converged to."""

    rows: pa.Table       # h, kh, owner of every profile
    entries: pa.Table    # h, pos, site, segment_id, uid, rule, code, reason
    shape: str

    @classmethod
    def read(cls, path: "str | Path", shape: str) -> "PreviousInput | None":
        """The inputs kept at ``path`` when they are of an export of this ``shape`` (same
        mapping, options, columns and types), else None."""
        try:
            rows, entries = read_inputs(path)
        except (OSError, pa.ArrowException):
            return None
        meta = {k.decode(): v.decode() for k, v in (rows.schema.metadata or {}).items()}
        if (meta.get("format") != INPUTS_FORMAT or meta.get("shape") != shape
                or rows.schema.remove_metadata() != _ROWS_SCHEMA
                or entries.schema != _ENTRIES_SCHEMA or entries["pos"].null_count):
            return None
        return cls(rows.replace_schema_metadata(None).combine_chunks(),
                   entries.combine_chunks(), shape)

    def keys(self, export, h: np.ndarray, *, email_opt_in: bool, alias_label: str | None,
             db=None) -> tuple["ExportKeys", np.ndarray, np.ndarray, np.ndarray]:
        """`export_keys` of the changed export, reading the keys only of rows not seen before
        (the row decides its key: a row seen before has the key hash it had then), and which
        rows changed: (keys, positions to project, a mask of the rows whose left-out rows are
        taken from before, a mask of the rows still where they were). A profile Braze receives is unchanged when Braze received a profile
        with the same row hash before (the row decides the user's key and values); a profile
        without a key when one with the same row hash was left out before."""
        n = len(h)
        ident = [c for c in IDENTITY_COLUMNS if c in export.columns]
        old_h = _uint64s(self.rows["h"])
        # most rows stay where they were: those compare in place, the rest by hash
        m = min(n, len(old_h))
        known = np.zeros(n, bool)
        known[:m] = h[:m] == old_h[:m]
        kh = np.zeros(n, np.uint64)
        has_key = np.zeros(n, bool)
        was_owner = np.zeros(n, bool)
        old_kh = self.rows["kh"]   # (masked copies: no index array of every row)
        np.copyto(kh[:m], _uint64s(old_kh)[:m], where=known[:m])
        np.copyto(has_key[:m], old_kh.is_valid().to_numpy(zero_copy_only=False)[:m],
                  where=known[:m])
        np.copyto(was_owner[:m], self.rows["owner"].to_numpy(zero_copy_only=False)[:m],
                  where=known[:m])
        with engine.using(db) as conn:
            rest = np.flatnonzero(~known)
            if len(rest):
                conn.register("prev_rows", self.rows)
                conn.register("now_rows", pa.table({"h": h[rest], "p": rest}))
                got = conn.execute(
                    "SELECT n.p, coalesce(r.kh, 0) AS kh, r.kh IS NOT NULL AS has, r.owner "
                    "FROM now_rows n JOIN prev_rows r USING (h)").fetchnumpy()
                conn.unregister("prev_rows")
                conn.unregister("now_rows")
                p = np.asarray(got["p"], dtype=np.int64)
                known[p] = True
                kh[p] = np.asarray(got["kh"], dtype=np.uint64)
                has_key[p] = np.asarray(got["has"], dtype=bool)
                was_owner[p[np.asarray(got["owner"], dtype=bool)]] = True   # any equal row
                del got, p
            new = np.flatnonzero(~known)
            if len(new):
                keys = _keys_of(_rows_at(export, new, ident), email_opt_in, alias_label)
                has = pc.is_valid(keys).to_numpy(zero_copy_only=False)
                kh[new] = _hash_keys(conn, keys, has)
                has_key[new] = has
            candidates = _repeated_keys(kh, has_key)
        lose, winner, key_of = _shared_among(export, candidates, ident, email_opt_in,
                                             alias_label)
        found = ExportKeys(lose, winner, has_key, key_of, None, kh)
        owner = found.owner()
        same = (owner & known & was_owner) | (~has_key & known)
        project_rows = np.flatnonzero(((owner | ~has_key) & ~same) | found.shadowed())
        in_place = np.zeros(n, bool)
        in_place[:m] = h[:m] == old_h[:m]
        return found, project_rows, same, in_place

    def entries_of(self, reused: np.ndarray, h: np.ndarray, in_place: np.ndarray,
                   db=None) -> tuple[list[pa.Table], pd.DataFrame]:
        """The left-out rows (parts by site, for `_left_out_frame`) and type conflicts
        (segment_id, uid, rule, pos, k) kept for the unchanged profiles (mask ``reused``):
        a row still where it was has the rows kept at its position, one that moved those of
        its row hash."""
        n = len(h)
        entries = self.entries.filter(pc.not_equal(self.entries["code"], "shared_identifier"))
        old = entries["pos"].to_numpy()
        inside = old < n
        keep = inside.copy()
        keep[inside] = (in_place & reused)[old[inside]]
        parts = [entries.filter(pa.array(keep)).drop_columns(["h"])]
        moved = np.flatnonzero(reused & ~in_place)
        if len(moved):
            with engine.using(db) as conn:
                conn.register("prev_entries", entries.drop_columns(["pos"]))
                conn.register("reused", pa.table({"pos": moved, "h": h[moved]}))
                parts.append(conn.sql(
                    "SELECT r.pos, e.site, e.segment_id, e.uid, e.rule, e.code, e.reason FROM "
                    "reused r JOIN (SELECT DISTINCT * FROM prev_entries) e ON e.h = r.h"
                ).to_arrow_table())
                conn.unregister("prev_entries")
                conn.unregister("reused")
        schema = pa.schema([("pos", pa.int64()), ("site", pa.int32()),
                            *[(c, pa.string()) for c in ("segment_id", "uid", "rule", "code",
                                                         "reason")]])
        table = pa.concat_tables([t.select(schema.names).cast(schema) for t in parts])
        conflict = pc.equal(table["code"], CONFLICT_CODE)
        table = table.append_column("c", conflict).sort_by(
            [("c", "ascending"), ("site", "ascending"), ("pos", "ascending")]).drop_columns(["c"])
        split = int(pc.sum(conflict).as_py() or 0)
        entries, found = table.slice(0, table.num_rows - split), table.slice(table.num_rows - split)
        conflicts = pd.DataFrame({
            "segment_id": found["segment_id"].to_numpy(zero_copy_only=False).astype(object),
            "uid": found["uid"].to_numpy(zero_copy_only=False).astype(object),
            "rule": found["rule"].to_numpy(zero_copy_only=False).astype(object),
            "pos": found["pos"].to_numpy(), "k": found["site"].to_numpy().astype(np.int64)})
        sites = entries["site"].to_numpy()
        cuts = np.flatnonzero(np.diff(sites)) + 1 if len(sites) else np.zeros(0, np.int64)
        bounds = [0, *cuts.tolist(), len(sites)]
        parts = [entries.slice(a, b - a) for a, b in itertools.pairwise(bounds) if b > a]
        return parts, conflicts


SHADOWED_REASON = ("another profile with the same Braze identifier comes later in the export; "
                   "its values are sent")
SHARED_FIX = "merge the profiles in Segment (or fix the identifier), then export again"


class _Notes:
    """Findings gathered over an export's chunks. Every chunk makes the same calls in the same
    order (whatever its rows), each numbered by its *site*, so the findings come out in site
    order however the export is cut: the counted ones ("<n> profile(s) …") count the left-out
    profiles of their site, the others are said once."""

    def __init__(self) -> None:
        self.once: dict[int, tuple] = {}
        self.counted: dict[int, tuple] = {}
        self._site = 0
        self.shared_sites: tuple[int, int] = (0, 0)   # (left out, said once): `_project_chunk`

    def begin_chunk(self) -> None:
        self._site = 0

    def next_site(self) -> int:
        self._site += 1
        return self._site

    def add(self, severity: str, code: str, message: str | None, *, column=None,
            fix=None) -> int:
        """A finding said once (``message`` None: nothing this time, the site still counts);
        returns its site."""
        site = self.next_site()
        if message is not None:
            self.once.setdefault(site, (severity, code, message, column, fix))
        return site

    def template(self, site: int, severity: str, code: str, what: str, column=None,
                 fix=None) -> None:
        self.counted.setdefault(site, (severity, code, what, column, fix))

    def findings(self, counts: dict[int, int]) -> Findings:
        """The findings, given how many profiles each site left out."""
        items: dict[tuple, list] = {}
        for site in sorted(set(self.once) | set(self.counted)):
            if site in self.counted:
                n = int(counts.get(site, 0))
                if n:
                    items.setdefault(("count", *self.counted[site]), [0])[0] += n
            else:
                items.setdefault(("once", *self.once[site]), [None])
        out = Findings()
        for (how, severity, code, text, column, fix), (n,) in items.items():
            out.add(severity, code, f"{n:,} {text}" if how == "count" else text, column=column,
                    fix=fix)
        return out


_LEFT_OUT_TEXT = pa.dictionary(pa.int32(), pa.string())
_LEFT_OUT_SCHEMA = pa.schema([("segment_id", pa.string()), ("uid", pa.string()),
                              ("rule", _LEFT_OUT_TEXT), ("code", _LEFT_OUT_TEXT),
                              ("reason", _LEFT_OUT_TEXT), ("pos", pa.int64()),
                              ("site", pa.int32())])
# codes of profiles left out for their own row alone (nothing but the row decides them)
UNSYNCABLE_CODES = ("email_only", "anonymous_only", "no_identifier")


def _repeated(value: str | None, n: int) -> pa.DictionaryArray:
    indices = pa.nulls(n, pa.int32()) if value is None else pa.array(np.zeros(n, np.int32))
    return pa.DictionaryArray.from_arrays(indices, pa.array([value or ""], pa.string()))


def _left_out_part(segment_ids: pa.Array, uids: pa.Array, positions: np.ndarray, site: int,
                   rule: str | None, code: str, reason: str) -> pa.Table:
    """Left-out profiles of one site: Arrow, the repeated texts dictionary-encoded (a million
    left-out profiles of a large export stay a few megabytes)."""
    n = len(positions)
    return pa.table({
        "segment_id": segment_ids.cast(pa.string()), "uid": uids.cast(pa.string()),
        "rule": _repeated(rule, n), "code": _repeated(code, n), "reason": _repeated(reason, n),
        "pos": pa.array(positions, pa.int64()), "site": pa.array(np.full(n, site, np.int32))})


def _left_out_frame(parts: list[pa.Table]) -> pd.DataFrame:
    """The left-out profiles as one frame: one reason after another, in the order of the sites
    that left them out (a reason's first site first), by position within a site — the same
    however the export was cut into chunks. Strings stay in Arrow, reasons are categories;
    ``pos`` and ``site`` say which profile and which site."""
    by_site: dict[int, list[pa.Table]] = {}
    for part in parts:
        if part.num_rows:
            by_site.setdefault(int(part["site"][0].as_py()), []).append(part)
    if not by_site:
        return pd.DataFrame({k: pd.Series(dtype=object) for k in LEFT_OUT_COLUMNS}).assign(
            pos=pd.Series(dtype=np.int64), site=pd.Series(dtype=np.int32))
    first: dict[tuple, int] = {}
    about: dict[int, tuple] = {}
    for site in sorted(by_site):
        t = by_site[site][0]
        about[site] = tuple(t[c][0].as_py() for c in ("rule", "code", "reason"))
        first.setdefault(about[site][:2], site)
    tables = []
    for site in sorted(by_site, key=lambda s: (first[about[s][:2]], s)):
        group = by_site[site]
        plain = pa.concat_tables([t.select(["segment_id", "uid", "pos"]) for t in group])
        if len(group) > 1:
            plain = plain.take(pc.sort_indices(plain["pos"]))
        n = plain.num_rows
        rule, code, reason = about[site]
        tables.append(pa.table({
            "segment_id": plain["segment_id"], "uid": plain["uid"], "rule": _repeated(rule, n),
            "code": _repeated(code, n), "reason": _repeated(reason, n), "pos": plain["pos"],
            "site": pa.array(np.full(n, site, np.int32))}, schema=_LEFT_OUT_SCHEMA))
    table = pa.concat_tables(tables)
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)


class _Collect:
    def __init__(self, profiles: pd.DataFrame, keys: pd.Series, syncable: np.ndarray,
                 notes: _Notes, value_types: dict[str, str], positions: np.ndarray) -> None:
        self.profiles = profiles
        self.positions = positions
        self.keys = keys
        self.syncable = syncable
        self.findings = notes
        self.value_types = value_types
        self.owner_mask = pa.array(syncable)
        # Arrow, not Python objects: only the rows left out are ever turned into objects
        self.segment_ids = (pa.array(profiles["segment_id"].array).cast(pa.large_string())
                            if "segment_id" in profiles.columns
                            else pa.nulls(len(profiles), pa.large_string()))
        self.uids = pa.array(keys.array).cast(pa.large_string())
        self.left_out: list[pa.Table] = []

    def leave_out(self, mask: np.ndarray, *, rule: str | None, code: str, reason: str,
                  uid: bool = True, note: tuple | None = None) -> int:
        """Leave the masked profiles out; ``note`` = (severity, what, fix): the counted finding
        "<n> <what>" of this site (said when it leaves anyone out). Returns the site."""
        site = self.findings.next_site()
        if note is not None:
            self.findings.template(site, note[0], code, note[1], column=rule, fix=note[2])
        pos = np.flatnonzero(mask)
        if len(pos):
            take = pa.array(pos)
            self.left_out.append(_left_out_part(
                self.segment_ids.take(take),
                self.uids.take(take) if uid else pa.nulls(len(pos), pa.string()),
                self.positions[pos], site, rule, code, reason))
        return site

    def owned(self, values: pa.Array) -> pa.Array:
        """The rows of the profiles Braze receives (a filter: cheaper than a take)."""
        return pc.filter(values, self.owner_mask)

    def refuse(self, mask: np.ndarray, *, rule: str, code: str, reason: str, what: str, fix: str,
               severity: str = "error") -> None:
        """Leave the masked profiles out *and* tell the approver: one step, so no value is ever
        dropped silently. The finding reads "<count> <what>"."""
        self.leave_out(mask & self.syncable, rule=rule, code=code, reason=reason,
                       note=(severity, what, fix))


def project(export, mapping, *, email_opt_in: bool = False, alias_label: str | None = None,
            cohorts_available: bool = True, db=None, spill: "Path | None" = None,
            previous: "PreviousInput | None" = None,
            hashes: "InputHashes | None" = None, keys: "ExportKeys | None" = None,
            change: "tuple | None" = None) -> Projection:
    """The desired Braze state of ``export`` under ``mapping`` (see the module docstring);
    ``db``: an engine connection to use (default: a fresh one). An export kept on disk is
    projected a chunk at a time into a Parquet file in ``spill`` (default: a new temporary
    folder), so memory stays bounded whatever its size.

    With ``previous`` (the `PreviousInput` of an export the ledger has converged to, same shape)
    and this export's ``hashes``, only the users whose row changed are projected: the table
    holds those users alone (every other user is known to be converged), while the left-out
    profiles and findings are those of the whole export — the unchanged rows' own taken from
    ``previous``. ``keys`` (`export_keys`, or with ``previous`` the keys and ``change`` that
    `PreviousInput.keys` returns) when the caller has them already."""
    mapped = [r.key for r in mapping.rules if r.key in export.columns]
    rows = reused = None
    if previous is not None:
        if hashes is None or len(hashes.rows) != export.profile_count:
            raise ValueError("project(previous=…) needs this export's row hashes")
        if keys is None or change is None:
            keys, *change = previous.keys(export, hashes.rows, email_opt_in=email_opt_in,
                                          alias_label=alias_label, db=db)
        found = keys
        rows, reused, in_place = change
    elif keys is not None:
        found = keys
    else:
        # pass 1: every profile's Braze key, to apply the one rule for shared keys over the
        # export (a connection of its own, closed at once: the engine's memory goes back
        # before the rest)
        found = export_keys(export, email_opt_in=email_opt_in, alias_label=alias_label)
    owner = found.owner()
    shared_note = None
    if len(found.lose):
        shared_note = (
            f"{len(found.lose):,} profile(s) share a Braze identifier with a later profile; the "
            "last row in the export is sent, the others are left out. "
            + _disagreements(export, found.key_of, found.lose, found.winner, mapped))
    result, specs, parts, notes, cohorts, users = _project_rows(
        export, mapping, found, owner, rows, shared_note, email_opt_in, alias_label,
        cohorts_available, spill)
    earlier = None
    if previous is not None:
        users = int(owner.sum())
        entries, earlier = previous.entries_of(reused, hashes.rows, in_place, db)
        parts.extend(entries)
    frame = _left_out_frame(parts)
    counts = frame["site"].value_counts().to_dict() if len(frame) else {}
    return Projection(result, specs, frame, notes.findings(counts), cohorts,
                      export.profile_count, user_count=users, owner=owner, keys=found,
                      earlier_conflicts=earlier,
                      projected=None if rows is None else int(owner[rows].sum()))


def input_shape(export, mapping, *, email_opt_in: bool = False, alias_label: str | None = None,
                cohorts_available: bool = True) -> str:
    """`InputHashes.shape` without hashing the rows (the column types come from the first
    row): what `PreviousInput.read` needs before the one pass of `project_once`."""
    hasher = _RowHasher(export, mapping)
    chunks = export.chunks(hasher.columns, rows=1)
    try:
        first = next(iter(chunks))
    finally:
        getattr(chunks, "close", lambda: None)()
    hasher.dtypes = [[c, str(first[c].dtype)] for c in hasher.columns]
    return hasher.shape(email_opt_in=email_opt_in, alias_label=alias_label,
                        cohorts_available=cohorts_available)[1]


def _in_sorted(values: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Which ``values`` are in ``sorted_values``."""
    out = np.zeros(len(values), bool)
    if not len(sorted_values) or not len(values):
        return out
    # looked up in order: each search starts where the one before ended (random lookups in a
    # 10M array miss the cache at every step, ten times slower)
    order = np.argsort(values, kind="stable")
    wanted = values[order]
    at = np.minimum(np.searchsorted(sorted_values, wanted), len(sorted_values) - 1)
    out[order] = sorted_values[at] == wanted
    return out


def project_once(export, mapping, *, email_opt_in: bool = False,
                 alias_label: str | None = None, cohorts_available: bool = True, db=None,
                 spill: "Path | None" = None, previous: "PreviousInput | None" = None,
                 on_rows=None) -> "OnePass":
    """`row_hashes`, the keys (`export_keys`; with ``previous``, `PreviousInput.keys`) and
    `project` in **one** read of the export: for an export kept on disk each read costs the
    file's decoding, so a plan reads it once rather than three times. The hashes come first
    (`OnePass.hashes`: the ledger may know this very input); `OnePass.finish` gives the rest,
    equal to what the three separate steps give.

    Every profile is projected as if no later row shared its Braze identifier (that is only
    known once every key is; shared identifiers are rare): `finish` then takes the profiles
    that lose to a later row back out and leaves them out for it, as `project` does. With
    ``previous``, a row is projected unless it is known to be converged already — the same
    rows `PreviousInput.keys` picks but for those losers, which `finish` adds.
    ``on_rows(n)`` is called after each chunk of ``n`` profiles (a progress bar)."""
    one = OnePass(export, mapping, email_opt_in, alias_label, cohorts_available, spill,
                  previous)
    with engine.using(db) as conn:
        one.read(conn, on_rows)
    return one


class OnePass:
    """What `project_once` read of an export: its ``hashes`` at once, the rest by `finish`."""

    def __init__(self, export, mapping, email_opt_in, alias_label, cohorts_available, spill,
                 previous) -> None:
        self.export, self.mapping, self.previous = export, mapping, previous
        self.options = {"email_opt_in": email_opt_in, "alias_label": alias_label,
                        "cohorts_available": cohorts_available}
        self.hasher = _RowHasher(export, mapping)
        self.projector = _Projector(export, mapping, email_opt_in, alias_label,
                                    cohorts_available, spill, None)
        n = export.profile_count
        self.kh = np.zeros(n, np.uint64)     # filled a chunk at a time: never two copies
        self.has_key = np.zeros(n, bool)
        self.whole: "pa.Array | None" = None   # the keys of an export in one piece
        self.hashes: InputHashes | None = None
        self.stale = False
        if previous is not None:
            self.old_h = _uint64s(previous.rows["h"])
            self.m = min(n, len(self.old_h))
            self.known = np.zeros(n, bool)       # a previous row had the same hash
            self.was_owner = np.zeros(n, bool)   # … and Braze received it
            self.in_place = np.zeros(n, bool)    # … at the same position
            self._sorted: dict[str, np.ndarray] = {}

    def _previous_sorted(self, which: str) -> np.ndarray:
        """The previous rows' hashes, sorted: ``every`` one, or those Braze ``received`` —
        made when first needed (a row not where it was; one seen before), so an export whose
        rows stay in place never sorts, and one whose changed rows are new sorts once."""
        if which not in self._sorted:
            values = self.old_h
            if which == "received":
                values = values[self.previous.rows["owner"].to_numpy(zero_copy_only=False)]
            self._sorted[which] = np.sort(values)
        return self._sorted[which]

    def read(self, conn, on_rows=None) -> None:
        """The one pass: hash, key and project every chunk."""
        ident = {"email_opt_in": self.options["email_opt_in"],
                 "alias_label": self.options["alias_label"]}
        if self.previous is not None:
            old_kh = self.previous.rows["kh"]
            old_kh_values = _uint64s(old_kh)
            old_has = old_kh.is_valid().to_numpy(zero_copy_only=False)
            old_owner = self.previous.rows["owner"].to_numpy(zero_copy_only=False)
        try:
            for i, chunk in enumerate(self.export.chunks(self.hasher.columns)):
                start = int(chunk.index[0]) if len(chunk) else 0
                size = len(chunk)
                at = slice(start, start + size)
                positions = np.arange(start, start + size, dtype=np.int64)
                h = self.hasher.add(conn, chunk)
                if self.previous is None:
                    keys = _keys_of(chunk, **ident)
                    has = pc.is_valid(keys).to_numpy(zero_copy_only=False)
                    self.has_key[at] = has
                    self.kh[at] = _hash_keys(conn, keys, has)
                    self.whole = keys if i == 0 else None
                    self.projector.add(chunk, positions, keys, has, has, np.zeros(size, bool))
                else:
                    self._read_changed(conn, chunk, h, start, positions, old_kh_values,
                                       old_has, old_owner, ident)
                del chunk
                if on_rows is not None:
                    on_rows(size)
        finally:
            self.projector.close()
        self.hashes = self.hasher.finish(**self.options)
        if self.previous is not None and self.hashes.shape != self.previous.shape:
            self.stale = True   # the first row's column types were not the file's: never
        self._sorted = {}

    def _read_changed(self, conn, chunk, h, start, positions, old_kh_values, old_has,
                      old_owner, ident) -> None:
        size = len(chunk)
        here = max(0, min(self.m - start, size))   # rows of the chunk with a previous row
        in_place = np.zeros(size, bool)
        in_place[:here] = h[:here] == self.old_h[start:start + here]
        kh = np.zeros(size, np.uint64)
        has = np.zeros(size, bool)
        was_owner = np.zeros(size, bool)
        idx = np.flatnonzero(in_place)
        kh[idx] = old_kh_values[start + idx]          # the row decides its key
        has[idx] = old_has[start + idx]
        was_owner[idx] = old_owner[start + idx]
        known = in_place.copy()
        rest = np.flatnonzero(~in_place)
        if len(rest):
            known[rest] = _in_sorted(h[rest], self._previous_sorted("every"))
            seen = rest[known[rest]]      # rows that moved: did Braze receive any equal row?
            if len(seen):
                was_owner[seen] = _in_sorted(h[seen], self._previous_sorted("received"))
            keys = _keys_of(chunk.iloc[rest], **ident)
            found = pc.is_valid(keys).to_numpy(zero_copy_only=False)
            kh[rest] = _hash_keys(conn, keys, found)
            has[rest] = found
            del keys
        at = slice(start, start + size)
        self.kh[at], self.has_key[at], self.known[at] = kh, has, known
        self.was_owner[at], self.in_place[at] = was_owner, in_place
        # as `PreviousInput.keys` decides, as if no row lost to a later one
        same = (has & known & was_owner) | (~has & known)
        pick = np.flatnonzero(~same)
        # an unchanged chunk projects no row: no copy of it made
        rows = chunk.iloc[pick] if len(pick) else chunk.iloc[:0]
        self.projector.add(rows, positions[pick], None, has[pick], has[pick],
                           np.zeros(len(pick), bool))

    def finish(self, db=None) -> tuple["ExportKeys", "tuple | None", Projection]:
        """(the keys, with ``previous`` the change (positions projected, reused mask, in-place
        mask) as `PreviousInput.keys` gives it, the projection as `project` gives it)."""
        export, previous = self.export, self.previous
        ident = [c for c in IDENTITY_COLUMNS if c in export.columns]
        mapped = [r.key for r in self.mapping.rules if r.key in export.columns]
        candidates = _repeated_keys(self.kh, self.has_key)
        lose, winner, key_of, losers = _shared_among(
            export, candidates, ident, self.options["email_opt_in"],
            self.options["alias_label"], rows_of_losers=True)
        found = ExportKeys(lose, winner, self.has_key, key_of,
                           self.whole if self.projector.chunks == 1 else None, self.kh)
        owner = found.owner()
        result, specs, parts, notes, cohorts, users = self.projector.result()
        if len(lose):
            result, users, parts = self._losers_out(result, users, parts, notes, found,
                                                    losers, mapped)
        rows = change = earlier = None
        if previous is not None:
            has_key = self.has_key
            same = (owner & self.known & self.was_owner) | (~has_key & self.known)
            rows = np.flatnonzero(((owner | ~has_key) & ~same) | found.shadowed())
            change = (rows, same, self.in_place)
            users = int(owner.sum())
            entries, earlier = previous.entries_of(same, self.hashes.rows, self.in_place, db)
            parts.extend(entries)
            del self.known, self.was_owner
        frame = _left_out_frame(parts)
        counts = frame["site"].value_counts().to_dict() if len(frame) else {}
        projection = Projection(result, specs, frame, notes.findings(counts), cohorts,
                                export.profile_count, user_count=users, owner=owner, keys=found,
                                earlier_conflicts=earlier,
                                projected=None if rows is None else int(owner[rows].sum()))
        return found, change, projection

    def _losers_out(self, result, users, parts, notes, found, losers, mapped):
        """The profiles that lose to a later row with the same identifier, out of what the pass
        projected (they were projected as if they won) and left out for it, with the finding
        that names a few: what `project` makes of them, knowing them beforehand."""
        lose = found.lose
        shadow_site, note_site = notes.shared_sites
        note = (f"{len(lose):,} profile(s) share a Braze identifier with a later profile; the "
                "last row in the export is sent, the others are left out. "
                + _disagreements(self.export, found.key_of, lose, found.winner, mapped))
        notes.once.setdefault(note_site, ("warning", "shared_identifier", note, None,
                                          SHARED_FIX))
        gone = pa.array(lose, pa.int64())

        def kept(table: pa.Table) -> pa.Table:
            return table.filter(pc.invert(pc.is_in(table["pos"], value_set=gone)))

        # their own left-out rows (values refused) go too: nothing of theirs is sent
        parts = [kept(t) for t in parts]
        parts.append(_left_out_part(pa.array(losers["segment_id"].array),
                                    pa.array(losers["k"].to_numpy(dtype=object), pa.string()),
                                    lose, shadow_site, None, "shared_identifier",
                                    SHADOWED_REASON))
        if isinstance(result, pa.Table):
            if result.num_rows:
                before = result.num_rows
                result = kept(result)
                users -= before - result.num_rows
            return result, users, parts
        # a Parquet file: written again without them (only when an identifier is shared)
        source = pq.ParquetFile(result)
        temp = result.with_name(result.stem + ".kept.parquet")
        writer = pq.ParquetWriter(temp, source.schema_arrow, compression="zstd",
                                  use_dictionary=False, write_statistics=False)
        try:
            for batch in source.iter_batches():
                table = pa.Table.from_batches([batch])
                left = kept(table)
                users -= table.num_rows - left.num_rows
                writer.write_table(left)
        finally:
            writer.close()
            source.close()
        temp.replace(result)
        return result, users, parts


def _project_rows(export, mapping, found: "ExportKeys", owner: np.ndarray, rows, shared_note,
                  email_opt_in, alias_label, cohorts_available, spill):
    """Pass 2 of `project`: the rows at positions ``rows`` (None: every row), a chunk at a
    time. Returns (table or Parquet path, fields, left-out parts, notes, cohorts, users)."""
    out = _Projector(export, mapping, email_opt_in, alias_label, cohorts_available, spill,
                     shared_note)
    has_key, shadowed = found.has_key, found.shadowed()
    # an export in one piece reuses its keys; one kept on disk makes each chunk's again below
    reuse = found.keys
    try:
        for chunk in export.chunks(out.needed):
            start = int(chunk.index[0]) if len(chunk) else 0
            positions = np.arange(start, start + len(chunk), dtype=np.int64)
            keys = reuse.slice(start, len(chunk)) if reuse is not None else None
            if rows is not None:   # only these rows: the others are known from before
                lo, hi = np.searchsorted(rows, [start, start + len(chunk)])
                at = rows[lo:hi] - start
                chunk = chunk.iloc[at]
                positions = positions[at]
                keys = keys.take(pa.array(at)) if keys is not None else None
            out.add(chunk, positions, keys, owner[positions], has_key[positions],
                    shadowed[positions])
            del chunk
    finally:
        out.close()
    return out.result()


class _Projector:
    """The projection of an export's rows a chunk at a time (see `_project_chunk`): the first
    chunk's table stays in memory, a second sends them all to a Parquet file in ``spill``."""

    def __init__(self, export, mapping, email_opt_in, alias_label, cohorts_available, spill,
                 shared_note) -> None:
        self.export, self.mapping = export, mapping
        self.email_opt_in, self.alias_label = email_opt_in, alias_label
        self.cohorts_available, self.spill, self.shared_note = (cohorts_available, spill,
                                                                shared_note)
        mapped = [r.key for r in mapping.rules if r.key in export.columns]
        self.needed = list(dict.fromkeys(
            [c for c in IDENTITY_COLUMNS if c in export.columns] + mapped))
        self.value_types = {r.key: str(export.computation(r.key)["value_type"])
                            for r in mapping.rules if r.key in export.columns}
        self.notes = _Notes()
        self.left_out: list[pa.Table] = []
        self.tables: list[pa.Table] = []
        self.writer = None
        self.out_path: Path | None = None
        self.specs: list[FieldSpec] = []
        self.cohorts: list[dict] = []
        self.users = 0
        self.chunks = 0

    def add(self, chunk: pd.DataFrame, positions: np.ndarray, keys: "pa.Array | None",
            owner: np.ndarray, has_key: np.ndarray, shadowed: np.ndarray) -> None:
        """Project the profiles of ``chunk`` (at ``positions``; ``keys`` their Braze keys, or
        None to make them), the next ones in export order."""
        chunk_keys = (pd.Series(pd.array(keys, dtype="string"), index=chunk.index)
                      if keys is not None else braze_user_keys(
                          chunk, email_opt_in=self.email_opt_in,
                          alias_label=self.alias_label)[0])
        self.notes.begin_chunk()
        table, dropped, self.specs, self.cohorts = _project_chunk(
            chunk, chunk_keys, owner, has_key, shadowed, positions, self.notes,
            self.value_types, self.export, self.mapping, self.email_opt_in, self.alias_label,
            self.cohorts_available, self.shared_note)
        self.left_out.extend(dropped)
        self.users += table.num_rows
        self.chunks += 1
        if self.chunks == 1:
            self.tables.append(table)
            return
        if self.writer is None:   # a second chunk: the projection goes to disk
            folder = Path(self.spill) if self.spill is not None else Path(
                tempfile.mkdtemp(prefix="toolkit-projection-"))
            self.out_path = folder / "projection.parquet"
            # read once, whole, by the diff: no dictionaries or statistics to build (a
            # third less CPU, and a smaller file: user ids and values are nearly unique)
            self.writer = pq.ParquetWriter(self.out_path, self.tables[0].schema,
                                           compression="zstd", use_dictionary=False,
                                           write_statistics=False)
            self.writer.write_table(self.tables.pop())
        self.writer.write_table(table.cast(self.writer.schema))
        if table.num_rows or len(chunk):
            del table
            engine.release_memory(young=True)   # a chunk's memory back before the next

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def result(self):
        """(table or Parquet path, fields, left-out parts, notes, cohorts, users)."""
        result = self.out_path if self.out_path is not None else (
            self.tables[0] if self.tables else pa.table({}))
        return result, self.specs, self.left_out, self.notes, self.cohorts, self.users


def _project_chunk(profiles, keys, owner, has_key, shadowed, positions, notes, value_types,
                   export, mapping, email_opt_in, alias_label, cohorts_available, shared_note):
    """One chunk of profiles (at ``positions`` in the export) → its rows of the projection, its
    left-out profiles, and the fields and cohorts the mapping produces. Makes the same calls
    whatever the rows (see `_Notes`)."""
    c = _Collect(profiles, keys, owner, notes, value_types, positions)
    _report_unsyncable(c, has_key, email_opt_in, alias_label)
    # the sites of the one rule for shared identifiers: `project_once` fills them in after
    # its pass, when the rule's losers are known
    notes.shared_sites = (
        c.leave_out(shadowed, rule=None, code="shared_identifier", reason=SHADOWED_REASON),
        notes.add("warning", "shared_identifier", shared_note, fix=SHARED_FIX))
    columns: dict[str, pa.Array] = {
        "pos": pa.array(positions[owner], pa.int64()),
        "uid": c.owned(c.uids),
        "segment_id": c.owned(c.segment_ids),
    }
    specs: list[FieldSpec] = []
    cohorts: list[dict] = []
    for seq, rule in enumerate(mapping.rules):
        problems = _rule_violations(rule)
        if problems:
            for v in problems:
                notes.add("error", v.code, f"rule {rule.key!r} left out: {v.message}",
                          column=rule.key, fix=v.fix)
            continue
        if rule.key not in profiles.columns:
            notes.add("error", "missing_column", f"rule {rule.key!r} has no column in the "
                      "export; nothing planned for it", column=rule.key,
                      fix="re-export the computation or remove the rule")
            continue
        if rule.kind == "audience":
            _audience_fields(c, export, rule, seq, specs, cohorts, columns, cohorts_available)
        else:
            _trait_fields(c, export, mapping, rule, seq, specs, columns)
    return pa.table(columns), c.left_out, specs, cohorts


def _rule_violations(rule) -> list:
    """Name violations that make a whole rule unsendable (payload rules, braze-api.md §2)."""
    out = []
    if rule.send_as in ("attribute", "both"):
        out += payload_rules.attribute_name_violations(
            rule.attribute, allow_profile_field=rule.kind == "trait"
            and rule.attribute in payload_rules.WRITABLE_PROFILE_FIELDS)
    if rule.send_as in ("event", "both"):
        names = ([rule.enter_event, rule.exit_event] if rule.kind == "audience"
                 else [rule.trait_event])
        for name in names:
            out += payload_rules.event_name_violations(name)
        out += payload_rules.property_name_violations(rule.key)
    return out


def _report_unsyncable(c: _Collect, has_key: np.ndarray, email_opt_in: bool,
                       alias_label: str | None) -> None:
    profiles = c.profiles
    n = len(profiles)

    def has(col):
        return (profiles[col].notna().to_numpy(dtype=bool) if col in profiles.columns
                else np.zeros(n, dtype=bool))

    none = ~has_key
    email_only = none & has("email")
    anon_only = none & ~has("email") & has("anonymous_id")
    bare = none & ~email_only & ~anon_only
    email_reason = ("email only (identifying users by email is opt-in: email_opt_in=True)"
                    if not email_opt_in else "email only")
    anon_reason = ("anonymous only: Braze cannot address it without an external id or alias"
                   + ("" if alias_label else " (plan with alias_label='segment_id' to use aliases)"))
    for mask, code, reason in ((email_only, "email_only", email_reason),
                               (anon_only, "anonymous_only", anon_reason),
                               (bare, "no_identifier", "no identifier Braze can use")):
        c.leave_out(mask, rule=None, code=code, reason=reason, uid=False, note=(
            "warning", f"profile(s) not syncable: {reason}",
            "give them a user_id in Segment, or plan with alias_label / email_opt_in"))


def _membership_text(c: _Collect, member: pd.Series) -> pa.Array:
    b = c.owned(pa.array(member.array))
    return pc.if_else(b, pa.scalar("true", pa.large_string()), pa.scalar("false", pa.large_string()))


def _event_props(rule, value: Any) -> str:
    id_key = "audience_key" if rule.kind == "audience" else "trait_key"
    return dumps({id_key: rule.key, rule.key: value})


def _audience_fields(c: _Collect, export, rule, seq, specs, cohorts, columns,
                     cohorts_available: bool) -> None:
    member = c.profiles[rule.key].astype("boolean")
    text = _membership_text(c, member)
    if rule.send_as in ("attribute", "both"):
        col = f"d{len(specs)}"
        columns[col] = text
        exit_text = dumps(rule.exit_value)
        specs.append(FieldSpec(f"attr:{rule.attribute}", rule.key, seq, "membership", "attribute",
                               col, name=str(rule.attribute), exit_text=exit_text,
                               exit_after=None if rule.exit_value is None else exit_text))
    if rule.send_as in ("event", "both"):
        col = f"d{len(specs)}"
        columns[col] = text
        specs.append(FieldSpec(f"member:{rule.key}", rule.key, seq, "membership", "event", col,
                               enter_event=rule.enter_event, exit_event=rule.exit_event,
                               props_true=_event_props(rule, True),
                               props_false=_event_props(rule, False)))
    if rule.send_as == "cohort":
        comp = export.computation(rule.key) if hasattr(export, "computation") else {}
        cohort_id = getattr(rule, "cohort_id", None) or comp.get("computation_id") or rule.key
        cohort_id = rule.key if pd.isna(cohort_id) else str(cohort_id)
        name = getattr(rule, "cohort_name", None) or comp.get("name") or rule.key
        if not cohorts_available:
            c.findings.add(
                "warning", "cohort_unavailable",
                f"audience {rule.key!r} is mapped to a Braze cohort, but no partner credentials "
                "are configured, so nothing is planned for it. Braze's cohort import "
                "(/partners/segment/cohorts) needs Segment's partner API key "
                "(BRAZE_PARTNER_API_KEY) and the workspace's data import key "
                "(BRAZE_DATA_IMPORT_KEY)", column=rule.key,
                fix=("map the audience to an attribute instead (mapping.set(key, "
                     "send_as='attribute')), or connect Segment's Braze Cohorts destination to "
                     "this audience"))
            return
        # The cohort endpoint matches identified users by external_id or alias only (§4.1).
        usable = pc.fill_null(pc.or_(pc.starts_with(c.uids, "external_id:"),
                                     pc.starts_with(c.uids, "alias:")), False).to_numpy(
            zero_copy_only=False)
        known = member.notna().to_numpy(dtype=bool)
        c.refuse(~usable & known, rule=rule.key, code="cohort_identifier", severity="warning",
                 reason="a cohort matches users by external_id or alias only",
                 what=f"profile(s) of {rule.key!r} have no external_id or alias; the cohort "
                      "cannot hold them",
                 fix="plan with alias_label to address them by alias")
        col = f"d{len(specs)}"
        columns[col] = pc.if_else(pa.array(usable[c.syncable]), text,
                                  pa.scalar(None, pa.large_string()))
        specs.append(FieldSpec(f"cohort:{cohort_id}", rule.key, seq, "membership", "cohort", col,
                               name=cohort_id))
        cohorts.append({"rule": rule.key, "cohort_id": cohort_id, "name": str(name)})


def _trait_fields(c: _Collect, export, mapping, rule, seq, specs, columns) -> None:
    if rule.send_as == "cohort":
        c.findings.add("error", "cohort_trait", f"trait {rule.key!r} cannot be a cohort: a "
                       "cohort holds audience membership only", column=rule.key,
                       fix="send the trait as an attribute or an event")
        return
    if rule.send_as in ("attribute", "both"):
        conv = mapping.convert(rule, c.profiles[rule.key], c.value_types[rule.key])
        prof_field = rule.attribute if rule.attribute in payload_rules.PROFILE_FIELDS else None
        refused = (conv.invalid | conv.conflict).to_numpy(dtype=bool)
        c.refuse(refused, rule=rule.key, code="invalid_value",
                 reason=f"a value Braze would refuse for {rule.attribute!r}",
                 what=f"value(s) of {rule.key!r} would be refused by Braze (too long, wrong type "
                      "or format); left out",
                 fix="see mapping.value_findings(export) for each value")
        col = f"d{len(specs)}"
        columns[col] = c.owned(json_texts(conv, field=prof_field))
        columns[f"x{len(specs)}"] = pa.array(refused[c.syncable])
        specs.append(FieldSpec(f"attr:{rule.attribute}", rule.key, seq, "value", "attribute", col,
                               refused=f"x{len(specs)}", name=str(rule.attribute)))
    if rule.send_as in ("event", "both"):
        comp = export.computation(rule.key) if hasattr(export, "computation") else {}
        conv = payload_rules.convert(c.profiles[rule.key], comp.get("value_type", "string"))
        refused = (conv.invalid | conv.conflict).to_numpy(dtype=bool)
        c.refuse(refused, rule=rule.key, code="invalid_value",
                 reason=f"a {rule.trait_event!r} property value Braze would refuse",
                 what=f"value(s) of {rule.key!r} would be refused by Braze as a "
                      f"{rule.trait_event!r} property (too long, wrong type or format); left out",
                 fix="fix the values in Segment (strings at most 255 characters)")
        col = f"d{len(specs)}"
        texts = c.owned(json_texts(conv))
        columns[col] = pc.if_else(pa.array(refused[c.syncable]),
                                  pa.scalar(None, pa.large_string()), texts)
        columns[f"x{len(specs)}"] = pa.array(refused[c.syncable])
        # Canonical (sorted-key) properties assembled around the encoded value text.
        key_text = dumps(rule.key)
        if "trait_key" < rule.key:
            prefix, suffix = '{"trait_key":' + key_text + "," + key_text + ":", "}"
        else:
            prefix, suffix = "{" + key_text + ":", ',"trait_key":' + key_text + "}"
        specs.append(FieldSpec(f"trait:{rule.key}", rule.key, seq, "value", "event", col,
                               refused=f"x{len(specs)}", name=rule.trait_event,
                               props_prefix=prefix, props_suffix=suffix))

