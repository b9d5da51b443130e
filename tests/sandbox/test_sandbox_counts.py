"""The sandbox's ``keep="counts"`` mode: every request answered, refused and billed exactly as the
default ``keep="users"`` sandbox does, with no per-user values kept (benchmarks at 10M users)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.errors import SandboxError
from toolkit.sandbox import BrazeSandbox
from toolkit.sandbox.store import KEEP, CountStore, Store

T = "2024-03-01T12:00:00Z"
KEY = "counts-test-key"


def _pair(**options):
    return [BrazeSandbox(KEY, seed=3, keep=keep, **options) for keep in ("users", "counts")]


class Mirror:
    """The same requests to a keep="users" and a keep="counts" sandbox; every answer compared."""

    def __init__(self, **options) -> None:
        self.sandboxes = _pair(**options)
        self.session = requests.Session()

    def send(self, method: str, path: str, body=None, *, key: str = KEY):
        answers = []
        for sb in self.sandboxes:
            r = self.session.request(method, sb.url + path, json=body, timeout=10,
                                     headers={"Authorization": f"Bearer {key}"})
            answers.append((r.status_code, r.json(),
                            {k.lower(): v for k, v in r.headers.items()   # not the reset time
                             if k.lower() in ("x-ratelimit-limit", "x-ratelimit-remaining")}))
        assert answers[0] == answers[1], (method, path, body)
        return answers[0][:2]

    def track(self, **arrays):
        return self.send("POST", "/users/track", arrays)

    def check_totals(self) -> None:
        users, counts = self.sandboxes
        assert users.data_points == counts.data_points
        a, b = users.summary(), counts.summary()
        assert (a.pop("keep"), b.pop("keep")) == ("users", "counts")
        assert a == b
        columns = ["endpoint", "status", "objects", "data_points", "fault", "skipped", "note"]
        assert users.request_log()[columns].equals(counts.request_log()[columns])

    def close(self) -> None:
        self.session.close()
        for sb in self.sandboxes:
            sb.close()


@pytest.fixture
def mirror():
    m = Mirror(partner_api_key="pk", client_secret="cs")
    yield m
    m.close()


def ev(ident, name="Audience Entered", **kw):
    return {**ident, "name": name, "time": T, **kw}


# A scripted history touching every rule that depends on state (users' existence, update-only,
# email/phone addressing and their "most recent" choice, the type lock, event names, cohorts)
# and every billing rule (§7), valid and invalid objects mixed.
SCRIPT = [
    {"attributes": [{"external_id": "u1", "vip": True, "score": 3, "city": "Oslo",
                     "seen": "2024-01-02T00:00:00Z", "first_name": "Ann", "email": "a@x.io"},
                    {"external_id": "u2", "vip": "yes"},                 # type lock: refused
                    {"external_id": "u3", "_update_existing_only": True, "vip": False},  # skipped
                    {"email": "a@x.io", "_update_existing_only": True, "score": 4},  # u1 by email
                    {"email": "new@x.io", "tier": "gold"},             # created by email
                    {"phone": "+4712345678", "_update_existing_only": True, "tier": "x"},
                    {"external_id": "u4", "$bad": 1},
                    {"external_id": "u4", "gender": "Q"},
                    {"external_id": "u4", "dob": "2020-1-1"},
                    {"external_id": "u4", "tags": ["a", "b", "a"], "nested": {"a": {"b": 1, "c": 2}},
                     "email_subscribe": "opted_in", "subscription_groups": [],
                     "counter": {"inc": 2}, "gone": None, "country": "norway"},
                    {"external_id": "u4", "tags": {"add": ["c", "d"], "remove": ["a", "zz"]}},
                    {"external_id": "u4", "counter": {"inc": 1.5}},
                    {"user_alias": {"alias_name": "al", "alias_label": "crm"}, "vip": True},
                    {"user_alias": {"alias_name": "al", "alias_label": "crm"}, "vip": True,
                     "_update_existing_only": False},
                    {"braze_id": "0123456789abcdef01234567", "vip": True},
                    {"external_id": "u5", "braze_id": "x", "vip": True},
                    {"external_id": "u5", "push_token_import": True},
                    {"external_id": "u5", "_merge_objects": "yes"},
                    "not an object"]},
    {"events": [ev({"external_id": "u1"}), ev({"external_id": "nobody"}),
                ev({"user_alias": {"alias_name": "al", "alias_label": "crm"}}, "Alias Event"),
                ev({"user_alias": {"alias_name": "no", "alias_label": "crm"}}),
                ev({"email": "a@x.io"}, "By Email"), ev({"external_id": "u1"}, time="yesterday"),
                ev({"external_id": "u1"}, properties={"time": 1}),
                ev({"external_id": "u1"}, properties={"$k": 1}),
                ev({"external_id": "u1", "email": "a@x.io"}),
                ev({"external_id": "u6", "_update_existing_only": False}, "New User Event"),
                {"external_id": "u1", "time": T}],
     "purchases": [{"external_id": "u1", "product_id": "sku", "currency": "USD", "price": 9.5,
                    "time": T},
                   {"external_id": "u1", "product_id": "sku", "currency": "usd", "price": 1,
                    "time": T},
                   {"external_id": "u7", "product_id": "sku", "currency": "EUR", "price": 1,
                    "quantity": 101, "time": T},
                   {"external_id": "u7", "product_id": "other", "currency": "EUR", "price": 2,
                    "time": T}]},
    # the email moves from u1 to u2's new profile and back: which user an email addresses
    {"attributes": [{"external_id": "u2", "vip": False, "email": "a@x.io"},
                    {"email": "a@x.io", "_update_existing_only": True, "score": 5},
                    {"external_id": "u1", "email": None, "phone": "+4700000000"},
                    {"external_id": "u2", "email": None},
                    {"email": "a@x.io", "_update_existing_only": True, "score": 6},   # skipped
                    {"phone": "+4700000000", "_update_existing_only": True, "score": 7},
                    {"email": "new@x.io", "phone": "+4700000000", "k": 1}]},
    # an email shared by a profile with an external id and a later-updated one without: the
    # former is addressed (§1.1 FAQ); removing its phone again shows which one got it
    {"attributes": [{"external_id": "p1", "email": "shared@x.io"},
                    {"user_alias": {"alias_name": "s", "alias_label": "crm"},
                     "_update_existing_only": False, "email": "shared@x.io"}]},
    {"attributes": [{"email": "shared@x.io", "_update_existing_only": True, "phone": "+4799"},
                    {"external_id": "p1", "phone": None},
                    {"phone": "+4799", "_update_existing_only": True, "k": 2}]},
    # two profiles without an external id share an email: the more recently updated one wins
    {"attributes": [{"user_alias": {"alias_name": "t1", "alias_label": "crm"},
                     "_update_existing_only": False, "email": "pair@x.io"},
                    {"user_alias": {"alias_name": "t2", "alias_label": "crm"},
                     "_update_existing_only": False, "email": "pair@x.io"},
                    {"user_alias": {"alias_name": "t1", "alias_label": "crm"}, "k": 1},
                    {"user_alias": {"alias_name": "t2", "alias_label": "crm"}, "k": 1}]},
    {"attributes": [{"email": "pair@x.io", "_update_existing_only": True, "phone": "+4788"},
                    {"user_alias": {"alias_name": "t2", "alias_label": "crm"}, "phone": None},
                    {"phone": "+4788", "_update_existing_only": True, "k": 2}]},
    {"attributes": [{"external_id": f"bulk{i}", "n": i} for i in range(75)]},
    {"attributes": [{"external_id": f"bulk{i}", "n": i} for i in range(76)]},    # > 75: 400
    {"attributes": [], "events": []},                                               # nothing: 400
    {"attributes": [{"external_id": "u1", "$x": 1}, {"vip": True}]},             # all bad: 400
    {"attributes": [{"external_id": "u1"}], "extra": []},                          # unknown key
    {"attributes": {"external_id": "u1"}},                                          # not an array
]


def test_every_answer_and_data_point_is_the_same(mirror):
    for body in SCRIPT:
        mirror.track(**body)
    mirror.send("POST", "/users/track", ["not", "an", "object"])
    mirror.send("POST", "/users/track", {"attributes": [{"external_id": "u1", "a": 1}]},
                key="wrong key")                                                # 401
    mirror.send("GET", "/custom_attributes")
    mirror.send("GET", "/events/list")
    mirror.check_totals()
    users, counts = mirror.sandboxes
    assert counts.summary()["users"] == len(users.profiles()) > 80
    assert users.data_points > 100


def test_cohort_members_and_matches_are_the_same(mirror):
    mirror.track(attributes=[{"external_id": "c1", "a": 1}, {"external_id": "c2", "a": 1},
                             {"user_alias": {"alias_name": "n", "alias_label": "l"}, "a": 1,
                              "_update_existing_only": False}])
    keys = {"partner_api_key": "pk", "client_secret": "cs"}
    mirror.send("POST", "/partners/segment/cohorts",
                {**keys, "cohort_id": "co", "name": "Cohort", "created_at": T})
    mirror.send("POST", "/partners/segment/cohorts/users", {**keys, "cohort_id": "co",
                "cohort_changes": [{"user_ids": ["c1", "c2", "nobody"]},
                                   {"aliases": [{"alias_name": "n", "alias_label": "l"}]}]})
    mirror.send("POST", "/partners/segment/cohorts/users", {**keys, "cohort_id": "co",
                "cohort_changes": [{"user_ids": ["c2"], "should_remove": True}]})
    mirror.send("POST", "/partners/segment/cohorts/users", {**keys, "cohort_id": "none",
                "cohort_changes": [{"user_ids": ["c1"]}]})
    mirror.check_totals()
    users, counts = mirror.sandboxes
    assert users.cohorts()["members"].tolist() == counts.cohorts()["members"].tolist() \
        == [["c1", "n:l"]]


def test_rate_limits_and_faults_are_the_same():
    m = Mirror(rate_limits={"/users/track": (4, 60)}, faults={"rate_500": 0.4})
    try:
        statuses = [m.track(attributes=[{"external_id": f"r{i}", "a": i}])[0] for i in range(7)]
        assert 429 in statuses and 500 in statuses and 201 in statuses
        m.check_totals()
    finally:
        m.close()


def test_what_counts_does_not_keep_is_refused_clearly():
    with BrazeSandbox(KEY, keep="counts") as sb:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"
        r = session.post(sb.url + "/users/export/ids",
                         json={"external_ids": ["u"], "fields_to_export": ["external_id"]})
        assert r.status_code == 400 and "keep='counts'" in r.json()["message"]
        r = session.post(sb.url + "/sandbox/segments", json={"name": "s", "filters": []})
        assert r.status_code == 400 and "keep='users'" in r.json()["message"]
        for call in (sb.profiles, sb.events, sb.purchases, sb.estimate_segments,
                     lambda: sb.create_segment("s", [])):
            with pytest.raises(SandboxError, match="keep='counts'"):
                call()
        assert "keep='counts'" in repr(sb) and "counts" in sb._repr_html_()
    with pytest.raises(SandboxError, match="keep must be one of"):
        BrazeSandbox(keep="values")


def test_braze_ids_address_counted_users():
    store = CountStore(seed=5)
    store.track({"attributes": [{"external_id": "a", "x": 1}, {"email": "e@x.io", "x": 2}]})
    ids = [store._braze_id(i) for i in range(2)]
    assert store._find("braze_id", ids[0]) == "a"
    store.track({"attributes": [{"external_id": "b", "x": 3}]})       # after the index exists
    assert store._find("braze_id", store._braze_id(2)) == "b"
    status, _, stats = store.track({"attributes": [{"braze_id": ids[1], "x": 4}]})
    assert (status, stats["data_points"], stats["skipped"]) == (201, 1, 0)
    assert store.label(store._find("braze_id", ids[1])) == ids[1]


def test_the_command_line_starts_a_counting_sandbox():
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "sandbox", "--api-key", KEY,
                             "--keep", "counts"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=root, env=dict(os.environ, PYTHONPATH=str(root)))
    try:
        url = proc.stdout.readline().strip().split("=", 1)[1]
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"
        r = session.post(url + "/users/track", timeout=10,
                         json={"attributes": [{"external_id": "u", "a": 1, "b": "x"}]})
        assert r.status_code == 201
        r = session.post(url + "/users/export/ids", timeout=10,
                         json={"external_ids": ["u"], "fields_to_export": ["external_id"]})
        assert r.status_code == 400 and "keep='counts'" in r.json()["message"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "2 data points" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_keep_is_a_rule_table():
    assert KEEP == {"users": Store, "counts": CountStore}


# -- random histories, straight on the two stores ----------------------------------------------
_IDENT = st.sampled_from([
    {"external_id": "h1"}, {"external_id": "h2"}, {"email": "m@x.io"}, {"email": "n@x.io"},
    {"phone": "+4711111111"}, {"user_alias": {"alias_name": "a", "alias_label": "l"}},
    {"braze_id": "ffffffffffffffffffffffff"}, {"external_id": ""}, {}])
_VALUE = st.one_of(st.booleans(), st.integers(-5, 5), st.sampled_from(
    ["s", "2024-01-01T00:00:00Z", "x" * 300, None, ["p", "q"], {"inc": 1}, {"inc": "1"},
     {"add": ["p"], "remove": ["q", "r"]}, {"k": {"j": 1, "i": 2}}, {"a.b": 1}]))
_FIELD = st.sampled_from(["email", "phone", "gender", "first_name", "email_subscribe"])
_FIELD_VALUE = st.sampled_from([None, "m@x.io", "n@x.io", "+4711111111", "F", "Q", "opted_in", 3])
_ATTRS = st.builds(
    lambda ident, only, attrs, fields: {**ident, **({} if only is None else
                                                    {"_update_existing_only": only}),
                                        **attrs, **fields},
    _IDENT, st.sampled_from([None, True, False, "no"]),
    st.dictionaries(st.sampled_from(["a", "b", "c", "$d"]), _VALUE, max_size=3),
    st.dictionaries(_FIELD, _FIELD_VALUE, max_size=2))
_EVENT = st.builds(lambda ident, name, only: {**ident, "name": name, "time": T,
                                              **({} if only is None else
                                                 {"_update_existing_only": only})},
                   _IDENT, st.sampled_from(["E", "F", ""]), st.sampled_from([None, False]))
_BODY = st.fixed_dictionaries({}, optional={"attributes": st.lists(_ATTRS, max_size=6),
                                            "events": st.lists(_EVENT, max_size=3)})


@settings(max_examples=150, deadline=None)
@given(st.lists(_BODY, min_size=1, max_size=6))
def test_random_histories_answer_and_bill_the_same(bodies):
    users, counts = Store(seed=1), CountStore(seed=1)
    for body in bodies:
        assert users.track(body) == counts.track(body)
    assert users.data_points == counts.data_points
    a, b = users.summary(), counts.summary()
    a.pop("keep"), b.pop("keep")
    assert a == b
