"""Readers for Engage CSV downloads: audience CSVs (formatted, unformatted, legacy, hashed) and
computed-trait CSVs (three shapes).

An audience CSV is the member list of ONE audience, so every row is a member. The audience key
comes from the ``computation_key=`` argument, else from the file name (`key_from_path`):
  1. take the name up to its first dot (``dormant_shopper.csv`` → ``dormant_shopper``);
  2. lower-case it and drop a leading ``audience_`` / ``audiences_`` / ``trait_`` / ``traits_``;
  3. repeatedly drop a trailing ``_formatted``, ``_unformatted``, ``_legacy``, ``_hashed``,
     ``_export``, ``_members`` or date stamp (``_2025-03-14``, ``_20250314``, ``_20250314T0800Z``);
  4. what is left must be a snake_case key (``[a-z][a-z0-9_]*``), else pass ``computation_key=``.
So ``audience_dormant_shopper_formatted_2025-03-14.csv`` → ``dormant_shopper``.

Columns of a formatted CSV named after an external id type (``user_id``, ``email``, ``email_1``,
``anonymous_id``…, see `frames.EXTERNAL_ID_TYPES`) are identifiers; every other column except
``key`` and ``external_ids`` is a trait and becomes a trait computation. A column named after the
audience itself, when present, gives the membership value instead of "every row is a member".
The formatted path reads with pyarrow's multithreaded CSV reader. Trait columns whose first
2,000 values (`frames.TYPE_SAMPLE`, taken from the file's first megabyte) are numbers or zoned
ISO-8601 dates are parsed by the reader itself; should any later value not fit, the file is read
again all as text and typed vectorised (see `frames.type_string_column`), which reports the
misfits. Identifiers stay in Arrow until the final DataFrame; ``emails`` / ``anonymous_ids`` are
pyarrow list columns, built on first use of ``export.profiles`` (no stage after the load reads
them). An all-ASCII file (checked while pyarrow parses it) is parsed without pyarrow's UTF-8
check of every value; any other file has its text columns checked after the parse.

Quotes: pyarrow reads a quote that never closes as a value running to the end of the file (rows
swallowed silently). Valid CSV holds quotes in pairs, so every read counts the file's quote
characters (C's memchr, then numpy past the first 1,000: ~0.05 s per GB; on the in-memory path in
the memory-mapped pages pyarrow parses, on another thread while it parses them); an odd count
sends the file through Python's csv module to
find the line where a quote opened and never closed — an error naming that line and column —
or to clear it (a stray quote inside an unquoted value, such as ``5" screen``, is data).
Repeated profile keys are merged (first non-blank value per column) and each merge is a
finding naming its rows, what each column kept and from which row, and what was dropped.
"""
from __future__ import annotations

import csv as _stdcsv
import ctypes
import hashlib
import io
import itertools
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from toolkit import engine
from toolkit.engage.assemble import assemble
from toolkit.engage.frames import (TYPE_SAMPLE, Typed, as_text, derived_segment_id,
                                   has_duplicates, id_column_type, id_lists_from_arrow,
                                   identifier_columns, may_have_upper, may_need_trim,
                                   merge_report, result_or_run, rows_text, sample_kinds,
                                   type_python_values, type_string_column, union_id_lists,
                                   worker_pool)
from toolkit.engage.model import EngageExport, Findings
from toolkit.engage.validation import with_text_checks
from toolkit.engage.store import StoredExport, cache_path, prune_cache, shifted, store_settings
from toolkit.errors import ExportFormatError

__all__ = ["read_csv", "detect_csv_kind", "key_from_path", "match_hashed", "CSV_KINDS", "CsvHeader",
           "read_csv_table"]

CSV_KINDS = ("csv_formatted", "csv_unformatted", "csv_legacy", "csv_hashed", "trait_csv")

_HEX64 = re.compile(r"^[0-9A-Fa-f]{64}$")
_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
_SUFFIX = re.compile(r"(?:[_-](?:formatted|unformatted|legacy|hashed|export|members)"
                     r"|[_-]\d{4}-?\d{2}-?\d{2}(?:t?\d{4,6}z?)?)$")
_PREFIX = re.compile(r"^(?:audiences?|traits?)[_-]")
# Typographic quotes Segment's own sample CSVs put inside JSON columns.
_SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"'})
_MAX_HEADER_BYTES = 1 << 20
# One column per identifier and trait: far more means a wrong (e.g. transposed) file, and typing
# each column costs time, so a hostile file could keep the reader busy for minutes.
_MAX_COLUMNS = 10_000
_JSON_IDS_HINT = 'the cell must hold a JSON object such as {"email": ["a@example.com"]}'


def key_from_path(path: str | os.PathLike) -> str:
    """The audience or trait key a CSV's file name names (rule in the module docstring)."""
    name = Path(path).name.split(".", 1)[0].strip().lower()
    name = _PREFIX.sub("", name)
    previous = None
    while previous != name:
        previous, name = name, _SUFFIX.sub("", name)
    name = name.replace("-", "_")
    if not _KEY.match(name):
        raise ExportFormatError(
            f"cannot tell which audience or trait this CSV holds from its name ({Path(path).name!r})",
            file=str(path), hint="pass computation_key='your_audience_key' to toolkit.load")
    return name


# -- raw reading -------------------------------------------------------------------------------

