"""Evaluate an Engage audience definition on an export's event and trait history, locally, and
compare the result with Engage's own membership.

The history is the export's source events: Segment track calls of the space's sources (as the
Profile API's ``/events``, Profiles Sync event tables or a source's debugger export give them),
attached with `attach_history` (``export.with_history(path)``). They become rows of
``export.events`` whose ``computation_key`` is empty, with three extra columns ``properties``,
``context`` (dicts) and ``source_id``, and ``identity`` — how the row found its profile:
``matched`` (an identifier of the event is the profile's), ``linked`` (through another event of
the same person, e.g. a sign-in carrying the device's anonymousId and the userId), ``merged``
(its identifiers belong to several export profiles; the userId's profile wins) or
``not_in_export`` (keyed ``user_id:…``/``email:…``/``anonymous_id:…`` like the Profile API).

Semantics (the query-language reference, where it is silent our choice is marked UNCONFIRMED):
``within(N unit)`` keeps events of the last N×24 h (or N h) before the snapshot — a rolling window
(UNCONFIRMED; Braze counts calendar days instead); ``between(a, b)`` events from b to a ago;
``parent:`` measures from the enclosing event's time; ``count`` of no events is 0, every other
reducer of no events is absent (so ``sum(…) < 10`` does not select profiles with no events);
``differs`` needs a value; ``omits`` is ``NOT contains`` (absent values included); text
comparisons are case-sensitive (UNCONFIRMED); ``mode`` ties go to the first value alphabetically
(segment-engage.md §3.1); ``within_last(N days)`` is the calendar dates today−N … today.
"""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from html import escape
from typing import Any, Callable

import numpy as np
import pandas as pd

from toolkit.engage.events import _identifiers, _located_messages, _UnionFind
from toolkit.engage.definitions import AudienceDefinition
from toolkit.engage.model import EVENT_COLUMNS, HISTORY, EngageExport, Findings
from toolkit.engage.query import _error
from toolkit.engage.query import (
    And,
    Between,
    Compare,
    Context,
    Definition,
    Duration,
    Literal,
    Node,
    Not,
    Or,
    Property,
    Quantified,
    Reduce,
    Sources,
    Stream,
    Trait,
    Where,
    Within,
    parse,
)
from toolkit.errors import DefinitionError, ExportFormatError

__all__ = ["attach_history", "read_history", "history_of", "evaluate_definition", "Evaluation",
           "DIFFERENCE_REASONS", "HISTORY_COLUMNS"]

HISTORY_COLUMNS = ("properties", "context", "source_id", "identity")
_MAX_MERGE_FINDINGS = 1000
PROGRESS_FROM = 200_000   # events or profiles from which attaching a history shows a bar
# how a profile the export does not list is keyed: the Profile API's type:value, best type first
_KEY_ORDER = {"user_id": 0, "email": 1, "braze_id": 2, "anonymous_id": 3}

# Why local evaluation and Engage disagree about a profile, checked in this order (first wins).
DIFFERENCE_REASONS = {
    "not_in_export": "the history has this profile but the export does not list it (an audience "
                     "CSV lists members only; or the profile appeared after the snapshot)",
    "merged_identity": "its events carry identifiers of more than one export profile: Engage "
                       "merged them into one profile, the export keeps them apart",
    "history_shorter_than_window": "the definition looks back further than the event history "
                                   "reaches: events Engage counted are not in the history",
    "anonymous_profile": "an anonymous-only profile: Engage includes it only when the audience "
                         "includes anonymous users",
    "no_engage_value": "Engage holds no membership value for this profile",
    "unexplained": "not explained by the history, identities or anonymity: check the definition "
                   "against the one Engage computes",
}


# ------------------------------------------------------------------------------------------
# the history


def read_history(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """Source track calls as rows: ``ids`` (list of (type, value)), ``timestamp``, ``event``,
    ``properties``, ``context``, ``source_id``, ``message_id``, ``row``. Reads NDJSON, JSON or
    batch envelopes (gzip too), or a DataFrame with ``event``, ``timestamp`` and at least one of
    ``user_id``/``anonymous_id``/``email`` (plus optional ``properties``/``context`` dicts)."""
    if isinstance(source, pd.DataFrame):
        return _history_frame(source)
    rows = []
    for located in _located_messages(source):
        m = located.message
        if m.get("type") not in ("track", "identify", None):
            continue  # identify calls only link identifiers; pages, screens… are not read
        if isinstance((m.get("context") or {}).get("personas"), dict):
            continue  # Engage's own messages are outputs, not the events it computes from
        ids = _identifiers(m)
        ts = m.get("timestamp") or m.get("originalTimestamp") or m.get("receivedAt")
        context = m.get("context") if isinstance(m.get("context"), dict) else {}
        rows.append({"ids": ids, "timestamp": ts, "type": m.get("type") or "track",
                     "event": m.get("event"),
                     "properties": m.get("properties") if isinstance(m.get("properties"), dict)
                     else {}, "context": context,
                     "source_id": m.get("source_id") or m.get("sourceId")
                     or context.get("source_id"),
                     "message_id": m.get("messageId") or m.get("message_id"),
                     "row": located.pos})
    frame = pd.DataFrame(rows, columns=["ids", "timestamp", "type", "event", "properties",
                                        "context", "source_id", "message_id", "row"])
    if not len(frame):
        raise ExportFormatError("no track events found", file=str(source),
                                hint="pass the source's track calls (NDJSON/JSON of Segment "
                                     "messages with type 'track')")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce",
                                        format="ISO8601")
    bad = frame["timestamp"].isna()
    if bad.any():
        first = int(frame.loc[bad, "row"].iloc[0])
        raise ExportFormatError(f"{int(bad.sum())} events have no valid ISO-8601 timestamp",
                                file=str(source), line=first, field="timestamp",
                                hint="every event needs its timestamp to be evaluated")
    return frame


