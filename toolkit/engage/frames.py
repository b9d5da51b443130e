"""Shared building blocks of the Engage readers: value typing, identifier columns, frames.

Every reader gathers raw identifiers and computation values its own way, types them with these
helpers, then hands them to `toolkit.engage.assemble.assemble`, which builds the `EngageExport`
and runs the validation checks. Keeping that in one place is what makes the same shop read from
different formats come out identical.
"""
from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from toolkit.braze.payload_rules import value_kind
from toolkit.engage.model import COMPUTATION_COLUMNS, EVENT_COLUMNS

# External id types Segment knows by default (docs: unify/identity-resolution/externalids), plus
# braze_id, which the Braze destination treats as an external id. Formatted CSV columns with these
# names (or their indexed variants email_1, email_2 …) are identifiers, every other column a trait.
EXTERNAL_ID_TYPES = ("user_id", "email", "anonymous_id", "braze_id", "android.id", "android.idfa",
                     "android.push_token", "ga_client_id", "ios.id", "ios.idfa", "ios.push_token",
                     "phone")
_INDEXED_ID = re.compile(r"^(?P<type>" + "|".join(re.escape(t) for t in EXTERNAL_ID_TYPES)
                         + r")(?:_(?P<n>\d+))?$")

NUMBER_RE = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
# NaN and the infinities as CSV writers spell them (pandas "nan", Spark "NaN", "inf",
# "-Infinity"…): a number column's odd values, never a reason to read the column as text
NON_FINITE_RE = r"(?i)^[+-]?(?:nan|inf|infinity)$"
_NAN_RE = r"(?i)^[+-]?nan$"
DATE_RE = (r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?"
           r"(?:Z|[+-]\d{2}:?\d{2})?$")
BOOL_STRINGS = {"true": True, "false": False}
_DATE = re.compile(DATE_RE)

# ``emails`` / ``anonymous_ids``: every value of a multi-valued identifier, as a pyarrow list
# column (one Arrow buffer, not a Python tuple per row).
ID_LIST_TYPE = pa.list_(pa.string())
ID_LIST_DTYPE = pd.ArrowDtype(ID_LIST_TYPE)

PANDAS_DTYPE = {"boolean": "boolean", "string": "string", "number": "Float64",
                "datetime": "datetime64[ns, UTC]"}

# Per-row details kept for findings: the first LISTED rows of each kind, and a total.
LISTED = 200


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


def id_lists(values: Iterable[Any], index: pd.Index | None = None) -> pd.Series:
    """A contract identifier-list column (`ID_LIST_DTYPE`) from Python sequences, one per row:
    None/NA becomes an empty list, values become text, missing and repeated values are dropped."""
    rows = []
    for v in values:
        if v is None or v is pd.NA or isinstance(v, float) and np.isnan(v):
            rows.append([])
        else:
            items = [v] if isinstance(v, str) else v
            rows.append(list(dict.fromkeys(str(x) for x in items
                                           if x is not None and x is not pd.NA)))
    return _list_series(pa.array(rows, type=ID_LIST_TYPE), index)


def _list_series(arr: pa.Array | pa.ChunkedArray, index: pd.Index | None = None) -> pd.Series:
    return pd.Series(pd.arrays.ArrowExtensionArray(arr), index=index)


def as_text(column) -> pa.ChunkedArray:
    """A pyarrow text column (chunks kept, no copy) from a Series or a pyarrow array; pandas'
    large_string stays as it is."""
    if isinstance(column, pd.Series):
        column = pa.array(column.array)
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    if column.type in (pa.string(), pa.large_string()):
        return column
    return pc.cast(column, pa.string())


def _text_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) of a text array as numpy views: the values' offsets into the whole
    data buffer, and the bytes they span."""
    width = np.int64 if arr.type == pa.large_string() else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset:arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets, data[offsets[0]:offsets[-1]]


def long_values(column: pa.ChunkedArray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, character counts) of the values longer than `limit` characters. Only values
    over `limit` bytes can be, and byte sizes come from the Arrow offsets alone, so a column of
    short values costs no pass over its bytes; chunk by chunk, as a take over many chunks first
    joins them."""
    positions, chars, start = [], [], 0
    for arr in column.chunks:
        sizes = np.diff(_text_buffers(arr)[0])
        if len(sizes) and sizes.max() > limit:
            at = np.flatnonzero(sizes > limit)
            count = pc.utf8_length(arr.take(pa.array(at))).to_numpy(zero_copy_only=False)
            long = count > limit  # False for a missing value whose slot spans bytes
            positions.append(at[long] + start)
            chars.append(count[long].astype(np.int64))
        start += len(arr)
    if not positions:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(positions), np.concatenate(chars)


# Text a spreadsheet runs as a formula when a CSV holding it is opened: it starts (after tabs,
# carriage returns or spaces, which do not stop Excel) with =, +, - or @ (OWASP "CSV
# injection"). A signed number (-5, +3.2e4) is a number, and a phone number (+1 (555) 010-0100)
# holds nothing to run: neither is reported.
FORMULA_RE = r"^[\t\r ]*[=+\-@]"
_NOT_FORMULA_RE = r"^[\t\r ]*(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-][\d\s().-]*)[\t\r ]*$"
_FORMULA_FIRST = np.zeros(256, dtype=bool)
_FORMULA_FIRST[np.frombuffer(b"=+-@\t\r ", dtype=np.uint8)] = True


