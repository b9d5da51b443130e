"""How a mapping records which Braze segment mirrors each computation, and the CLI."""
from __future__ import annotations

import pytest

import toolkit
from tests.notebook.conftest import build_export
from toolkit.braze.filters import CustomEventCount
from toolkit.cli import main
from toolkit.errors import MappingError
from toolkit.notebook.wizard import bundled_samples


@pytest.fixture
def mapping():
    return toolkit.Mapping.from_export(build_export())


def test_segment_names_follow_the_convention_and_ids_pair_explicitly(mapping, tmp_path):
    assert mapping.segment_names == "{key}" and mapping.segment_ids == {}
    assert mapping.segment_name("vip_customer") == "vip_customer"
    named = mapping.name_segments("Engage · {kind} · {attribute}")
    assert named.segment_name("vip_customer") == "Engage · audience · vip_customer"
    paired = named.pair_segment("vip_customer", " 3bbc4555-8fa0 ")
    assert paired.segment_ids == {"vip_customer": "3bbc4555-8fa0"}
    assert paired != named and paired.pair_segment("vip_customer", None) == named
    # kept through rule changes and a YAML round trip
    changed = paired.set("vip_customer", send_as="both")
    assert changed.segment_ids == paired.segment_ids
    assert changed.segment_names == paired.segment_names
    path = changed.save(tmp_path / "m.yaml")
    assert "segments:" in path.read_text() and "3bbc4555-8fa0" in path.read_text()
    assert toolkit.Mapping.load(path) == changed


def test_a_mapping_without_segments_saves_as_before(mapping, tmp_path):
    text = mapping.save(tmp_path / "m.yaml").read_text()
    assert "segments" not in text
    assert toolkit.Mapping.load(tmp_path / "m.yaml") == mapping


@pytest.mark.parametrize("pattern, words", [
    ("", "must be a text pattern"),
    ("Engage", "names no computation"),
    ("Engage {name}", "uses {name}"),
    ("Engage {key", "malformed"),
    (7, "must be a text pattern"),
])
def test_bad_segment_name_patterns_are_refused(mapping, pattern, words):
    with pytest.raises(MappingError, match=words):
        mapping.name_segments(pattern)


def test_bad_segment_pairings_are_refused(mapping, tmp_path):
    with pytest.raises(MappingError, match="no rule"):
        mapping.pair_segment("nope", "s1")
    with pytest.raises(MappingError, match="must be text"):
        mapping.pair_segment("vip_customer", "  ")
    path = tmp_path / "m.yaml"
    mapping.save(path)
    text = path.read_text()
    path.write_text(text + "segments:\n  ids:\n    nope: s1\n")
    with pytest.raises(MappingError, match="unknown computation 'nope'") as info:
        toolkit.Mapping.load(path)
    assert info.value.file == str(path)
    path.write_text(text + "segments:\n  names: x\n  colour: red\n")
    with pytest.raises(MappingError, match="'segments' must be"):
        toolkit.Mapping.load(path)
    path.write_text(text + "segments:\n  ids: [a, b]\n")
    with pytest.raises(MappingError, match="segments.ids"):
        toolkit.Mapping.load(path)


def test_cli_checks_the_segments_of_a_sandbox(synced, tmp_path, monkeypatch, capsys):
    path = bundled_samples()["Sample shop — Engage events (NDJSON, with history)"]
    s = synced(export=toolkit.load(path))
    s.build("vip_customer")
    s.build("dormant_shopper", CustomEventCount("Dormant Shopper Entered", "more_than", 0,
                                                days=7))
    s.sandbox.estimate_segments()
    mapping = s.mapping.save(tmp_path / "mapping.yaml")
    report = s.report.save(tmp_path / "report.json")
    monkeypatch.setenv("SANDBOX_API_KEY", s.sandbox.api_key)
    target = ["--mapping", str(mapping), "--sandbox", s.sandbox.url]
    code = main(["segments", "check", str(path), *target, "--report", str(report), "--keys",
                 "vip_customer,dormant_shopper"])
    out = capsys.readouterr().out
    assert code == 1
    assert "vip_customer: matches" in out and "dormant_shopper: differs" in out
    assert "filter on a different event" in out
    assert s.sandbox.api_key not in out
    code = main(["segments", "check", str(path), *target, "--keys", "vip_customer", "--exact"])
    out = capsys.readouterr().out
    assert code == 0 and "(exact)" in out and "Braze exactly 306" in out
    # bad input: a clear message and exit code 2, no traceback
    s.sandbox.set_permissions(["users.track"])
    code = main(["segments", "check", str(path), *target])
    err = capsys.readouterr().err
    assert code == 2 and "needs the 'segments.list' permission" in err and "Traceback" not in err