def _history_frame(df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("event", "timestamp") if c not in df.columns]
    id_cols = [c for c in ("user_id", "anonymous_id", "email") if c in df.columns]
    if missing or not id_cols:
        raise ExportFormatError("the history table needs columns event, timestamp and one of "
                                "user_id, anonymous_id, email", field=(missing or ["user_id"])[0],
                                hint="rename the columns (Profiles Sync: tracks joined to "
                                     "external_id_mapping)")
    df = df.reset_index(drop=True)
    n = len(df)
    out = pd.DataFrame({
        "ids": pd.Series([None] * n, dtype=object),
        "timestamp": pd.to_datetime(df["timestamp"], utc=True, errors="coerce"),
        "type": "track", "event": df["event"].astype(object),
        "properties": df["properties"] if "properties" in df else [{} for _ in range(len(df))],
        "context": df["context"] if "context" in df else [{} for _ in range(len(df))],
        "source_id": df["source_id"] if "source_id" in df else None,
        "message_id": df["message_id"] if "message_id" in df else None,
        "row": np.arange(1, len(df) + 1)})
    parts = []
    for c in id_cols:
        values = df[c].astype("string")
        if c == "email":
            values = values.str.strip().str.lower()
        ok = (values.notna() & (values.str.len() > 0)).to_numpy(dtype=bool, na_value=False)
        parts.append(pd.DataFrame({"ev": np.flatnonzero(ok), "kind": c,
                                   "token": (c + ":" + values[ok]).to_numpy(dtype=object)}))
    # one row per (event, identifier), events in order: what _resolve links and matches
    out.attrs["tokens"] = pd.concat(parts, ignore_index=True).sort_values("ev", kind="stable")
    if out["timestamp"].isna().any():
        row = int(out.loc[out["timestamp"].isna(), "row"].iloc[0])
        raise ExportFormatError("an event has no valid timestamp", row=row, field="timestamp",
                                hint="every event needs its timestamp to be evaluated")
    return out


def attach_history(export: EngageExport, source: str | os.PathLike | pd.DataFrame, *,
                   progress: bool | None = None) -> EngageExport:
    """A copy of ``export`` whose ``events`` also hold the source events of ``source``, each
    resolved to an export profile (module doc); a finding says how they were resolved.
    ``progress``: a bar over the stages (default: from 200,000 events or profiles)."""
    from tqdm.auto import tqdm  # lazy: tqdm (and its notebook detection) only when attaching

    raw = read_history(source)
    p = export.profiles
    quiet = progress is False or (progress is None and max(len(raw), len(p)) < PROGRESS_FROM)
    bar = tqdm(total=2, desc="history: identities", unit="stage", leave=False, disable=quiet)
    sids = p["segment_id"].astype("string").to_numpy(dtype=object)
    keys, identity, merged_into = _resolve(p, raw, sids)
    bar.update()
    bar.set_description("history: events")
    rows = pd.DataFrame({
        "segment_id": pd.array(keys, dtype="string"),
        "timestamp": raw["timestamp"],
        "type": pd.array(raw["type"].tolist(), dtype="string"),
        "event": pd.array(raw["event"].tolist(), dtype="string"),
        "computation_key": pd.array([None] * len(raw), dtype="string"),
        "computation_kind": pd.array([None] * len(raw), dtype="string"),
        "value": pd.Series([None] * len(raw), dtype=object),
        "message_id": pd.array(raw["message_id"].tolist(), dtype="string"),
        "properties": raw["properties"].astype(object),
        "context": raw["context"].astype(object),
        "source_id": pd.array(raw["source_id"].tolist(), dtype="string"),
        "identity": pd.array(identity, dtype="string"),
    })
    rows = rows[rows["segment_id"].notna()]
    base = export.events if export.events is not None else pd.DataFrame(
        columns=list(EVENT_COLUMNS))
    events = pd.concat([base, rows], ignore_index=True) if len(base) else \
        rows.reset_index(drop=True)
    findings = Findings(export.findings)
    counts = rows["identity"].value_counts().to_dict()
    findings.add("info", "history_attached",
                 f"{len(rows):,} source events attached ({len(rows['segment_id'].unique()):,} "
                 "profiles): " + ", ".join(f"{counts[k]:,} {k.replace('_', ' ')}"
                                             for k in ("matched", "linked", "merged",
                                                       "not_in_export") if k in counts),
                 fix="nothing to do; 'merged' events carry identifiers of several export "
                     "profiles, 'not in export' belong to profiles the export does not list")
    for sid in sorted(merged_into)[:_MAX_MERGE_FINDINGS]:
        findings.add("warning", "merged_identity",
                     f"profile {sid} shares identifiers with another export profile in the event "
                     "history (Engage merges them)", column="segment_id", segment_id=sid,
                     fix="its events count for the profile holding the userId; expect "
                         "differences from Engage for it")
    bar.update()
    bar.close()
    # a plain in-memory export (an engine-backed one materialises its profiles here)
    shown = source if not isinstance(source, pd.DataFrame) else "(table)"
    return EngageExport(profiles=p, computations=export.computations, events=events,
                        snapshot_at=export.snapshot_at,
                        source=f"{export.source} + history {shown}", findings=findings)