def is_formula_like(text: str) -> bool:
    """Whether a spreadsheet would run `text` as a formula (rule at `FORMULA_RE`)."""
    return bool(re.match(FORMULA_RE, text)) and not re.match(_NOT_FORMULA_RE, text)


def formula_positions(column: pa.ChunkedArray) -> np.ndarray:
    """Positions of the formula-like values of a text column (`is_formula_like`). Only values
    whose first byte could start a formula are matched against the pattern, and those are
    found from the Arrow buffers with numpy (a table lookup of each value's first byte): a
    column without any costs no regex pass."""
    found, start = [], 0
    for arr in column.chunks:
        offsets, data = _text_buffers(arr)
        if len(data):
            # each value's first byte; an empty or null value points at its neighbour's (or,
            # last, past the end: clipped), so candidates are then kept only when not empty
            first = data.take(offsets[:-1] - offsets[0], mode="clip")
            candidates = np.flatnonzero(_FORMULA_FIRST[first])
            if len(candidates):
                candidates = candidates[offsets[candidates + 1] > offsets[candidates]]
            if len(candidates):
                values = arr.take(pa.array(candidates))
                hit = pc.and_(pc.match_substring_regex(values, FORMULA_RE),
                              pc.invert(pc.match_substring_regex(values, _NOT_FORMULA_RE)))
                # a null slot spanning bytes (not as the CSV reader writes them) is no value
                hit = pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
                found.append(candidates[hit] + start)
        start += len(arr)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def count_prefixed(column: pa.ChunkedArray, prefix: str) -> int:
    """How many values of a text column start with `prefix` (nulls do not). Only values whose
    first byte is the prefix's are compared, found from the Arrow buffers with numpy: a column
    of other keys (Segment's ``use_…``) costs no string pass."""
    head = prefix.encode()[:1]
    if not head:
        return len(column) - column.null_count
    total = 0
    for arr in column.chunks:
        offsets, data = _text_buffers(arr)
        if not len(data):
            continue
        first = data.take(offsets[:-1] - offsets[0], mode="clip")  # as in formula_positions
        candidates = np.flatnonzero(first == head[0])
        candidates = candidates[offsets[candidates + 1] > offsets[candidates]]
        if len(candidates):
            total += pc.sum(pc.starts_with(arr.take(pa.array(candidates)), prefix)).as_py() or 0
    return int(total)


def may_need_trim(column: pa.ChunkedArray) -> bool:
    """Whether some value may start or end with whitespace: any byte ≤ 0x20 or non-ASCII (as
    Unicode spaces are) anywhere. Conservative, and one vectorised reduction instead of a
    trimming pass that copies every value: read as signed bytes, non-ASCII ones are negative."""
    return any(len(data) and data.view(np.int8).min() <= 32
               for data in (_text_buffers(arr)[1] for arr in column.chunks))


def may_have_upper(column: pa.ChunkedArray) -> bool:
    """Whether some value may hold an upper-case letter (A–Z, or any non-ASCII byte)."""
    return any(len(data) and (data.max() >= 128 or bool(((data - 65) < 26).any()))
               for data in (_text_buffers(arr)[1] for arr in column.chunks))


def id_lists_from_arrow(columns: Sequence[pa.Array | pa.ChunkedArray | pd.Series], n: int,
                        index: pd.Index | None = None) -> pd.Series:
    """Per row, the distinct non-missing values of `columns` in column order, as a contract
    identifier-list column; built with pyarrow/numpy, no Python object per row."""
    if not columns:
        offsets = np.zeros(n + 1, dtype=np.int32)
        return _list_series(pa.ListArray.from_arrays(offsets, pa.array([], pa.string())), index)
    texts = [t if t.type == pa.string() else t.cast(pa.string())
             for t in (as_text(c) for c in columns)]
    cols = texts[:1] + [t for t in texts[1:] if t.null_count < len(t)]  # skip empty columns
    if len(cols) == 1:  # chunk by chunk, sharing the column's bytes
        return _list_series(pa.chunked_array([_one_id_list(arr) for arr in cols[0].chunks],
                                             type=ID_LIST_TYPE), index)
    # batch by batch (the columns' common chunks): small temporaries the allocator reuses,
    # rather than million-row ones that each cost fresh pages
    table = pa.Table.from_arrays(cols, names=[str(j) for j in range(len(cols))])
    return _list_series(pa.chunked_array([_id_list_batch(batch.columns)
                                          for batch in table.to_batches()], type=ID_LIST_TYPE),
                        index)


