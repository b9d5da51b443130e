"""The guided-sync wizard driven headless, like an analyst clicking, against the Braze sandbox."""
from __future__ import annotations

import json

import ipywidgets as widgets
import pandas as pd

import toolkit
from toolkit.braze.client import BrazeClient
from toolkit.notebook.terms import planned_totals
from toolkit.errors import ApprovalRefused
from toolkit.notebook.wizard import STEPS, GuidedSync, bundled_samples
from toolkit.sandbox import BrazeSandbox

SAMPLE = next(iter(bundled_samples()))  # the Profiles Sync sample: every audience and trait



def _all_widgets(root) -> list:
    seen, todo = [], [root]
    while todo:
        w = todo.pop()
        if isinstance(w, widgets.Widget) and w not in seen:
            seen.append(w)
            todo.extend(getattr(w, "children", ()) or ())
    return seen


def _go_to(w: GuidedSync, step: int) -> None:
    while w.state.step < step:
        before = w.state.step
        w.next_button.click()
        assert w.state.step == before + 1, w.state.error


def test_clicking_through_every_step_ends_in_a_verified_sync(wizard, tmp_path):
    w = wizard(plots=True)
    assert w.state.step == 0 and w.next_button.disabled and w.back_button.disabled
    assert "1.&nbsp;Export" in w.steps_html.value and "1. Choose an export" in \
        w.heading_html.value

    w.sample_dropdown.value = SAMPLE                       # step 1: export and its findings
    assert w.state.export is not None and not w.next_button.disabled
    assert "profiles" in w.export_html.value and "findings" in w.export_html.value

    w.next_button.click()                                  # step 2: review with plots
    assert w.state.step == 1
    assert len(w.review_images.children) == 4
    assert all(bytes(img.value).startswith(b"\x89PNG") for img in w.review_images.children)

    w.next_button.click()                                  # step 3: map, with live filters
    row = w.rule_widgets["vip_customer"]
    shown = lambda: [f.children[1] for f in row["shown"].children]  # noqa: E731
    assert "is true" in row["filter"].value and shown() == [row["attribute"]]
    row["send_as"].value = "both"                          # only the names it uses are shown
    assert shown() == [row["attribute"], row["enter_event"], row["exit_event"]]
    assert "Audience Entered" in row["filter"].value and "is true" in row["filter"].value
    w.rule_widgets["dormant_shopper"]["send_as"].value = "event"
    w.rule_widgets["dormant_shopper"]["enter_event"].value = "Dormant In"
    w.rule_widgets["dormant_shopper"]["exit_event"].value = "Dormant Out"
    assert "Dormant In" in w.rule_widgets["dormant_shopper"]["filter"].value
    assert w.state.mapping["dormant_shopper"].enter_event == "Dormant In"

    w.next_button.click()                                  # step 4: preview
    assert w.state.step == 3
    first_preview = w.state.preview
    assert "Engage members" in w.preview_html.value
    assert bytes(w.preview_image.value).startswith(b"\x89PNG")

    w.back_button.click()                                  # Back: change a rule, preview again
    assert w.state.step == 2
    w.rule_widgets["first_time_shopper"]["attribute"].value = "is_first_time_shopper"
    assert w.state.preview is None
    w.next_button.click()
    assert w.state.preview is not first_preview
    assert "is_first_time_shopper" in w.preview_html.value

    w.next_button.click()                                  # step 5: plan with cost and payloads
    assert w.state.step == 4
    cost = w.state.plan.cost()
    totals = planned_totals(w.state.plan)
    assert f"{cost['data_points']:,}" in w.plan_html.value
    assert "What these words mean" in w.plan_html.value
    assert "Sample payloads" in w.plan_html.value and '"attributes"' in w.plan_html.value
    assert "estimated time" in w.plan_html.value
    assert bytes(w.plan_image.value).startswith(b"\x89PNG")

    w.next_button.click()                                  # step 6: approve
    assert w.next_button.disabled
    w.approver_text.value = "Ana Analyst"
    w.confirm_box.value = True
    w.approve_button.click()
    assert w.state.approved and "Ana Analyst" in w.approval_html.value
    assert w.workspace_text not in w.body.children         # sandbox: no typed confirmation

    w.next_button.click()                                  # step 7: push with counters
    assert w.state.step == 6 and w.next_button.disabled
    w.push_button.click()
    report = w.state.report
    assert report.status == "complete"
    assert w.progress_bar.value == w.progress_bar.max == totals["requests"]
    assert w.state.progress.objects_acknowledged == report.summary()["acknowledged"]
    assert f"{report.summary()['acknowledged']:,}" in w.counters_html.value
    assert w.push_button.disabled

    w.next_button.click()                                  # step 8: verify and report files
    assert w.state.step == 7 and w.state.verification.ok
    assert "OK" in w.verify_html.value
    saved = w.state.saved
    assert {"mapping (YAML)", "plan (JSON)", "report (JSON)", "totals (CSV)", "batches (CSV)",
            "rejected (CSV)", "verification (CSV)"} <= set(saved)
    assert set(saved) - {"plan operations (Parquet)", "plan left-out profiles (Parquet)",
                         "plan row hashes (Arrow)"} == {
        "mapping (YAML)", "plan (JSON)", "report (JSON)", "totals (CSV)", "batches (CSV)",
        "rejected (CSV)", "verification (CSV)"}
    assert all(path.exists() for path in saved.values())
    assert toolkit.Plan.load(saved["plan (JSON)"]).fingerprint == w.state.plan.fingerprint
    data = json.loads(saved["report (JSON)"].read_text())
    assert data["status"] == "complete" and data["plan_id"] == report.plan_id
    assert len(pd.read_csv(saved["batches (CSV)"])) == cost["requests"]
    assert "download=" in w.report_html.value and "data:application/json;base64," in \
        w.report_html.value
    assert bytes(w.throughput_image.value).startswith(b"\x89PNG")

    w.next_button.click()                                  # step 9: what next
    assert w.state.step == 8 and w.next_button.disabled
    assert "Schedule it" in w.next_html.value and "04_scheduled_sync" in w.next_html.value

    sb = w.state.sandbox                                   # Braze holds what was planned
    profiles = sb.profiles()
    assert profiles["is_first_time_shopper"].notna().any()
    assert (sb.events()["name"] == "Dormant In").sum() > 0

    # Back to the plan: it is planned again against the ledger, and nothing is left to send
    for _ in range(4):
        w.back_button.click()
    assert w.state.step == 4 and w.state.report is None
    assert w.state.plan.is_empty and "Nothing to send" in w.plan_html.value
    assert "pushed earlier" in w.plan_html.value and report.plan_id in w.plan_html.value