def _owners(p: pd.DataFrame) -> pd.Series:
    """``type:value`` identifier → the position of the export profile holding it (the first)."""
    parts = []
    for col, kind in (("user_id", "user_id"), ("braze_id", "braze_id"), ("emails", "email"),
                      ("anonymous_ids", "anonymous_id")):
        if col not in p:
            continue
        values = p[col]
        if col in ("emails", "anonymous_ids"):
            values = values.astype(object).explode()
        values = values.astype("string")
        if kind == "email":
            values = values.str.lower()
        ok = (values.notna() & (values.str.len() > 0)).to_numpy(dtype=bool, na_value=False)
        parts.append(pd.DataFrame({"token": (kind + ":" + values[ok]).to_numpy(dtype=object),
                                   "pos": values.index.to_numpy()[ok]}))
    if not parts:
        return pd.Series(dtype="int64")
    both = pd.concat(parts, ignore_index=True).drop_duplicates("token", keep="first")
    return pd.Series(both["pos"].to_numpy(dtype=np.int64), index=both["token"])


def _resolve(p: pd.DataFrame, raw: pd.DataFrame, sids: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
    """Each event's profile key and how it was found (module doc), column-wise: only events
    carrying several identifiers go through union-find."""
    n = len(raw)
    long = raw.attrs.get("tokens")
    if long is None:
        ev_idx, kinds, toks = [], [], []
        for i, pairs in enumerate(raw["ids"]):
            for t, v in pairs:
                ev_idx.append(i)
                kinds.append(t)
                toks.append(f"{t}:{v}")
        long = pd.DataFrame({"ev": np.array(ev_idx, dtype=np.int64), "kind": kinds,
                             "token": np.array(toks, dtype=object)})
    keys = np.full(n, None, dtype=object)
    identity = np.full(n, "no_identifier", dtype=object)
    if not len(long):
        return keys, identity, {}
    long = long.reset_index(drop=True)
    token = long["token"].to_numpy(dtype=object)
    first = long.groupby("ev", sort=False)["token"].transform("first").to_numpy(dtype=object)
    linked = token != first
    uf = _UnionFind()
    for a, b in zip(first[linked], token[linked]):
        uf.union(a, b)
    root_of = {t: uf.find(t) for t in list(uf.parent)}
    root = np.array([root_of.get(t, t) for t in token], dtype=object) if root_of else token
    owners = _owners(p)
    pos = pd.Series(token).map(owners).to_numpy(dtype=float)
    code, _ = pd.factorize(root)      # groups as integers: grouping strings is the slow part
    frame = pd.DataFrame({"ev": long["ev"].to_numpy(), "root": code, "pos": pos,
                          "user": (long["kind"] == "user_id").to_numpy(),
                          "order": long["kind"].map(_KEY_ORDER).fillna(9).to_numpy()})
    found = frame[~np.isnan(pos)]
    per_root = found.groupby("root", sort=False)["pos"].agg(["nunique", "min"])
    # several profiles in one group: the one holding the group's userId wins
    by_user = found[found["user"]].groupby("root", sort=False)["pos"].first()
    per_root["chosen"] = by_user.reindex(per_root.index).fillna(per_root["min"])
    ev = frame.groupby("ev", sort=False).agg(root=("root", "first"), direct=("pos", "count"))
    info = per_root.reindex(ev["root"].to_numpy())
    count = info["nunique"].fillna(0).to_numpy()
    chosen = info["chosen"].fillna(0).to_numpy(dtype=np.int64)
    # a profile the export does not list: keyed by its best identifier (user_id, email, …)
    best_row = frame.sort_values("order", kind="stable").groupby("root", sort=False).head(1)
    best = pd.Series(token[best_row.index.to_numpy()], index=best_row["root"].to_numpy())
    at = ev.index.to_numpy()
    keys[at] = np.where(count >= 1, sids[chosen], best.reindex(ev["root"].to_numpy()).to_numpy())
    identity[at] = np.select([count > 1, (count == 1) & (ev["direct"].to_numpy() > 0),
                              count == 1], ["merged", "matched", "linked"], "not_in_export")
    merged_into: dict[str, list[str]] = {}
    for r in per_root.index[per_root["nunique"] > 1]:
        for q in found.loc[found["root"] == r, "pos"].unique():
            merged_into.setdefault(sids[int(q)], []).append(str(r))
    return keys, identity, merged_into

def history_of(export: EngageExport) -> pd.DataFrame:
    """The export's source events (rows of ``events`` without a computation), possibly empty."""
    ev = export.events
    if ev is None or not len(ev) or "properties" not in ev.columns:
        return pd.DataFrame(columns=list(EVENT_COLUMNS) + list(HISTORY_COLUMNS))
    return ev[ev["computation_key"].isna() & ev["event"].notna()]


# ------------------------------------------------------------------------------------------
# evaluation


def _present(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return False
    if isinstance(v, float) and np.isnan(v):
        return False
    return True


def _number(v: Any) -> float | None:
    if isinstance(v, (bool, np.bool_)) or not _present(v):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _time(v: Any) -> pd.Timestamp | None:
    if not _present(v) or isinstance(v, (bool, np.bool_, int, float)):
        return None
    try:
        t = pd.Timestamp(v)
    except (TypeError, ValueError):
        return None
    if pd.isna(t):
        return None
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _eq(a: Any, b: Any) -> bool:
    if not (_present(a) and _present(b)):
        return False
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return isinstance(a, (bool, np.bool_)) and isinstance(b, (bool, np.bool_)) and \
            bool(a) == bool(b)
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return na == nb
    if isinstance(a, pd.Timestamp) or isinstance(b, pd.Timestamp):
        ta, tb = _time(a), _time(b)
        return ta is not None and tb is not None and ta == tb
    return str(a) == str(b) if isinstance(a, str) and isinstance(b, str) else a == b


def _order(a: Any, b: Any) -> int | None:
    """-1/0/1 comparing numbers (numeric text too) or times; None when they do not compare."""
    if not (_present(a) and _present(b)):
        return None
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return (na > nb) - (na < nb)
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return None
    ta, tb = _time(a), _time(b)
    if ta is not None and tb is not None:
        return (ta > tb) - (ta < tb)
    return None


def _texts(v: Any) -> list[str]:
    if not _present(v):
        return []
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x) for x in v if _present(x)]
    return [str(v)]


