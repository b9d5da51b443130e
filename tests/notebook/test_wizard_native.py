"""The "native in Braze?" column: the mapping step, the preview, and the mapping and preview
objects themselves, once the audiences' Engage definitions are known."""
from __future__ import annotations

from pathlib import Path

import toolkit

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = ROOT / "data" / "samples" / "definitions" / "audiences.json"
EVENTS = ROOT / "data" / "samples" / "events" / "engage_events.ndjson.gz"
SAMPLE = "Sample shop — Engage events (NDJSON, with history)"


def test_mapping_and_preview_say_whether_braze_computes_each_audience():
    export = toolkit.load(EVENTS)
    plain = toolkit.Mapping.from_export(export)
    assert plain.native_in_braze("vip_customer") is None
    assert "native in Braze?" not in plain._repr_html_()
    assert "native_in_braze" not in plain.preview(export).to_frame()

    mapping = plain.with_definitions(DEFINITIONS).set("vip_customer", send_as="both")
    assert mapping == plain.set("vip_customer", send_as="both")   # definitions are not rules
    assert {k: mapping.native_in_braze(k) for k in export.audiences} == {
        "dormant_shopper": "native", "first_time_shopper": "native",
        "vip_customer": "partly native"}
    assert mapping.native_in_braze("total_revenue_180_days") == "no definition"
    assert "<th>native in Braze?</th>" in mapping._repr_html_()
    preview = mapping.preview(export)
    frame = preview.to_frame()
    assert set(frame.loc[frame["key"] == "vip_customer", "native_in_braze"]) == {"partly native"}
    assert "native in Braze?" in preview._repr_html_()


def test_the_wizard_shows_native_in_braze_in_steps_3_and_4(wizard):
    w = wizard(definitions=DEFINITIONS)
    w.sample_dropdown.value = SAMPLE
    w.next_button.click()
    w.next_button.click()                                   # step 3: map
    assert "Native in Braze? <b>partly native</b>" in w.rule_widgets["vip_customer"]["filter"].value
    assert "Native in Braze? <b>native</b>" in \
        w.rule_widgets["dormant_shopper"]["filter"].value
    w.next_button.click()                                   # step 4: preview
    assert "native in Braze?" in w.preview_html.value


def test_definitions_can_be_given_later_and_bad_ones_are_shown(wizard, tmp_path):
    w = wizard()
    w.sample_dropdown.value = SAMPLE
    assert w.state.mapping.native_in_braze("vip_customer") is None
    bad = tmp_path / "audiences.json"
    bad.write_text('{"data": {"audiences": [{"key": "x", "definition": {"query": '
                   '"event(\'a\').cout() >= 1"}}]}}')
    assert not w.state.use_definitions(bad)
    assert "unknown function 'cout'" in w.state.error.message
    assert w.state.use_definitions(DEFINITIONS)
    assert w.state.mapping.native_in_braze("first_time_shopper") == "native"
