"""Settle event batches whose outcome is unknown, from what Braze reads back — never by guessing.

An apply that never got Braze's answer for an event batch (a dropped connection, a timeout, a
crash) does not know whether Braze recorded those events, and sending them again would count them
twice. The ledger keeps such a batch *uncertain*, and plans hold its users' events back, until it
is settled. `settle(ledger, client)` reads the batch's users back with ``/users/export/ids``
(``custom_events``: ``name``, ``first``, ``last``, ``count``) and decides a batch only on
evidence that cannot mean anything else:

* **Each plan stamps all its events with one time of its own** (``plan.options["event_time"]``:
  the export's snapshot time, moved a second earlier for each earlier plan of the same ledger
  that used that second — `Ledger.reserve_event_time`). A resend of the same plan sends the
  identical events, with the same time.
* An event is **present** when Braze's ``first`` or ``last`` of that event name for that user
  falls in the plan's second (no other plan of this ledger uses it); **absent** when the user has
  no such event, or all of them are earlier (``last`` before) or later (``first`` after) than it;
  otherwise (older and newer events of that name around it) the read-back cannot tell.
* A batch **landed** when every one of its events is present. In update-only mode (no
  ``create_users``) a user Braze does not know is consistent with that too: Braze skips events
  for unknown users without an error.
* A batch **did not land** when none of its events is present — every user lacks the event or
  is unknown to Braze — and Braze's read-after-write delay (``wait``, default 5 minutes) has
  passed since the batch was last in flight (its unknown answer; for a crashed apply, its plan's
  last recorded activity). Events older than Braze's 90-day export window cannot be seen, so
  absence proves nothing for them.
* Anything else — part of a batch visible, an event the read-back cannot place, a user it cannot
  look up, a batch the ledger kept no event names for, or "nothing visible yet" within the wait —
  stays **undecided** and is listed with its users and the evidence. A person checks Braze and
  settles it by hand: ``settle --landed PLAN/BATCH`` or ``--not-landed PLAN/BATCH``
  (``settle(…, landed=[…], not_landed=[…])``).

Landed batches are recorded as acknowledged (nothing will resend them); batches that did not land
are released, so the next plan sends their events once. The rule assumes the event names are
sent to these users only by this toolkit (another source sending "Audience Entered" stamped in
the very same second would look like ours) and that Braze reports an event's own ``time`` in
``first``/``last``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html import escape
from typing import Any, Iterable

import pandas as pd

from toolkit.durations import checked_duration
from toolkit.errors import ConfigError, SettleError
from toolkit.sync.ledger import Ledger, describe_workspace

__all__ = ["settle", "SettleReport", "DEFAULT_WAIT", "parse_wait"]

DEFAULT_WAIT = timedelta(minutes=5)     # braze-api.md §6: "allow for a 5-minute delay"
VISIBLE_DAYS = 89                       # /users/export/ids reports the last 90 days of events
READ_FIELDS = ("external_id", "user_aliases", "braze_id", "email", "custom_events")
DECISIONS = ("landed", "not landed", "undecided")


def parse_wait(value: "timedelta | int | float | str") -> timedelta:
    """``timedelta``, seconds, or text like ``"90s"``, ``"5m"``, ``"1h"`` (zero allowed)."""
    return checked_duration(value, error=ConfigError, field="wait", what="wait",
                            examples="5m, 90s, 300s or 1h", allow_zero=True)


def _instant(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


def _second(when: datetime) -> datetime:
    return when.astimezone(timezone.utc).replace(microsecond=0)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(timezone.utc).isoformat(
        timespec="seconds").replace("+00:00", "Z")


@dataclass
class SettleReport:
    """What `settle` decided for each uncertain event batch, and on which evidence.

    ``decisions`` has one dict per batch: ``plan``, ``batch``, ``decision`` (``landed``, ``not
    landed`` or ``undecided``), ``by`` (``read-back`` or ``hand``), ``events``, ``users`` (every
    Braze user of the batch), ``evidence`` (one sentence), ``sent_at``, ``event_time`` and
    ``decide_after`` (when a "not landed" decision becomes possible). ``evidence`` has one dict
    per event read back: ``plan``, ``batch``, ``braze_user``, ``event``, ``field`` (the ledger
    field it changes, e.g. ``member:vip``), ``seen`` (present, absent, no profile, unclear) and
    Braze's ``first``/``last``/``count``."""

    workspace: str
    ledger: str
    checked_at: str
    wait_s: float
    decisions: list = field(default_factory=list)
    evidence: list = field(default_factory=list)
    requests: int = 0

    def _of(self, decision: str) -> list[dict]:
        return [d for d in self.decisions if d["decision"] == decision]

    @property
    def landed(self) -> list[dict]:
        return self._of("landed")

    @property
    def not_landed(self) -> list[dict]:
        return self._of("not landed")

    @property
    def undecided(self) -> list[dict]:
        return self._of("undecided")

    @property
    def exit_code(self) -> int:
        """0 when nothing awaits a decision any more, 3 when batches stay undecided."""
        return 3 if self.undecided else 0

    def to_frame(self) -> pd.DataFrame:
        """One row per batch: plan, batch, decision, by, events, users, evidence, times."""
        cols = ["plan", "batch", "decision", "by", "events", "users", "evidence", "sent_at",
                "event_time", "decide_after"]
        rows = [{**d, "users": ", ".join(d["users"])} for d in self.decisions]
        return pd.DataFrame(rows, columns=cols)

    def evidence_frame(self) -> pd.DataFrame:
        """One row per event read back: what Braze showed for it."""
        cols = ["plan", "batch", "braze_user", "event", "field", "seen", "first", "last",
                "count"]
        return pd.DataFrame(self.evidence, columns=cols)

    def summary(self) -> dict[str, int]:
        return {"batches": len(self.decisions), "landed": len(self.landed),
                "not_landed": len(self.not_landed), "undecided": len(self.undecided),
                "requests": self.requests}

    def lines(self) -> list[str]:
        """The report as text, one decision per line, undecided batches with every user and
        the evidence for each event, and how to settle them by hand."""
        s = self.summary()
        if not s["batches"]:
            return [f"Nothing to settle: no event batch of {self.workspace} has an unknown "
                    "outcome."]
        out = [f"Settled {s['landed'] + s['not_landed']:,} of {s['batches']:,} uncertain event "
               f"batch(es) of {self.workspace}: {s['landed']:,} landed, {s['not_landed']:,} did "
               f"not land, {s['undecided']:,} undecided ({s['requests']:,} read-back requests)"]
        for d in self.decisions:
            name = f"{d['plan']}/{d['batch']}"
            out.append(f"  {d['decision'].upper():<10} {name} ({d['events']} events, "
                       f"{len(d['users'])} users, by {d['by']}): {d['evidence']}")
            if d["decision"] == "undecided":
                out.append(f"    users: {', '.join(d['users'])}")
                for e in self.evidence:
                    if (e["plan"], e["batch"]) == (d["plan"], d["batch"]) and \
                            e["seen"] != "present":
                        out.append(f"    {e['braze_user']} {e['event']!r} ({e['field']}): "
                                   f"{e['seen']}"
                                   + (f" (first {e['first']}, last {e['last']}, count "
                                      f"{e['count']})" if e["first"] else ""))
                out.append(f"    settle by hand after checking Braze: python -m toolkit settle "
                           f"--landed {name}   (or --not-landed {name}), with the same target "
                           "options")
        return out

    def __repr__(self) -> str:
        s = self.summary()
        return (f"<SettleReport {self.workspace}: {s['batches']} uncertain batch(es) — "
                f"{s['landed']} landed, {s['not_landed']} not landed, {s['undecided']} "
                f"undecided; {s['requests']} read-back requests>")

    def _repr_html_(self) -> str:
        s = self.summary()
        colour = "#27ae60" if not s["undecided"] else "#e67e22"
        if not s["batches"]:
            body = "<p>Nothing to settle: no event batch has an unknown outcome.</p>"
        else:
            body = (f"<p>{s['landed']:,} landed · {s['not_landed']:,} did not land · "
                    f"<b>{s['undecided']:,} undecided</b> · {s['requests']:,} read-back requests"
                    f" · wait {self.wait_s:g} s</p>" + self.to_frame().to_html(index=False))
        if s["undecided"]:
            bad = self.evidence_frame()
            bad = bad[bad["seen"] != "present"]
            body += ("<h5>Evidence for the undecided batches</h5>" + bad.head(200).to_html(
                index=False) + "<p>Check these users in Braze, then settle each batch by hand: "
                "<code>python -m toolkit settle --landed PLAN/BATCH</code> (or "
                "<code>--not-landed</code>), or <code>settle(ledger, client, landed=[…])</code>."
                "</p>")
        return (f"<div class='toolkit-settle' style='border-left:4px solid {colour};"
                f"padding:4px 8px'><h4>Settle — {escape(self.workspace)}</h4>{body}</div>")


