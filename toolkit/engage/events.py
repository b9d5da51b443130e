"""Reader for Engage-generated identify / track payloads: NDJSON, a JSON array, or Segment batch
envelopes ``{"batch": [...]}`` (optionally gzip-compressed).

Membership follows Segment's own rule (actions-core ``engageAudienceMembership``): for an
audience (or journey step) the value is the boolean at ``traits[computation_key]`` (identify) or
``properties[computation_key]`` (track). The event name is never used, so renamed enter/exit
events work. A non-boolean such as the string "true" is a finding and decides nothing.

Profile identity. Engage sends one message per identifier of a profile (per email, per
anonymousId, …), so messages are grouped into profiles:
  * every identifier on a message — ``userId``, ``anonymousId``, ``traits.email`` /
    ``context.traits.email`` / ``properties.email``, ``context.externalIds[]`` (types user_id,
    email, anonymous_id, braze_id, segment_id) and ``context.integrations.Braze.braze_id`` — links
    the message's identifiers together (union-find), so a profile is a connected group;
  * its key (``segment_id``) is the group's Segment id when a message carries one (an externalId
    of type ``segment_id``), else ``user_id:<first userId seen>``, else ``email:<first email>``,
    else ``anonymous_id:<first anonymousId>`` — the Profile API's ``type:value`` form;
  * per profile and computation the latest message (timestamp, then file order) wins; for an
    audience only messages with a real boolean count.
The event history keeps one row per collapsed message: fan-out copies (same profile, time,
type, event, key and value) count once.

Where findings point: in NDJSON, ``row`` is the message's line; in a JSON document or a file
holding batch envelopes, it is the message's position in the file (1-based, counting every
message of every batch), and each finding's message starts with where that is — "batch 2,
message 5" (or "line 4, batch 3, message 1" for NDJSON lines holding envelopes). A batch
envelope is an object with ``batch`` and no ``type``; its ``batch`` must be a list of message
objects, else the file is refused naming the batch.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import pandas as pd

from toolkit.engage.assemble import assemble
from toolkit.engage.frames import (Typed, identifier_frame, python_kind, to_utc,
                                   type_python_values)
from toolkit.engage.model import EVENT_COLUMNS, Findings
from toolkit.engage.validation import row_findings
from toolkit.errors import ExportFormatError

__all__ = ["read_events", "iter_messages", "AUDIENCE_CLASSES"]

AUDIENCE_CLASSES = ("audience", "journey_step")
MAX_COMPUTATIONS = 10_000
_ID_TYPES = ("segment_id", "user_id", "email", "anonymous_id", "braze_id")


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ExportFormatError("file not found", file=str(path), hint="check the path") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ExportFormatError(f"the gzip file is damaged ({exc})", file=str(path),
                                    hint="download the file again") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExportFormatError("the file is UTF-16 encoded; expected UTF-8", file=str(path),
                                line=1, hint="re-save the file as UTF-8")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        col = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ExportFormatError(f"the file is not UTF-8 (byte {raw[err.start]:#04x})",
                                file=str(path), line=line, column=col,
                                hint="re-save the file as UTF-8") from None


def _loads(text: str) -> Any:
    """json.loads, with JSON nested deeper than Python can follow reported as invalid JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply to read", text, 0) from None


class _Located(NamedTuple):
    """One message and where it sits: `pos` is its NDJSON line, or its entry's index in a JSON
    array / document; `batch` and `index` (1-based) place it inside a batch envelope."""

    pos: int
    line_based: bool
    batch: int | None
    index: int | None
    message: dict

    def where(self) -> str:
        """"line 3", "entry 2", "batch 2, message 5" or "line 4, batch 3, message 1"."""
        if self.batch is None:
            return f"{'line' if self.line_based else 'entry'} {self.pos}"
        inside = f"batch {self.batch}, message {self.index}"
        return f"line {self.pos}, {inside}" if self.line_based else inside


