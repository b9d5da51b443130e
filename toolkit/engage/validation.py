"""Validation of a loaded Engage export against what Braze will accept, recorded as findings.

Checks (finding codes):
  anonymous_only     error    profile has only anonymous ids: no user_id, braze_id or email
  email_only         info     profile has an email but no user_id / braze_id (needs email opt-in)
  hashed_identifier  error    profile known only by a hashed id (single-column hashed CSV)
  duplicate_profile  warning  the same Segment profile appears on several rows (rows merged)
  duplicate_user_id  warning  several Segment profiles share one user_id (one Braze user)
  type_drift         warning  a value's type differs from its column's (Braze locks the type)
  invalid_date       warning  a date value that does not parse as ISO-8601
  string_boolean     warning  "true"/"false" as text in a JSON value (not a membership)
                     info     a CSV column of "true"/"false" read as booleans
  long_string        warning  a string value over 255 characters (Braze truncates it)
  invalid_key        error    a computation key over 255 characters or starting with "$"
Per-row findings are capped at `MAX_ROW_FINDINGS` per code and column; past the cap one summary
finding gives the total, so a million-row export stays readable and fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from toolkit.engage.frames import as_text, has_duplicates, long_values

if TYPE_CHECKING:
    from toolkit.engage.frames import Typed
    from toolkit.engage.model import EngageExport, Findings

__all__ = ["check", "MAX_ROW_FINDINGS", "BRAZE_MAX_STRING", "row_findings"]

MAX_ROW_FINDINGS = 200
BRAZE_MAX_STRING = 255


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
        if len(key) > 255 or key.startswith("$"):
            f.add("error", "invalid_key",
                  f"key {key[:40]!r}{'…' if len(key) > 40 else ''} is not a valid Braze attribute "
                  f"name ({'over 255 characters' if len(key) > 255 else 'starts with $'})",
                  column=key[:255], fix="rename the attribute in the mapping (Rule.attribute)")

    hashed = pc.fill_null(pc.starts_with(as_text(sid), "sha256:"), False)
    present = {c: p[c].notna().to_numpy() for c in ("user_id", "braze_id", "email",
                                                     "anonymous_id")}
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
    hashed_count = pc.sum(hashed).as_py() or 0
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
    all_rows = rows
    for key, t in typed.items():
        rows = t.rows if t.rows is not None else all_rows
        if t.drift:
            row_findings(f, "warning", "type_drift",
                         [(i, f"{kinds.get(key, 'trait')} {key!r} is {t.value_type} but this value "
                              f"is {k}: {_short(v)}")
                          for i, v, k in t.drift],
                         column=key, segment_ids=sid, rows=rows, summary=f"values of {key!r} "
                         f"that are not {t.value_type}",
                         fix=f"send {key!r} as {t.value_type} everywhere: Braze locks an attribute's "
                             "type on the first value it receives")
        if t.invalid_dates:
            row_findings(f, "warning", "invalid_date",
                         [(i, f"{key!r} value {_short(v)} is not a valid ISO-8601 date")
                          for i, v in t.invalid_dates],
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
            long, chars = long_values(as_text(p[key]), BRAZE_MAX_STRING)
            if len(long):
                row_findings(f, "warning", "long_string",
                             [(int(i), f"{key!r} value is {int(n):,} characters; Braze keeps "
                                       f"{BRAZE_MAX_STRING}")
                              for i, n in zip(long[:MAX_ROW_FINDINGS], chars)], total=len(long),
                             column=key, segment_ids=sid, rows=rows,
                             summary=f"strings over {BRAZE_MAX_STRING} characters in {key!r}",
                             fix=f"shorten the value to {BRAZE_MAX_STRING} characters or fewer")
