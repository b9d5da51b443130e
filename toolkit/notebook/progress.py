"""`SyncProgress`: the one source of a push's running counters, read by the wizard and by tqdm.

A push updates one `SyncProgress` (``start`` from the plan, ``record`` per answered request,
``finish`` from the sync report, which is the truth: it also counts the cohort requests that
`toolkit.apply` does not report one by one). Displays subscribe to it — the wizard's progress bar
and counters, and `SyncProgress.tqdm` for a terminal or a plain notebook cell — so every view shows
the same numbers in the same words (`toolkit.notebook.terms`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from html import escape
from typing import Any, Callable

from toolkit.errors import BrazeAPIError, Outcome
from toolkit.notebook.terms import planned_totals

__all__ = ["SyncProgress"]


@dataclass
class SyncProgress:
    """Running counters of one push, in the shared vocabulary (requests, objects, data points).

    ``requests_done`` counts requests answered (whatever the answer) plus those an earlier push
    already acknowledged; at the end it equals ``requests_total`` unless the push stopped early.
    Subscribe with ``progress.subscribe(callback)``; callbacks get the progress itself.
    """

    requests_total: int = 0
    requests_done: int = 0
    requests_failed: int = 0
    objects_total: int = 0
    objects_acknowledged: int = 0
    objects_rejected: int = 0
    data_points_total: int = 0
    data_points_acknowledged: int | None = None   # known when the push ends (from the report)
    retries: int = 0
    running: bool = False
    finished: bool = False
    _listeners: list = field(default_factory=list, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    # -- observers -------------------------------------------------------------------------
    def subscribe(self, callback: Callable[["SyncProgress"], None]) -> Callable[[], None]:
        """Call ``callback(progress)`` after every change; returns a function that unsubscribes."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)
        return unsubscribe

    def notify(self) -> None:
        for callback in list(self._listeners):
            callback(self)

    # -- updates ---------------------------------------------------------------------------
    def start(self, plan) -> None:
        """Totals from the plan about to be pushed."""
        totals = planned_totals(plan)
        with self._lock:
            self.requests_total = totals["requests"]
            self.objects_total = totals["objects"]
            self.data_points_total = totals["data points"]
            self.running, self.finished = True, False
        self.notify()

    def record(self, objects: int, result: Any) -> None:
        """One answered /users/track request (``toolkit.apply``'s ``on_batch`` callback)."""
        with self._lock:
            self.requests_done += 1
            if isinstance(result, BrazeAPIError):
                self.requests_failed += 1
                self.retries += max((result.attempts or 1) - 1, 0)
                if result.outcome is Outcome.REJECTED:
                    self.objects_rejected += objects
            else:
                rejected = len(result.rejected or {})
                self.objects_rejected += rejected
                self.objects_acknowledged += objects - rejected
                self.retries += max(int(result.attempts) - 1, 0)
        self.notify()

    def finish(self, report=None) -> None:
        """The push ended: take the final counts from its report (when there is one)."""
        with self._lock:
            if report is not None:
                c = report.counts
                self.requests_done = len(report.batches) + int(c.get("batches_skipped", 0))
                self.requests_failed = sum(1 for b in report.batches
                                           if b.get("status") in ("rejected", "failed", "unknown"))
                self.objects_acknowledged = int(c.get("objects_acknowledged", 0))
                self.objects_rejected = int(c.get("objects_rejected", 0))
                self.data_points_acknowledged = int(report.data_points)
                self.retries = int((report.client_stats or {}).get("retries", 0))
            self.running = False
            self.finished = report is not None
        self.notify()

    # -- views -----------------------------------------------------------------------------
    def counters(self) -> list[tuple[str, str]]:
        """(label, value) rows: what the wizard and `_repr_html_` show."""
        points = ("counted when the push ends" if self.data_points_acknowledged is None
                  else f"{self.data_points_acknowledged:,} of {self.data_points_total:,}")
        return [("requests done", f"{self.requests_done:,} of {self.requests_total:,}"),
                ("objects acknowledged", f"{self.objects_acknowledged:,} of "
                                         f"{self.objects_total:,}"),
                ("objects rejected", f"{self.objects_rejected:,}"),
                ("data points acknowledged", points),
                ("requests failed", f"{self.requests_failed:,}"),
                ("retries", f"{self.retries:,}")]

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left;padding-right:12px'>{escape(k)}</th>"
                       f"<td>{escape(v)}</td></tr>" for k, v in self.counters())
        return f"<table class='gs-counters'>{rows}</table>"

    def tqdm(self, **kwargs: Any):
        """A tqdm bar (``tqdm.auto``: a widget in Jupyter, text elsewhere) that follows this
        progress until it finishes; extra keyword arguments go to tqdm (e.g. ``file=``)."""
        # lazy: tqdm.auto imports IPython when it is installed
        from tqdm.auto import tqdm

        options = {"desc": "push", "unit": "request", "leave": True, **kwargs}
        bar = tqdm(total=self.requests_total, **options)

        def follow(p: "SyncProgress") -> None:
            bar.total = p.requests_total
            bar.n = p.requests_done
            bar.set_postfix(objects=p.objects_acknowledged, rejected=p.objects_rejected,
                            refresh=False)
            bar.refresh()
            if not p.running:
                unsubscribe()
                bar.close()

        unsubscribe = self.subscribe(follow)
        follow(self) if self.running else None
        return bar