@dataclass
class _Ctx:
    """Rows the expression is evaluated over: profiles at the top, events inside where(…)."""

    profile: np.ndarray                   # profile key per row
    anchor: np.ndarray | None = None      # the row's event time (inside where)
    props: list | None = None             # the row's event properties
    context: list | None = None
    parent: "_Ctx | None" = None
    parent_pos: np.ndarray | None = None  # row → parent row

    @property
    def n(self) -> int:
        return len(self.profile)


class _Evaluator:
    def __init__(self, definition: Definition, history: pd.DataFrame, traits: dict[str, dict],
                 as_of: pd.Timestamp) -> None:
        self.d = definition
        self.as_of = as_of
        self.traits = traits
        h = history[history["timestamp"] <= as_of]
        self.by_event = {name: g for name, g in h.groupby("event", sort=False)}

    def fail(self, node: Node, message: str, hint: str) -> DefinitionError:
        return _error(self.d.text, node.span[0], message, hint)

    # -- booleans ---------------------------------------------------------------------------
    def boolean(self, node: Node, ctx: _Ctx) -> np.ndarray:
        if isinstance(node, And):
            out = np.ones(ctx.n, dtype=bool)
            for item in node.items:
                out &= self.boolean(item, ctx)
            return out
        if isinstance(node, Or):
            out = np.zeros(ctx.n, dtype=bool)
            for item in node.items:
                out |= self.boolean(item, ctx)
            return out
        if isinstance(node, Not):
            return ~self.boolean(node.item, ctx)
        if isinstance(node, Quantified):
            raise self.fail(node, f"{node.quantifier} aggregates the users of an account, and the "
                            "export has no account → user associations",
                            "evaluate the inner condition per user instead, or load an export "
                            "with accounts (group calls)")
        if isinstance(node, Compare):
            return self.compare(node, ctx)
        raise self.fail(node, "this is not a condition", "compare it, e.g. … .count() >= 1")

    def compare(self, node: Compare, ctx: _Ctx) -> np.ndarray:
        left = self.scalar(node.left, ctx)
        fn = node.function
        if fn in ("absent", "exists"):
            present = np.fromiter((_present(v) for v in left), dtype=bool, count=ctx.n)
            return present if fn == "exists" else ~present
        if fn in ("within_last", "within_next", "before_last", "after_next"):
            dur = node.args[0]
            assert isinstance(dur, Duration)
            test = self._relative(fn, dur)
            return np.fromiter((test(_time(v)) for v in left), dtype=bool, count=ctx.n)
        values = [self.scalar(a, ctx) for a in node.args]
        ops: dict[str, Callable[[Any, list], bool]] = {
            "equals": lambda a, b: _eq(a, b[0]),
            "differs": lambda a, b: _present(a) and _present(b[0]) and not _eq(a, b[0]),
            "greater_than": lambda a, b: _order(a, b[0]) == 1,
            "at_least": lambda a, b: _order(a, b[0]) in (0, 1),
            "less_than": lambda a, b: _order(a, b[0]) == -1,
            "at_most": lambda a, b: _order(a, b[0]) in (-1, 0),
            "one_of": lambda a, b: any(_eq(a, x) for x in b),
            "contains": lambda a, b: any(str(x) in t for t in _texts(a) for x in b),
            "omits": lambda a, b: not any(str(x) in t for t in _texts(a) for x in b),
            "starts_with": lambda a, b: any(t.startswith(str(b[0])) for t in _texts(a)),
            "ends_with": lambda a, b: any(t.endswith(str(b[0])) for t in _texts(a)),
            "before_date": lambda a, b: _order(_time(a), _time(b[0])) == -1,
            "after_date": lambda a, b: _order(_time(a), _time(b[0])) == 1,
        }
        op = ops[fn]
        cols = [v.tolist() for v in values]
        return np.fromiter((op(a, [c[i] for c in cols]) for i, a in enumerate(left.tolist())),
                           dtype=bool, count=ctx.n)

    def _relative(self, fn: str, dur: Duration) -> Callable[[pd.Timestamp | None], bool]:
        now = self.as_of
        if dur.unit == "days":
            today = now.normalize()
            lo, hi = today - pd.Timedelta(days=dur.amount), today + pd.Timedelta(days=1)
            ahead = today + pd.Timedelta(days=dur.amount)
            return {
                "within_last": lambda t: t is not None and lo <= t < hi,
                "within_next": lambda t: t is not None and today <= t < ahead + pd.Timedelta(days=1),
                "before_last": lambda t: t is not None and t < lo + pd.Timedelta(days=1),
                "after_next": lambda t: t is not None and t >= ahead,
            }[fn]
        delta = pd.Timedelta(hours=dur.amount)
        return {
            "within_last": lambda t: t is not None and now - delta <= t <= now,
            "within_next": lambda t: t is not None and now <= t <= now + delta,
            "before_last": lambda t: t is not None and t <= now - delta,
            "after_next": lambda t: t is not None and t >= now + delta,
        }[fn]

    # -- scalars ----------------------------------------------------------------------------
    def scalar(self, node: Node, ctx: _Ctx) -> pd.Series:
        if isinstance(node, Literal):
            return pd.Series([node.value] * ctx.n, dtype=object)
        if isinstance(node, Trait):
            values = self.traits[node.name]
            return pd.Series([values.get(k) for k in ctx.profile], dtype=object)
        if isinstance(node, Property):
            if node.parent:
                assert ctx.parent is not None and ctx.parent.props is not None
                props = [ctx.parent.props[i] for i in ctx.parent_pos]  # type: ignore[union-attr]
            else:
                props = ctx.props or []
            return pd.Series([_dig(p, node.name) for p in props], dtype=object)
        if isinstance(node, Context):
            return pd.Series([_dig(c, node.path) for c in (ctx.context or [])], dtype=object)
        if isinstance(node, Reduce):
            return self.reduce(node, ctx)
        if node.type == "boolean":
            return pd.Series(self.boolean(node, ctx), dtype=object)
        raise self.fail(node, "this cannot be evaluated to a value", "use a reducer or a trait")

    def stream(self, node: Stream, ctx: _Ctx) -> pd.DataFrame:
        h = self.by_event.get(node.event)
        base = pd.DataFrame({"ctx_row": np.arange(ctx.n), "segment_id": ctx.profile})
        if ctx.anchor is not None:
            base["anchor"] = ctx.anchor
        if h is None:
            pairs = base.iloc[0:0].assign(timestamp=pd.Series(dtype="datetime64[ns, UTC]"),
                                          properties=pd.Series(dtype=object),
                                          context=pd.Series(dtype=object),
                                          source_id=pd.Series(dtype="string"))
        else:
            cols = ["segment_id", "timestamp", "properties", "context", "source_id"]
            pairs = base.merge(h[cols].astype({"segment_id": object}),
                               on="segment_id", how="inner", sort=False)
        for step in node.steps:
            if not len(pairs):
                break
            t = pairs["timestamp"]
            if isinstance(step, Within):
                if step.parent:
                    end = pairs["anchor"] + pd.Timedelta(hours=step.duration.hours)
                    keep = (t >= pairs["anchor"]) & (t <= end)
                else:
                    keep = t > self.as_of - pd.Timedelta(hours=step.duration.hours)
            elif isinstance(step, Between):
                a, b = (pd.Timedelta(hours=step.start.hours), pd.Timedelta(hours=step.end.hours))
                if step.parent:
                    keep = (t >= pairs["anchor"] + a) & (t <= pairs["anchor"] + b)
                else:
                    keep = (t >= self.as_of - b) & (t <= self.as_of - a)
            elif isinstance(step, Sources):
                keep = ~pairs["source_id"].astype(object).isin(list(step.exclude))
            else:
                assert isinstance(step, Where)
                child = _Ctx(profile=pairs["segment_id"].to_numpy(dtype=object),
                             anchor=pairs["timestamp"].to_numpy(),
                             props=pairs["properties"].tolist(), context=pairs["context"].tolist(),
                             parent=ctx, parent_pos=pairs["ctx_row"].to_numpy())
                keep = self.boolean(step.condition, child)
            pairs = pairs[np.asarray(keep, dtype=bool)]
        return pairs

    def reduce(self, node: Reduce, ctx: _Ctx) -> pd.Series:
        pairs = self.stream(node.stream, ctx)
        fn = node.function
        if fn == "count":
            counts = np.bincount(pairs["ctx_row"].to_numpy(dtype=np.int64), minlength=ctx.n)
            return pd.Series(counts.astype(object))
        out: list[Any] = [None] * ctx.n
        if not len(pairs):
            return pd.Series([0] * ctx.n if fn == "count_unique" else out, dtype=object)
        assert node.prop is not None
        name = node.prop.name
        pairs = pairs.sort_values("timestamp", kind="stable")
        values = [_dig(p, name) for p in pairs["properties"]]
        rows = pairs["ctx_row"].to_numpy()
        grouped: dict[int, list] = {}
        for r, v in zip(rows, values):
            grouped.setdefault(int(r), []).append(v)
        for r, vs in grouped.items():
            out[r] = _REDUCE[fn](vs, node)
        if fn == "count_unique":
            out = [0 if v is None else v for v in out]
        return pd.Series(out, dtype=object)