def _lookup_of(uid: str) -> tuple[str, Any] | None:
    """How to read one Braze user key back: (kind, value) for `BrazeClient.export_ids`."""
    kind, _, value = uid.partition(":")
    if kind == "external_id" and value:
        return "external_id", value
    if kind == "alias":
        label, _, name = value.partition(":")
        if label and name:
            return "alias", (name, label)
    if kind == "braze_id" and value:
        return "braze_id", value
    if kind == "email" and value:
        return "email", value
    return None


def _read_back(client, uids: Iterable[str]) -> tuple[dict[str, Any], int]:
    """{uid: Braze's profile, None (not in Braze) or "unclear"} and the requests made."""
    lookups = {uid: _lookup_of(uid) for uid in dict.fromkeys(uids)}
    out: dict[str, Any] = {uid: "unclear" for uid, how in lookups.items() if how is None}
    external = [v for how in lookups.values() if how and how[0] == "external_id" for v in [how[1]]]
    aliases = [{"alias_name": n, "alias_label": lab} for how in lookups.values()
               if how and how[0] == "alias" for n, lab in [how[1]]]
    braze_ids = [how[1] for how in lookups.values() if how and how[0] == "braze_id"]
    emails = [how[1] for how in lookups.values() if how and how[0] == "email"]
    if not (external or aliases or braze_ids or emails):
        return out, 0
    answer = client.export_ids(external_ids=external, user_aliases=aliases,
                               braze_ids=braze_ids, email_addresses=emails,
                               fields_to_export=list(READ_FIELDS))
    by_external, by_alias = {}, {}
    for user in answer.get("users") or []:
        if user.get("external_id") is not None:
            by_external[user["external_id"]] = user
        for a in user.get("user_aliases") or []:
            by_alias[(a.get("alias_name"), a.get("alias_label"))] = user
    singles = answer.get("by_lookup") or {}
    for uid, how in lookups.items():
        if how is None:
            continue
        kind, value = how
        if kind == "external_id":
            out[uid] = by_external.get(value)
        elif kind == "alias":
            out[uid] = by_alias.get(value)
        else:
            found = singles.get(("braze_id" if kind == "braze_id" else "email_address", value), [])
            # an email shared by several profiles: which one got the event cannot be told
            out[uid] = found[0] if len(found) == 1 else (None if not found else "unclear")
    return out, int(answer.get("requests", 0))


