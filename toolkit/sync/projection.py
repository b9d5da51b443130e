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
           "input_digest", "LEFT_OUT_COLUMNS"]

LEFT_OUT_COLUMNS = ["segment_id", "uid", "rule", "code", "reason"]
SHARED_IDENTIFIER_EXAMPLES = 5
# The profile columns the projection reads besides the mapped computations.
IDENTITY_COLUMNS = ("segment_id", "user_id", "braze_id", "email", "anonymous_id")
# Raise when the projection's output for the same input changes: stored input digests (the
# ledger's record of an export it has converged to) then stop matching, and plans take the
# full path once.
PROJECTION_VERSION = 1


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
    """Every profile's Braze key and what the one rule for shared keys makes of them. An
    export in one piece is looked at whole on the engine. One kept on disk goes a chunk at a
    time keeping only a 64-bit hash per profile (80 MB for 10M profiles; neither Python nor
    the engine ever holds all its keys): rows whose hashes repeat are the few candidates,
    read again and compared by their real keys, so a hash collision is never taken for a
    shared identifier."""
    ident = [c for c in IDENTITY_COLUMNS if c in export.columns]
    chunks = export.chunks(ident)
    first = next(chunks, None)
    if first is None:
        empty = np.zeros(0, dtype=np.int64)
        return ExportKeys(empty, empty, np.zeros(0, dtype=bool), {}, None)
    second = next(chunks, None)
    if second is None:
        keys = _keys_of(first, email_opt_in, alias_label)
        lose, winner = shared_keys(keys, db)
        key_of = {int(p): keys[int(p)].as_py() for p in lose[:SHARED_IDENTIFIER_EXAMPLES]}
        return ExportKeys(lose, winner, pc.is_valid(keys).to_numpy(zero_copy_only=False),
                          key_of, keys)
    hashes, positions, has_parts = [], [], []
    with engine.using(db) as conn:
        for chunk in itertools.chain([first, second], chunks):
            keys = _keys_of(chunk, email_opt_in, alias_label)
            has = pc.is_valid(keys).to_numpy(zero_copy_only=False)
            has_parts.append(has)
            # hashed by the engine, straight from Arrow: no Python string per profile
            conn.register("key_chunk", pa.table({"k": pc.filter(keys, pa.array(has))}))
            hashes.append(np.asarray(conn.execute("SELECT hash(k) AS h FROM key_chunk")
                                     .fetchnumpy()["h"], dtype=np.uint64))
            conn.unregister("key_chunk")
            positions.append(chunk.index.to_numpy(dtype=np.int64)[has])
            del keys, chunk
            engine.release_memory()
    h = np.concatenate(hashes)
    p = np.concatenate(positions)
    del hashes, positions
    order = np.argsort(h, kind="stable")
    sorted_h = h[order]
    same = sorted_h[1:] == sorted_h[:-1]
    repeated = np.zeros(len(sorted_h), dtype=bool)
    repeated[1:] |= same
    repeated[:-1] |= same
    candidates = np.sort(p[order[repeated]])
    lose, winner, key_of = _shared_among(export, candidates, ident, email_opt_in, alias_label)
    return ExportKeys(lose, winner, np.concatenate(has_parts), key_of, None)


def _keys_of(chunk: pd.DataFrame, email_opt_in: bool, alias_label: str | None) -> pa.Array:
    arr = pa.array(braze_user_keys(chunk, email_opt_in=email_opt_in,
                                   alias_label=alias_label)[0].array)
    return (arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr).cast(pa.string())


