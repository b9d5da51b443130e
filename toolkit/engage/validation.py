"""Validation of a loaded Engage export against what Braze will accept, recorded as findings.

Checks (finding codes):
  anonymous_only     error    profile has only anonymous ids: no user_id, braze_id or email
  email_only         info     profile has an email but no user_id / braze_id (needs email opt-in)
  hashed_identifier  error    profile known only by a hashed id (single-column hashed CSV)
  duplicate_profile  warning  the same Segment profile appears on several rows (rows merged; the
                              finding names the rows, the value each column kept and from which
                              row, and the values dropped)
  duplicate_user_id  warning  several Segment profiles share one user_id (one Braze user)
  type_drift         warning  a value's type differs from its column's (Braze locks the type):
                              text in a number column, a boolean neither true nor false…
  non_finite_number  warning  NaN, +inf or -inf where a number is expected (one message per kind)
  mixed_types        warning  a column read as text although many of its values are numbers,
                              booleans or dates (they are sent as text too)
  invalid_date       warning  a date value that does not parse as ISO-8601
  string_boolean     warning  "true"/"false" as text in a JSON value (not a membership)
                     info     a CSV column of "true"/"false" read as booleans
  long_string        warning  a string value over 255 characters (Braze truncates it)
  formula_text       warning  text a spreadsheet would run as a formula (=, +, -, @ first; not a
                              signed number or a phone number), in a value or a column name
  invalid_key        error    a computation key over 255 characters or starting with "$"

What is sent for a value that does not fit its column — the column keeps its type either way
(a number column stays Float64):
  * text in a number column, a boolean neither true nor false, an unreadable date, NaN: it is
    *read as blank*, exactly like an empty cell (pd.NA in `profiles`; `Mapping.attribute_values`
    sends nothing for it, and a sync treats it as an empty cell);
  * +inf / -inf: *left out* — kept as the number it is, which Braze cannot store, so nothing is
    sent for it and the plan keeps whatever Braze already holds (`braze.payload_rules.convert` marks
    it invalid).
Each finding's message says which. Formula-like text is data: it is sent verbatim.
Per-row findings are capped at `MAX_ROW_FINDINGS` per code and column; past the cap one summary
finding gives the total, so a million-row export stays readable and fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from toolkit.braze.limits import LIMITS
from toolkit.engage.frames import (LISTED, as_text, count_prefixed, formula_positions,
                                   has_duplicates, is_formula_like, long_values, row_of)

if TYPE_CHECKING:
    from toolkit.engage.frames import Typed
    from toolkit.engage.model import EngageExport, Findings

__all__ = ["check", "MAX_ROW_FINDINGS", "row_findings"]

MAX_ROW_FINDINGS = LISTED  # readers keep the first LISTED odd values of each kind, and a total


def row_findings(findings: "Findings", severity: str, code: str, items: list[tuple[int, str]], *,
                 column: str | None, fix: str, summary: str,
                 segment_ids: pd.Series | None = None, rows: np.ndarray | None = None,
                 total: int | None = None) -> None:
    """Record one finding per (position, message), capped, plus a summary past the cap.
    `total`: how many rows are concerned when `items` lists only the first of them."""
    total = len(items) if total is None else total
    listed = items[:MAX_ROW_FINDINGS]
    # one value at a time: a take over a many-chunk Arrow column first joins its chunks
    sids = ([segment_ids.iat[int(position)] for position, _ in listed]
            if segment_ids is not None else [None] * len(listed))
    for (position, message), sid in zip(listed, sids):
        # rows=False: positions do not map to one file's rows (a merged export)
        row = None if rows is False else int(rows[position]) if rows is not None else position + 1
        findings.add(severity, code, message, row=row, column=column, fix=fix,
                     segment_id=None if sid is None or sid is pd.NA else str(sid))
    if total > MAX_ROW_FINDINGS:
        findings.add(severity, code,
                     f"{summary}: {total:,} rows in all, the first {MAX_ROW_FINDINGS} listed",
                     column=column, fix=fix)


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def check(export: "EngageExport", typed: dict[str, "Typed"], *, rows: np.ndarray | None = None,
          duplicate_user_ids: bool | Callable[[], bool] | None = None) -> None:
    """Run every check on `export`, appending to `export.findings`. `duplicate_user_ids`:
    whether some user_id repeats, when the caller has already found out, or a callable asked
    when needed (None: look). Reads the identifier and computation columns only, never the
    ``emails`` / ``anonymous_ids`` lists: readers may still be building those meanwhile."""
    p = export.profiles
    f = export.findings
    sid = p["segment_id"]

    for key in export.computations["key"]:
        if len(key) > LIMITS.name_length or key.startswith("$"):
            f.add("error", "invalid_key",
                  f"key {key[:40]!r}{'…' if len(key) > 40 else ''} is not a valid Braze attribute "
                  f"name ({'over 255 characters' if len(key) > LIMITS.name_length else 'starts with $'})",
                  column=key[:LIMITS.name_length], fix="rename the attribute in the mapping (Rule.attribute)")

    present = {c: _present(p[c]) for c in ("user_id", "braze_id", "email", "anonymous_id")}
    unusable = ~(present["user_id"] | present["braze_id"])
    anonymous = unusable & ~present["email"] & present["anonymous_id"]
    email_only = unusable & present["email"]
    anonymous_at = np.flatnonzero(anonymous)
    row_findings(f, "error", "anonymous_only",
                 [(i, "profile has only anonymous ids; Braze cannot address it")
                  for i in anonymous_at[:MAX_ROW_FINDINGS]], total=len(anonymous_at),
                 column="anonymous_id", summary="anonymous-only profiles", segment_ids=sid, rows=rows,
                 fix="identify the user in Segment (userId) or send a braze_id / user alias")
    if email_only.any():
        f.add("info", "email_only",
              f"{int(email_only.sum()):,} profiles have an email but no user_id or braze_id",
              column="email", fix="sync them by email (opt in) or identify them with a userId")
    hashed_count = count_prefixed(as_text(sid), "sha256:")
    if hashed_count:
        f.add("error", "hashed_identifier",
              f"{hashed_count:,} profiles are known only by a SHA-256 hash; Braze cannot use "
              "a hash as an identifier", column="segment_id",
              fix="match the hashes against a clear-text export (csv.match_hashed) or download "
                  "the audience with raw identifiers")

    if callable(duplicate_user_ids):
        duplicate_user_ids = duplicate_user_ids()
    if duplicate_user_ids is None:
        duplicate_user_ids = has_duplicates(p["user_id"])
    if duplicate_user_ids:
        dup_user = p["user_id"].notna() & p["user_id"].duplicated(keep=False)
        groups = p.loc[dup_user].groupby("user_id", sort=False)["segment_id"]
        items = []
        for user_id, members in groups:
            first = int(members.index[0])
            items.append((first, f"user_id {user_id!r} is shared by profiles "
                                 f"{', '.join(members.astype(str).head(5))}"))
        row_findings(f, "warning", "duplicate_user_id", items, column="user_id",
                     summary="user_ids shared by several profiles", segment_ids=sid, rows=rows,
                     fix="these profiles will write the same Braze user; merge them in Segment")

    kinds = dict(zip(export.computations["key"], export.computations["kind"]))
    for key in export.computations["key"]:
        if is_formula_like(key):
            f.add("warning", "formula_text",
                  f"the column name {key[:60]!r} starts like a spreadsheet formula; it is used as "
                  "it is (a Braze attribute or property name), but a spreadsheet opening a CSV "
                  "of it would run it", column=key[:LIMITS.name_length], fix=_FORMULA_FIX)
    all_rows = rows
    for key, t in typed.items():
        rows = t.rows if t.rows is not None else all_rows
        what = kinds.get(key, "trait")
        if t.drift:
            row_findings(f, "warning", "type_drift",
                         [(i, _drift_message(what, key, t.value_type, v, k))
                          for i, v, k in t.drift],
                         total=t.drift_total,
                         column=key, segment_ids=sid, rows=rows, summary=f"values of {key!r} "
                         f"that are not {t.value_type} ({READ_AS_BLANK})",
                         fix=f"send {key!r} as {t.value_type} everywhere: Braze locks an attribute's "
                             "type on the first value it receives")
        for kind, positions in t.non_finite.items():
            done = READ_AS_BLANK if kind == "NaN" else LEFT_OUT
            message = (f"{key!r} holds {_NON_FINITE_LABEL[kind]}, which Braze cannot store (JSON "
                       f"has no NaN or infinity): {done}")
            row_findings(f, "warning", "non_finite_number",
                         [(int(i), message) for i in positions[:MAX_ROW_FINDINGS]],
                         total=len(positions), column=key, segment_ids=sid, rows=rows,
                         summary=f"{kind} values in {key!r} ({done})",
                         fix="write numbers as plain decimals (12.5) and leave the cell empty "
                             "when there is no value")
        if t.mixed is not None:
            sample = t.mixed["sample"]
            others = [k for k in ("number", "boolean", "datetime") if sample.get(k)]
            counted = sum(sample.get(k, 0) for k in others)
            f.add("warning", "mixed_types",
                  f"{key!r} mixes text with {' and '.join(_KIND_PLURAL[k] for k in others)}: "
                  f"{counted:,} of its {sum(sample.values()):,} first values are "
                  f"{' or '.join(_KIND_PLURAL[k] for k in others)} ({t.mixed['total']:,} such "
                  f"values in all). The column is read as text, so they are sent as text too, "
                  f"and Braze will store {key!r} as a string", column=key,
                  row=row_of(rows, t.mixed["first"]), segment_id=_sid(sid, t.mixed["first"]),
                  fix=f"make {key!r} produce one type: numbers only (blank when unknown), or "
                      "text only")
        if t.invalid_dates:
            row_findings(f, "warning", "invalid_date",
                         [(i, f"{key!r} value {_short(v)} is not a valid ISO-8601 date; "
                              f"{READ_AS_BLANK}")
                          for i, v in t.invalid_dates], total=t.invalid_dates_total,
                         column=key, segment_ids=sid, rows=rows, summary=f"invalid dates in {key!r}",
                         fix="write dates as ISO-8601 (2025-03-14T08:02:11Z)")
        if t.string_booleans:
            row_findings(f, "warning", "string_boolean",
                         [(i, f"{key!r} is the string {_short(v)}, not a boolean; it is not counted "
                              "as a membership") for i, v in t.string_booleans],
                         column=key, segment_ids=sid, rows=rows,
                         summary=f"string booleans in {key!r}",
                         fix="send real booleans (Journeys v1 sends strings; map them explicitly)")
        if t.text_booleans:
            f.add("info", "string_boolean",
                  f"column {key!r} holds \"true\"/\"false\" text ({t.text_booleans:,} cells), read "
                  "as booleans", column=key,
                  fix="nothing to do for a CSV; Braze receives real booleans")
        if t.value_type == "string" and key in p:
            long, chars, formulas = (t.text_checks if t.text_checks is not None
                                     else text_checks(as_text(p[key])))
            if len(long):
                row_findings(f, "warning", "long_string",
                             [(int(i), f"{key!r} value is {int(n):,} characters; Braze keeps "
                                       f"{LIMITS.string_length}")
                              for i, n in zip(long[:MAX_ROW_FINDINGS], chars)], total=len(long),
                             column=key, segment_ids=sid, rows=rows,
                             summary=f"strings over {LIMITS.string_length} characters in {key!r}",
                             fix=f"shorten the value to {LIMITS.string_length} characters or fewer")
            if len(formulas):
                message = (f"{key!r} value starts like a spreadsheet formula (=, +, -, @): it is "
                           "sent to Braze as text, exactly as it is, but a spreadsheet opening a "
                           "CSV of it would run it")
                row_findings(f, "warning", "formula_text",
                             [(int(i), message) for i in formulas[:MAX_ROW_FINDINGS]],
                             total=len(formulas), column=key, segment_ids=sid, rows=rows,
                             summary=f"formula-like values in {key!r}", fix=_FORMULA_FIX)


def _present(values: pd.Series) -> np.ndarray:
    """Which values are not missing, read from the Arrow validity (no pass when none or all
    are missing)."""
    if not isinstance(values.array, pd.arrays.ArrowStringArray):
        return values.notna().to_numpy()
    arr = as_text(values)
    if arr.null_count in (0, len(arr)):
        return np.full(len(arr), arr.null_count == 0)
    return pc.is_valid(arr).to_numpy(zero_copy_only=False)


def text_checks(column) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What `check` reads from a text column: (positions of values over Braze's string length,
    their character counts, positions of formula-like values). A reader may compute them
    while typing the column (`Typed.text_checks`), in parallel with its other work."""
    long, chars = long_values(column, LIMITS.string_length)
    return long, chars, formula_positions(column)