def iter_messages(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line, message) for every message in an NDJSON / JSON / batch-envelope file (for a JSON
    document, the index of the top-level entry holding the message instead of a line)."""
    for located in _located_messages(path):
        yield located.pos, located.message


def _located_messages(path: str | os.PathLike) -> Iterator[_Located]:
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise ExportFormatError("the file is empty; expected Engage identify/track messages",
                                file=str(path), line=1,
                                hint="export the Engage source's events again")
    batches = [0]  # envelopes seen so far, numbered across the file
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _whole_document(path, text, batches)
        return
    first_line = stripped.split("\n", 1)[0]
    try:
        _loads(first_line)
        single_lines = True
    except json.JSONDecodeError:
        single_lines = False
    if not single_lines:  # a pretty-printed object (e.g. one batch envelope)
        try:
            _loads(text)
        except json.JSONDecodeError:
            single_lines = True  # report the error line by line below
        else:
            yield from _whole_document(path, text, batches)
            return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = _loads(line)
        except json.JSONDecodeError as exc:
            truncated = "Unterminated" in exc.msg or "Expecting" in exc.msg and \
                exc.pos >= len(line.rstrip()) - 1
            raise ExportFormatError(
                f"invalid JSON: {exc.msg}" + (" (the line looks cut off)" if truncated else ""),
                file=str(path), line=line_no, column=exc.colno,
                hint="each line must be one complete JSON message; re-export or drop the line")
        yield from _messages_of(path, value, line_no, True, batches)


def _whole_document(path: Path, text: str, batches: list[int]) -> Iterator[_Located]:
    try:
        value = _loads(text)
    except json.JSONDecodeError as exc:
        raise ExportFormatError(f"invalid JSON: {exc.msg}", file=str(path), line=exc.lineno,
                                column=exc.colno, hint="the file must be one JSON array or "
                                "object, or one JSON message per line") from None
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items, start=1):
        yield from _messages_of(path, item, i, False, batches)


_JSON_KINDS = {dict: "an object", list: "a list", str: "text", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}
_ENVELOPE_HINT = 'a batch envelope is {"batch": [message, …]}: a JSON list of messages'


def _messages_of(path: Path, value: Any, pos: int, line_based: bool,
                 batches: list[int]) -> Iterator[_Located]:
    where = {"line": pos} if line_based else {}
    envelope = isinstance(value, dict) and "batch" in value and (
        isinstance(value["batch"], list) or "type" not in value)
    if envelope:
        batches[0] += 1
        batch = value["batch"]
        if not isinstance(batch, list):
            entry = "" if line_based or pos == 1 else f" (entry {pos})"
            raise ExportFormatError(
                "'batch' must be a list of messages, found "
                f"{_JSON_KINDS.get(type(batch), 'a value')}"
                f"{entry}", file=str(path), field="batch", batch=batches[0], **where,
                hint=_ENVELOPE_HINT)
        for index, message in enumerate(batch, start=1):
            located = _Located(pos, line_based, batches[0], index, message)
            if not isinstance(message, dict):
                raise ExportFormatError(f"a batch entry is not a JSON object (batch "
                                        f"{batches[0]}, message {index} is "
                                        f"{_JSON_KINDS.get(type(message), 'a value')})",
                                        file=str(path), field="batch", batch=batches[0], **where,
                                        hint=_ENVELOPE_HINT.replace("messages", "message "
                                                                    "objects"))
            yield located
    elif isinstance(value, dict):
        yield _Located(pos, line_based, None, None, value)
    else:
        raise ExportFormatError(f"expected a JSON object (an Engage message), found "
                                f"{type(value).__name__}", file=str(path), line=pos,
                                hint="each entry must be an identify or track message")


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent.setdefault(x, x)
        while parent != self.parent[parent]:
            self.parent[parent] = self.parent[self.parent[parent]]
            parent = self.parent[parent]
        self.parent[x] = parent
        return parent

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _identifiers(m: dict) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def add(t: str, v: Any) -> None:
        if v is None or v == "":
            return
        v = str(v)
        out.append((t, v.strip().lower() if t == "email" else v))
    add("user_id", m.get("userId"))
    add("anonymous_id", m.get("anonymousId"))
    add("email", _get(m, "traits", "email") if m.get("type") == "identify" else None)
    add("email", _get(m, "context", "traits", "email"))
    add("email", _get(m, "properties", "email"))
    add("braze_id", _get(m, "context", "integrations", "Braze", "braze_id"))
    for ext in _get(m, "context", "externalIds") or []:
        if isinstance(ext, dict) and str(ext.get("type", "")).lower() in _ID_TYPES:
            add(str(ext["type"]).lower(), ext.get("id"))
    return list(dict.fromkeys(out))


def read_events(path: str | os.PathLike) -> "EngageExport":  # noqa: F821
    """Read Engage identify/track messages into an `EngageExport` (rules in the module doc)."""
    path = Path(path)
    findings = Findings()
    uf = _UnionFind()
    records: list[tuple] = []
    comp_info: dict[str, dict] = {}
    skipped_foreign = 0
    no_id_lines: list[int] = []
    both_kinds: list[tuple[int, str]] = []
    ids_of: list[list[tuple[str, str]]] = []
    # Messages are numbered in file order (`line` below); once the file is read that number
    # becomes the findings' row: the NDJSON line, or, in a file of JSON documents or batch
    # envelopes, the message's position in the file ("batch N, message M" prefixes findings).
    places: list[tuple[int, bool, int | None, int | None]] = []
    for located in _located_messages(path):
        places.append(located[:4])
        line, m = len(places), located.message
        personas = _get(m, "context", "personas")
        if not isinstance(personas, dict) or not personas.get("computation_key"):
            skipped_foreign += 1
            continue
        mtype = m.get("type")
        if mtype not in ("identify", "track"):
            skipped_foreign += 1
            continue
        key = str(personas["computation_key"])
        klass = personas.get("computation_class") or "trait"
        kind = "audience" if klass in AUDIENCE_CLASSES else "trait"
        if mtype == "identify":
            bag = m.get("traits") if isinstance(m.get("traits"), dict) else {}
            present = key in bag
            value = bag.get(key)
        else:
            props = m.get("properties") if isinstance(m.get("properties"), dict) else {}
            traits = m.get("traits") if isinstance(m.get("traits"), dict) else {}
            # some Segment docs put track values under traits; properties win when both exist
            present = key in props or key in traits
            value = props[key] if key in props else traits.get(key)
        ids = _identifiers(m)
        if not ids:
            no_id_lines.append(line)
            continue
        tokens = [f"{t}:{v}" for t, v in ids]
        for tok in tokens[1:]:
            uf.union(tokens[0], tok)
        info = comp_info.setdefault(key, {"key": key, "kind": kind,
                                          "computation_id": personas.get("computation_id"),
                                          "name": key})
        if info["kind"] != kind:
            both_kinds.append((line, key))
        ts = m.get("timestamp") or m.get("originalTimestamp") or m.get("receivedAt")
        records.append((line, tokens[0], ts, mtype, m.get("event") if mtype == "track" else None,
                        key, kind, value, present, m.get("messageId")))
        ids_of.append(ids)
    by_message = not places or not places[0][1] or any(p[2] is not None for p in places)
    row_of = np.arange(len(places) + 1) if by_message else np.array([0] + [p[0] for p in places])
    for line, key in both_kinds:
        findings.add("warning", "type_drift", f"{key!r} is sent both as an audience and as a "
                     "trait", row=int(row_of[line]), column=key,
                     fix="use one computation class per key")
    if skipped_foreign:
        findings.add("info", "not_engage", f"{skipped_foreign:,} messages carry no "
                     "context.personas computation and were skipped",
                     fix="nothing to do if the file mixes in ordinary events")
    if no_id_lines:
        row_findings(findings, "warning", "no_identifier",
                     [(int(row_of[ln]) - 1, "message has no userId, anonymousId, email or "
                                             "external id") for ln in no_id_lines],
                     column=None, summary="messages without identifiers",
                     fix="nothing Braze can use; the message was skipped")
    if len(comp_info) > MAX_COMPUTATIONS:
        # each computation becomes a typed column and a Braze attribute: this many means a
        # wrong or hostile file, and typing them all would take minutes
        raise ExportFormatError(
            f"too many computations: {len(comp_info):,} distinct computation keys (at most "
            f"{MAX_COMPUTATIONS:,})", file=str(path),
            hint="check that the file holds Engage audience and trait messages only")
    if not records:
        raise ExportFormatError("no Engage identify/track messages found (no message has "
                                "context.personas.computation_key)", file=str(path),
                                hint="export the Engage source's events (Unify > Debugger) or "
                                     "pass kind= for another format")

    # group identifiers into profiles
    groups: dict[str, dict[str, list[str]]] = {}
    for ids in ids_of:
        root = uf.find(f"{ids[0][0]}:{ids[0][1]}")
        g = groups.setdefault(root, {t: [] for t in _ID_TYPES})
        for t, v in ids:
            if v not in g[t]:
                g[t].append(v)
    root_key = {}
    for root, g in groups.items():
        for t in ("segment_id", "user_id", "email", "anonymous_id", "braze_id"):
            if g[t]:
                root_key[root] = g[t][0] if t == "segment_id" else f"{t}:{g[t][0]}"
                break
    msgs = pd.DataFrame.from_records(records, columns=[
        "line", "token", "ts", "type", "event", "key", "kind", "value", "present", "message_id"])
    msgs["line"] = row_of[msgs["line"].to_numpy(dtype=np.int64)]
    msgs["segment_id"] = [root_key[uf.find(t)] for t in msgs["token"]]
    msgs["timestamp"] = to_utc(msgs["ts"].astype(object))
    bad_ts = msgs["timestamp"].isna()
    if bad_ts.any():
        row_findings(findings, "warning", "invalid_date",
                     [(int(ln) - 1, f"timestamp {ts!r} is missing or not ISO-8601; the message "
                                    "sorts first") for ln, ts in
                      zip(msgs.loc[bad_ts, "line"], msgs.loc[bad_ts, "ts"])],
                     column="timestamp", summary="messages without a valid timestamp",
                     fix="Engage messages carry an ISO-8601 timestamp")
    msgs = msgs.sort_values(["timestamp", "line"], kind="stable", na_position="first")

    # audiences: only real booleans decide
    is_audience = msgs["kind"] == "audience"
    kinds = msgs["value"].map(python_kind)
    string_bools = is_audience & (kinds != "boolean")
    for ln, key, value in zip(msgs.loc[string_bools, "line"], msgs.loc[string_bools, "key"],
                              msgs.loc[string_bools, "value"]):
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            code, text = "string_boolean", (f"audience {key!r} is the string {value!r}, not a "
                                            "boolean; it decides nothing")
        else:
            code, text = "type_drift", (f"audience {key!r} has no boolean value ({value!r}); it "
                                        "decides nothing")
        findings.add("warning", code, text, row=int(ln), column=key,
                     fix="send real booleans (Journeys v1 sends strings)")
    deciding = msgs[(is_audience & (kinds == "boolean")) | (~is_audience & msgs["present"])]
    latest = deciding.groupby(["segment_id", "key"], sort=False).tail(1)

    profile_ids = list(dict.fromkeys(msgs.sort_values("line")["segment_id"]))
    position = {sid: i for i, sid in enumerate(profile_ids)}
    first_line = msgs.groupby("segment_id")["line"].min()
    by_key = {root_key[r]: g for r, g in groups.items()}
    n = len(profile_ids)
    idx = pd.RangeIndex(n)

    def first(t):
        return [by_key[s][t][0] if by_key[s][t] else None for s in profile_ids]
    ident = identifier_frame(
        profile_ids, first("user_id"), first("email"), first("anonymous_id"), first("braze_id"),
        [by_key[s]["email"] for s in profile_ids],
        [by_key[s]["anonymous_id"] for s in profile_ids], idx)

    typed: dict[str, Typed] = {}
    comps = []
    for key, info in comp_info.items():
        part = latest[latest["key"] == key]
        values = [None] * n
        rows = np.array([int(first_line[s]) for s in profile_ids])
        for sid, v, ln in zip(part["segment_id"], part["value"], part["line"]):
            values[position[sid]] = v
            rows[position[sid]] = int(ln)
        series = pd.Series(values, dtype=object)
        if info["kind"] == "audience":
            # seen but never with a boolean (only "true" strings): unknown, not a non-member
            seen = set(msgs.loc[msgs["key"] == key, "segment_id"])
            col = pd.Series([v if isinstance(v, bool) else (pd.NA if sid in seen else False)
                             for v, sid in zip(values, profile_ids)], dtype="boolean")
            t = Typed(col, "boolean", [], [], [])
        else:
            t = type_python_values(series)
        t.rows = rows
        typed[key] = t
        comps.append(dict(info))

    events = msgs.assign(json_value=msgs["value"].map(
        lambda v: json.dumps(v, sort_keys=True, default=str)))
    events = events.drop_duplicates(["segment_id", "timestamp", "type", "event", "key",
                                     "json_value"])
    fanout = len(msgs) / max(len(events), 1)
    if fanout > 1:
        findings.add("info", "fan_out", f"{len(msgs):,} messages collapse to {len(events):,} "
                     f"profile events (fan-out ×{fanout:.2f}: one message per identifier)",
                     fix="nothing to do; each Braze user is sent once")
    events = pd.DataFrame({
        "segment_id": events["segment_id"].astype("string"),
        "timestamp": events["timestamp"],
        "type": events["type"].astype("string"),
        "event": events["event"].astype("string"),
        "computation_key": events["key"].astype("string"),
        "computation_kind": events["kind"].astype("string"),
        "value": events["value"].astype(object),
        "message_id": events["message_id"].astype("string"),
    }, columns=list(EVENT_COLUMNS)).reset_index(drop=True)
    snapshot = msgs["timestamp"].max()
    profile_rows = np.array([int(first_line[s]) for s in profile_ids])
    export = assemble(ident, typed, comps, events=events,
                      snapshot_at=None if pd.isna(snapshot) else snapshot,
                      source=f"{path} (ndjson)", findings=findings, rows=profile_rows)
    if any(p[2] is not None for p in places):
        # in a batch file a row number alone is hard to find: say which batch and message
        export.findings = Findings(
            dataclasses.replace(f, message=f"{_Located(*places[f.row - 1], {}).where()}: "
                                           f"{f.message}")
            if f.row is not None and 1 <= f.row <= len(places) else f
            for f in export.findings)
    return export