def _shared_among(export, candidates: np.ndarray, ident: list[str], email_opt_in: bool,
                  alias_label: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Of the candidate rows, those whose real key a later row shares (last row wins): their
    positions, each one's winner, and the keys of the first few."""
    empty = np.zeros(0, dtype=np.int64)
    if not len(candidates):
        return empty, empty, {}
    rows = export.take(candidates, ident)
    keys = braze_user_keys(rows, email_opt_in=email_opt_in, alias_label=alias_label)[0]
    frame = pd.DataFrame({"k": keys.to_numpy(dtype=object), "p": rows.index.to_numpy()})
    frame["last"] = frame.groupby("k")["p"].transform("max")
    losers = frame[frame["p"] != frame["last"]].sort_values("p")
    key_of = dict(zip(losers["p"].head(SHARED_IDENTIFIER_EXAMPLES).tolist(),
                      losers["k"].head(SHARED_IDENTIFIER_EXAMPLES).tolist()))
    return (losers["p"].to_numpy(dtype=np.int64), losers["last"].to_numpy(dtype=np.int64),
            key_of)


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


def input_digest(export, mapping, *, email_opt_in: bool = False, alias_label: str | None = None,
                 cohorts_available: bool = True, db=None) -> str:
    """A digest of everything `project` reads: the identifier and mapped columns row by row (in
    order: the last row wins a shared identifier), their types, the mapped computations, the
    mapping and the options. Equal digests mean equal projections, so a ledger that recorded
    convergence to one (`Ledger.converged`) lets an unchanged export skip the projection and
    the diff. Hashed on the engine, two independent 64-bit hashes per row folded with XOR."""
    keys = [r.key for r in mapping.rules]
    columns = list(dict.fromkeys(
        [c for c in IDENTITY_COLUMNS if c in export.columns]
        + [k for k in keys if k in export.columns]))
    values = ", ".join(f"c{i}" for i in range(len(columns))) or "NULL"
    first = second = count = 0
    dtypes: list = []
    with engine.using(db) as conn:
        # XOR is associative: chunks of an export kept on disk fold into the same digest
        for chunk in export.chunks(columns):
            arrays = {f"c{i}": _hashable(chunk[c]) for i, c in enumerate(columns)}
            arrays["pos"] = pa.array(chunk.index.to_numpy(dtype=np.int64))
            dtypes = dtypes or [[c, str(chunk[c].dtype)] for c in columns]
            conn.register("digest_input", pa.table(arrays))
            a, b, n = conn.execute(
                f"SELECT coalesce(bit_xor(hash(pos, {values})), 0), "
                f"coalesce(bit_xor(hash('b', {values}, pos)), 0), count(*) FROM digest_input"
            ).fetchall()[0]
            conn.unregister("digest_input")
            first, second, count = first ^ int(a), second ^ int(b), count + int(n)
    row = (first, second, count)
    comps = export.computations
    comps = comps[comps["key"].isin(keys)] if "key" in comps.columns else comps
    head = {"projection": PROJECTION_VERSION, "toolkit": __version__,
            "columns": dtypes,
            "computations": json.loads(comps.to_json(orient="records", date_format="iso")),
            "mapping": mapping.to_dict(),
            "options": {"email_opt_in": bool(email_opt_in), "alias_label": alias_label,
                        "cohorts_available": bool(cohorts_available)},
            "rows": [int(row[2]), str(row[0]), str(row[1])]}
    return hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode()).hexdigest()


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

    @property
    def users(self) -> int:
        if self.user_count is not None:
            return self.user_count
        return self.table.num_rows

    def spec_digest(self) -> str:
        """A digest of the fields and their kinds: checksums are comparable only under one."""
        text = dumps([[f.field, f.kind] for f in sorted(self.fields, key=lambda f: f.field)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Notes:
    """Findings gathered over an export's chunks, in first-seen order: the counted ones ("<n>
    profile(s) …") summed over the chunks, the others said once."""

    def __init__(self) -> None:
        self.items: dict[tuple, list] = {}

    def count(self, severity: str, code: str, n: int, what: str, *, column=None, fix=None) -> None:
        key = ("count", severity, code, what, column, fix)
        self.items.setdefault(key, [0])[0] += int(n)

    def add(self, severity: str, code: str, message: str, *, column=None, fix=None) -> None:
        self.items.setdefault(("once", severity, code, message, column, fix), [None])

    def findings(self) -> Findings:
        out = Findings()
        for (how, severity, code, text, column, fix), (n,) in self.items.items():
            out.add(severity, code, f"{n:,} {text}" if how == "count" else text, column=column,
                    fix=fix)
        return out


_LEFT_OUT_TEXT = pa.dictionary(pa.int32(), pa.string())


def _repeated(value: str | None, n: int) -> pa.DictionaryArray:
    indices = pa.nulls(n, pa.int32()) if value is None else pa.array(np.zeros(n, np.int32))
    return pa.DictionaryArray.from_arrays(indices, pa.array([value or ""], pa.string()))


def _left_out_frame(parts: list[pa.Table]) -> pd.DataFrame:
    """The left-out profiles as one frame, one reason after another (as an export read in one
    piece lists them): strings stay in Arrow, reasons are categories."""
    order: dict = {}
    for part in parts:
        order.setdefault((part["code"][0].as_py(), part["rule"][0].as_py()), len(order))
    parts = sorted(parts, key=lambda t: order[(t["code"][0].as_py(), t["rule"][0].as_py())])
    if not parts:
        return pd.DataFrame({k: pd.Series(dtype=object) for k in LEFT_OUT_COLUMNS})
    table = pa.concat_tables(parts)
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)


class _Collect:
    def __init__(self, profiles: pd.DataFrame, keys: pd.Series, syncable: np.ndarray,
                 notes: _Notes, value_types: dict[str, str]) -> None:
        self.profiles = profiles
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
                  uid: bool = True) -> None:
        pos = np.flatnonzero(mask)
        if len(pos):
            take = pa.array(pos)
            n = len(pos)
            # Arrow, the repeated texts dictionary-encoded: a million left-out profiles of a
            # large export stay a few megabytes
            self.left_out.append(pa.table({
                "segment_id": self.segment_ids.take(take).cast(pa.string()),
                "uid": (self.uids.take(take).cast(pa.string()) if uid
                        else pa.nulls(n, pa.string())),
                "rule": _repeated(rule, n), "code": _repeated(code, n),
                "reason": _repeated(reason, n)}))

    def owned(self, values: pa.Array) -> pa.Array:
        """The rows of the profiles Braze receives (a filter: cheaper than a take)."""
        return pc.filter(values, self.owner_mask)

    def refuse(self, mask: np.ndarray, *, rule: str, code: str, reason: str, what: str, fix: str,
               severity: str = "error") -> None:
        """Leave the masked profiles out *and* tell the approver: one step, so no value is ever
        dropped silently. The finding reads "<count> <what>"."""
        mask = mask & self.syncable
        if mask.any():
            self.leave_out(mask, rule=rule, code=code, reason=reason)
            self.findings.count(severity, code, int(mask.sum()), what, column=rule, fix=fix)


