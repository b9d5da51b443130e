"""NDJSON / JSON / batch-envelope reader: membership rule, fan-out collapse, identity, history."""
from __future__ import annotations

import gzip
import json

import pandas as pd

import toolkit
from toolkit.engage.events import iter_messages

SPACE = "spa_9aQ1Lj62S4bomZKLF4DPqW"


def msg(mtype, key, value, ts, *, klass="audience", event=None, user_id=None, anon=None,
        email=None, mid=None, external_ids=None):
    m = {"type": mtype, "messageId": mid or f"personas_{ts}_{user_id}_{anon}_{email}",
         "timestamp": ts,
         "context": {"personas": {"computation_class": klass, "computation_id": "aud_1",
                                  "computation_key": key, "namespace": SPACE, "space_id": SPACE}}}
    if user_id:
        m["userId"] = user_id
    if anon:
        m["anonymousId"] = anon
    if external_ids:
        m["context"]["externalIds"] = external_ids
    if mtype == "identify":
        m["traits"] = {key: value, **({"email": email} if email else {})}
    else:
        m["event"] = event or ("Audience Entered" if value else "Audience Exited")
        m["properties"] = {"audience_key": key, key: value}
        if email:
            m["context"]["traits"] = {"email": email}
    return m


def ndjson(messages):
    return "".join(json.dumps(m) + "\n" for m in messages)


def test_membership_from_boolean_not_event_name(write):
    lines = [
        msg("track", "dormant", True, "2025-01-06T09:00:00.000Z", event="Dormant Shopper Entered",
            user_id="u_1"),
        msg("track", "dormant", False, "2025-01-06T09:00:00.000Z", event="Dormant Shopper Entered",
            user_id="u_2"),  # renamed event name says "Entered", the boolean says exit
        msg("track", "dormant", True, "2025-01-06T09:00:00.000Z", event="Whatever", user_id="u_3"),
    ]
    export = toolkit.load(write("e.ndjson", ndjson(lines)))
    members = dict(zip(export.profiles["user_id"], export.profiles["dormant"]))
    assert members == {"u_1": True, "u_2": False, "u_3": True}


def test_string_true_is_a_finding_not_a_member(write):
    lines = [msg("identify", "vip", "true", "2025-01-06T09:00:00.000Z", user_id="u_1"),
             msg("identify", "vip", True, "2025-01-06T09:00:00.000Z", user_id="u_2"),
             msg("identify", "vip", "true", "2025-01-07T09:00:00.000Z", user_id="u_2")]
    export = toolkit.load(write("e.ndjson", ndjson(lines)))
    p = export.profiles.set_index("user_id")
    assert pd.isna(p.loc["u_1", "vip"])            # only a string: unknown
    assert p.loc["u_2", "vip"] is True or bool(p.loc["u_2", "vip"])  # the later string decides nothing
    rows = [f.row for f in export.findings.of("string_boolean")]
    assert rows == [1, 3]


def test_latest_timestamp_wins_regardless_of_file_order(write):
    lines = [msg("identify", "vip", False, "2025-02-01T00:00:00.000Z", user_id="u_1"),
             msg("identify", "vip", True, "2025-01-01T00:00:00.000Z", user_id="u_1")]
    export = toolkit.load(write("e.ndjson", ndjson(lines)))
    assert export.profiles["vip"].tolist() == [False]


def test_fan_out_collapses_to_one_profile_with_all_identifiers(write):
    ts = "2025-01-06T09:00:00.000Z"
    lines = [msg("identify", "vip", True, ts, user_id="u_1", email="A@x.com"),
             msg("identify", "vip", True, ts, user_id="u_1", email="b@x.com"),
             msg("identify", "vip", True, ts, user_id="u_1", anon="anon-1"),
             msg("identify", "vip", True, ts, anon="anon-9")]  # a different, anonymous profile
    export = toolkit.load(write("e.ndjson", ndjson(lines)))
    p = export.profiles
    assert len(p) == 2
    first = p.set_index("segment_id").loc["user_id:u_1"]
    assert tuple(first["emails"]) == ("a@x.com", "b@x.com") and tuple(first["anonymous_ids"]) == ("anon-1",)
    assert p.set_index("segment_id").loc["anonymous_id:anon-9", "vip"]
    assert len(export.events) == 2                       # fan-out copies count once
    assert export.findings.of("fan_out")
    assert export.findings.of("anonymous_only")


