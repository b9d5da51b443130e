"""Issue 13, defect by defect: no stale export, totals that add up, every fix reachable in the
wizard, a layout that reads. The wizard is driven headless, as an analyst clicks."""
from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest

import toolkit
from toolkit.notebook import plots, wizard as wizard_module
from toolkit.notebook.terms import UNITS, http_calls, planned_totals, totals_frame
from toolkit.notebook.wizard import (APPROVAL_DURATIONS, STEP_DEFINITIONS, GuidedSync,
                                     GuidedSyncState, bundled_samples)
from toolkit.sandbox import BrazeSandbox

SAMPLES = bundled_samples()
SAMPLE = next(iter(SAMPLES))                 # Profiles Sync: every audience and trait
EVENTS_SAMPLE = "Sample shop — Engage events (NDJSON, with history)"
REPO = Path(__file__).resolve().parents[2]



@pytest.fixture
def no_partner_keys(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                  # no .env here
    for name in wizard_module.PARTNER_KEYS:
        monkeypatch.delenv(name, raising=False)


def _go_to(w: GuidedSync, key: str) -> None:
    target = [s.key for s in STEP_DEFINITIONS].index(key)
    while w.state.step < target:
        before = w.state.step
        w.next_button.click()
        assert w.state.step == before + 1, w.state.error


def _text(markup: str) -> str:
    markup = re.sub(r"<style>.*?</style>", " ", markup, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", markup)))


def _approve(w: GuidedSync) -> None:
    w.approver_text.value = "Ana"
    w.confirm_box.value = True
    w.approve_button.click()
    assert w.state.approved, w.state.error


# -- 1. a failed load ----------------------------------------------------------------------------

def test_a_failed_load_clears_the_export_disables_next_and_the_dropdown(wizard, tmp_path):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    assert w.state.export is not None and not w.next_button.disabled
    first = w.state.export
    bad = tmp_path / "not_engage.csv"
    bad.write_text("name,colour\nmug,blue\n")
    w.path_text.value = str(bad)
    w.load_button.click()
    assert w.state.export is None and w.state.mapping is None and w.state.source is None
    assert w.next_button.disabled and w.sample_dropdown.value is None   # the dropdown is honest
    assert "not_engage.csv" in w.error_html.value
    assert first.source not in w.export_html.value                     # no old summary below
    assert "was unloaded" in w.export_html.value and SAMPLE in w.export_html.value
    w.next_button.click()
    assert w.state.step == 0 and "not done" in w.error_html.value

    w.sample_dropdown.value = EVENTS_SAMPLE                            # a good one again
    assert w.state.source == EVENTS_SAMPLE and w.path_text.value == ""
    _go_to(w, "plan")
    w.back_button.click()
    for _ in range(3):
        w.back_button.click()
    assert w.state.step == 0
    w.path_text.value = str(tmp_path / "missing.csv")
    w.load_button.click()                                              # later steps are gone
    assert w.state.plan is None and w.state.preview is None and w.state.export is None
    assert w.sample_dropdown.value is None and w.next_button.disabled


def test_a_relative_path_error_names_the_working_directory(wizard, monkeypatch):
    monkeypatch.chdir(REPO / "notebooks")
    w = wizard()
    w.path_text.value = "data/samples/profiles_sync"                   # the README's path
    w.load_button.click()
    error = _text(w.error_html.value)
    assert str(REPO / "notebooks") in error
    assert "did you mean ../data/samples/profiles_sync?" in error
    w.path_text.value = "../data/samples/profiles_sync"
    w.load_button.click()
    assert w.state.export is not None and w.error_html.value == ""


# -- 2. totals that reconcile --------------------------------------------------------------------

def test_plan_counters_report_plot_and_files_count_the_same_things(wizard):
    w = wizard(plots=True)
    state = w.run_all(SAMPLE, rules={"vip_customer": {"send_as": "both"},
                                     "dormant_shopper": {"send_as": "cohort"}})
    assert state.step == 8, state.error
    planned = planned_totals(state.plan)
    report, p = state.report, state.progress
    assert any(b.kind == "cohort" for b in state.plan.batches())

    # every unit: planned = acknowledged + rejected + failed or unknown + skipped + not sent
    totals = state.totals()
    for unit in ("objects", "requests"):
        row = totals.loc[unit]
        assert row["planned"] == planned[unit] == row.drop("planned").sum()
    assert totals.loc["data points", "acknowledged"] == planned["data points"] == \
        report.data_points
    # push counters (the SyncProgress both the widget and tqdm read) = the report
    assert (p.requests_done, p.requests_total) == (planned["requests"],) * 2
    assert p.objects_acknowledged == report.counts["objects_acknowledged"] == planned["objects"]
    assert p.data_points_acknowledged == report.data_points
    counters = _text(w.counters_html.value)
    assert f"requests done {planned['requests']:,} of {planned['requests']:,}" in counters
    assert f"objects acknowledged {planned['objects']:,} of {planned['objects']:,}" in counters
    assert f"data points acknowledged {report.data_points:,}" in counters
    # the report as shown uses the same words and numbers, HTTP calls explained
    shown = _text(w.push_result_html.value)
    assert (f"objects {planned['objects']:,} {planned['objects']:,} 0 0 0 0" in shown)
    assert (f"requests {planned['requests']:,} {planned['requests']:,} 0 0 0 0" in shown)
    calls = http_calls(report)
    assert calls["HTTP calls"] == calls["requests sent"] + calls["set-up calls"] + \
        calls["retries"] and calls["set-up calls"] == 1
    assert f"HTTP calls: {calls['HTTP calls']:,} = {planned['requests']:,} requests sent + 1 " \
           "set-up call" in shown
    assert "What these words mean" in w.push_result_html.value
    # the plot ends at the report's totals (the cohort batch included)
    fig = plots.sync_throughput(report)
    assert fig.axes[0].get_lines()[0].get_ydata()[-1] == planned["objects"]
    assert f"{planned['requests']:,} requests" in fig.axes[1].get_title()
    # and the files
    saved = pd.read_csv(state.saved["totals (CSV)"]).set_index("unit")
    assert saved.loc["objects", "acknowledged"] == planned["objects"]
    assert saved.loc["requests", "planned"] == planned["requests"]
    data = json.loads(state.saved["report (JSON)"].read_text())
    assert data["counts"]["objects_acknowledged"] == planned["objects"]
    plan_file = json.loads(state.saved["plan (JSON)"].read_text())
    assert plan_file["fingerprint"] == state.plan.fingerprint and plan_file["approval"]["by"]


def test_a_plan_without_a_report_has_only_planned_totals():
    import toolkit

    export = toolkit.load(SAMPLES[SAMPLE])
    plan = toolkit.plan(export, toolkit.Mapping.from_export(export))
    frame = totals_frame(plan)
    assert list(frame.index) == list(UNITS) and list(frame.columns) == ["planned"]
    assert frame.loc["operations", "planned"] == len(plan.operations)


# -- 3. partner cohort without partner keys ------------------------------------------------------

def test_a_cohort_without_partner_keys_is_flagged_at_map_preview_and_plan(
        wizard, no_partner_keys, monkeypatch):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    _go_to(w, "map")
    row = w.rule_widgets["vip_customer"]
    assert "partner" not in row["filter"].value
    row["send_as"].value = "cohort"
    assert "BRAZE_PARTNER_API_KEY" in row["filter"].value               # at Map time
    assert "sandbox push will look fine" in row["filter"].value
    assert list(w.state.cohort_warnings()) == ["vip_customer"]
    w.next_button.click()
    assert "BRAZE_PARTNER_API_KEY" in w.preview_html.value              # Preview
    w.next_button.click()
    assert "BRAZE_PARTNER_API_KEY" in w.plan_html.value                 # Plan
    monkeypatch.setenv("BRAZE_PARTNER_API_KEY", "partner-key")
    monkeypatch.setenv("BRAZE_DATA_IMPORT_KEY", "import-key")
    w.replan_button.click()
    assert not w.state.cohort_warnings() and "BRAZE_PARTNER_API_KEY" not in w.plan_html.value


# -- 4. identity options and per-value findings in the wizard ------------------------------------

def test_identity_options_send_email_and_anonymous_profiles(wizard):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    _go_to(w, "plan")
    before = w.state.plan
    left = before.left_out.groupby("code").size()
    assert left["email_only"] == 61 and left["anonymous_only"] == 119
    findings = w.plan_html.value
    assert "In step 3 (Map), tick" in findings                          # fixes point here
    for _ in range(2):
        w.back_button.click()
    assert "61 profile(s) have only an email" in w.identity_html.value
    w.email_box.value = True
    assert w.state.email_opt_in and w.state.preview is None             # preview and plan reset
    w.alias_box.value = True
    assert w.state.alias_label == "segment_id" and not w.alias_text.disabled
    assert "sent as user aliases" in w.identity_html.value
    _go_to(w, "plan")
    plan = w.state.plan
    assert plan.options["email_opt_in"] and plan.options["alias_label"] == "segment_id"
    assert "email_only" not in set(plan.left_out["code"])
    assert "anonymous_only" not in set(plan.left_out["code"])
    uids = set(plan.operations["uid"])
    assert any(u.startswith("alias:segment_id:") for u in uids)
    assert planned_totals(plan)["objects"] > planned_totals(before)["objects"]
    w.back_button.click()
    w.back_button.click()
    w.alias_text.value = "bad label!"
    assert "alias label" in w.error_html.value and w.state.alias_label == "segment_id"


def test_values_braze_would_refuse_are_listed_one_by_one(wizard):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    _go_to(w, "map")
    html = w.values_html.value
    assert "Values Braze would refuse (1)" in html
    frame = w.state.value_findings_frame()
    assert frame.loc[0, "computation"] == "last_product_viewed_item"
    assert frame.loc[0, "value"].endswith("(353 characters)") and len(frame.loc[0, "value"]) < 90
    assert frame.loc[0, "profile"] in html
    w.rule_widgets["last_product_viewed_item"]["send_as"].value = "event"
    assert "Values Braze would refuse" not in w.values_html.value       # events are not checked


# -- 5. event filters that go stale --------------------------------------------------------------

def test_event_filters_going_stale_are_explained_in_words(wizard):
    w = wizard()
    w.sample_dropdown.value = EVENTS_SAMPLE
    _go_to(w, "map")
    w.rule_widgets["vip_customer"]["send_as"].value = "event"
    assert "stop selecting" in w.rule_widgets["vip_customer"]["filter"].value
    w.next_button.click()
    text = _text(w.preview_html.value)
    assert "When the event filters stop selecting members" in text
    assert "vip_customer" in text and "Instead: For a segment that must stay right for months" \
        in text and "custom attribute" in text
    # a shared event name: the property filter looks back 30 days
    w.back_button.click()
    w.rule_widgets["dormant_shopper"]["send_as"].value = "event"
    w.next_button.click()
    items = {i["key"]: i for i in toolkit.notebook.views.event_staleness(w.state.preview)}
    when = items["vip_customer"]["when"]
    assert "30 days after entering" in when and "no longer selected after" in when
    assert "dormant_shopper" in items["vip_customer"]["why"]
    assert "audience_key" in items["vip_customer"]["why"]
    assert "30 days after entering" in _text(w.preview_html.value)


def test_a_fitted_reentry_filter_says_which_return_it_misses(wizard):
    w = wizard()
    w.sample_dropdown.value = EVENTS_SAMPLE
    _go_to(w, "map")
    w.rule_widgets["dormant_shopper"]["send_as"].value = "event"
    w.rule_widgets["dormant_shopper"]["enter_event"].value = "Dormant In"
    w.rule_widgets["dormant_shopper"]["exit_event"].value = "Dormant Out"
    w.next_button.click()
    item = {i["key"]: i for i in toolkit.notebook.views.event_staleness(w.state.preview)}
    when = item["dormant_shopper"]["when"]
    k = len(w.state.preview.filters["dormant_shopper"][0].filters)
    assert k >= 2, "the sample has shoppers who went dormant more than once"
    assert f"entered at most {k} times" in when and f"Dormant In exactly {k + 1}" in when


# -- 6. saving the mapping and the plan; what next -----------------------------------------------

def test_the_reviewed_mapping_and_plan_are_saved_and_what_next_uses_them(wizard, tmp_path):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    _go_to(w, "map")
    w.rule_widgets["vip_customer"]["send_as"].value = "both"
    target = tmp_path / "reviewed" / "mapping.yaml"
    w.mapping_path_text.value = str(target)
    w.save_mapping_button.click()
    assert toolkit.Mapping.load(target) == w.state.mapping and "✓ saved" in \
        w.mapping_saved_html.value
    w.rule_widgets["vip_customer"]["attribute"].value = "vip"
    assert "changed since they were saved" in w.mapping_saved_html.value
    w.save_mapping_button.click()
    assert toolkit.Mapping.load(target)["vip_customer"].attribute == "vip"

    _go_to(w, "plan")
    w.save_plan_button.click()
    saved_plan = toolkit.Plan.load(w.state.plan_file)
    assert saved_plan.fingerprint == w.state.plan.fingerprint
    assert str(w.state.plan_file) in w.plan_html.value

    w.email_box.value = False                           # (still the same options)
    _go_to(w, "approve")
    _approve(w)
    _go_to(w, "push")
    w.push_button.click()
    _go_to(w, "next")
    mapping_file = w.state.saved["mapping (YAML)"]
    assert toolkit.Mapping.load(mapping_file) == w.state.mapping
    command = w.state.schedule_command()
    assert "04_scheduled_sync.ipynb" in command
    assert f"-p mapping_path {mapping_file.resolve()}" in command
    assert f"-p export_path {SAMPLES[SAMPLE]}" in command and "-p target sandbox" in command
    assert command in _text(w.next_html.value)
    assert "Settle" not in w.next_html.value                          # nothing uncertain


def test_uncertain_events_end_with_how_to_settle_them(wizard):
    with BrazeSandbox() as sb:
        w = wizard(sandbox=sb)
        w.sample_dropdown.value = SAMPLE
        _go_to(w, "map")
        w.rule_widgets["vip_customer"]["send_as"].value = "event"
        _go_to(w, "approve")
        _approve(w)
        _go_to(w, "push")
        w.state.client.max_retries = 0
        sb.set_faults(rate_drop_after=1.0, endpoints=("/users/track",))
        w.push_button.click()
        sb.set_faults(None)
        report = w.state.report
        assert report.status == "partial" and report.uncertain
        assert "unknown outcome" in w.push_result_html.value
        totals = w.state.totals()
        assert totals.loc["objects", "failed or unknown"] > 0
        assert totals.loc["objects"].drop("planned").sum() == totals.loc["objects", "planned"]
        _go_to(w, "next")
        text = _text(w.next_html.value)
        assert "Settle the events whose outcome is unknown" in text
        assert "toolkit.settle(ledger, client)" in text and "python -m toolkit settle" in text
        assert report.uncertain[0]["batch"] in text


# -- 7. approval, navigation, errors -------------------------------------------------------------

def test_the_approval_duration_is_chosen_and_shown_readably(wizard):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    _go_to(w, "approve")
    assert w.duration_dropdown.value == "1h" and set(APPROVAL_DURATIONS.values()) >= {"24h"}
    w.duration_dropdown.value = "24h"
    _approve(w)
    approval = w.state.plan.approval
    lasts = pd.Timestamp(approval["expires_at"]) - pd.Timestamp(approval["at"])
    assert lasts == pd.Timedelta(hours=24)
    shown = _text(w.approval_html.value)
    assert "UTC (in 23 hours)" in shown or "UTC (in 1 day)" in shown
    assert "+00:00" not in shown and "T" not in shown.split("until")[1][:12]
    assert w.duration_dropdown.disabled


def test_error_boxes_name_the_problem_in_words(wizard):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    _go_to(w, "approve")
    w.approve_button.click()
    assert "Not approved:" in w.error_html.value and "ApprovalRefused" not in w.error_html.value


def test_going_back_after_a_push_shows_what_is_left_not_the_old_plan(wizard):
    w = wizard()
    state = w.run_all(SAMPLE)
    pushed = state.plan
    while state.step > [s.key for s in STEP_DEFINITIONS].index("plan"):
        w.back_button.click()
    assert state.plan is not pushed and state.plan.is_empty and state.report is None
    assert state.history[-1]["plan"] == pushed.id
    assert "report (JSON)" in state.history[-1]["files"]


# -- 8. layout -----------------------------------------------------------------------------------

def _all_html(w: GuidedSync) -> str:
    import ipywidgets as widgets

    out, todo = [], [w.widget]
    while todo:
        x = todo.pop()
        if isinstance(x, widgets.HTML):
            out.append(x.value)
        todo.extend(getattr(x, "children", ()) or ())
    return "\n".join(out)


def test_every_step_reads_cleanly(wizard):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    pages = []
    for step in STEP_DEFINITIONS:
        if step.key == "approve":
            _approve(w)
        if step.key == "push":
            w.push_button.click()
        pages.append((step.key, _text(_all_html(w))))
        if step.key != "next":
            w.next_button.click()
    assert w.state.step == len(STEP_DEFINITIONS) - 1
    for key, text in pages:
        assert not re.search(r"(?<![\d.])\d+\.0\b(?!\.)", text), key            # no 494.0
        assert not re.search(r"\bNone\b|\bnan\b|\bNaN\b|<NA>", text), key
        assert not re.search(r"\d{2}:\d{2}:\d{2}\.\d{6,}", text), key        # no nanoseconds
        assert "`" not in text, key                                          # no literal backticks
        # the step bar keeps "8. Verify" together
    assert "8.&nbsp;Verify" in w.steps_html.value and "white-space:nowrap" in w.title.value


# -- 9. steps as data ----------------------------------------------------------------------------

def test_steps_are_data_and_each_has_a_page(wizard):
    assert [s.title for s in STEP_DEFINITIONS] == list(wizard_module.STEPS)
    assert len({s.key for s in STEP_DEFINITIONS}) == len(STEP_DEFINITIONS)
    state = GuidedSyncState()
    for step in STEP_DEFINITIONS:
        assert callable(getattr(GuidedSync, f"_step_{step.key}"))
        if step.prepare:
            assert callable(getattr(state, step.prepare))
        for name in step.resets:
            assert hasattr(state, name), (step.key, name)
        assert "<table" in step._repr_html_()
    # what a step resets is forgotten when an earlier step changes
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    _go_to(w, "plan")
    assert w.state.preview is not None and w.state.plan is not None
    w.state.set_rule("vip_customer", send_as="both")
    assert w.state.preview is None and w.state.plan is None
    assert w.state.mapping is not None and w.state.export is not None
    state.close()


def test_push_can_drive_a_tqdm_bar_from_the_same_progress(wizard, monkeypatch):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    _go_to(w, "approve")
    _approve(w)
    out = io.StringIO()
    made = []
    original = wizard_module.SyncProgress.tqdm

    def bar(self, **kwargs):
        made.append(original(self, file=out, mininterval=0, **kwargs))
        return made[-1]

    monkeypatch.setattr(wizard_module.SyncProgress, "tqdm", bar)
    seen = []
    assert w.state.push(on_progress=lambda p: seen.append(p.requests_done), bar=True)
    requests = planned_totals(w.state.plan)["requests"]
    assert made[0].n == requests == seen[-1] == w.state.progress.requests_done
    assert f"{requests}/{requests}" in out.getvalue()
