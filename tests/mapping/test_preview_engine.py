"""The engine's preview (DuckDB and NumPy over Arrow data) equals the pandas reference exactly.

`Preview.build(…, evaluator="pandas")` projects the Braze state per user and evaluates every
filter with `toolkit.braze.filters`; the default evaluator gets there another way (see
`toolkit.preview._EngineBuilder`). Every figure, reason, filter, warning and the projected state
must be the same, on the synthetic shops, the bundled samples, a generated export and an export
kept on disk (a shared identifier across chunks included).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import toolkit
from .conftest import make_export
from .test_preview import SAMPLES, _event_mapping, _history_export
from toolkit.errors import MappingError
from toolkit.mapping import Mapping
from toolkit.preview import Preview

ROOT = Path(__file__).resolve().parents[2]


def assert_same(mapping, export, **options) -> Preview:
    """The engine's preview, after checking it equals the reference in everything it shows."""
    engine = Preview.build(mapping, export, **options)
    reference = Preview.build(mapping, export, evaluator="pandas", **options)
    pd.testing.assert_frame_equal(engine.to_frame(), reference.to_frame())
    assert engine.filters == reference.filters
    assert engine.warnings == reference.warnings
    assert engine.freshness == reference.freshness
    assert engine.as_of == reference.as_of
    assert engine.user_count == reference.user_count
    for key in reference.filters:
        pd.testing.assert_frame_equal(engine.dropped(key), reference.dropped(key))
    if len(reference.state.users) or not isinstance(export, toolkit.StoredExport):
        pd.testing.assert_frame_equal(engine.state.attributes, reference.state.attributes)
        pd.testing.assert_frame_equal(engine.state.events, reference.state.events)
        pd.testing.assert_frame_equal(engine.state.cohorts, reference.state.cohorts)
    return engine


def _shop_mappings(shop):
    m = Mapping.from_export(shop)
    return {
        "attributes": m,
        "events": m.set("vip", send_as="event").set("dormant", send_as="event"),
        "renamed events": m.set("vip", send_as="event", enter_event="VIP In",
                                exit_event="VIP Out"),
        "both": m.set("vip", send_as="both"),
        "cohort": m.set("vip", send_as="cohort", cohort_name="VIP"),
        "trait events": m.set("fav", send_as="event").set("revenue", send_as="event"),
        "exit null": m.set("dormant", exit_value=None),
    }


@pytest.mark.parametrize("name", ["attributes", "events", "renamed events", "both", "cohort",
                                  "trait events", "exit null"])
@pytest.mark.parametrize("options", [{}, {"email_opt_in": True}, {"alias_label": "segment_id"},
                                     {"as_of": "2026-12-01"}], ids=lambda o: ",".join(o) or "-")
def test_the_engine_equals_the_reference_on_the_shop(shop, name, options):
    assert_same(_shop_mappings(shop)[name], shop, **options)


@pytest.mark.parametrize("events", ["vip", "vip+other"])
def test_the_engine_equals_the_reference_on_an_event_history(events):
    export = _history_export()
    m = Mapping.from_export(export).set("vip", send_as="event")
    if events == "vip+other":   # a shared event name: the property filter on audience_key
        m = m.set("other", send_as="event")
    p = assert_same(m, export)
    assert p.to_frame()["outside_lookback"].sum() > 0 or events == "vip"


def test_shared_identifiers_type_conflicts_and_long_texts_are_the_same():
    export = make_export(
        {"segment_id": [f"use_{i}" for i in range(8)],
         "user_id": ["u1", "u2", "u3", "u3", None, "u1", "", "u7"],
         "braze_id": [None, None, None, None, "b5", None, "b6", None],
         "anonymous_id": [None, None, None, None, None, None, None, "a7"],
         "code": ["A1", 7, "B2", None, "a1", "x" * 300, "", "A1"],
         "vip": [True, True, True, False, True, None, True, False]},
        [("code", "trait", "string"), ("vip", "audience", "boolean")])
    export.profiles["code"] = pd.Series(["A1", 7, "B2", None, "a1", "x" * 300, "", "A1"],
                                        dtype=object)
    for m in (Mapping.from_export(export), Mapping.from_export(export).set("vip", send_as="both")):
        p = assert_same(m, export)
        assert p.to_frame()["shared_identifier"].sum() > 0


