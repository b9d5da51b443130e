"""Mapping rules: defaults, overrides, validation, YAML round trip, attribute values, payload rules.

Payload rules follow /work/shared/reference/braze-api.md §1.3 (profile fields), §1.4 (event
properties), §2 (names and values) and segment-engage.md §4 (standard trait → profile field).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from .conftest import make_export
from toolkit.braze import payload_rules
from toolkit.errors import MappingError
from toolkit.mapping import Mapping, Rule


def test_defaults_from_export_send_everything_as_attributes(shop):
    m = Mapping.from_export(shop)
    assert [r.key for r in m.rules] == ["vip", "dormant", "fav", "revenue", "last_order_at"]
    vip = m["vip"]
    assert (vip.kind, vip.send_as, vip.attribute, vip.exit_value) == ("audience", "attribute", "vip", False)
    assert (vip.enter_event, vip.exit_event, vip.trait_event) == (
        "Audience Entered", "Audience Exited", "Trait Computed")
    assert m["fav"].attribute == "fav" and m["fav"].kind == "trait"


def test_set_returns_a_new_mapping_and_keeps_the_original(shop):
    m = Mapping.from_export(shop)
    m2 = m.set("vip", send_as="cohort", cohort_name="VIP customers")
    assert m["vip"].send_as == "attribute"
    assert m2["vip"].send_as == "cohort" and m2["vip"].cohort_name == "VIP customers"
    assert m2["vip"].cohort_id == "aud_vip"  # default from the export's computation id
    assert m2 != m and m2["dormant"] == m["dormant"]


def test_standard_traits_land_in_braze_profile_fields():
    export = make_export(
        {"segment_id": ["use_1", "use_2", "use_3"], "user_id": ["u1", "u2", "u3"],
         "first_name": ["Ana", None, "Ben"], "birthday": ["1990-02-03T10:00:00Z", None, "bad"],
         "gender": ["female", "Man", "robot"], "country": ["pt", "USA", None]},
        [("first_name", "trait", "string"), ("birthday", "trait", "string"),
         ("gender", "trait", "string"), ("country", "trait", "string")])
    m = Mapping.from_export(export)
    assert [r.attribute for r in m.rules] == ["first_name", "dob", "gender", "country"]
    values = m.attribute_values(export)
    assert list(values.columns) == ["first_name", "dob", "gender", "country"]
    # dob as YYYY-MM-DD (segment-engage §4.1 archived mapper; braze-api §1.3)
    assert values.loc[0, "dob"] == "1990-02-03" and values.loc[2, "dob"] is pd.NA
    # toBrazeGender (segment-engage §4.2): female → F, Man → M, anything else refused
    assert values["gender"].tolist()[:2] == ["F", "M"] and values.loc[2, "gender"] is pd.NA
    # country ISO-3166-1 alpha-2, "bad values become NULL" (braze-api §1.3)
    assert values.loc[0, "country"] == "PT" and values.loc[1, "country"] is pd.NA
    codes = m.value_findings(export).counts()
    assert codes == {"invalid_value": 3}


def test_attribute_values_are_exactly_what_goes_into_json(shop):
    m = Mapping.from_export(shop).set("dormant", exit_value=None)
    v = m.attribute_values(shop)
    assert v.index.equals(shop.profiles.index)
    assert list(v.columns) == ["vip", "dormant", "fav", "revenue", "last_order_at"]
    assert all(v[c].dtype == object for c in v.columns)
    assert v["vip"].tolist()[:3] == [True, True, False] and v.loc[6, "vip"] is pd.NA
    assert v.loc[0, "dormant"] is None  # exit → JSON null, distinct from "nothing to send"
    assert v.loc[1, "dormant"] is True
    assert v.loc[0, "revenue"] == 10 and type(v.loc[0, "revenue"]) is int
    assert v.loc[3, "revenue"] == 250.5 and type(v.loc[3, "revenue"]) is float
    assert v.loc[2, "revenue"] is pd.NA
    assert v.loc[0, "last_order_at"] == "2026-11-18T10:00:00.000Z"
    assert v.loc[2, "fav"] is pd.NA  # 300 characters: Braze strings hold at most 255 (§2.2)
    assert v.loc[6, "fav"] == ""
    finding = list(m.value_findings(shop))
    assert [(f.code, f.column, f.segment_id) for f in finding] == [("invalid_value", "fav", "use_2")]


def test_attribute_values_on_a_million_rows_is_vectorised():
    n = 1_000_000
    rng = np.random.default_rng(0)
    export = make_export({"segment_id": ["use_0"], "aud": [True], "rev": [1.0],
                          "at": ["2026-01-01T00:00:00Z"]},
                         [("aud", "audience", "boolean"), ("rev", "trait", "number"),
                          ("at", "trait", "datetime")])
    ids = pd.array(np.char.add("u", np.arange(n).astype(str)), dtype="string")
    export.profiles = pd.DataFrame({
        "segment_id": ids, "user_id": ids, "email": pd.array([None] * n, dtype="string"),
        "anonymous_id": pd.array([None] * n, dtype="string"),
        "braze_id": pd.array([None] * n, dtype="string"),
        "aud": pd.array(rng.random(n) < 0.3, dtype="boolean"),
        "rev": pd.array(rng.random(n) * 100, dtype="Float64"),
        "at": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="s")})
    import time
    start = time.perf_counter()
    v = Mapping.from_export(export).attribute_values(export)
    elapsed = time.perf_counter() - start
    assert len(v) == n and v["aud"].sum() == export.profiles["aud"].sum()
    assert v["at"].iloc[86_400] == "2026-01-02T00:00:00.000Z"
    assert elapsed < 5, f"attribute_values took {elapsed:.1f}s on 1M rows"


def test_yaml_round_trip_is_equal_and_previews_the_same(shop, tmp_path):
    m = (Mapping.from_export(shop)
         .set("vip", send_as="both", enter_event="VIP Entered", exit_event="VIP Exited")
         .set("dormant", send_as="cohort", cohort_name="Dormant")
         .set("fav", send_as="event", trait_event="Favourite Computed")
         .set("revenue", attribute="revenue_180d"))
    path = m.save(tmp_path / "mapping.yml")
    again = Mapping.load(path)
    assert again == m and again.rules == m.rules
    pd.testing.assert_frame_equal(again.preview(shop).to_frame(), m.preview(shop).to_frame())
    assert "VIP Entered" in path.read_text()


@pytest.mark.parametrize("text,message,field", [
    ("- just\n- a list\n", "must be a mapping", None),
    ("42\n", "must be a mapping", None),
    ("version: 1\nrules: []\nextra: 1\n", "unknown field 'extra'", "extra"),
    ("rules:\n  - key: vip\n    kind: audience\n    colour: red\n", "unknown field 'colour'", "colour"),
    ("rules:\n  - kind: audience\n", "has no 'key'", "key"),
    ("rules: {vip: 1}\n", "must be a list", "rules"),
    ("rules:\n  - key: vip\n    kind: audience\n    exit_value: maybe\n", "exit_value", "exit_value"),
    ("rules:\n  - key: vip\n    kind: audience\n    attribute: 12\n", "must be text", "attribute"),
    ("version: 7\nrules: []\n", "unsupported mapping version", "version"),
    ("rules: [\n", "not valid YAML", None),
    ("rules:\n  - key: vip\n    kind: audience\n    attribute: $vip\n", "cannot begin with '$'",
     "attribute"),
])
def test_load_rejects_bad_documents_naming_the_field(tmp_path, text, message, field):
    path = tmp_path / "m.yml"
    path.write_text(text)
    with pytest.raises(MappingError) as info:
        Mapping.load(path)
    assert message in str(info.value)
    assert info.value.file == str(path)
    if field:
        assert info.value.field == field


def test_load_missing_file(tmp_path):
    with pytest.raises(MappingError, match="not found"):
        Mapping.load(tmp_path / "nope.yml")


def test_load_uses_safe_yaml(tmp_path):
    path = tmp_path / "m.yml"
    path.write_text("rules: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(MappingError, match="not valid YAML"):
        Mapping.load(path)


INVALID_RULES = [
    (dict(key="vip", kind="audience", attribute="$vip"), "attribute", "cannot begin with '$'"),
    (dict(key="vip", kind="audience", attribute="v" * 256), "attribute", "at most 255"),
    (dict(key="vip", kind="audience", attribute="email"), "attribute", "Braze profile field"),
    (dict(key="vip", kind="audience", attribute="first_name"), "attribute", "profile field"),
    (dict(key="fav", kind="trait", attribute="external_id"), "attribute", "Braze profile field"),
    (dict(key="fav", kind="trait", attribute="_update_existing_only"), "attribute", "control key"),
    (dict(key="vip", kind="audience", send_as="event", enter_event="$In"), "enter_event", "'$'"),
    (dict(key="vip", kind="audience", send_as="event", exit_event="E" * 256), "exit_event", "255"),
    (dict(key="vip", kind="audience", send_as="event", exit_event="Audience Entered"),
     "exit_event", "both"),
    (dict(key="fav", kind="trait", send_as="event", trait_event="Bad\nName"), "trait_event",
     "control characters"),
    (dict(key="time", kind="trait", send_as="event"), "key", "reserved event property"),
    (dict(key="vip", kind="audience", exit_value="no"), "exit_value", "false or null"),
    (dict(key="fav", kind="trait", send_as="cohort"), "send_as", "only audiences"),
    (dict(key="vip", kind="audience", send_as="sms"), "send_as", "send_as must be"),
    (dict(key="vip", kind="segment"), "kind", "kind must be"),
    (dict(key="", kind="audience"), "key", "computation key"),
    (dict(key="vip", kind="audience", send_as="cohort", cohort_name=" "), "cohort_name", "name"),
]


@pytest.mark.parametrize("kwargs,field,message", INVALID_RULES)
def test_invalid_rules_raise_mapping_error_naming_the_rule(kwargs, field, message):
    with pytest.raises(MappingError) as info:
        Rule(**kwargs)
    assert message in str(info.value)
    assert info.value.field == field
    if kwargs["key"]:
        assert info.value.rule == kwargs["key"]
    assert info.value.hint


def test_set_rejects_unknown_fields_keys_and_invalid_values(shop):
    m = Mapping.from_export(shop)
    with pytest.raises(MappingError) as info:
        m.set("vip", colour="red")
    assert info.value.field == "colour" and info.value.rule == "vip"
    with pytest.raises(MappingError, match="no rule for 'nope'"):
        m.set("nope", send_as="event")
    with pytest.raises(MappingError, match="already written by rule 'vip'"):
        m.set("dormant", attribute="vip")
    with pytest.raises(MappingError) as info:
        m.set("vip", attribute="country")
    assert info.value.rule == "vip"


def test_validate_against_the_export(shop):
    unknown = Mapping([Rule("ghost", "audience")])
    with pytest.raises(MappingError) as info:
        unknown.validate(shop)
    assert "unknown key 'ghost'" in str(info.value) and info.value.rule == "ghost"
    with pytest.raises(MappingError, match="is a audience in the export"):
        Mapping([Rule("vip", "trait")]).validate(shop)
    with pytest.raises(MappingError, match="profile field 'dob' takes"):
        Mapping([Rule("revenue", "trait", attribute="dob")]).validate(shop)
    with pytest.raises(MappingError, match="two rules"):
        Mapping([Rule("vip", "audience"), Rule("vip", "audience", attribute="vip2")])


def test_shared_event_names_and_html_repr(shop):
    m = Mapping.from_export(shop).set("vip", send_as="event").set("dormant", send_as="event")
    assert m.shared_events() == {"Audience Entered": ["vip", "dormant"],
                                 "Audience Exited": ["vip", "dormant"]}
    html = m._repr_html_()
    assert "<table>" in html and "audience_key" in html and "⚠" in html
    renamed = m.set("vip", enter_event="VIP In", exit_event="VIP Out")
    assert renamed.shared_events() == {}
    assert "Custom Event `VIP In` more than 0 times" in renamed._repr_html_()
    assert "Custom Attribute `fav` is not blank" in renamed._repr_html_()
    assert "vip (audience) → events VIP In/VIP Out" in repr(renamed)


# -- toolkit.braze.payload_rules ---------------------------------------------------------------

@pytest.mark.parametrize("name,codes", [
    ("dormant_shopper", []),
    ("Audience Entered", []),
    ("$revenue", ["leading_dollar"]),
    ("x" * 255, []),
    ("x" * 256, ["name_too_long"]),
    ("", ["name_empty"]),
    ("tab\there", ["control_character"]),
    (12, ["name_not_text"]),
])
def test_name_violations(name, codes):
    assert [v.code for v in payload_rules.name_violations(name)] == codes


@pytest.mark.parametrize("name,allow,codes", [
    ("email", False, ["reserved_name"]),
    ("first_name", True, []),
    ("first_name", False, ["reserved_name"]),
    ("external_id", True, ["reserved_name"]),
    ("braze_id", True, ["reserved_name"]),
    ("push_tokens", True, ["reserved_name"]),
    ("engage_email", False, []),
])
def test_reserved_braze_fields(name, allow, codes):
    found = payload_rules.attribute_name_violations(name, allow_profile_field=allow)
    assert [v.code for v in found] == codes


def test_event_property_rules_and_string_values():
    assert [v.code for v in payload_rules.property_name_violations("event_name")] == ["reserved_property"]
    assert payload_rules.property_name_violations("audience_key") == []
    assert payload_rules.string_value_violation("x" * 255, field="f") is None
    assert payload_rules.string_value_violation("x" * 256, field="f").code == "string_too_long"


@pytest.mark.parametrize("trait,field", [
    ("firstName", "first_name"), ("first_name", "first_name"), ("lastName", "last_name"),
    ("birthday", "dob"), ("address.city", "home_city"), ("address.country", "country"),
    ("gender", "gender"), ("phone", "phone"), ("email", "email"), ("avatar", "image_url"),
    ("favourite_colour", None),
])
def test_standard_trait_mapping(trait, field):
    assert payload_rules.standard_field(trait) == field


def test_gender_normalisation_like_segment():
    raw = pd.Series(["man", "Male", "m", "woman", "F", "w", "other", "not applicable",
                     "prefer not to say", "u", "robot", None])
    assert payload_rules.normalize_gender(raw).tolist() == [
        "M", "M", "M", "F", "F", "F", "O", "N", "P", "U", "robot", pd.NA]


def test_mixed_object_column_locks_the_first_type():
    col = pd.Series([None, "a", 3, "b", True], dtype=object)
    conv = payload_rules.convert(col, "string")
    assert conv.json_type == "string"
    assert conv.conflict.tolist() == [False, False, True, False, True]
    assert conv.values.tolist()[:4] == [pd.NA, "a", pd.NA, "b"]