def test_union_find_links_messages_through_shared_identifiers(write):
    ts = "2025-01-06T09:00:00.000Z"
    lines = [msg("identify", "vip", True, ts, anon="anon-1", email="a@x.com"),
             msg("identify", "vip", True, ts, user_id="u_1", email="a@x.com"),
             msg("identify", "vip", True, ts, user_id="u_1", email="c@x.com")]
    export = toolkit.load(write("e.ndjson", ndjson(lines)))
    assert len(export.profiles) == 1
    assert export.profiles.loc[0, "segment_id"] == "user_id:u_1"


def test_segment_id_external_id_is_the_profile_key(write):
    ts = "2025-01-06T09:00:00.000Z"
    ext = [{"id": "use_abc", "type": "segment_id", "collection": "users", "encoding": "none"}]
    lines = [msg("identify", "vip", True, ts, user_id="u_1", external_ids=ext)]
    export = toolkit.load(write("e.ndjson", ndjson(lines)))
    assert export.profiles.loc[0, "segment_id"] == "use_abc"


def test_traits_events_and_history_columns(write):
    lines = [msg("identify", "total_revenue_180_days", 10.0, "2025-01-01T00:00:00.000Z",
                 klass="trait", user_id="u_1"),
             msg("track", "total_revenue_180_days", 25.5, "2025-02-01T00:00:00.000Z",
                 klass="trait", event="Trait Computed", user_id="u_1")]
    lines[1]["properties"] = {"trait_key": "total_revenue_180_days", "total_revenue_180_days": 25.5}
    export = toolkit.load(write("e.ndjson", ndjson(lines)))
    assert export.traits == ["total_revenue_180_days"]
    assert export.profiles["total_revenue_180_days"].tolist() == [25.5]
    ev = export.events
    assert list(ev.columns) == ["segment_id", "timestamp", "type", "event", "computation_key",
                                "computation_kind", "value", "message_id"]
    assert str(ev["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert ev["event"].tolist()[1] == "Trait Computed" and pd.isna(ev["event"].iloc[0])
    assert export.snapshot_at == pd.Timestamp("2025-02-01", tz="UTC")


def test_json_array_batch_envelopes_and_gzip(write):
    ts = "2025-01-06T09:00:00.000Z"
    a = msg("identify", "vip", True, ts, user_id="u_1")
    b = msg("identify", "vip", False, ts, user_id="u_2")
    for content, name in [(json.dumps([a, b], indent=2), "arr.json"),
                          (json.dumps({"batch": [a, b]}, indent=2), "env.json"),
                          (json.dumps([{"batch": [a]}, {"batch": [b]}]), "envs.json"),
                          (gzip.compress(ndjson([a, b]).encode()), "e.ndjson.gz")]:
        export = toolkit.load(write(name, content))
        assert sorted(export.profiles["user_id"]) == ["u_1", "u_2"], name
        assert export.source.endswith("(ndjson)")


def test_non_engage_messages_are_skipped(write):
    ts = "2025-01-06T09:00:00.000Z"
    lines = [msg("identify", "vip", True, ts, user_id="u_1"),
             {"type": "track", "event": "Order Completed", "userId": "u_1", "timestamp": ts}]
    export = toolkit.load(write("e.ndjson", ndjson(lines)))
    assert len(export.profiles) == 1 and export.findings.of("not_engage")


def test_iter_messages_reports_lines(write):
    path = write("e.ndjson", "\n" + ndjson([msg("identify", "vip", True, "2025-01-06T09:00:00Z",
                                                user_id="u")]))
    assert [line for line, _ in iter_messages(path)] == [2]