def project(export, mapping, *, email_opt_in: bool = False, alias_label: str | None = None,
            cohorts_available: bool = True, db=None, spill: "Path | None" = None) -> Projection:
    """The desired Braze state of ``export`` under ``mapping`` (see the module docstring);
    ``db``: an engine connection to use (default: a fresh one). An export kept on disk is
    projected a chunk at a time into a Parquet file in ``spill`` (default: a new temporary
    folder), so memory stays bounded whatever its size."""
    mapped = [r.key for r in mapping.rules if r.key in export.columns]
    needed = list(dict.fromkeys([c for c in IDENTITY_COLUMNS if c in export.columns] + mapped))
    # pass 1: every profile's Braze key, to apply the one rule for shared keys over the export
    # (a connection of its own, closed at once: the engine's memory goes back before the rest)
    found = export_keys(export, email_opt_in=email_opt_in, alias_label=alias_label)
    has_key, owner, shadowed = found.has_key, found.owner(), found.shadowed()
    # an export in one piece reuses its keys; one kept on disk makes each chunk's again below
    reuse = found.keys
    shared_note = None
    if len(found.lose):
        shared_note = (
            f"{len(found.lose):,} profile(s) share a Braze identifier with a later profile; the "
            "last row in the export is sent, the others are left out. "
            + _disagreements(export, found.key_of, found.lose, found.winner, mapped))
    value_types = {r.key: str(export.computation(r.key)["value_type"]) for r in mapping.rules
                   if r.key in export.columns}
    notes = _Notes()
    left_out: list[pa.Table] = []
    tables: list[pa.Table] = []
    writer = None
    out_path = None
    specs: list[FieldSpec] = []
    cohorts: list[dict] = []
    users = 0
    try:
        for i, chunk in enumerate(export.chunks(needed)):
            start = int(chunk.index[0]) if len(chunk) else 0
            part = slice(start, start + len(chunk))
            chunk_keys = (pd.Series(pd.array(reuse, dtype="string"), index=chunk.index)
                          if reuse is not None else braze_user_keys(
                              chunk, email_opt_in=email_opt_in, alias_label=alias_label)[0])
            table, dropped, specs, cohorts = _project_chunk(
                chunk, chunk_keys, owner[part], has_key[part], shadowed[part], start, notes,
                value_types, export, mapping, email_opt_in, alias_label, cohorts_available,
                shared_note)
            left_out.extend(dropped)
            users += table.num_rows
            if i == 0:
                tables.append(table)
                continue
            if writer is None:   # a second chunk: the projection goes to disk
                folder = Path(spill) if spill is not None else Path(
                    tempfile.mkdtemp(prefix="toolkit-projection-"))
                out_path = folder / "projection.parquet"
                # read once, whole, by the diff: no dictionaries or statistics to build (a
                # third less CPU, and a smaller file: user ids and values are nearly unique)
                writer = pq.ParquetWriter(out_path, tables[0].schema, compression="zstd",
                                          use_dictionary=False, write_statistics=False)
                writer.write_table(tables.pop())
            writer.write_table(table.cast(writer.schema))
            del table, chunk
            engine.release_memory()   # a chunk's memory back before the next
    finally:
        if writer is not None:
            writer.close()
    result = out_path if out_path is not None else (tables[0] if tables else pa.table({}))
    frame = _left_out_frame(left_out)
    return Projection(result, specs, frame, notes.findings(), cohorts, export.profile_count,
                      user_count=users)


def _project_chunk(profiles, keys, owner, has_key, shadowed, start, notes, value_types, export,
                   mapping, email_opt_in, alias_label, cohorts_available, shared_note):
    """One chunk of profiles (positions ``start``…) → its rows of the projection, its
    left-out profiles, and the fields and cohorts the mapping produces."""
    c = _Collect(profiles, keys, owner, notes, value_types)
    _report_unsyncable(c, has_key, email_opt_in, alias_label)
    if shared_note is not None:
        c.leave_out(shadowed, rule=None, code="shared_identifier",
                    reason="another profile with the same Braze identifier comes later in the "
                           "export; its values are sent")
        notes.add("warning", "shared_identifier", shared_note,
                  fix="merge the profiles in Segment (or fix the identifier), then export again")
    columns: dict[str, pa.Array] = {
        "pos": pa.array(np.flatnonzero(owner) + start, pa.int64()),
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
    if not n:
        return

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
        if mask.any():
            c.leave_out(mask, rule=None, code=code, reason=reason, uid=False)
            c.findings.count("warning", code, int(mask.sum()),
                             f"profile(s) not syncable: {reason}",
                             fix="give them a user_id in Segment, or plan with alias_label / "
                                 "email_opt_in")


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