def _id_list_batch(arrays: list[pa.Array]) -> pa.ListArray:
    """Per row, the distinct non-null values of `arrays` (text, same length) in order."""
    first = arrays[0]
    extra = []
    for j in range(1, len(arrays)):
        col = arrays[j]
        if col.null_count == len(col):
            continue
        keep = col.is_valid()
        for earlier in arrays[:j]:  # a value repeated in a later column of the same row
            keep = pc.and_(keep, pc.fill_null(pc.not_equal(col, earlier), True))
        keep = keep.to_numpy(zero_copy_only=False)
        if keep.any():
            extra.append((j, keep))
    if not extra:  # sharing the first column's bytes
        return _one_id_list(first)
    used = [(0, first.is_valid().to_numpy(zero_copy_only=False)), *extra]
    n = len(first)
    counts = used[0][1].astype(np.int32)
    for _, keep in extra:
        counts += keep
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    # the kept cells row by row, columns in order, as positions in the arrays one after another
    row, k = np.divmod(np.flatnonzero(np.column_stack([keep for _, keep in used]).ravel()),
                       len(used))
    source = k * n + row
    values = pa.concat_arrays([arrays[j] for j, _ in used]).take(pa.array(source))
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _one_id_list(arr: pa.Array) -> pa.ListArray:
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(arr) + 1, dtype=np.int32)
    np.cumsum(valid, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), _non_null(arr, valid))


def _non_null(arr: pa.Array, valid: np.ndarray) -> pa.Array:
    """The non-null values of a text array. When nulls take no bytes (as pyarrow's CSV reader
    and compute kernels leave them) the result shares `arr`'s bytes: only offsets are new."""
    if not arr.null_count:
        return arr
    if arr.type != pa.string() or arr.buffers()[2] is None:
        return arr.drop_null()
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    if (np.diff(offsets)[~valid]).any():
        return arr.drop_null()
    kept = np.append(offsets[:-1][valid], offsets[-1]).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(kept) - 1,
                                 [None, pa.py_buffer(kept), arr.buffers()[2]])


def worker_pool() -> ThreadPoolExecutor:
    """Threads for independent million-row passes: pyarrow and numpy release the GIL, so the
    post-processing uses the cores as pyarrow's CSV reader does. One pool per process (do not
    shut it down): a load's passes take milliseconds, and starting threads for every load
    would cost a good part of that."""
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                            thread_name_prefix="engage-load"))
        return _POOL[0]


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def result_or_run(future: Future, fn: Callable[[], Any]) -> Any:
    """The result of ``future`` (``fn`` submitted to a pool); when no worker has started it yet,
    this thread takes it back and runs ``fn`` itself: a thread that needs results works
    instead of waiting for a busy pool."""
    return fn() if future.cancel() else future.result()


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9))
_MAX_FINGERPRINT_WIDTH = 128  # bytes; longer values are compared by pyarrow's hash table


def has_duplicates(values) -> bool:
    """Whether a non-missing text value occurs more than once (exact).

    Hashing a million strings in pyarrow's hash table costs more than parsing the CSV, so the
    values are first reduced to 64-bit fingerprints with numpy straight from the Arrow buffers:
    distinct fingerprints prove the values distinct; only when two agree (real duplicates, or a
    once-in-10^10 collision) are the strings themselves compared."""
    column = as_text(values)
    present = len(column) - column.null_count
    if present < 2:
        return False
    # parts of at most ~32k fingerprints: a hash table that size stays in the core's cache
    # even while other processes use the shared one
    parts = _fingerprint_parts(column, min(8, (present >> 15).bit_length()))
    if parts is not None and all(pd.Index(np.concatenate(part)).is_unique for part in parts):
        return False
    return len(pc.unique(column.drop_null())) < present


def _fingerprint_parts(column: pa.ChunkedArray, bits: int) -> list[list[np.ndarray]] | None:
    """The non-null values' fingerprints split by their top `bits` bits (a radix pass, chunk by
    chunk), so that each part's hash table is small enough for the CPU cache — twice as fast as
    one big table — and no million-value array is allocated. None when values are too long."""
    parts: list[list[np.ndarray]] = [[] for _ in range(1 << bits)]
    for arr in column.chunks:
        prints = _fingerprints(arr)
        if prints is None:
            return None
        if not bits:
            parts[0].append(prints)
            continue
        top = (prints >> np.uint64(64 - bits)).astype(np.uint8)
        prints = prints[np.argsort(top, kind="stable")]  # a stable sort of bytes is a radix sort
        ends = np.cumsum(np.bincount(top, minlength=1 << bits)).tolist()
        for part, start, end in zip(parts, [0, *ends[:-1]], ends):
            part.append(prints[start:end])
    return parts


