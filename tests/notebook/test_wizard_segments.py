"""Step 8 of the wizard offers the segment check: in the sandbox it builds the recommended
segments itself, and the check shows a verdict per computation."""
from __future__ import annotations

from toolkit.braze.filters import BooleanAttribute
from toolkit.notebook.wizard import STEP_DEFINITIONS, GuidedSync, GuidedSyncState


def _to_verify(w: GuidedSync) -> None:
    w.sample_dropdown.value = "Sample shop — Engage events (NDJSON, with history)"
    target = [s.key for s in STEP_DEFINITIONS].index("push")
    while w.state.step < target:
        w.next_button.click()
        if w.state.current.key == "approve":
            w.approver_text.value = "Ana"
            w.confirm_box.value = True
            w.approve_button.click()
    w.push_button.click()
    w.next_button.click()
    assert w.state.current.key == "verify" and w.state.verification.ok, w.state.error


def test_step_8_builds_the_recommended_segments_and_checks_them(wizard):
    w = wizard()
    _to_verify(w)
    assert w.check_segments_button in w.body.children[-2].children
    assert w.build_segments_button in w.body.children[-2].children
    assert "Check the Braze segments" in w.segments_intro_html.value
    w.build_segments_button.click()
    assert w.state.error is None
    names = set(w.state.sandbox.segments()["name"])
    assert names == {w.state.mapping.segment_name(r.key) for r in w.state.mapping}
    w.check_segments_button.click()
    check = w.state.segment_check
    assert check is not None and check.ok, check
    assert set(check.summary()) <= {"matches", "within_error"}
    assert "Braze segments checked" in w.segments_html.value
    # a segment an analyst got wrong is reported, not raised
    sb = w.state.sandbox
    sid = sb.segments().set_index("name").loc["vip_customer", "segment_id"]
    sb.update_segment(sid, BooleanAttribute("vip", "is_true"))
    sb.estimate_segments()
    w.exact_box.value = True
    w.check_segments_button.click()
    row = next(r for r in w.state.segment_check.rows if r["key"] == "vip_customer")
    assert w.state.segment_check.exact and row["verdict"] == "differs"
    assert "filter on a different attribute" in w.segments_html.value
    # building again keeps what is there
    w.build_segments_button.click()
    assert len(sb.segments()) == len(w.state.mapping)


def test_building_segments_needs_a_push_and_the_sandbox():
    state = GuidedSyncState()
    try:
        assert not state.build_segments() and "push the plan first" in str(state.error)
        assert not state.check_segments() and "push the plan first" in str(state.error)
        state.report = object()
        state.target = "workspace"
        assert not state.build_segments()
        assert "Braze has no API to create segments" in str(state.error)
    finally:
        state.close()