def _seen(profile: Any, name: str, stamp: datetime) -> dict:
    """What Braze's read-back says about one event stamped ``stamp`` (a whole second)."""
    if profile == "unclear":
        return {"seen": "unclear", "first": None, "last": None, "count": None,
                "why": "the read-back cannot single out this user"}
    if profile is None:
        return {"seen": "no profile", "first": None, "last": None, "count": None}
    counters = {e.get("name"): e for e in profile.get("custom_events") or []
                if isinstance(e, dict)}
    event = counters.get(name)
    if event is None:
        return {"seen": "absent", "first": None, "last": None, "count": 0}
    first, last = _instant(event.get("first")), _instant(event.get("last"))
    row = {"first": _iso(first), "last": _iso(last), "count": event.get("count")}
    if first is None or last is None:
        return {**row, "seen": "unclear"}
    first, last = _second(first), _second(last)
    if stamp in (first, last):
        return {**row, "seen": "present"}
    if last < stamp or first > stamp:
        return {**row, "seen": "absent"}
    return {**row, "seen": "unclear"}


def _decide(batch: dict, rows: list[dict], stamp: datetime | None, *, now: datetime,
            wait: timedelta, quiet_since: datetime | None) -> tuple[str, str, datetime | None]:
    """(decision, evidence sentence, earliest time a "not landed" decision is possible)."""
    n = len(rows)
    if stamp is None or not batch["events"]:
        return ("undecided", "the ledger kept no event names or event time for this batch "
                "(recorded by an older toolkit), so Braze's read-back cannot be matched to it; "
                "check its users in Braze and settle it by hand", None)
    count = {k: sum(1 for r in rows if r["seen"] == k)
             for k in ("present", "absent", "no profile", "unclear")}
    update_only = batch["create_users"] is False
    stamp_text = _iso(stamp)
    decide_after = (quiet_since + wait) if quiet_since is not None else None
    if count["present"] and not count["unclear"] and not count["absent"] and (
            update_only or not count["no profile"]):
        skipped = (f"; {count['no profile']:,} of its users are not in Braze (update-only mode: "
                   "Braze skipped their events)" if count["no profile"] else "")
        return ("landed", f"{count['present']:,} of {n:,} events show the plan's time "
                f"{stamp_text} as Braze's first or last of their name{skipped}", decide_after)
    if not count["present"] and not count["unclear"]:
        if stamp < now - timedelta(days=VISIBLE_DAYS):
            return ("undecided", f"none of the {n:,} events is visible, but the plan's time "
                    f"{stamp_text} is older than Braze's 90-day export window, where an event "
                    "would not show either; check Braze and settle it by hand", None)
        if decide_after is None or now < decide_after:
            when = _iso(decide_after) if decide_after is not None else "later"
            return ("undecided", f"none of the {n:,} events is visible yet; Braze can take up "
                    f"to {wait.total_seconds():g} s to show a write, so run settle again after "
                    f"{when}", decide_after)
        missing = (f"{count['absent']:,} missing"
                   + (f", {count['no profile']:,} for users not in Braze" if count["no profile"]
                      else ""))
        return ("not landed", f"none of the {n:,} events is in Braze "
                f"{(now - quiet_since).total_seconds():.0f} s after the batch was last in "
                f"flight ({missing}; none shows the plan's time {stamp_text})", decide_after)
    parts = [f"{count[k]:,} {label}" for k, label in (
        ("present", "show the plan's time"), ("absent", "are missing"),
        ("no profile", "belong to users not in Braze"),
        ("unclear", "cannot be placed (older and newer events of the name around the plan's "
                    "time, or a user the read-back cannot single out)")) if count[k]]
    return ("undecided", f"of {n:,} events, " + ", ".join(parts) + "; check these users in "
            "Braze and settle it by hand", decide_after)