def _dig(d: Any, path: str) -> Any:
    """``d[path]``, else the dotted path (``page.url``) into nested objects."""
    if not isinstance(d, dict):
        return None
    if path in d:
        return d[path]
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _numbers(vs: list) -> list[float]:
    return [float(v) for v in vs if isinstance(v, (int, float)) and not isinstance(v, bool)
            and np.isfinite(v)]


def _mode(vs: list, node: Reduce) -> Any:
    items: list[str] = []
    for v in vs:
        if not _present(v):
            continue
        if isinstance(v, (list, tuple)) and node.as_type != "array":
            items += [str(x) for x in v]
        elif isinstance(v, (list, tuple, dict)):
            items.append(json.dumps(v, sort_keys=True))
        else:
            items.append(str(v).lower() if isinstance(v, bool) else str(v))
    if not items:
        return None
    counts = pd.Series(items).value_counts()
    best = counts.max()
    if best < (node.min_frequency or 1):
        return None
    return sorted(counts[counts == best].index)[0]


_REDUCE: dict[str, Callable[[list, Reduce], Any]] = {
    "sum": lambda vs, n: sum(_numbers(vs)) if _numbers(vs) else None,
    "avg": lambda vs, n: float(np.mean(_numbers(vs))) if _numbers(vs) else None,
    "max": lambda vs, n: (max(str(v) for v in vs if _present(v)) if any(_present(v) for v in vs)
                          else None) if n.as_type == "string" else
    (max(_numbers(vs)) if _numbers(vs) else None),
    "min": lambda vs, n: (min(str(v) for v in vs if _present(v)) if any(_present(v) for v in vs)
                          else None) if n.as_type == "string" else
    (min(_numbers(vs)) if _numbers(vs) else None),
    "first": lambda vs, n: next((v for v in vs if _present(v)), None),
    "last": lambda vs, n: next((v for v in reversed(vs) if _present(v)), None),
    "mode": _mode,
    "unique": lambda vs, n: sorted({str(v) for v in vs if _present(v)}),
    "count_unique": lambda vs, n: len({json.dumps(v, sort_keys=True, default=str)
                                       for v in vs if _present(v)}),
}