class CsvHeader:
    """The first line of a CSV file: encoding checked, delimiter sniffed, columns split."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as fh:
                head = fh.read(_MAX_HEADER_BYTES)
        except FileNotFoundError:
            raise ExportFormatError("file not found", file=str(path),
                                    hint="check the path (relative paths start at the working "
                                         "directory)") from None
        except IsADirectoryError:
            raise ExportFormatError("expected a file, found a directory", file=str(path),
            hint="pass the directory to toolkit.load itself to merge its files") from None
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise ExportFormatError("the file is UTF-16 encoded; expected UTF-8", file=str(path),
                                    line=1, hint="re-save the file as UTF-8 (Excel: CSV UTF-8)")
        self.complete = len(head) < _MAX_HEADER_BYTES  # the whole file
        self.bom = head.startswith(b"\xef\xbb\xbf")
        if self.bom:
            head = head[3:]
        self.head = head
        if not head.strip():
            raise ExportFormatError("the file is empty; expected a header line and member rows",
                                    file=str(path), line=1,
                                    hint="download the CSV again from Engage")
        if b"\n" not in head and len(head) >= _MAX_HEADER_BYTES - (3 if self.bom else 0):
            raise ExportFormatError(
                f"the header line is longer than {_MAX_HEADER_BYTES // (1 << 20)} MB (no line end "
                "found): far too many or too long column names for an Engage export",
                file=str(path), line=1,
                hint="check that this is an Engage CSV download and that it has line breaks")
        first = head.split(b"\n", 1)[0].rstrip(b"\r")
        try:
            text = first.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ExportFormatError(
                f"the header is not UTF-8 (byte {first[exc.start]:#04x} at column {exc.start + 1})",
                file=str(path), line=1, column=exc.start + 1,
                hint="re-save the file as UTF-8") from None
        counts = {d: text.count(d) for d in (",", ";", "\t")}
        self.delimiter = max(counts, key=counts.get) if any(counts.values()) else ","
        try:
            self.columns = [c.strip() for c in next(_stdcsv.reader([text],
                                                                   delimiter=self.delimiter))]
        except _stdcsv.Error as exc:
            raise ExportFormatError(f"the header line is not readable CSV ({exc})",
                                    file=str(path), line=1,
                                    hint="check that this is an Engage CSV download") from None
        if len(self.columns) > _MAX_COLUMNS:
            raise ExportFormatError(
                f"too many columns: the header has {len(self.columns):,}, an Engage export has one "
                f"per identifier and trait (at most {_MAX_COLUMNS:,} here)", file=str(path), line=1,
                hint="check that this is an Engage CSV (not a transposed or pivoted file)")
        self.has_rows = b"\n" in head and bool(head.split(b"\n", 1)[1].strip())
        if not [c for c in self.columns if c]:
            raise ExportFormatError("the header line is blank; expected column names",
                                    file=str(path), line=1,
                                    hint="the first line of an Engage CSV names its columns")
        seen = set()
        for i, c in enumerate(self.columns):
            if not c:
                raise ExportFormatError(f"column {i + 1} of the header has no name", file=str(path),
                                        line=1, column=i + 1, hint="give every column a name")
            if c.lower() in seen:
                raise ExportFormatError(f"column name {c!r} appears twice in the header",
                                        file=str(path), line=1, column=i + 1,
                                        hint="rename or drop one of the two columns")
            seen.add(c.lower())

    @property
    def lower(self) -> list[str]:
        return [c.lower() for c in self.columns]


def _convert_options(columns: list[str], types: dict[str, pa.DataType] | None = None,
                     check_utf8: bool = True):
    return pacsv.ConvertOptions(column_types={c: (types or {}).get(c, pa.string())
                                              for c in columns},
                                strings_can_be_null=True, null_values=[""],
                                quoted_strings_can_be_null=True, check_utf8=check_utf8)


def _scan_bytes(data: pa.Buffer, *, ascii: bool = True) -> tuple[bool, bool]:
    """(whether `data` holds an odd number of double quotes, whether every byte is ASCII), in
    one pass of cache-sized blocks: a block's smallest byte read as signed (a non-ASCII one
    is negative; skipped when not ``ascii``), then, while the block is in cache, its quotes.
    Quotes are rare in an Engage export, so they are found one by one with C's ``memchr``
    (memory speed, no copy); past `_QUOTES_FOUND_ONE_BY_ONE` of them numpy counts each block
    at once. No Python loop over the bytes either way."""
    view = np.frombuffer(data, dtype=np.uint8)
    ascii_only, count = ascii, 0
    equal = np.empty(min(len(view), _QUOTE_SCAN_BLOCK), dtype=bool)
    for first in range(0, len(view), _QUOTE_SCAN_BLOCK):
        block = view[first:first + _QUOTE_SCAN_BLOCK]
        if ascii_only and int(block.view(np.int8).min()) < 0:
            ascii_only = False
        if _memchr is not None and count < _QUOTES_FOUND_ONE_BY_ONE:
            at = data.address + first
            end = at + len(block)
            while count < _QUOTES_FOUND_ONE_BY_ONE:
                hit = _memchr(at, 34, end - at)
                if not hit:
                    break
                count += 1
                at = hit + 1
            else:   # many quotes: the rest of the block counted at once
                count += int(np.count_nonzero(view[at - data.address:first + len(block)] == 34))
            continue
        np.equal(block, 34, out=equal[:len(block)])
        count += int(np.count_nonzero(equal[:len(block)]))
    return bool(count & 1), ascii_only


def _check_utf8(header: CsvHeader, table: pa.Table) -> None:
    """The error the parse gives for text that is not UTF-8 (naming its line), for a table
    parsed without checking it (`read_csv_table`). Only text columns can hold such bytes: a
    number or time column parsed them as its type."""
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid:
                raise _explain_arrow_error(header.path, header,
                                           pa.ArrowInvalid("invalid UTF8 data")) from None


def _predicted_types(header: CsvHeader, columns: list[str],
                     kinds: dict[str, tuple[str, dict[str, int]]] | None = None
                     ) -> dict[str, pa.DataType]:
    """Number and datetime columns among `columns`, judged as `type_string_column` would from
    the rows in the header's first megabyte, so that pyarrow's parallel reader parses them
    rather than a later single-threaded pass over their text. Columns whose first
    `TYPE_SAMPLE` values are not all in that megabyte are left out (read as text). `kinds`
    receives every judged column's `sample_kinds`: the same as the whole column's, which
    `type_string_column` then need not sample again."""
    if not columns:
        return {}
    body = header.head if header.complete else header.head[:header.head.rfind(b"\n") + 1]
    try:
        sample = pacsv.read_csv(io.BytesIO(body),
                                read_options=pacsv.ReadOptions(column_names=header.columns,
                                                               skip_rows=1, use_threads=False),
                                convert_options=_convert_options(header.columns),
                                parse_options=pacsv.ParseOptions(delimiter=header.delimiter))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return {}
    types = {}
    for c in columns:
        values = sample.column(c)
        if not header.complete and len(values) - values.null_count < TYPE_SAMPLE:
            continue
        kind, counts = sample_kinds(values)
        if kinds is not None:
            kinds[c] = (kind, counts)
        if kind in _PARSED:
            types[c] = _PARSED[kind]
    return types


_PARSED = {"number": pa.float64(), "datetime": pa.timestamp("ns", tz="UTC")}


class _FileScan:
    """A file mapped into memory, and a thread going over its bytes from the moment this is
    made (`_scan_bytes`: are its quotes paired, is every byte ASCII). Made before a reader's
    serial steps (the header's sampled types), it uses a core that would idle meanwhile."""

    def __init__(self, path: Path) -> None:
        self._source = pa.memory_map(str(path))
        self.data: pa.Buffer | None = self._source.read_buffer()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quote-count")
        self._found = self._pool.submit(_scan_bytes, self.data)

    def result(self) -> tuple[bool, bool]:
        """(an odd number of double quotes, every byte ASCII)."""
        return self._found.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.data = None
        self._source.close()


def read_csv_table(header: CsvHeader, types: dict[str, pa.DataType] | None = None, *,
                   scan: _FileScan | None = None) -> pa.Table:
    """Every column as text, except `types` (parsed when every value fits, else read as text
    too); empty cells are null. A quoted value that is never closed is an error: pyarrow
    would take the rest of the file as that value. `scan`: the file's `_FileScan`, when the
    caller started it (it closes it)."""
    # The file is mapped into memory once: pyarrow parses from the mapping (no copy into
    # its own buffers) while another thread counts its quotes in the same pages — the parse
    # leaves part of the cores idle (its splitting into blocks is serial).
    # The same thread finds whether every byte is ASCII: then every value is valid UTF-8 and
    # the parse skips its own UTF-8 check of every text value (a tenth of its time); else the
    # text columns are checked after it, with the error the parse would have given.
    scan = scan if scan is not None else _FileScan(header.path)
    try:
        table = _parse_table(header, types, scan.data, check_utf8=False)
        odd, ascii_only = scan.result()
    finally:
        scan.close()
    if not ascii_only:
        _check_utf8(header, table)
    if odd:
        # valid CSV holds quotes in pairs: either a stray quote inside a value (read as data,
        # as pyarrow does) or a quote that opens and never closes
        problem = _unclosed_quote(header)
        if problem is not None:
            raise problem
    return table


def _parse_table(header: CsvHeader, types: dict[str, pa.DataType] | None = None,
                 data: pa.Buffer | None = None, *, check_utf8: bool = True) -> pa.Table:
    """`read_csv_table`'s parse, of the file's bytes `data` (else of the file itself);
    ``check_utf8=False``: the text values are not checked to be UTF-8 (see `_check_utf8`)."""
    path = header.path

    def source():
        return path if data is None else pa.BufferReader(data)
    opts = pacsv.ReadOptions(use_threads=True, column_names=header.columns, skip_rows=1,
                             block_size=_block_size(path))
    if types:
        try:
            return pacsv.read_csv(source(), read_options=opts,
                                  convert_options=_convert_options(header.columns, types,
                                                                   check_utf8),
                                  parse_options=pacsv.ParseOptions(delimiter=header.delimiter))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass  # a value that does not fit, or a quoted line break: read as text below
    convert = _convert_options(header.columns, check_utf8=check_utf8)
    try:
        # parallel parse first; a quoted value spanning lines makes it fail, never misread
        return pacsv.read_csv(source(), read_options=opts, convert_options=convert,
                              parse_options=pacsv.ParseOptions(delimiter=header.delimiter))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    try:
        return pacsv.read_csv(source(), read_options=opts, convert_options=convert,
                              parse_options=pacsv.ParseOptions(delimiter=header.delimiter,
                                                               newlines_in_values=True))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _explain_arrow_error(path, header, exc) from None


def _block_size(path: Path) -> int:
    """pyarrow's block size for reading `path` in one go: enough blocks to keep every core
    busy, but as few as that allows, since the checks afterwards walk the columns block by
    block (a Python step per block)."""
    size = path.stat().st_size
    return int(min(max(size // _BLOCKS, _MIN_BLOCK), _MAX_BLOCK))


_BLOCKS = 16
_MIN_BLOCK, _MAX_BLOCK = 1 << 20, 1 << 23
_QUOTE_SCAN_BLOCK = 1 << 20


def _odd_quote_count(path: Path) -> bool:
    """Whether the file holds an odd number of double quotes (see `_odd_quotes`)."""
    with pa.memory_map(str(path)) as source:
        data = source.read_buffer()
        try:
            return _odd_quotes(data)
        finally:
            del data


def _odd_quotes(data: pa.Buffer) -> bool:
    """Whether `data` holds an odd number of double quotes (`_scan_bytes`, no ASCII check)."""
    return _scan_bytes(data, ascii=False)[0]


def _c_memchr():
    """libc's ``memchr`` through ctypes (which releases the GIL while it runs); None where
    there is no C library to load (then numpy counts every quote)."""
    try:
        memchr = ctypes.CDLL(None).memchr
    except (OSError, TypeError, AttributeError):
        return None
    memchr.restype = ctypes.c_void_p
    memchr.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
    return memchr


_memchr = _c_memchr()
_QUOTES_FOUND_ONE_BY_ONE = 1_000


def _unclosed_quote(header: CsvHeader) -> ExportFormatError | None:
    """The error for a quoted value that opens and is never closed, naming the line where it
    opened; None when every quote closes (a stray quote inside a value is data). Streams the
    file through Python's csv module: only run when something is already wrong."""
    path, expected = header.path, len(header.columns)
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = _stdcsv.reader(fh, delimiter=header.delimiter, strict=True)
        start = 1  # physical line where the current record starts
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return None
            except _stdcsv.Error as exc:
                if "unexpected end of data" in str(exc):
                    break
                # another complaint (text after a closing quote: "a"b, a NUL byte…): not an
                # unclosed quote; the reader goes on with the next record
                start = reader.line_num + 1
                continue
            end = reader.line_num
            if end > start and len(row) != expected:
                # a quoted value ran over line ends and took the next rows' fields
                field = next((i for i, v in enumerate(row) if "\n" in v or "\r" in v),
                             len(row) - 1)
                return _unclosed_error(header, start, field, f"line {end}")
            start = end + 1
    # the file ended inside a quoted value: it opened in the record starting at `start`
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        first = next(itertools.islice(fh, start - 1, None), "")
    fields = next(_stdcsv.reader([first], delimiter=header.delimiter), [""])
    return _unclosed_error(header, start, len(fields) - 1, "the end of the file")


def _unclosed_error(header: CsvHeader, line: int, field: int, ran_to: str) -> ExportFormatError:
    column = header.columns[field] if 0 <= field < len(header.columns) else field + 1
    return ExportFormatError(
        f"a quote opened on line {line} (column {column!r}) is never closed: the reader would "
        f"take everything up to {ran_to} as one value", file=str(header.path), line=line,
        column=column,
        hint='close the quote on that line ("…") or remove it; a quote inside a value is '
             'written as two quotes (""); if the file was cut off, download it again')


def _explain_arrow_error(path: Path, header: CsvHeader, exc: Exception) -> ExportFormatError:
    """Turn a pyarrow CSV error into one that names the line and says what was expected."""
    text = str(exc)
    if "UTF8" not in text and "utf8" not in text.lower():
        unclosed = _unclosed_quote(header)
        if unclosed is not None:
            return unclosed
    raw = path.read_bytes()
    if header.bom:
        raw = raw[3:]
    if "UTF8" in text or "utf8" in text.lower():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line = raw.count(b"\n", 0, err.start) + 1
            col = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
            return ExportFormatError(
                f"the file is not UTF-8 (byte {raw[err.start]:#04x})", file=str(path), line=line,
                column=col, hint="re-save the file as UTF-8 (it looks like Latin-1 / Windows-1252)")
    m = re.search(r"Expected (\d+) columns, got (\d+)", text)
    if m:
        expected = int(m.group(1))
        reader = _stdcsv.reader(io.StringIO(raw.decode("utf-8", "replace")),
                                delimiter=header.delimiter)
        for line_no, row in enumerate(reader, start=1):
            if line_no > 1 and len(row) != expected and any(row):
                return ExportFormatError(
                    f"expected {expected} fields like the header, found {len(row)}",
                    file=str(path), line=reader.line_num, column=min(len(row), expected) + 1,
                    hint="a value with the separator inside must be quoted; the file may be cut off")
        return ExportFormatError(f"expected {expected} fields per row like the header, found "
                                 f"{m.group(2)}", file=str(path),
                                 hint="a value with the separator inside must be quoted")
    return ExportFormatError(f"not a readable CSV: {text.splitlines()[0]}", file=str(path),
                             hint="check the file is a CSV downloaded from Engage")


def detect_csv_kind(path: str | os.PathLike) -> str:
    """The CSV shape of `path`, judged from its header and first rows."""
    return _detect(CsvHeader(Path(path)))


def _detect(header: CsvHeader) -> str:
    cols = header.lower
    if "key" in cols and "value" in cols:
        return "trait_csv"
    if "key" in cols and "external_ids" in cols and "traits" in cols:
        return "csv_unformatted"
    if set(cols) == {"key", "external_ids"}:
        return "csv_legacy"
    if len(cols) == 1 and id_column_type(cols[0]):
        with open(header.path, "rb") as fh:
            lines = fh.read(_MAX_HEADER_BYTES).decode("utf-8", "replace").splitlines()[1:21]
        values = [v.strip().strip('"') for v in lines if v.strip()]
        if values and all(_HEX64.match(v) for v in values):
            return "csv_hashed"
    return "csv_formatted"


# -- identifiers from JSON cells ---------------------------------------------------------------

def _json_cell(text: str | None, *, path: Path, line: int, column: str,
               repaired: list[int]) -> Any:
    if text is None or not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        value = json.loads(text.translate(_SMART_QUOTES))
    except json.JSONDecodeError as exc:
        raise ExportFormatError(
            f"invalid JSON in column {column!r}: {exc.msg} at character {exc.pos + 1}",
            file=str(path), line=line, column=column,
            hint=_JSON_IDS_HINT) from None
    repaired.append(line)
    return value


def _ids_from_json(value: Any, *, path: Path, line: int, column: str) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ExportFormatError(f"column {column!r} must hold a JSON object of id type → values, "
                                f"found {type(value).__name__}", file=str(path), line=line,
                                column=column, hint=_JSON_IDS_HINT)
    out: dict[str, list[str]] = {}
    for id_type, values in value.items():
        vals = values if isinstance(values, list) else [values]
        out[str(id_type).lower()] = [str(v) for v in vals if v is not None and str(v) != ""]
    return out


# -- the reader --------------------------------------------------------------------------------

def read_csv(path: str | os.PathLike, kind: str | None = None, *,
             computation_key: str | None = None, computation_id: str | None = None,
             store: bool | None = None) -> EngageExport:
    """Read one Engage audience or computed-trait CSV (shape auto-detected unless `kind`).

    ``store``: keep the profiles on disk and read them in chunks (`toolkit.engage.store`);
    default: for a formatted audience CSV from ``TOOLKIT_STORE_FROM`` bytes."""
    path = Path(path)
    header = CsvHeader(path)
    kind = kind or _detect(header)
    if kind not in CSV_KINDS:
        raise ExportFormatError(f"unknown CSV kind {kind!r}", file=str(path),
                                hint=f"use one of {', '.join(CSV_KINDS)}")
    if not header.has_rows:
        raise ExportFormatError("the file has a header but no rows; expected at least one member",
                                file=str(path), line=2,
                                hint="an empty audience exports no rows: nothing to load")
    key = computation_key or key_from_path(path)
    findings = Findings()
    if header.delimiter != ",":
        findings.add("info", "separator", f"columns are separated by {header.delimiter!r}",
                     fix="nothing to do; the reader handles it")
    if header.bom:
        findings.add("info", "bom", "the file starts with a UTF-8 byte-order mark",
                     fix="nothing to do; the reader handles it")
    if store is None:
        store = kind == "csv_formatted" and path.stat().st_size >= store_settings()["store_from"]
    if store and kind != "csv_formatted":
        raise ExportFormatError(f"only formatted audience CSVs can be kept on disk, not "
                                f"{kind}", file=str(path), hint="load it with store=False")
    # read in one piece: the quotes and bytes are checked from now on, beside the sampling
    scan = None if store else _FileScan(path)
    try:
        types: dict[str, pa.DataType] = {}
        kinds: dict[str, tuple[str, dict[str, int]]] = {}
        if kind == "csv_formatted":
            types = _predicted_types(header, [c for c in header.columns
                                              if c.lower() not in ("key", "external_ids",
                                                                   "traits", "value", key)
                                              and id_column_type(c.lower()) is None], kinds)
        if store:
            return _read_stored(path, header, kind, key, computation_id, findings, types)
        table = read_csv_table(header, types, scan=scan)
    finally:
        if scan is not None:
            scan.close()
    if table.num_rows == 0:
        raise ExportFormatError("the file has a header but no rows", file=str(path), line=2,
        hint="an empty audience exports no rows: nothing to load")
    lower = {c.lower(): c for c in table.column_names}
    if kind == "csv_formatted":  # the whole file: its sampled kinds are the columns'
        return _formatted(path, table, lower, key=key, computation_id=computation_id,
                          findings=findings, kind=kind, kinds=kinds)
    reader = {"csv_unformatted": _unformatted, "csv_legacy": _unformatted,
              "csv_hashed": _hashed, "trait_csv": _trait}[kind]
    return reader(path, table, lower, key=key, computation_id=computation_id, findings=findings,
                  kind=kind)


def _stream(header: CsvHeader, types: dict[str, pa.DataType], rows: int) -> Iterator[pa.Table]:
    """The CSV ``rows`` at a time (text, except ``types``), with bounded memory."""
    opts = pacsv.ReadOptions(use_threads=True, column_names=header.columns, skip_rows=1,
                             block_size=1 << 24)
    reader = pacsv.open_csv(header.path, read_options=opts,
                            convert_options=_convert_options(header.columns, types),
                            parse_options=pacsv.ParseOptions(delimiter=header.delimiter,
                                                             newlines_in_values=True))
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


def _read_stored(path: Path, header: CsvHeader, kind: str, key: str, computation_id: str | None,
                 findings: Findings, types: dict[str, pa.DataType]) -> EngageExport:
    """A formatted audience CSV read chunk by chunk into the export cache (see
    `toolkit.engage.store`): each chunk normalised by the in-memory reader, appended to one
    Parquet file; findings keep the file's row numbers."""
    if _odd_quote_count(path):
        problem = _unclosed_quote(header)
        if problem is not None:
            raise problem
    settings = store_settings()
    target = cache_path(path, kind, key)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    try:
        comps, dtypes, chunk_findings = _write_chunks(path, header, kind, key, computation_id,
                                                      types, settings["chunk_rows"], tmp)
    except _Retype:   # a value did not fit a predicted type: every column as text this time
        comps, dtypes, chunk_findings = _write_chunks(path, header, kind, key, computation_id,
                                                      {}, settings["chunk_rows"], tmp)
    os.replace(tmp, target)
    prune_cache(target)
    seen = set()
    for f in chunk_findings:    # a finding every chunk repeats word for word is said once
        ident = (f.severity, f.code, f.message, f.row, f.column, f.segment_id)
        if ident not in seen:
            seen.add(ident)
            findings.extend([f])
    with engine.connect() as db:
        repeated = db.execute("SELECT count(*) FROM (SELECT segment_id FROM read_parquet(?) "
                              "GROUP BY segment_id HAVING count(*) > 1)",
                              [str(target)]).fetchall()[0][0]
    if repeated:
        findings.add("warning", "duplicate_profile",
                     f"{repeated:,} profile(s) appear in more than one chunk of "
                     f"{settings['chunk_rows']:,} rows; they are kept as separate rows (the last "
                     "row wins what Braze receives)", column="key",
                     fix="download the export again; an Engage CSV lists each profile once")
    return StoredExport(target, comps, rows=pq.ParquetFile(target).metadata.num_rows,
                        dtypes=dtypes, snapshot_at=_snapshot(path),
                        source=_source(path, kind), findings=findings)


def _write_chunks(path: Path, header: CsvHeader, kind: str, key: str, computation_id: str | None,
                  types: dict, chunk_rows: int, out: Path):
    """Normalise the CSV chunk by chunk into the Parquet file ``out``; returns the
    computations, the profile dtypes and the chunks' findings (file row numbers)."""
    schema = comps = dtypes = writer = None
    rows = 0
    chunk_findings: list = []
    bar = _progress(path, "load")
    # a chunk is compressed and written on another thread while the next one is normalised
    # (both release the GIL); at most one chunk waits, so memory stays bounded
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
    pending = None
    try:
        for table in _typed_chunks(header, _stream(header, types, chunk_rows), types):
            part_findings = Findings()
            lower = {c.lower(): c for c in table.column_names}
            part = _formatted(path, table, lower, key=key, computation_id=computation_id,
                              findings=part_findings, kind=kind)
            chunk_findings += shifted(part_findings, rows)
            frame = part.profiles
            if schema is None:
                data = pa.Table.from_pandas(frame, preserve_index=False)
                schema, comps, dtypes = data.schema, part.computations, dict(frame.dtypes)
                writer = pq.ParquetWriter(out, schema, compression="zstd")
            else:
                _same_shape(path, rows, comps, part.computations, dtypes, frame)
                data = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
            if pending is not None:
                pending.result()
            pending = pool.submit(writer.write_table, data,
                                  row_group_size=min(len(frame), 131_072))
            del frame, part, data
            engine.release_memory()
            rows += table.num_rows
            bar.update(table.num_rows)
        if pending is not None:
            pending.result()
    finally:
        bar.close()
        pool.shutdown(wait=True)
        if writer is not None:
            writer.close()
    if schema is None:
        raise ExportFormatError("the file has a header but no rows", file=str(path), line=2,
                                hint="an empty audience exports no rows: nothing to load")
    return comps, dtypes, chunk_findings


def _typed_chunks(header: CsvHeader, chunks: Iterator[pa.Table], types: dict):
    """``chunks``, or — when a value does not fit a column's predicted type — the whole file
    again as text from the start (the normalisation then types each chunk)."""
    try:
        yield from chunks
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        if not types:
            raise _explain_arrow_error(header.path, header, exc) from None
        raise _Retype() from None


class _Retype(Exception):
    """A predicted column type did not fit: read again as text."""


def _same_shape(path: Path, start: int, comps: pd.DataFrame, new: pd.DataFrame,
                dtypes: dict, frame: pd.DataFrame) -> None:
    """A later chunk must type every computation as the first did."""
    for col, dtype in dtypes.items():
        if col in frame and str(frame[col].dtype) != str(dtype):
            raise ExportFormatError(
                f"column {col!r} reads as {frame[col].dtype} from row {start + 2:,}, but as "
                f"{dtype} before it", file=str(path), line=start + 2, column=col,
                hint="make the column's values one type, or load the file with store=False "
                     "on a machine with the memory for it")
    if list(new["key"]) != list(comps["key"]):
        raise ExportFormatError("the columns differ between parts of the file",
                                file=str(path), line=start + 2)


def _progress(path: Path, what: str):
    from tqdm.auto import tqdm  # lazy: tqdm.auto imports IPython when it is installed

    return tqdm(unit="profile", desc=f"{what}: {path.name}", leave=False)


def _snapshot(path: Path) -> pd.Timestamp:
    return pd.Timestamp(os.path.getmtime(path), unit="s", tz="UTC")


def _source(path: Path, kind: str) -> str:
    return f"{path} ({kind})"


class _Ids:
    """Identifier columns gathered from a CSV: per id type, pyarrow text columns in order."""

    def __init__(self, n: int):
        self.n = n
        self.columns: dict[str, list[pa.ChunkedArray]] = {}

    def add(self, id_type: str, values) -> None:
        if not isinstance(values, pa.ChunkedArray):
            values = pa.chunked_array([pa.array(values, type=pa.string())])
        values = as_text(values)
        # the byte test is far cheaper than trimming every value; empty cells are already null
        # (the CSV reader's null_values, and _ids_from_json), so only trimming can make one
        if may_need_trim(values):
            values = pc.utf8_trim_whitespace(values)
            if pc.any(pc.equal(values, "")).as_py():  # whitespace-only cells
                values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
        if id_type == "email" and may_have_upper(values):
            values = pc.utf8_lower(values)
        self.columns.setdefault(id_type, []).append(values)

    def primary(self, id_type: str) -> pa.ChunkedArray | None:
        """The first non-missing value per row (None when the export has no such column)."""
        cols = self.columns.get(id_type)
        if not cols:
            return None
        first = cols[0]
        if first.null_count == 0 or not any(
                pc.any(pc.and_(pc.is_null(first), pc.is_valid(c))).as_py() for c in cols[1:]):
            return first  # no later column fills a gap: skip copying every value
        return pc.coalesce(*cols)

    def all(self, id_type: str) -> pd.Series:
        return id_lists_from_arrow(self.columns.get(id_type, []), self.n)


def _id_columns(table: pa.Table, lower: dict[str, str], ids: _Ids, findings: Findings) -> list[str]:
    """Collect identifier columns into `ids`; return the trait columns."""
    traits = []
    indexed: list[tuple[str, int, str]] = []
    for low, original in lower.items():
        if low in ("key", "external_ids", "traits", "value"):
            continue
        id_type = id_column_type(low)
        if id_type is None:
            traits.append(original)
        else:
            indexed.append((id_type[0], id_type[1], original))
    ignored = []
    for id_type, _, original in sorted(indexed, key=lambda t: (t[0], t[1])):
        if id_type in ("user_id", "email", "anonymous_id", "braze_id"):
            ids.add(id_type, table.column(original))
        else:
            ignored.append(original)
    if ignored:
        findings.add("info", "ignored_identifier",
                     f"identifier columns {', '.join(ignored)} are not used by Braze and were "
                     "left out", fix="nothing to do")
    return traits


def _finish(path: Path, kind: str, key: str, seg: pd.Series | None, ids: _Ids,
            typed: dict[str, Typed | Callable[[], Typed]], comps: list[dict],
            findings: Findings, *, repeats_expected: bool = False) -> EngageExport:
    """Collapse repeated profiles, build identifiers, assemble and validate. `seg`: the profile
    key column (pyarrow or pandas text, or its `_Keys`), None to derive keys from the
    identifiers. A `typed`
    value may be a callable returning the `Typed`, run alongside the identifier work."""
    if seg is not None and not isinstance(seg, _Keys):
        seg = _Keys(path, seg)
    seg_repeats = seg.repeats if seg is not None else None
    seg = seg.values if seg is not None else None
    user_id, email = ids.primary("user_id"), ids.primary("email")
    anonymous_id, braze_id = ids.primary("anonymous_id"), ids.primary("braze_id")
    pool = worker_pool()
    # independent million-row passes spread over the cores (pyarrow and numpy release the
    # GIL), submitted in the order their results are needed: the duplicate checks by the
    # collapse (`_Keys`) and the validation, the typed columns (with their text checks) by the
    # validation. The identifier lists are built on first use of the profiles (merged
    # profiles need them now): no stage after the load reads them
    users_repeat = pool.submit(has_duplicates, user_id) if user_id is not None else None
    pending = {k: pool.submit(t) for k, t in typed.items() if callable(t)}
    # meanwhile this thread builds the frame, then types the columns no worker has started
    # (the last submitted first, while the workers take the first)
    frame = identifier_columns(seg, user_id, email, anonymous_id, braze_id,
                               pd.RangeIndex(ids.n), email_lowered=True)
    done = {k: result_or_run(pending[k], typed[k]) for k in reversed(pending)}
    typed = {k: done.get(k, t) for k, t in typed.items()}
    if seg is None:
        seg = as_text(derived_segment_id(frame["user_id"], frame["email"],
                                         frame["anonymous_id"]))
        frame["segment_id"] = pd.StringDtype().__from_arrow__(seg)
        repeats = has_duplicates(seg)
    else:
        repeats = seg_repeats.result()

    def id_lists() -> dict[str, pd.Series]:
        return {"emails": ids.all("email"), "anonymous_ids": ids.all("anonymous_id")}
    user_check = users_repeat.result if users_repeat is not None else False
    if repeats:
        frame = frame.assign(**id_lists())
        frame, typed, rows = _collapse(frame, typed, np.arange(1, ids.n + 1), findings, path,
                                       repeats_expected)
        return assemble(frame, typed, comps, events=None, snapshot_at=_snapshot(path),
                        source=_source(path, kind), findings=findings, rows=rows,
                        duplicate_user_ids=None)  # merged profiles: check their user_ids
    # rows=None: position i is the file's data row i + 1, as findings number them
    return assemble(frame, typed, comps, events=None, snapshot_at=_snapshot(path),
                    source=_source(path, kind), findings=findings, rows=None,
                    duplicate_user_ids=user_check, id_list_columns=id_lists)


class _Keys:
    """The profile key column, checked (trimmed; none missing), and whether a key repeats —
    found on a worker from the moment this is made, so a reader makes it first."""

    def __init__(self, path: Path, seg) -> None:
        seg = as_text(seg)
        trimmed = may_need_trim(seg)
        if trimmed:
            seg = pc.utf8_trim_whitespace(seg)
        # empty cells read as null: only trimming can leave an empty key
        if seg.null_count or trimmed and pc.any(pc.equal(seg, "")).as_py():
            missing = pc.fill_null(pc.equal(seg, ""), True)
            raise ExportFormatError(
                "a row has no profile key", file=str(path),
                line=int(np.flatnonzero(missing.to_numpy(zero_copy_only=False))[0]) + 2,
                column="key", hint="every row of an Engage CSV starts with the profile key (use_…)")
        self.values = seg
        self.repeats = worker_pool().submit(has_duplicates, seg)


def _collapse(frame: pd.DataFrame, typed: dict[str, Typed], rows: np.ndarray, findings: Findings,
              path: Path, repeats_expected: bool):
    """Merge rows of the same profile: first non-blank value per column, union of
    multi-valued ids; a finding per merged profile names its rows, the value kept per column
    and the values dropped (`repeats_expected`, trait CSV shape c: only when they disagree)."""
    lists = ("emails", "anonymous_ids")
    work = frame.drop(columns=list(lists))
    for k, t in typed.items():
        work[f"__{k}"] = t.values.reset_index(drop=True)
    work["__row"] = rows
    group = work.groupby("segment_id", sort=False)
    codes = group.ngroup().to_numpy()  # original position -> merged position
    compared = {c: frame[c] for c in ("user_id", "braze_id") if not repeats_expected}
    compared.update({k: t.values for k, t in typed.items()})
    report = merge_report(compared, frame["segment_id"], rows, first_non_blank=True,
                          only_conflicts=repeats_expected, limit=200, key_codes=codes)
    fix = ("download the export again; an Engage CSV lists each profile once" if not
           repeats_expected else "the rows of one profile should carry the same value: "
                                 "download the export again")
    for sid, its_rows, conflicts in report.described:
        what = ("; ".join(conflicts) if conflicts else "the rows agree")
        findings.add("warning", "duplicate_profile",
                     f"profile {sid} appears on {rows_text(its_rows)}; merged into one, each "
                     f"column keeping its first non-blank value: {what}", row=its_rows[0],
                     column="key", segment_id=sid, fix=fix)
    shown = report.conflicting if repeats_expected else report.repeated
    if shown > len(report.described):
        findings.add("warning", "duplicate_profile",
                     f"{report.repeated:,} profiles appear on several rows, {report.conflicting:,}"
                     f" of them with values that disagree; merged, each column keeping its first "
                     f"non-blank value (the first {len(report.described)} listed)",
                     column="key", fix=fix)
    merged = group.first().reset_index()
    for col in lists:
        merged[col] = union_id_lists(frame[col], codes, len(merged))
    new_typed = {k: t.remapped(merged[f"__{k}"].astype(t.values.dtype), codes)
                 for k, t in typed.items()}
    out = merged[list(frame.columns)]
    for c in ("segment_id", "user_id", "email", "anonymous_id", "braze_id"):
        out[c] = out[c].astype("string")
    return out, new_typed, merged["__row"].to_numpy()


def _audience_comp(key: str, computation_id: str | None) -> dict:
    return {"key": key, "kind": "audience", "computation_id": computation_id,
            "value_type": "boolean"}


def _formatted(path, table, lower, *, key, computation_id, findings, kind,
               kinds: dict | None = None) -> EngageExport:
    n = table.num_rows
    # the keys first: whether one repeats is found while this thread reads the identifiers
    # (after the JSON identifiers, when there are some: their errors come first)
    seg = table.column(lower["key"]) if "key" in lower else None
    if seg is not None and "external_ids" not in lower:
        seg = _Keys(path, seg)
    ids = _Ids(n)
    traits = _id_columns(table, lower, ids, findings)
    if "external_ids" in lower:  # legacy formatted: JSON column next to the indexed columns
        _json_ids_into(path, table.column(lower["external_ids"]).to_pylist(), "external_ids", ids,
                       findings)
    if "key" not in lower and not ids.columns:
        raise ExportFormatError(
            "no identifier column: expected 'key' or one of user_id, email, anonymous_id, braze_id",
            file=str(path), line=1, hint="include External IDs when you download the CSV")
    typed: dict[str, Typed] = {}
    comps = []
    member = None
    for col in traits:  # typed later, in parallel with the identifiers (see _finish)
        t = partial(_typed_text, table.column(col), audience=col.lower() == key,
                    kinds=(kinds or {}).get(col))
        if col.lower() == key:
            member = t
            continue
        typed[col] = t
        comps.append({"key": col, "kind": "trait"})
    if member is None:
        member = Typed(pd.Series(np.ones(n, dtype=bool), dtype="boolean"), "boolean", [], [], [])
    typed = {key: member, **typed}
    comps.insert(0, _audience_comp(key, computation_id))
    return _finish(path, kind, key, seg, ids, typed, comps, findings)


def _typed_text(column: pa.ChunkedArray, *, audience: bool = False,
                kinds: tuple[str, dict[str, int]] | None = None) -> Typed:
    """A CSV column typed (`kinds`: its `sample_kinds` when already known), with the
    validation's text checks when it stays text."""
    return with_text_checks(type_string_column(column, audience=audience, kinds=kinds), column)


def _json_ids_into(path: Path, cells: list, column: str, ids: _Ids, findings: Findings) -> None:
    repaired: list[int] = []
    per_type: dict[str, list[list[str]]] = {}
    n = len(cells)
    for i, cell in enumerate(cells):
        line = i + 2
        parsed = _ids_from_json(_json_cell(cell, path=path, line=line, column=column,
                                           repaired=repaired),
                                path=path, line=line, column=column)
        for id_type, values in parsed.items():
            if id_type not in per_type:
                per_type[id_type] = [[] for _ in range(n)]
            per_type[id_type][i] = values
    for id_type in ("user_id", "email", "anonymous_id", "braze_id"):
        lists = per_type.get(id_type)
        if not lists:
            continue
        width = max(len(v) for v in lists)
        for j in range(width):
            ids.add(id_type, [v[j] if j < len(v) else None for v in lists])
    _note_repairs(findings, repaired, column)


def _note_repairs(findings: Findings, repaired: list[int], column: str) -> None:
    if repaired:
        findings.add("info", "repaired_quotes",
                     f"typographic quotes replaced in {len(repaired):,} JSON cells of {column!r} "
                     f"(first at line {repaired[0]})", row=repaired[0] - 1, column=column,
                     fix="nothing to do; re-export to get plain JSON")


def _unformatted(path, table, lower, *, key, computation_id, findings, kind) -> EngageExport:
    if "key" not in lower or "external_ids" not in lower:
        raise ExportFormatError("expected columns 'key' and 'external_ids'", file=str(path), line=1,
        hint="pass kind='csv_formatted' if this is a formatted CSV")
    n = table.num_rows
    ids = _Ids(n)
    _json_ids_into(path, table.column(lower["external_ids"]).to_pylist(), "external_ids", ids,
                   findings)
    typed: dict[str, Typed] = {}
    comps = [_audience_comp(key, computation_id)]
    member_values = None
    if "traits" in lower:
        repaired: list[int] = []
        trait_rows: list[dict] = []
        for i, cell in enumerate(table.column(lower["traits"]).to_pylist()):
            value = _json_cell(cell, path=path, line=i + 2, column="traits",
                               repaired=repaired)
            if value is not None and not isinstance(value, dict):
                raise ExportFormatError(f"column 'traits' must hold a JSON object, found "
                                        f"{type(value).__name__}", file=str(path), line=i + 2,
                                        column="traits",
                                        hint='the cell must hold a JSON object such as '
                                             '{"vip_customer": true}')
            trait_rows.append(value or {})
        _note_repairs(findings, repaired, "traits")
        names = list(dict.fromkeys(k for row in trait_rows for k in row))
        for name in names:
            values = pd.Series([row.get(name) for row in trait_rows], dtype=object)
            if name == key:
                member_values = type_python_values(values, audience=True)
                continue
            typed[name] = type_python_values(values)
            comps.append({"key": name, "kind": "trait"})
    if member_values is None:
        member_values = Typed(pd.Series(np.ones(n, dtype=bool), dtype="boolean"), "boolean", [], [],
                              [])
    typed = {key: member_values, **typed}
    seg = table.column(lower["key"])
    return _finish(path, kind, key, seg, ids, typed, comps, findings)


def _hashed(path, table, lower, *, key, computation_id, findings, kind) -> EngageExport:
    (column,) = table.column_names
    id_type = (id_column_type(column) or (column.lower(), 0))[0]
    values = pd.Series(table.column(column).to_pandas(
        types_mapper={pa.string(): pd.StringDtype()}.get)).str.strip()
    bad = ~values.fillna("").str.fullmatch(r"[0-9A-Fa-f]{64}")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ExportFormatError(
            f"expected a SHA-256 digest (64 hex characters), found {str(values.iloc[i])[:40]!r}",
            file=str(path), line=i + 2, column=column,
            hint="a single-column hashed CSV holds one digest per row")
    seg = "sha256:" + values.str.upper()
    ids = _Ids(len(values))
    typed = {key: Typed(pd.Series(np.ones(len(values), dtype=bool), dtype="boolean"), "boolean",
                        [], [], [])}
    findings.add("info", "hashed_export", f"identifiers are SHA-256 hashes of {id_type}",
                 column=column, fix="use toolkit.engage.csv.match_hashed(export, clear_export)")
    return _finish(path, kind, key, seg, ids, typed, [_audience_comp(key, computation_id)],
                   findings)


def _trait(path, table, lower, *, key, computation_id, findings, kind) -> EngageExport:
    n = table.num_rows
    ids = _Ids(n)
    _id_columns(table, lower, ids, findings)
    if "external_ids" in lower:
        _json_ids_into(path, table.column(lower["external_ids"]).to_pylist(), "external_ids", ids,
                       findings)
    typed = {key: type_string_column(table.column(lower["value"]))}
    comps = [{"key": key, "kind": "trait", "computation_id": computation_id}]
    seg = table.column(lower["key"])
    # shape c repeats a profile's row once per extra identifier value: expected, not a finding
    return _finish(path, kind, key, seg, ids, typed, comps, findings, repeats_expected=True)


def sha256_upper(value: str) -> str:
    """Engage's hashing of an identifier: SHA-256 of the value, upper-case hex."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest().upper()


def match_hashed(hashed: EngageExport, known: EngageExport) -> EngageExport:
    """Resolve a hashed audience against a clear-text export: matched profiles take the known
    profile's identifiers (and become Braze-usable); unmatched ones stay keyed by their hash."""
    lookup: dict[str, int] = {}
    kp = known.profiles
    emails = pa.array(kp["emails"].array)
    parents = pc.list_parent_indices(emails).to_numpy().tolist()
    for i, v in zip(parents, pc.list_flatten(emails).to_pylist()):
        lookup.setdefault(sha256_upper(v.strip().lower()), i)
    for i, v in enumerate(kp["user_id"]):
        if v is not pd.NA:
            lookup.setdefault(sha256_upper(v), i)
    p = hashed.profiles.copy()
    digests = p["segment_id"].str.removeprefix("sha256:")
    matches = [lookup.get(d) for d in digests]
    source = np.array([-1 if m is None else m for m in matches], dtype=np.int64)
    hit = source >= 0
    for col in ("segment_id", "user_id", "email", "anonymous_id", "braze_id", "emails",
                "anonymous_ids") if hit.any() else ():
        known_values = kp[col].take(np.where(hit, source, 0)).set_axis(p.index)
        p[col] = known_values.where(hit, p[col])
    findings = Findings(f for f in hashed.findings if f.code != "hashed_identifier")
    matched = sum(m is not None for m in matches)
    findings.add("info", "hashed_matched", f"{matched:,} of {len(p):,} hashes matched a known "
                 "profile", column="segment_id")
    unmatched = len(p) - matched
    if unmatched:
        findings.add("error", "hashed_identifier",
                     f"{unmatched:,} profiles are known only by a SHA-256 hash; Braze cannot use "
                     "a hash as an identifier", column="segment_id",
                     fix="these hashes matched no profile of the clear-text export")
    return EngageExport(profiles=p, computations=hashed.computations, events=hashed.events,
                        snapshot_at=hashed.snapshot_at, source=hashed.source + " matched",
                        findings=findings)