def settle(ledger=None, client=None, *, wait: "timedelta | int | float | str" = DEFAULT_WAIT,
           now: datetime | None = None, landed: Iterable[str] = (),
           not_landed: Iterable[str] = ()) -> SettleReport:
    """Decide the event batches whose outcome is unknown, from Braze's read-back of their
    users (the rule is in this module's docstring); returns a `SettleReport`.

    ``ledger`` is a `Ledger`, its path, or None for ``client``'s default ledger. ``wait`` is
    Braze's read-after-write delay: a batch is declared "not landed" only that long after it
    was last in flight. ``now`` overrides the clock (tests). ``landed`` / ``not_landed`` settle
    the named batches by hand (``"PLAN/BATCH"``, or a batch name alone when unique) instead of
    reading Braze back; then ``client`` is only needed to find the default ledger.
    """
    wait = parse_wait(wait)
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    landed, not_landed = list(landed), list(not_landed)
    owned = not isinstance(ledger, Ledger)
    if isinstance(ledger, (str, os.PathLike)):
        ledger = Ledger(path=ledger, workspace=client)
    elif ledger is None:
        if client is None:
            raise SettleError("settle needs the ledger or a client of its workspace",
                              hint="settle(ledger, client), or settle(client=client) for the "
                                   "client's default ledger")
        ledger = Ledger(client)
    try:
        if client is not None and ledger.workspace not in (None, client.workspace):
            raise SettleError(
                f"the ledger belongs to {describe_workspace(ledger.workspace)}, the client "
                f"targets {describe_workspace(client.workspace)}; nothing was decided",
                file=ledger.location, hint="settle with a client of the ledger's workspace")
        with ledger.exclusive("settle"):
            return _settle_locked(ledger, client, wait, now, landed, not_landed)
    finally:
        if owned:
            ledger.close()