def _fingerprints(arr: pa.Array) -> np.ndarray | None:
    """64-bit fingerprint of each non-null value of a text array, a function of the value alone
    (the same value in another chunk gets the same one); None when values are too long to be
    worth it. Word j of a value is the 8 bytes at its start + 8j, the last one ending at its
    end, so every byte is covered; a value under 8 bytes is one word of its own low bytes."""
    offsets, data = _text_buffers(arr)
    lengths = np.diff(offsets)
    longest = int(lengths.max()) if len(lengths) else 0
    if longest > _MAX_FINGERPRINT_WIDTH:
        return None
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
    present = len(arr) - arr.null_count
    if longest >= 8 and len(data) == longest * present and (
            valid is None or not lengths[~valid].any()):
        # one width for every value (Segment ids) and nulls taking no bytes, as the CSV reader
        # leaves them: the values lie end to end, so their words are read in place
        out = np.full(present, np.uint64(longest)) * _MIX[0]
        starts = list(range(0, longest - 7, 8))
        if starts[-1] != longest - 8:
            starts.append(longest - 8)
        for k in starts:
            _mix(out, np.ndarray((present,), dtype="<u8", buffer=data, offset=k,
                                 strides=(longest,)))
        return out
    # any widths: the words are read from a view holding the 8 bytes at every byte position
    padded = np.concatenate([data, np.zeros(8, dtype=np.uint8)])
    at = np.ndarray((len(data) + 1,), dtype="<u8", buffer=padded, strides=(1,))
    starts = offsets[:-1] - offsets[0]
    last = np.maximum(lengths - 8, 0)
    keep = np.where(lengths < 8, (np.uint64(1) << (np.minimum(lengths, 7) * 8).astype(np.uint64))
                    - np.uint64(1), ~np.uint64(0))
    out = lengths.astype(np.uint64) * _MIX[0]  # the length too: "a" and "a\0" differ
    for j in range(max(1, -(-longest // 8))):
        word = at[starts + np.minimum(8 * j, last)] & keep
        if j == 0:
            _mix(out, word)
        else:  # only values that have a word j: a value's fingerprint ignores its neighbours
            more = lengths > 8 * j
            mixed = out[more]
            _mix(mixed, word[more])
            out[more] = mixed
    return out if valid is None else out[valid]


def _mix(out: np.ndarray, word: np.ndarray) -> None:
    out ^= word
    out *= _MIX[1]
    out ^= out >> np.uint64(31)


def union_id_lists(lists: pd.Series, codes: np.ndarray, n_groups: int) -> pd.Series:
    """Merge identifier lists of rows sharing a group code (0 … n_groups-1; -1: no group, as
    pandas' groupby codes a missing key): per group, the distinct values in row order, then
    list order — vectorised."""
    arr = pa.array(lists.array)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    flat = pc.list_flatten(arr)
    group = np.asarray(codes)[pc.list_parent_indices(arr).to_numpy()]
    order = np.argsort(group, kind="stable")
    order = order[group[order] >= 0]
    group = group[order]
    values = flat.take(pa.array(order))
    first = ~pd.DataFrame({"g": group, "v": pd.arrays.ArrowExtensionArray(values)}
                          ).duplicated().to_numpy()
    offsets = np.zeros(n_groups + 1, dtype=np.int32)
    np.cumsum(np.bincount(group[first], minlength=n_groups), out=offsets[1:])
    return _list_series(pa.ListArray.from_arrays(pa.array(offsets),
                                                 values.filter(pa.array(first))))


# -- merging repeated rows ---------------------------------------------------------------------

class MergeReport:
    """What merging the rows of repeated keys did: per described key, its source rows and one
    text per column whose values disagreed ("score kept 5 (row 1), dropped 6 (row 3)")."""

    def __init__(self, described: list[tuple[str, list[int], list[str]]], repeated: int,
                 conflicting: int):
        self.described = described      # (key, source rows, conflict texts)
        self.repeated = repeated        # keys on several rows
        self.conflicting = conflicting  # of which, keys whose rows disagree on some value


def merge_report(columns: dict[str, pd.Series], keys: pd.Series, rows: np.ndarray, *,
                 first_non_blank: bool, only_conflicts: bool = False, limit: int = 200,
                 key_codes: np.ndarray | None = None) -> MergeReport:
    """Describe how rows sharing a key merge: ``first_non_blank`` — each column keeps its first
    non-blank value (pandas' groupby ``first``); otherwise the first row is kept whole. A
    column is described when its rows disagree or when its first row is blank but a later
    one is not (the value then comes from, or is lost with, that later row). The
    disagreement test is vectorised over the repeated rows only; texts are built for at most
    `limit` keys (in order of first appearance; with `only_conflicts`, keys whose rows
    disagree). `key_codes`: the keys' group numbers when the caller has them (as from
    ``groupby(...).ngroup()``; then `keys` are only read for the described ones)."""
    keys = keys.reset_index(drop=True)
    if key_codes is None:
        all_codes = pd.factorize(keys)[0]  # one hash pass
    else:
        all_codes = np.asarray(key_codes)
    repeated = np.bincount(all_codes[all_codes >= 0], minlength=int(all_codes.max()) + 1) > 1
    pos = np.flatnonzero(repeated[all_codes] & (all_codes >= 0))
    if not len(pos):
        return MergeReport([], 0, 0)
    # renumber the repeated keys 0… in order of first appearance
    codes = pd.factorize(all_codes[pos])[0]
    n_groups = int(codes.max()) + 1
    order = np.argsort(codes, kind="stable")   # members of each group, in row order
    bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
    starts, firsts = bounds[:-1], order[bounds[:-1]]
    top = np.iinfo(np.int64).max
    prepared = []
    conflict_any = np.zeros(n_groups, dtype=bool)
    for name, values in columns.items():
        raw = values.reset_index(drop=True)
        if len(pos) < len(raw):  # (shape c trait CSVs repeat every profile: no copy then)
            raw = raw.iloc[pos].reset_index(drop=True)
        comparable = _comparable(raw)
        # distinct values as integers (-1 blank); a group disagrees when its smallest and
        # largest non-blank codes differ: two reductions over the sorted codes, no hashing
        value_codes = pd.factorize(comparable)[0].astype(np.int64)
        in_order = value_codes[order]
        present = in_order >= 0
        lowest = np.minimum.reduceat(np.where(present, in_order, top), starts)
        highest = np.maximum.reduceat(in_order, starts)
        any_value = highest >= 0
        bad = any_value & (lowest != highest)
        # a blank first row: a later row's value is kept (first non-blank) or lost (first row)
        bad |= any_value & (value_codes[firsts] < 0)
        if bad.any():
            prepared.append((name, raw, comparable, bad))
            conflict_any |= bad
    groups = np.flatnonzero(conflict_any) if only_conflicts else np.arange(n_groups)
    described = []
    for g in groups[:limit].tolist():
        members = order[bounds[g]:bounds[g + 1]]
        texts = [_conflict_text(name, raw, comparable, members, rows[pos[members]],
                                first_non_blank)
                 for name, raw, comparable, bad in prepared if bad[g]]
        described.append((str(keys.iat[int(pos[members[0]])]),
                          [int(r) for r in rows[pos[members]]], texts))
    return MergeReport(described, n_groups, int(conflict_any.sum()))


def _comparable(values: pd.Series) -> pd.Series:
    """Values that compare as the data do: JSON text for lists and dicts (unhashable)."""
    if values.dtype != object:
        return values
    return pd.Series([None if v is None or v is pd.NA or isinstance(v, float) and np.isnan(v)
                      else json.dumps(v, sort_keys=True, default=str) for v in values],
                     dtype=object)


def _conflict_text(name: str, raw: pd.Series, comparable: pd.Series, members: np.ndarray,
                   rows: np.ndarray, first_non_blank: bool) -> str:
    present = comparable.iloc[members].notna().to_numpy()
    kept = int(np.argmax(present)) if first_non_blank else 0
    kept_value = comparable.iloc[members[kept]]
    dropped = [(shown_value(raw.iloc[m]), int(r)) for j, (m, r) in enumerate(zip(members, rows))
               if j != kept and present[j]
               and (pd.isna(kept_value) or comparable.iloc[m] != kept_value)]
    text = f"{name} kept {shown_value(raw.iloc[members[kept]])} (row {int(rows[kept])})"
    if dropped:
        listed = ", ".join(f"{v} (row {r})" for v, r in dropped[:5])
        text += f", dropped {listed}" + (f" and {len(dropped) - 5} more" if len(dropped) > 5
                                         else "")
    return text


def shown_value(value: Any, width: int = 40) -> str:
    """A value as a finding shows it: numbers without a trailing .0, text quoted, "blank"."""
    if value is None or value is pd.NA or value is pd.NaT or (
            isinstance(value, float) and np.isnan(value)):
        return "blank"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def rows_text(rows: list[int], limit: int = 10) -> str:
    """"row 4", "rows 1 and 3", "rows 1, 3 and 5", "rows 1, 2, … (25 rows)"."""
    if len(rows) == 1:
        return f"row {rows[0]}"
    if len(rows) > limit:
        return "rows " + ", ".join(map(str, rows[:limit])) + f", … ({len(rows):,} rows)"
    return "rows " + ", ".join(map(str, rows[:-1])) + f" and {rows[-1]}"


# -- value typing ------------------------------------------------------------------------------

def python_kind(value: Any) -> str | None:
    """The type of one JSON value, ISO dates in text counting as datetimes; None for null
    (`toolkit.braze.payload_rules.value_kind`, the one classifier)."""
    return value_kind(value, date_text=_DATE)


class Typed:
    """A typed computation column and the row positions whose value did not fit its type.

    Every value that does not fit is *read as blank* (missing, exactly like an empty cell) —
    but for ±inf, kept in its number column and left out downstream — and listed here, so that
    validation can say so, row by row:
      ``drift``          (position, raw value, its kind): text in a number column, "maybe" in a
                         boolean one… (the first `LISTED`; ``drift_total`` counts them all);
      ``invalid_dates``  (position, raw value): dates that do not parse (the first `LISTED`;
                         ``invalid_dates_total`` counts them all);
      ``non_finite``     {"NaN" | "+inf" | "-inf": positions}: numbers JSON and Braze cannot hold;
      ``mixed``          a column read as text although many of its values are numbers,
                         booleans or dates: {"sample": {kind: count}, "first": position,
                         "total": values not text}."""

    def __init__(self, values: pd.Series, value_type: str, drift: list[tuple[int, Any, str]],
                 invalid_dates: list[tuple[int, Any]], string_booleans: list[tuple[int, Any]],
                 text_booleans: int = 0, *, drift_total: int | None = None,
                 invalid_dates_total: int | None = None,
                 non_finite: dict[str, np.ndarray] | None = None, mixed: dict | None = None):
        self.values = values
        self.text_booleans = text_booleans  # CSV: "true"/"false" cells read as booleans
        self.rows: np.ndarray | None = None   # source row per position, when not the export's
        self.value_type = value_type
        self.drift = drift                    # (position, raw value, its kind)
        self.drift_total = drift_total if drift_total is not None else len(drift)
        self.invalid_dates = invalid_dates    # (position, raw value)
        self.invalid_dates_total = (invalid_dates_total if invalid_dates_total is not None
                                    else len(invalid_dates))
        self.string_booleans = string_booleans  # (position, raw value)
        self.non_finite = {k: v for k, v in (non_finite or {}).items() if len(v)}
        self.mixed = mixed
        # for a text column, (positions of long values, their lengths, formula-like positions)
        # when its reader computed them alongside the typing (`validation.text_checks`); a
        # remapped column recomputes them
        self.text_checks: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def remapped(self, values: pd.Series, codes: np.ndarray) -> "Typed":
        """The same findings for merged rows: `codes` maps each position to its merged one."""
        mixed = None if self.mixed is None else {**self.mixed,
                                                 "first": int(codes[self.mixed["first"]])}
        return Typed(values, self.value_type,
                     [(int(codes[i]), v, k) for i, v, k in self.drift],
                     [(int(codes[i]), v) for i, v in self.invalid_dates],
                     [(int(codes[i]), v) for i, v in self.string_booleans],
                     text_booleans=self.text_booleans, drift_total=self.drift_total,
                     invalid_dates_total=self.invalid_dates_total,
                     non_finite={k: codes[v] for k, v in self.non_finite.items()}, mixed=mixed)


_NON_FINITE_KINDS = ("NaN", "+inf", "-inf")


def _split_non_finite(numbers: pa.ChunkedArray) -> tuple[pa.ChunkedArray, dict[str, np.ndarray]]:
    """(`numbers` with NaN made null, the positions of NaN, +inf and -inf by kind), vectorised:
    one ``is_finite`` pass, and positions only when some value is not finite. Infinities stay:
    a number Braze cannot store is left out downstream (`braze.payload_rules.convert` marks it
    invalid, so the plan keeps what Braze holds), while NaN means no value."""
    if numbers.type != pa.float64():
        numbers = pc.cast(numbers, pa.float64())
    if all(np.isfinite(_float_values(arr)).all() for arr in numbers.chunks):
        return numbers, {}  # every slot finite, nulls' included: nothing to find
    odd = pc.invert(pc.fill_null(pc.is_finite(numbers), True))
    if not pc.any(odd).as_py():
        return numbers, {}
    positions = np.flatnonzero(odd.to_numpy(zero_copy_only=False))
    values = numbers.take(pa.array(positions)).to_numpy(zero_copy_only=False)
    kinds = dict(zip(_NON_FINITE_KINDS, (positions[np.isnan(values)],
                                         positions[values == np.inf],
                                         positions[values == -np.inf])))
    if len(kinds["NaN"]):
        numbers = pc.if_else(pc.fill_null(pc.is_nan(numbers), False),
                             pa.scalar(None, pa.float64()), numbers)
    return numbers, kinds


def _float_values(arr: pa.Array) -> np.ndarray:
    """Every slot of a float64 array as a numpy view, null slots' (arbitrary) values included."""
    data = arr.buffers()[1]
    if data is None:
        return np.zeros(0)
    return np.frombuffer(data, dtype=np.float64)[arr.offset:arr.offset + len(arr)]


def _float_series(numbers: pa.ChunkedArray) -> pd.Series:
    return pd.Series(numbers.to_pandas(types_mapper={pa.float64(): pd.Float64Dtype()}.get))


def type_python_values(values: pd.Series, *, audience: bool = False) -> Typed:
    """Type a column of JSON values. The most common kind wins (Braze locks the attribute type on
    the first value it receives, so a minority kind is reported as drift, and left missing)."""
    raw = values.to_numpy(dtype=object)
    kinds = [python_kind(v) for v in raw]
    # JSON NaN / Infinity (Python's json reads them): NaN has no kind (blank), ±inf is a number
    odd = [(i, "NaN" if v != v else "+inf" if v > 0 else "-inf") for i, v in enumerate(raw)
           if isinstance(v, float) and not np.isfinite(v)]
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
    # a NaN is reported wherever it is; an infinity only in a number column (elsewhere it is
    # a number among other kinds: drift)
    non_finite = {kind: np.array([i for i, k in odd if k == kind], dtype=np.int64)
                  for kind in _NON_FINITE_KINDS
                  if kind == "NaN" or value_type == "number"}
    return Typed(out, value_type, drift, invalid_dates, string_booleans, non_finite=non_finite)


def to_utc(text: pd.Series) -> pd.Series:
    """ISO-8601 strings → datetime64[ns, UTC]; unparseable values become NaT."""
    out = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    # pandas parses to microseconds; a date outside datetime64[ns] (years 1677-2262) would
    # make the cast raise, so it is invalid (a finding), like any other unreadable date
    lo, hi = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
    out = out.where((out >= lo) & (out <= hi))
    return out.astype("datetime64[ns, UTC]")


def _text_kind(v: str) -> str:
    if v.lower() in BOOL_STRINGS:
        return "boolean"
    if re.match(NUMBER_RE, v) or re.match(NON_FINITE_RE, v):
        return "number"
    return "datetime" if re.match(DATE_RE, v) else "string"


TYPE_SAMPLE = 2_000  # values that decide a CSV column's type


_KINDS = ("boolean", "number", "datetime", "string")


def sample_kind(column: pa.ChunkedArray) -> str:
    """The most common `_text_kind` among the column's first `TYPE_SAMPLE` non-null values (blank
    ones skipped; a tie goes to the kind seen first), classified in pyarrow. NaN (how pandas
    and Spark write a missing number) does not vote: a column of NaN alone is a number column;
    infinities count as numbers when the sample holds a real number, else as text (a column
    of plan names may well say "Infinity")."""
    return sample_kinds(column)[0]


def sample_kinds(column: pa.ChunkedArray) -> tuple[str, dict[str, int]]:
    """(`sample_kind`, how many sampled values are of each kind)."""
    parts, wanted = [], TYPE_SAMPLE
    for chunk in column.chunks:
        if wanted <= 0:
            break
        part = chunk.drop_null().slice(0, wanted)
        parts.append(part)
        wanted -= len(part)
    if not parts:
        return "string", {}
    sample = pc.utf8_trim_whitespace(pa.concat_arrays(parts))
    sample = sample.filter(pc.not_equal(sample, ""))
    if not len(sample):
        return "string", {}

    def test(result) -> np.ndarray:
        return result.to_numpy(zero_copy_only=False)
    kind = np.select([test(pc.is_in(pc.utf8_lower(sample), value_set=pa.array(list(BOOL_STRINGS)))),
                      test(pc.match_substring_regex(sample, NUMBER_RE)),
                      test(pc.match_substring_regex(sample, DATE_RE)),
                      test(pc.match_substring_regex(sample, _NAN_RE)),
                      test(pc.match_substring_regex(sample, NON_FINITE_RE))],
                     [0, 1, 2, 4, 5], default=3)
    kind = kind[kind != 4]  # see the docstring
    if not len(kind):
        return "number", {}
    kind[kind == 5] = 1 if (kind == 1).any() else 3
    counts = np.bincount(kind, minlength=len(_KINDS))
    first_seen = [int(np.argmax(kind == k)) if counts[k] else len(kind) for k in range(len(_KINDS))]
    chosen = _KINDS[min(range(len(_KINDS)), key=lambda k: (-counts[k], first_seen[k]))]
    return chosen, {k: int(c) for k, c in zip(_KINDS, counts) if c}


# A column read as text is "mixed" (a finding) when at least this share of its sampled values
# are numbers, booleans or dates: those are then sent as text, and Braze stores a string.
MIXED_SHARE = 1 / 3


def type_string_column(column: pa.ChunkedArray, *, audience: bool = False,
                       kinds: tuple[str, dict[str, int]] | None = None) -> Typed:
    """Type a CSV column read as text, vectorised with pyarrow (the 1M-row path).

    The column's type is the most common kind in a sample of its first non-empty values; the
    whole column is then converted to that kind in one cast when every value fits, else checked
    value by value. Values that do not fit are drift and read as blank; in a number column NaN
    is read as blank too and ±inf kept to be left out (`Typed.non_finite`). No per-row
    Python. `kinds`: the column's `sample_kinds` when the caller already has them."""
    col = column
    # already parsed by the CSV reader (see csv._predicted_types), or a parquet float column
    if pa.types.is_floating(col.type):
        numbers, odd = _split_non_finite(col)
        return Typed(_float_series(numbers), "number", [], [], [], non_finite=odd)
    if pa.types.is_timestamp(col.type):
        return Typed(pd.Series(col.to_pandas()).astype("datetime64[ns, UTC]"), "datetime", [], [],
                     [])
    counts: dict[str, int] = {}
    if audience:
        value_type = "boolean"
    else:
        value_type, counts = kinds if kinds is not None else sample_kinds(col)
    if value_type == "string":
        out = pd.Series(col.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get))
        return Typed(out, "string", [], [], [], mixed=_mixed(col, counts))
    if value_type == "number":
        try:  # fast path: every value is a number (NaN and infinities included)
            numbers, odd = _split_non_finite(pc.cast(col, pa.float64()))
            return Typed(_float_series(numbers), "number", [], [], [], non_finite=odd)
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
    drift_total = invalid_total = 0
    invalid_dates: list[tuple[int, Any]] = []
    odd: dict[str, np.ndarray] = {}
    n_bool = 0
    if value_type == "boolean":
        fits = pc.is_in(pc.utf8_lower(col), value_set=pa.array(["true", "false"]))
        n_bool = pc.sum(fits).as_py() or 0
    elif value_type == "number":
        fits = pc.or_(pc.match_substring_regex(col, NUMBER_RE),
                      pc.match_substring_regex(col, NON_FINITE_RE))
    else:
        fits = pc.match_substring_regex(col, DATE_RE)
    misfit = pc.and_(pc.is_valid(col), pc.invert(fits))
    if pc.any(misfit).as_py():
        positions = np.flatnonzero(misfit.to_numpy(zero_copy_only=False))
        drift_total = len(positions)
        positions = positions[:LISTED]  # the first ones for findings; the total is kept
        raw = col.take(pa.array(positions)).to_pylist()
        drift = [(i, v, _text_kind(v)) for i, v in zip(positions.tolist(), raw)]
        col = pc.if_else(fits, col, pa.scalar(None, pa.string()))
    if value_type == "boolean":
        arr = pc.equal(pc.utf8_lower(col), "true")
        out = pd.Series(arr.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get))
    elif value_type == "number":
        numbers, odd = _split_non_finite(pc.cast(col, pa.float64()))
        out = _float_series(numbers)
    else:
        text = pd.Series(col.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get))
        out = to_utc(text)
        bad = np.flatnonzero((out.isna() & text.notna()).to_numpy())
        invalid_dates = [(int(i), text.iloc[i]) for i in bad[:LISTED]]
        invalid_total = len(bad)
    return Typed(out, value_type, drift, invalid_dates, [], text_booleans=n_bool,
                 drift_total=drift_total, invalid_dates_total=invalid_total, non_finite=odd)