def test_a_property_the_engine_does_not_write_falls_back_to_the_reference():
    # an audience keyed like the tag property: its events carry {"audience_key": <membership>},
    # which the engine's constant property texts cannot say — the reference does the preview
    export = make_export(
        {"segment_id": ["use_1", "use_2", "use_3"], "user_id": ["u1", "u2", "u3"],
         "audience_key": [True, False, True], "other": [True, True, False]},
        [("audience_key", "audience", "boolean"), ("other", "audience", "boolean")])
    m = Mapping.from_export(export).set("audience_key", send_as="event") \
        .set("other", send_as="event")
    assert_same(m, export)


def test_an_unknown_evaluator_is_a_clear_error(shop):
    with pytest.raises(MappingError) as err:
        Preview.build(Mapping.from_export(shop), shop, evaluator="spark")
    assert "engine" in (err.value.hint or "")


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("how", ["attribute", "event"])
def test_the_engine_equals_the_reference_on_the_samples(path, how):
    if not path.exists():
        pytest.skip(f"{path} not generated yet")
    export = toolkit.load(path)
    m = Mapping.from_export(export) if how == "attribute" else _event_mapping(export)
    assert_same(m, export)


def _generator():
    script = ROOT / "data" / "samples" / "generate.py"
    spec = importlib.util.spec_from_file_location("sample_generator_preview", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generated")
    _generator().write_large(20_000, out, block=5_000)
    return out / "all_shoppers.csv"


@pytest.mark.parametrize("how", ["attribute", "event"])
def test_the_engine_equals_the_reference_on_a_generated_export(generated, how):
    export = toolkit.load(generated)
    m = Mapping.from_export(export) if how == "attribute" else _event_mapping(export)
    assert_same(m, export)


@pytest.mark.parametrize("how", ["attribute", "both"])
def test_the_engine_equals_the_reference_chunk_by_chunk(generated, how, tmp_path, monkeypatch):
    # every 3,000th profile takes the user id of a profile in a later chunk
    lines = generated.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    col = header.index("user_id")
    rows = [line.split(",") for line in lines[1:]]
    for i in range(0, len(rows) - 7_000, 3_000):
        rows[i][col] = rows[i + 7_000][col] or f"u_shared_{i}"
        rows[i + 7_000][col] = rows[i][col]
    path = tmp_path / "all_shoppers.csv"
    path.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n", encoding="utf-8")
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TOOLKIT_CHUNK_ROWS", "4000")
    stored = toolkit.load(path, store=True)
    assert isinstance(stored, toolkit.StoredExport)
    m = Mapping.from_export(stored)
    if how == "both":
        m = m.set(stored.audiences[0], send_as="both")
    p = assert_same(m, stored)
    assert p.to_frame()["shared_identifier"].sum() > 0
    memory = toolkit.load(path)
    pd.testing.assert_frame_equal(p.to_frame(), Preview.build(m, memory).to_frame())
    assert np.array_equal(p.dropped(stored.audiences[0])["segment_id"].to_numpy(),
                          Preview.build(m, memory).dropped(stored.audiences[0])["segment_id"]
                          .to_numpy())


@pytest.mark.parametrize("send_as", ["attribute", "event", "cohort"])
def test_an_empty_export_previews_the_same(send_as):
    export = make_export({"segment_id": [], "user_id": [], "vip": [], "fav": []},
                         [("vip", "audience", "boolean"), ("fav", "trait", "string")])
    m = Mapping.from_export(export).set("vip", send_as=send_as, cohort_name="VIP")
    assert assert_same(m, export).user_count == 0