def with_text_checks(typed: Typed, column) -> Typed:
    """`typed` with its `text_checks` computed from `column` (its source text, the values
    `typed` holds) when it is a text column."""
    if typed.value_type == "string":
        typed.text_checks = text_checks(column)
    return typed


# What the toolkit does with a value that does not fit its column: the same as with an empty
# cell (pd.NA in `profiles`; `Mapping.attribute_values` sends nothing for it).
READ_AS_BLANK = "read as blank, like an empty cell"
# An infinity stays in its number column; `braze.payload_rules.convert` marks it invalid, so
# `attribute_values` sends nothing for it and the plan leaves the profile's value out (unlike
# an empty cell, it never removes a value Braze holds).
LEFT_OUT = "left out: nothing is sent for it, and a value Braze already holds is kept"
_NON_FINITE_LABEL = {"NaN": "NaN (not a number)", "+inf": "+inf (an infinite number)",
                     "-inf": "-inf (an infinite number)"}
_KIND_PLURAL = {"number": "numbers", "boolean": "booleans", "datetime": "dates"}
_FORMULA_FIX = ("if it is not meant as text, fix it in Segment; in CSVs for people, start such "
                "cells with ' so spreadsheets show them as text")


def _drift_message(what: str, key: str, value_type: str, value: Any, kind: str) -> str:
    if value_type == "boolean":
        return (f"{what} {key!r} is boolean but this value is neither true nor false: "
                f"{_short(value)}; {READ_AS_BLANK}")
    return (f"{what} {key!r} is {value_type} but this value is {kind}: {_short(value)}; "
            f"{READ_AS_BLANK}")


def _sid(segment_ids: pd.Series, position: int) -> str | None:
    value = segment_ids.iat[int(position)]
    return None if value is pd.NA or value is None else str(value)