def test_an_invalid_export_is_shown_with_its_fix_and_blocks_next(wizard, tmp_path):
    w = wizard()
    bad = tmp_path / "not_an_export.csv"
    bad.write_bytes(b"\x00\x01binary\x00junk")
    w.path_text.value = str(bad)
    w.load_button.click()
    assert w.state.step == 0 and w.state.export is None
    assert "How to fix" in w.error_html.value and "not_an_export.csv" in w.error_html.value
    assert w.next_button.disabled
    w.next_button.click()
    assert w.state.step == 0

    w.path_text.value = str(tmp_path / "missing.csv")
    w.load_button.click()
    assert "file not found" in w.error_html.value

    w.path_text.value = str(bundled_samples()[SAMPLE])     # the fix: a real export
    w.load_button.click()
    assert w.state.export is not None and w.error_html.value == ""
    assert not w.next_button.disabled


def test_an_invalid_rule_is_marked_and_blocks_next_until_fixed(wizard):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    _go_to(w, 2)
    text = w.rule_widgets["vip_customer"]["attribute"]
    text.value = "$vip"
    assert "✗" in w.rule_widgets["vip_customer"]["filter"].value
    assert w.next_button.disabled and w.state.rule_errors
    assert w.state.mapping["vip_customer"].attribute == "vip_customer"  # last valid rule kept
    text.value = "vip"
    assert not w.state.rule_errors and not w.next_button.disabled
    assert "vip" in w.rule_widgets["vip_customer"]["filter"].value