def _lookback(definition: Definition) -> pd.Timedelta | None:
    """How far back the definition reads events: None = all time (a stream without a window)."""
    longest = pd.Timedelta(0)
    for n in definition.root.walk():
        if not isinstance(n, Stream):
            continue
        windows = [w for w in n.windows() if not w.parent]
        if not windows:
            if not any(w.parent for w in n.windows()):
                return None
            continue
        for w in windows:
            hours = w.duration.hours if isinstance(w, Within) else w.end.hours
            longest = max(longest, pd.Timedelta(hours=hours))
    return longest


def _coerce(query: Any, kind: str) -> tuple[Definition, str | None, bool | None]:
    if isinstance(query, AudienceDefinition):
        return query.definition, query.key, query.include_anonymous
    if isinstance(query, Definition):
        return query, None, None
    return parse(query, kind=kind), None, None


def evaluate_definition(export: EngageExport, query: Any, *, audience: str | None = None,
                        as_of: Any = None, strict: bool = True) -> "Evaluation":
    """Who the definition selects on the export's history and traits, at its snapshot time,
    beside Engage's membership of ``audience`` (the definition's key when it has one).

    ``strict`` (default): an event the history never saw, or a trait the export lacks, is a
    `DefinitionError` pointing at it (usually a typo); with ``strict=False`` they read as
    "no events" / "no value".
    """
    definition, key, include_anonymous = _coerce(query, "audience")
    if definition.level == "ACCOUNTS":
        raise DefinitionError("this is an account-level definition (type ACCOUNTS), and the "
                              "export has no account → user associations", field="type",
                              hint="evaluate user-level definitions only")
    audience = audience or (key if key and key in set(export.computations["key"]) else None)
    if audience is not None:
        export.computation(audience)  # a clear error for an unknown key
    history = history_of(export)
    as_of = _as_of(export, history, as_of)
    seen = set(history["event"].dropna().unique())
    for node in definition.root.walk():
        if isinstance(node, Stream) and node.event not in seen and strict:
            if not len(history):
                raise _located(definition, node, f"the export holds no event history, so "
                               f"event({node.event!r}) cannot be evaluated",
                               "attach the sources' events: export = "
                               "export.with_history('…/source_events.ndjson.gz')")
            close = difflib.get_close_matches(node.event, sorted(seen), n=1)
            raise _located(definition, node, f"the export's history never saw the event "
                           f"{node.event!r}",
                           (f"did you mean {close[0]!r}? " if close else "")
                           + f"events seen: {', '.join(sorted(seen)[:12])}; pass strict=False "
                           "to read it as no events")
        if isinstance(node, Trait) and node.name not in export.profiles.columns and strict:
            cols = [c for c in export.profiles.columns if c not in
                    ("segment_id", "emails", "anonymous_ids")]
            close = difflib.get_close_matches(node.name, cols, n=1)
            raise _located(definition, node, f"the export has no trait {node.name!r}",
                           (f"did you mean {close[0]!r}? " if close else "")
                           + "pass strict=False to read it as no value")
    p = export.profiles
    sids = p["segment_id"].astype("string").tolist()
    universe = list(dict.fromkeys(sids + history["segment_id"].astype(object).tolist()))
    traits = {}
    for name in definition.traits:
        if name in p.columns:
            col = p[name].astype(object).where(p[name].notna(), None).tolist()
            traits[name] = dict(zip(sids, col))
        else:
            traits[name] = {}
    ev = _Evaluator(definition, history, traits, as_of)
    selected = ev.boolean(definition.root, _Ctx(profile=np.array(universe, dtype=object)))
    left_out = 0
    if include_anonymous is False:
        # the audience's options.includeAnonymousUsers is off: Engage leaves such profiles out
        anonymous = _anonymous_only(p, universe)
        left_out = int((selected & anonymous).sum())
        selected = selected & ~anonymous
    result = Evaluation(export, definition, audience, as_of, history, universe, selected)
    if left_out:
        result.notes.append(f"{left_out:,} anonymous-only profiles match but are left out: the "
                            "audience does not include anonymous users")
    return result


