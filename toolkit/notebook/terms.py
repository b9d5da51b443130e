"""One vocabulary for the size of a sync, defined once and used by every view of it.

The plan, the push counters, the sync report, the throughput plot and the saved files all count
the same four things, with these words:

operation
    one change for one Braze user: an attribute value set or removed, one event, or one cohort
    membership change. A plan is a list of operations.
object
    one entry of a request, and what Braze acknowledges or rejects: all of one user's attribute
    changes (one ``attributes`` object), one event, or one user added to or removed from a cohort.
request
    one call that carries up to 75 objects (a ``/users/track`` batch or a cohort update). A retry
    repeats a request and is counted as a retry, not as another request.
data point
    what Braze bills: each attribute value written and each event (cohort changes are not billed).

HTTP calls are what the client really sent: the requests, their retries, and set-up calls such as
creating a partner cohort before its first update. `totals_frame` sets them side by side so that
planned = acknowledged + rejected + failed or unknown + skipped + not sent, for every unit.
"""
from __future__ import annotations

from html import escape
from typing import Any

import pandas as pd

__all__ = ["TERMS", "UNITS", "legend_html", "planned_totals", "totals_frame", "http_calls"]

# word (plural, as shown) -> definition; the single source for every legend and docstring
TERMS: dict[str, str] = {
    "operations": "one change for one Braze user: an attribute value set or removed, one event, "
                  "or one cohort membership change. The plan lists operations.",
    "objects": "one entry of a request, and what Braze acknowledges or rejects: all of one "
               "user's attribute changes, one event, or one user added to or removed from a "
               "cohort.",
    "requests": "one call carrying up to 75 objects (a /users/track batch or a cohort update). "
                "A retry repeats a request and is counted as a retry, not as another request.",
    "data points": "what Braze bills: each attribute value written and each event (cohort "
                   "changes are not billed).",
    "HTTP calls": "what the client really sent: the requests, their retries, and set-up calls "
                  "such as creating a partner cohort before its first update.",
}
UNITS = ("operations", "objects", "requests", "data points")
OUTCOMES = ("planned", "acknowledged", "rejected", "failed or unknown", "skipped", "not sent")


def legend_html(units: tuple[str, ...] = UNITS + ("HTTP calls",), *, open_: bool = False) -> str:
    """A collapsible legend defining the words a view uses."""
    items = "".join(f"<dt style='font-weight:bold'>{escape(u)}</dt>"
                    f"<dd style='margin:0 0 4px 16px'>{escape(TERMS[u])}</dd>" for u in units)
    return (f"<details class='gs-legend'{' open' if open_ else ''}><summary><b>What these words "
            f"mean</b></summary><dl style='margin:4px 0'>{items}</dl></details>")


def planned_totals(plan) -> dict[str, int]:
    """operations, objects, requests and data points a plan will send."""
    cost = plan.cost()
    batches = plan.batches()
    return {"operations": int(cost["operations"]),
            "objects": int(sum(b.objects for b in batches)),
            "requests": int(len(batches)),
            "data points": int(cost["data_points"])}


def http_calls(report) -> dict[str, int]:
    """The HTTP calls of a push split into requests sent, retries and set-up calls."""
    stats = report.client_stats or {}
    calls = int(stats.get("requests", 0) or 0)
    retries = int(stats.get("retries", 0) or 0)
    sent = int(report.counts.get("batches_sent", 0) or 0)
    return {"HTTP calls": calls, "requests sent": sent, "retries": retries,
            "set-up calls": max(calls - sent - retries, 0),
            "answered 429": int(stats.get("rate_limited", 0) or 0)}


def totals_frame(plan, report=None) -> pd.DataFrame:
    """One row per unit (operations, objects, requests, data points), one column per outcome.

    Without a report only "planned" is filled. With one, each unit's planned count splits into
    acknowledged + rejected + failed or unknown + skipped + not sent (what an aborted push never
    reached); a cell that does not apply is NA (operations are packed into objects and not counted
    per outcome; Braze bills only what it acknowledged).
    """
    planned = planned_totals(plan)
    frame = pd.DataFrame(pd.NA, index=list(UNITS), columns=list(OUTCOMES), dtype="Int64")
    frame.index.name = "unit"
    for unit, value in planned.items():
        frame.loc[unit, "planned"] = value
    if report is None:
        return frame[["planned"]]
    c: dict[str, Any] = report.counts
    n = {k: int(c.get(k, 0) or 0) for k in (
        "batches_acknowledged", "batches_rejected", "batches_failed", "batches_unknown",
        "batches_uncertain", "batches_skipped", "objects_acknowledged", "objects_rejected",
        "objects_failed", "objects_unknown", "objects_uncertain", "objects_skipped")}
    rows = {
        "requests": (n["batches_acknowledged"], n["batches_rejected"],
                     n["batches_failed"] + n["batches_unknown"] + n["batches_uncertain"],
                     n["batches_skipped"]),
        "objects": (n["objects_acknowledged"], n["objects_rejected"],
                    n["objects_failed"] + n["objects_unknown"] + n["objects_uncertain"],
                    n["objects_skipped"]),
    }
    for unit, (ack, rej, bad, skipped) in rows.items():
        frame.loc[unit, ["acknowledged", "rejected", "failed or unknown", "skipped"]] = \
            [ack, rej, bad, skipped]
        frame.loc[unit, "not sent"] = max(planned[unit] - ack - rej - bad - skipped, 0)
    frame.loc["data points", "acknowledged"] = int(report.data_points)
    return frame