def _mixed(column: pa.ChunkedArray, counts: dict[str, int]) -> dict | None:
    """For a column read as text: when at least `MIXED_SHARE` of its sample is numbers,
    booleans or dates, where the first such value is and how many the column holds (one
    vectorised pass, only then)."""
    sampled = sum(counts.values())
    other = sampled - counts.get("string", 0)
    if not other or other < MIXED_SHARE * sampled:
        return None
    text = pc.utf8_trim_whitespace(column)
    not_text = pc.or_(pc.or_(pc.match_substring_regex(text, NUMBER_RE),
                             pc.match_substring_regex(text, DATE_RE)),
                      pc.is_in(pc.utf8_lower(text), value_set=pa.array(list(BOOL_STRINGS))))
    not_text = pc.fill_null(not_text, False)
    total = pc.sum(not_text).as_py() or 0
    if not total:
        return None
    first = int(pc.index(not_text, True).as_py())
    return {"sample": counts, "first": first, "total": int(total)}


# -- assembly ----------------------------------------------------------------------------------

def empty_events() -> pd.DataFrame:
    """An events frame with no rows (its columns typed per the contract); a copy of one
    template, which costs far less than building the typed columns again."""
    global _EMPTY_EVENTS
    if _EMPTY_EVENTS is None:
        _EMPTY_EVENTS = _new_empty_events()
    return _EMPTY_EVENTS.copy()