def _anonymous_only(p: pd.DataFrame, universe: list[str]) -> np.ndarray:
    known = p["user_id"].notna() | p["email"].notna()
    if "braze_id" in p:
        known |= p["braze_id"].notna()
    by_sid = dict(zip(p["segment_id"].astype("string").tolist(), (~known).tolist()))
    # profiles only the history knows are anonymous when keyed by an anonymousId
    return np.array([by_sid.get(s, str(s).startswith("anonymous_id:")) for s in universe],
                    dtype=bool)


def _located(definition: Definition, node: Node, message: str, hint: str) -> DefinitionError:
    return _error(definition.text, node.span[0], message, hint)


def _as_of(export: EngageExport, history: pd.DataFrame, as_of: Any) -> pd.Timestamp:
    if as_of is not None:
        t = pd.Timestamp(as_of)
    elif export.snapshot_at is not None:
        t = pd.Timestamp(export.snapshot_at)
    elif len(history):
        t = history["timestamp"].max()
    else:
        t = pd.Timestamp.now(tz="UTC")
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


class Evaluation:
    """A definition evaluated locally: the members, and beside Engage's membership of the same
    audience, every profile on which they differ with the reason (`DIFFERENCE_REASONS`)."""

    def __init__(self, export: EngageExport, definition: Definition, audience: str | None,
                 as_of: pd.Timestamp, history: pd.DataFrame, universe: list[str],
                 selected: np.ndarray) -> None:
        self.export = export
        self.definition = definition
        self.audience = audience
        self.as_of = as_of
        self.history = history
        self.history_start = history["timestamp"].min() if len(history) else None
        self.history_end = history["timestamp"].max() if len(history) else None
        self.lookback = _lookback(definition)
        self.notes: list[str] = []
        if self.history_end is not None and as_of - self.history_end > pd.Timedelta(days=1):
            # e.g. an audience CSV's snapshot is the file's mtime, long after the events
            self.notes.append(
                f"the evaluation time {as_of.isoformat()} is "
                f"{(as_of - self.history_end).days} days after the last event of the history; "
                "windows are measured from it: pass as_of= the time Engage computed the audience")
        p = export.profiles
        frame = pd.DataFrame({"segment_id": pd.array(universe, dtype="string"),
                              "local": selected})
        ids = p[[c for c in ("segment_id", "user_id", "email", "anonymous_id") if c in p]]
        frame = frame.merge(ids.astype({"segment_id": "string"}), on="segment_id", how="left")
        frame["in_export"] = frame["segment_id"].isin(set(p["segment_id"].astype("string")))
        if audience is not None:
            engage = p.set_index(p["segment_id"].astype("string"))[audience]
            frame["engage"] = engage.reindex(frame["segment_id"]).astype("boolean").to_numpy()
        self.frame = frame

    @property
    def members(self) -> pd.DataFrame:
        """Profiles the definition selects (``in_export`` False: known only from the history)."""
        return self.frame[self.frame["local"]].drop(columns=["local"] + (
            ["engage"] if "engage" in self.frame else [])).reset_index(drop=True)

    @property
    def segment_ids(self) -> set[str]:
        return set(self.members["segment_id"])

    def __len__(self) -> int:
        return int(self.frame["local"].sum())

    @property
    def window_start(self) -> pd.Timestamp | None:
        """The earliest moment the definition reads (None: all time)."""
        return None if self.lookback is None else self.as_of - self.lookback

    def history_too_short(self) -> bool:
        if self.history_start is None:
            return True
        start = self.window_start
        return start is None or start < self.history_start

    def differences(self) -> pd.DataFrame:
        """Profiles where local evaluation and Engage disagree, each with a reason."""
        if self.audience is None:
            raise DefinitionError("no Engage audience to compare with", field="audience",
                                  hint="pass audience='<key>' to evaluate_definition")
        f = self.frame
        engage = f["engage"]
        differ = (f["local"] != engage.fillna(False).astype(bool)) | engage.isna() & f["local"]
        d = f[differ.to_numpy(dtype=bool)].copy()
        merged = set()
        if "identity" in self.history:
            merged = set(self.history.loc[self.history["identity"] == "merged", "segment_id"])
        merged |= {f.segment_id for f in self.export.findings.of("merged_identity")
                   if f.segment_id}
        short = self.history_too_short()
        anonymous = d["user_id"].isna() & d["email"].isna() if len(d) else pd.Series(dtype=bool)
        reasons = []
        for i, row in enumerate(d.itertuples()):
            if not row.in_export:
                reasons.append("not_in_export")
            elif row.segment_id in merged:
                reasons.append("merged_identity")
            elif short:
                reasons.append("history_shorter_than_window")
            elif bool(anonymous.iloc[i]):
                reasons.append("anonymous_profile")
            elif pd.isna(row.engage):
                reasons.append("no_engage_value")
            else:
                reasons.append("unexplained")
        d["reason"] = pd.Categorical(reasons, categories=list(DIFFERENCE_REASONS))
        d["explanation"] = d["reason"].map(DIFFERENCE_REASONS).astype(object)
        if short and len(d):
            start = "all time" if self.window_start is None else self.window_start.date()
            extra = (f" (reads from {start}; the history starts "
                     f"{self.history_start.date() if self.history_start is not None else 'nowhere'})")
            d.loc[d["reason"] == "history_shorter_than_window", "explanation"] += extra
        return d.drop(columns=["in_export"]).reset_index(drop=True)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"definition": self.definition.text, "as_of": self.as_of,
                               "history_events": len(self.history),
                               "history_start": self.history_start,
                               "local_members": len(self), "notes": list(self.notes)}
        if self.audience is not None:
            f = self.frame
            engage = f["engage"].fillna(False).astype(bool)
            out.update({"audience": self.audience, "engage_members": int(engage.sum()),
                        "both": int((engage & f["local"]).sum()),
                        "only_local": int((~engage & f["local"]).sum()),
                        "only_engage": int((engage & ~f["local"]).sum())})
            counts = self.differences()["reason"].value_counts()
            out["why"] = {k: int(v) for k, v in counts.items() if v}
        return out

    def __repr__(self) -> str:
        s = self.summary()
        text = (f"<Evaluation {self.definition.text!r} as of {self.as_of.isoformat()}: "
                f"{s['local_members']:,} members")
        if self.audience:
            text += (f"; Engage {self.audience}: {s['engage_members']:,}, both {s['both']:,}, "
                     f"only local {s['only_local']:,}, only Engage {s['only_engage']:,}")
        return text + ">"

    def _repr_html_(self) -> str:
        s = self.summary()
        start = (self.history_start.isoformat() if self.history_start is not None else "none")
        window = "all time" if self.window_start is None else self.window_start.isoformat()
        head = (f"<div class='definition-evaluation'><p><code>{escape(self.definition.text)}"
                f"</code></p><p>Evaluated as of {escape(self.as_of.isoformat())} on "
                f"{len(self.history):,} source events (from {escape(start)}); the definition "
                f"reads from {escape(window)}.</p>")
        head += "".join(f"<p style='color:#b9770e'>⚠ {escape(n)}</p>" for n in self.notes)
        if not self.audience:
            return head + f"<p><b>{s['local_members']:,}</b> profiles selected.</p></div>"
        rows = [("selected locally", s["local_members"]), (f"Engage members of "
                f"{self.audience}", s["engage_members"]), ("in both", s["both"]),
                ("only local", s["only_local"]), ("only Engage", s["only_engage"])]
        table = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td>{v:,}</td></tr>"
                        for k, v in rows)
        why = "".join(f"<li>{v:,} — <b>{escape(k.replace('_', ' '))}</b>: "
                      f"{escape(DIFFERENCE_REASONS[k])}</li>" for k, v in s["why"].items())
        return head + f"<table>{table}</table>" + (f"<p>Why they differ:</p><ul>{why}</ul>"
                                                   if why else "<p>They agree.</p>") + "</div>"


HISTORY["attach"] = attach_history   # EngageExport.with_history (the model imports nothing here)