def test_a_refused_approval_sends_nothing(wizard):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    _go_to(w, 5)
    w.approve_button.click()                               # no name, box not ticked
    assert isinstance(w.state.error, ApprovalRefused) and not w.state.approved
    assert "your name" in w.error_html.value
    w.approver_text.value = "Ana"
    w.approve_button.click()                               # name, but the box is not ticked
    assert "not ticked" in w.error_html.value and not w.state.approved
    assert w.next_button.disabled
    w.next_button.click()
    assert w.state.step == 5

    assert not w.state.push()                              # the state refuses too
    assert "not approved" in w.state.error.message
    assert len(w.state.sandbox.request_log()) == 0 and len(w.state.sandbox.profiles()) == 0

    w.confirm_box.value = True
    w.approve_button.click()
    assert w.state.approved and w.error_html.value == ""


def test_a_real_workspace_needs_its_name_typed_and_keys_from_the_environment(
        wizard, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                            # workspace ledgers live in ./.toolkit
    monkeypatch.delenv("BRAZE_REST_ENDPOINT", raising=False)
    monkeypatch.delenv("BRAZE_API_KEY", raising=False)
    w = wizard(target="workspace")
    w.sample_dropdown.value = SAMPLE
    _go_to(w, 3)
    w.next_button.click()                                  # no credentials: shown, with the fix
    assert w.state.step == 3
    assert "BRAZE_REST_ENDPOINT" in w.error_html.value and "How to fix" in w.error_html.value

    with BrazeSandbox() as sb:                             # a "real" workspace on loopback
        monkeypatch.setenv("BRAZE_REST_ENDPOINT", sb.url)
        monkeypatch.setenv("BRAZE_API_KEY", sb.api_key)
        w.next_button.click()
        assert w.state.step == 4 and w.state.plan is not None
        assert not w.create_users_box.value                # update-only by default on real targets
        w.create_users_box.value = True
        assert w.state.plan.options["create_users"] is True
        w.next_button.click()
        phrase = w.state.confirm_phrase
        assert phrase == sb.url.removeprefix("http://")
        assert w.workspace_text in w.body.children
        w.approver_text.value = "Ana"
        w.confirm_box.value = True
        w.workspace_text.value = "prod"
        w.approve_button.click()
        assert not w.state.approved and phrase in w.error_html.value
        w.workspace_text.value = phrase
        w.approve_button.click()
        assert w.state.approved
        _go_to(w, 6)
        w.push_button.click()
        assert w.state.report.status == "complete"
        assert len(sb.profiles()) == w.state.report.summary()["acknowledged"]
        w.next_button.click()
        assert w.state.verification.ok
        w.next_button.click()
        assert "-p target workspace" in w.next_html.value
        for widget in _all_widgets(w.widget):              # the key never reaches a widget
            for name in ("value", "description", "placeholder", "tooltip"):
                value = getattr(widget, name, None)
                if isinstance(value, (str, bytes)):
                    needle = sb.api_key if isinstance(value, str) else sb.api_key.encode()
                    assert needle not in value, (type(widget).__name__, name)
        w.state.close()


def test_rejected_objects_show_in_the_counters_and_the_report(wizard):
    with BrazeSandbox() as sb:
        # Another source already made total_revenue_180_days a string: Braze locks its type.
        seed = BrazeClient.for_sandbox(sb)
        seed.track(attributes=[{"external_id": "someone-else", "total_revenue_180_days": "lots",
                                "_update_existing_only": False}])
        seed.close()
        w = wizard(sandbox=sb)
        state = w.run_all(SAMPLE)
        report = state.report
        assert report.status == "partial"
        rejected = report.rejected_frame()
        assert len(rejected) > 0 and rejected["reason"].str.contains("data type").all()
        assert state.progress.objects_rejected == len(rejected)
        assert w.progress_bar.bar_style == "danger"
        assert f"{len(rejected):,}" in w.counters_html.value
        assert "Rejected by Braze" in w.push_result_html.value
        assert len(pd.read_csv(state.saved["rejected (CSV)"])) == len(rejected)
        assert state.step == 8                             # the rest was synced and verified
        assert "Fix the rejected objects" in w.next_html.value
    w.state.close()                                        # not the wizard's sandbox: left alone


def test_a_rejected_batch_is_counted_as_a_failed_request(wizard):
    # A workspace whose contract takes at most 50 objects per array refuses 75-object batches.
    with BrazeSandbox(max_objects_per_array=50) as sb:
        w = wizard(sandbox=sb)
        state = w.run_all(SAMPLE, rules={"vip_customer": {"send_as": "event"}})
        report = state.report
        assert report.status in ("partial", "failed")
        frame = report.to_frame()
        big = frame[frame["objects"] > 50]
        assert len(big) and (big["status"] == "rejected").all()
        assert state.progress.requests_failed == len(big)
        assert state.progress.requests_done == len(frame)
        assert "requests failed" in w.counters_html.value
        assert state.error is None                         # per-batch rejects are data, not errors


def test_run_all_pushes_in_a_background_thread_and_stays_navigable(wizard):
    w = wizard(background=True)
    state = w.run_all(SAMPLE, approved_by="scheduler")
    assert w._thread is not None and not w._thread.is_alive()
    assert state.step == len(STEPS) - 1 and state.verification.ok
    assert state.summary()["report"]["status"] == "complete"
    assert repr(w) == "GuidedSync(step 9 of 9: What next; target sandbox)"
    bundle = w._repr_mimebundle_()
    assert bundle["text/plain"] == repr(w)
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_run_all_stops_at_the_first_failing_step(wizard):
    w = wizard()
    state = w.run_all(SAMPLE, rules={"no_such_key": {"send_as": "event"}})
    assert state.step == 2 and "no_such_key" in state.error.message
    w2 = wizard()
    state = w2.run_all(SAMPLE, approved_by="  ")
    assert state.step == 5 and isinstance(state.error, ApprovalRefused)
    assert state.report is None


def test_switching_targets_keeps_the_sandbox_and_its_ledger(wizard, monkeypatch):
    monkeypatch.delenv("BRAZE_REST_ENDPOINT", raising=False)
    monkeypatch.delenv("BRAZE_API_KEY", raising=False)
    w = wizard()
    state = w.run_all(SAMPLE)
    assert state.report.status == "complete"
    sandbox = state.sandbox
    assert not state.push() and "already pushed" in state.error.message

    for _ in range(4):
        w.back_button.click()
    assert state.step == 4
    w.target_toggle.value = "workspace"                    # no credentials in the environment
    assert state.plan is None and "BRAZE_REST_ENDPOINT" in w.error_html.value
    w.target_toggle.value = "sandbox"                      # back: same sandbox, same ledger
    assert state.sandbox is sandbox and state.error is None
    assert state.plan is not None and state.plan.is_empty


def test_the_create_users_box_follows_the_target(wizard, monkeypatch):
    monkeypatch.delenv("BRAZE_REST_ENDPOINT", raising=False)
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    _go_to(w, 4)
    assert w.create_users_box.value and w.state.plan.options["create_users"] is True
    w.create_users_box.value = False                       # update existing users only
    assert w.state.plan.options["create_users"] is False
    w.target_toggle.value = "workspace"
    assert not w.create_users_box.value and not w.state.create_users
    w.target_toggle.value = "sandbox"
    assert w.create_users_box.value and w.state.plan.options["create_users"] is True


def test_progress_is_reported_batch_by_batch_while_pushing(wizard):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    _go_to(w, 5)
    w.approver_text.value = "Ana"
    w.confirm_box.value = True
    w.approve_button.click()
    seen = []
    assert w.state.push(on_progress=lambda p: seen.append(
        (p.requests_done, p.objects_acknowledged, p.running)))
    requests = planned_totals(w.state.plan)["requests"]
    done = [d for d, _, running in seen if running]
    assert done[0] == 0 and done[-1] == requests            # one update per answered batch
    assert done == sorted(done) and len(set(done)) == requests + 1
    assert seen[-1] == (requests, w.state.report.summary()["acknowledged"], False)


def test_the_state_describes_itself(wizard):
    w = wizard()
    assert repr(w.state) == "<GuidedSyncState step 1 of 9: Choose an export; target sandbox>"
    w.run_all(SAMPLE)
    assert repr(w.state).endswith("; sync complete>")
    html = w.state._repr_html_()
    assert "What next" in html and "objects acknowledged" in html and "verified" in html
