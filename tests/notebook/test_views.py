"""HTML views, the sync vocabulary and the progress source, unit by unit."""
from __future__ import annotations

import io
import re

import pandas as pd
import pytest

from toolkit.engage.model import Findings
from toolkit.errors import BrazeAPIError, ToolkitError
from toolkit.notebook import views
from toolkit.notebook.progress import SyncProgress
from toolkit.notebook.terms import TERMS, UNITS, legend_html
from toolkit.errors import ApprovalRefused


@pytest.mark.parametrize("value, text", [
    (494.0, "494"), (1234, "1,234"), (12.5, "12.50"), (None, "—"), (float("nan"), "—"),
    (pd.NA, "—"), (pd.NaT, "—"), (True, "yes"), ("<b>", "&lt;b&gt;"),
    (pd.Timestamp("2026-11-30T05:20:16.813074112Z"), "30 Nov 2026, 05:20 UTC"),
])
def test_cells_read_as_people_write_them(value, text):
    assert views.cell(value) == text


def test_a_summary_table_has_no_float_counts_or_none(export):
    summary = export.summary()
    assert summary["members"].dtype == float                # the frame itself holds 19.0 / NaN
    html = views.frame_html(summary)
    assert ">19<" in html and "19.0" not in html
    assert "None" not in html and "nan" not in html.lower() and "—" in html


def test_times_say_how_long_ago():
    now = pd.Timestamp("2026-03-01T08:30:00Z")
    assert views.readable_time("2026-03-01T05:20:00Z", now) == "1 Mar 2026, 05:20 UTC (3 hours ago)"
    assert views.readable_time("2026-03-01T09:30:00+00:00", now).endswith("(in 1 hour)")
    assert views.readable_time(None) == "unknown"


def test_freshness_says_how_engage_refreshes_and_how_old_the_preview_is(export):
    now = export.snapshot_at + pd.Timedelta(hours=5)
    f = views.freshness(export, now)
    assert f["snapshot"].startswith("1 Mar 2026, 00:00 UTC (5 hours ago)")
    for words in ("about every 10 minutes", "every 8 hours", "12–15 hours", "up to 24 hours"):
        assert words in f["refresh"]
    assert "5 hours ago" in f["lag"]
    export.snapshot_at = None
    assert "unknown" in views.freshness(export, now)["snapshot"]


def test_filters_show_names_as_code_not_backticks():
    html = views.filter_html("Custom Attribute `vip<1>` is true")
    assert html == "Custom Attribute <code>vip&lt;1&gt;</code> is true" and "`" not in html


def test_errors_are_titled_in_words_not_class_names():
    html = views.error_html(ApprovalRefused("the box is not ticked", field="confirmation",
                                            hint="tick it"))
    assert "Not approved:" in html and "ApprovalRefused" not in html
    assert "How to fix" in html and "confirmation" in html
    assert views.error_title(BrazeAPIError("boom")) == "Braze answered with an error"
    assert views.error_title(ToolkitError("x")) == "Something needs fixing"


def _findings() -> Findings:
    f = Findings()
    for row in range(1, 41):
        f.add("error", "anonymous_only", "profile has only anonymous ids", row=row,
              column="anonymous_id", segment_id=f"use_{row:03d}", fix="plan(alias_label=…)")
    f.add("info", "email_only", "61 profiles have an email but no user_id", column="email",
          fix="opt in")
    for c in ("a", "b", "c"):
        f.add("info", "string_boolean", f"column {c!r} holds text", column=c)
    return f


def test_findings_are_grouped_each_message_once_with_profile_counts():
    table = views.findings_table(_findings())
    assert table["message"].is_unique
    rows = table.set_index("code")
    assert rows.loc["anonymous_only", "findings"] == 40 == rows.loc["anonymous_only", "profiles"]
    assert rows.loc["email_only", "findings"] == 1 and rows.loc["email_only", "profiles"] == 61
    assert rows.loc["anonymous_only", "where"].endswith("… and 32 more")
    html = views.findings_html(_findings())
    assert html.count("profile has only anonymous ids") == 1
    assert "44 findings, 5 distinct messages" in html
    # fixes point to the wizard's controls where it has one
    assert "In step 3 (Map)" in html and "plan(alias_label" not in html


def test_the_findings_list_says_when_it_is_cut():
    html = views.findings_html(_findings(), limit=2)
    assert "Showing 2 of 5 distinct messages" in html


def test_plan_findings_count_profiles_from_what_was_left_out():
    f = Findings()
    f.add("warning", "anonymous_only", "119 profile(s) not syncable: anonymous only")
    left_out = pd.DataFrame({"segment_id": [f"use_{i}" for i in range(7)], "uid": None,
                             "rule": None, "code": "anonymous_only", "reason": "x"})
    assert views.findings_table(f, left_out)["profiles"].tolist() == [7]


def test_the_legend_defines_every_unit_once():
    html = legend_html()
    for unit in UNITS + ("HTTP calls",):
        assert html.count(f">{unit}<") == 1 and TERMS[unit][:30] in html


class _Result:
    def __init__(self, rejected=None, attempts=1):
        self.rejected, self.attempts = rejected or {}, attempts


def test_progress_notifies_its_readers_and_a_tqdm_bar_follows_it():
    p = SyncProgress(requests_total=3, objects_total=200)
    seen = []
    unsubscribe = p.subscribe(lambda q: seen.append(q.requests_done))
    p.running = True
    out = io.StringIO()
    bar = p.tqdm(file=out, mininterval=0)
    p.record(75, _Result())
    p.record(75, _Result({("attributes", 3): "bad"}, attempts=2))
    p.record(50, BrazeAPIError("refused", outcome="rejected", attempts=1))
    assert (p.requests_done, p.objects_acknowledged, p.objects_rejected, p.requests_failed,
            p.retries) == (3, 149, 51, 1, 1)
    assert seen == [1, 2, 3] and bar.n == 3 == p.requests_done
    unsubscribe()
    p.finish()
    assert seen == [1, 2, 3] and not p.running
    assert p._listeners == []                              # the bar closed and let go
    text = out.getvalue()
    assert "3/3" in text and re.search(r"objects=149", text) and "rejected=51" in text
    html = p._repr_html_()
    assert "3 of 3" in html and "149 of 200" in html and "counted when the push ends" in html