def _settle_locked(ledger, client, wait: timedelta, now: datetime, landed: list[str],
                   not_landed: list[str]) -> SettleReport:
    report = SettleReport(workspace=str(ledger.workspace), ledger=ledger.location,
                          checked_at=_iso(now), wait_s=wait.total_seconds())
    batches = ledger.uncertain_batches()
    if landed or not_landed:
        chosen = {}
        for spec, is_landed in [(s, True) for s in landed] + [(s, False) for s in not_landed]:
            key = ledger.find_uncertain(spec)
            if key in chosen and chosen[key] != is_landed:
                raise SettleError("the same batch is named both landed and not landed",
                                  batch=f"{key[0]}/{key[1]}",
                                  hint="check Braze and name it once")
            chosen[key] = is_landed
        for b in batches:
            key = (b["plan"], b["batch"])
            users = list(dict.fromkeys(u for u, _, _ in b["events"]))
            if key in chosen:
                ok = chosen[key]
                ledger.resolve(b["plan"], b["batch"], landed=ok, reason="settled by hand: "
                               + ("landed" if ok else "did not land"))
                decision, evidence = ("landed" if ok else "not landed"), "settled by hand"
                by = "hand"
            else:
                decision, by = "undecided", "-"
                evidence = "not checked (only the batches named by hand were settled)"
            report.decisions.append(_row(b, decision, by, users, evidence, None))
        return report
    if not batches:
        return report
    if client is None:
        raise SettleError("reading Braze back needs a client", hint="settle(ledger, client), or "
                          "settle by hand with landed=[…] / not_landed=[…]")
    quiet = _quiet_since(ledger)
    readable = [b for b in batches if b["events"] and b["event_time"]]
    profiles, report.requests = _read_back(client, [u for b in readable
                                                    for u, _, _ in b["events"]])
    for b in batches:
        users = list(dict.fromkeys(u for u, _, _ in b["events"]))
        stamp = _instant(b["event_time"])
        stamp = _second(stamp) if stamp is not None else None
        rows = []
        if stamp is not None:
            for uid, name, _field in b["events"]:
                seen = _seen(profiles.get(uid, "unclear"), name, stamp)
                row = {"plan": b["plan"], "batch": b["batch"], "braze_user": uid, "event": name,
                       "field": _field,
                       **{k: seen.get(k) for k in ("seen", "first", "last", "count")}}
                rows.append(row)
        report.evidence += rows
        decision, evidence, after = _decide(b, rows, stamp, now=now, wait=wait,
                                            quiet_since=quiet.get((b["plan"], b["batch"])))
        if decision != "undecided":
            ledger.resolve(b["plan"], b["batch"], landed=decision == "landed",
                           reason=f"settled from Braze's read-back: {evidence}"[:500])
        report.decisions.append(_row(b, decision, "read-back" if decision != "undecided" else
                                     "-", users, evidence, after))
    ledger.materialize()
    return report


def _row(b: dict, decision: str, by: str, users: list[str], evidence: str,
         after: datetime | None) -> dict:
    return {"plan": b["plan"], "batch": b["batch"], "decision": decision, "by": by,
            "events": b["objects"], "users": users, "evidence": evidence,
            "sent_at": b["sent_at"], "event_time": b["event_time"],
            "decide_after": _iso(after)}


def _quiet_since(ledger) -> dict[tuple[str, str], datetime | None]:
    """When each uncertain batch was last in flight: its unknown answer; for a batch left
    'sent' by a crashed apply, its plan's last recorded activity (the process was alive then)."""
    rows = ledger._query(
        "SELECT b.plan, b.batch, b.status, b.sent_at, b.answered_at, (SELECT max(max(coalesce("
        "o.answered_at, ''), coalesce(o.sent_at, ''))) FROM batches o WHERE o.plan = b.plan) "
        "FROM batches b WHERE b.kind = 'events' AND b.status IN ('sent', 'unknown')")
    out = {}
    for plan, batch, status, sent_at, answered_at, latest in rows:
        marks = [_instant(t) for t in ((answered_at,) if status == "unknown" and answered_at
                                       else (sent_at, latest))]
        marks = [m for m in marks if m is not None]
        out[(plan, batch)] = max(marks) if marks else None
    return out