_EMPTY_EVENTS: pd.DataFrame | None = None


def _new_empty_events() -> pd.DataFrame:
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


def identifier_columns(segment_id, user_id, email, anonymous_id, braze_id, index, *,
                       email_lowered: bool = False) -> pd.DataFrame:
    """The five identifier columns of `profiles` (`IDENTIFIER_COLUMNS`), dtype ``string``;
    emails lower-cased. Each may be a Series, a pyarrow array, a list or None (all missing)."""
    def s(v):
        if v is None:  # all missing, built in Arrow: filling a Series with NA costs far more
            v = pa.nulls(len(index), pa.string())
        if isinstance(v, (pa.Array, pa.ChunkedArray)):
            return pd.Series(pd.StringDtype().__from_arrow__(as_text(v)), index=index)
        if isinstance(v, pd.Series):
            return v.astype("string").set_axis(index)
        return pd.Series(v, index=index).astype("string")
    return pd.DataFrame({
        "segment_id": s(segment_id), "user_id": s(user_id),
        "email": s(email) if email_lowered else s(email).str.lower(),
        "anonymous_id": s(anonymous_id), "braze_id": s(braze_id),
    }, index=index, copy=False)


def identifier_frame(segment_id, user_id, email, anonymous_id, braze_id, emails, anonymous_ids,
                     index, *, email_lowered: bool = False) -> pd.DataFrame:
    """The identifier part of `profiles`, dtypes per contract; emails lower-cased.

    Identifiers as for `identifier_columns`. `emails` / `anonymous_ids` may be identifier-list
    columns, one Python sequence per row, or None (then each row's primary value alone)."""
    def lists(v, primary: pd.Series):
        if v is None:
            return id_lists_from_arrow([primary], len(index), index)
        if isinstance(v, pd.Series) and v.dtype == ID_LIST_DTYPE:
            return v.set_axis(index)
        return id_lists(v, index)
    frame = identifier_columns(segment_id, user_id, email, anonymous_id, braze_id, index,
                               email_lowered=email_lowered)
    frame["emails"] = lists(emails, frame["email"])
    frame["anonymous_ids"] = lists(anonymous_ids, frame["anonymous_id"])
    return frame


def row_of(rows: np.ndarray | None, position: int) -> int:
    return int(rows[position]) if rows is not None else position + 1
