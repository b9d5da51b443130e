"""Settle: uncertain event batches decided from Braze's read-back — landed, did not land (only
after the read-after-write delay), or undecided with users and evidence — and by hand; plans
and exit codes that say events await settling; a time of its own for each plan's events."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

import toolkit
from .builders import make_export
from toolkit.cli import main
from toolkit.errors import LedgerError, LedgerMoved
from toolkit.mapping import Mapping
from toolkit.sync.apply import apply
from toolkit.sync.ledger import Ledger
from toolkit.sync.plan import plan
from toolkit.errors import SettleError
from toolkit.sync.settle import parse_wait, settle

LATER = timedelta(minutes=6)     # past the default 5-minute read-after-write wait
FORMATTED = Path(__file__).resolve().parents[2] / "data" / "samples" / "audience_csv" / "formatted"


def _mapping(export, *keys):
    m = Mapping.from_export(export)
    for key in keys or ("vip_customer", "dormant_shopper"):
        m = m.set(key, send_as="event")
    return m


def _sync(export, mapping, client, ledger, **options):
    options.setdefault("create_users", True)
    options.setdefault("batch_size", 20)
    p = plan(export, mapping, ledger, workspace=client, **options).approve(by="tester")
    return p, apply(p, client, ledger, progress=False)


def _event_counts(sb) -> pd.Series:
    """Stored events per (user, event name, audience or trait key)."""
    ev = sb.events()
    key = ev["properties"].map(lambda p: p.get("audience_key") or p.get("trait_key"))
    return ev.assign(key=key).groupby(["external_id", "name", "key"]).size()


def _wanted(export, mapping) -> pd.Series:
    """What one complete sync from nothing sends: one event per (user, name, key)."""
    p = plan(export, mapping, None, create_users=True)
    ev = p.operations[p.operations["op"] == "event"]
    key = ev["value"].map(lambda v: json.loads(v).get("audience_key")
                          or json.loads(v).get("trait_key"))
    return ev.assign(external_id=ev["uid"].str.split(":", n=1).str[1], key=key).groupby(
        ["external_id", "name", "key"]).size()


def _now():
    return datetime.now(timezone.utc)


@pytest.fixture
def export():
    return make_export(120, seed=4)


# -- deciding from the read-back --------------------------------------------------------------

def test_batches_braze_applied_are_settled_landed_and_never_resent(export, sandbox, client,
                                                                   ledger):
    mapping = _mapping(export)
    sandbox.set_faults(rate_drop_after=1.0, endpoints=("/users/track",))
    client.max_retries = 0
    p, report = _sync(export, mapping, client, ledger)
    events = [b.id for b in p.batches() if b.kind == "events"]
    assert sorted(u["batch"] for u in report.uncertain) == events and report.exit_code == 3
    sandbox.set_faults(None)
    settled = settle(ledger, client)
    assert [d["decision"] for d in settled.decisions] == ["landed"] * len(events)
    assert all("show the plan's time" in d["evidence"] for d in settled.decisions)
    assert settled.exit_code == 0 and ledger.uncertain_events().empty
    users = {u for b in p.batches() if b.kind == "events" for u in p.rows_of(b)["uid"]}
    assert settled.requests == -(-len(users) // 50)        # 50 users per read-back request
    # the ledger now holds what landed: no event is planned again (the attribute batches, whose
    # answers were lost too, are planned again: resending a value is harmless)
    again = plan(export, mapping, ledger, workspace=client, create_users=True)
    assert set(again.operations["op"]) == {"attribute"}
    assert not again.findings.of("uncertain_events_held")
    apply(again.approve(by="tester"), client, ledger, progress=False)
    assert plan(export, mapping, ledger, workspace=client, create_users=True).is_empty
    assert _event_counts(sandbox).equals(_wanted(export, mapping))
    frame = settled.to_frame()
    assert list(frame["decision"].unique()) == ["landed"] and frame["users"].str.len().min() > 0
    assert "landed" in repr(settled) and "Settle" in settled._repr_html_()


def test_did_not_land_is_decided_only_after_the_read_after_write_delay(export, sandbox, client,
                                                                       ledger):
    mapping = _mapping(export, "vip_customer")
    # the connection drops before Braze applies anything; the client cannot know that
    sandbox.set_faults(rate_drop_before=1.0, endpoints=("/users/track",))
    client.max_retries = 0
    p, report = _sync(export, mapping, client, ledger)
    assert report.exit_code == 3
    sandbox.set_faults(None)
    early = settle(ledger, client)
    assert early.exit_code == 3 and not early.landed and not early.not_landed
    for d in early.undecided:
        assert "none of the" in d["evidence"] and "run settle again after" in d["evidence"]
        assert datetime.fromisoformat(d["decide_after"].replace("Z", "+00:00")) > _now()
    assert len(ledger.uncertain_events()) == len(early.decisions)
    # a shorter wait is a choice the caller makes (here: the sandbox has no read delay)
    late = settle(ledger, client, now=_now() + LATER)
    assert [d["decision"] for d in late.decisions] == ["not landed"] * len(early.decisions)
    assert all("none of the" in d["evidence"] for d in late.decisions)
    follow_up = plan(export, mapping, ledger, workspace=client, create_users=True)
    assert "event" in set(follow_up.operations["op"])
    assert follow_up.options["event_time"] < p.options["event_time"], "a second of its own"
    apply(follow_up.approve(by="tester"), client, ledger, progress=False)
    assert _event_counts(sandbox).equals(_wanted(export, mapping))


def test_events_braze_shows_late_are_waited_for(export, client, ledger, sandbox):
    """Braze shows a write only after a delay: within the wait, an empty read-back decides
    nothing; once the events show, the batch is settled as landed."""
    mapping = _mapping(export, "vip_customer")
    sandbox.set_read_delay(1.0)
    sandbox.set_faults(rate_drop_after=1.0, endpoints=("/users/track",))
    client.max_retries = 0
    _sync(export, mapping, client, ledger)
    sandbox.set_faults(None)
    early = settle(ledger, client, wait="3s")
    assert early.undecided and not early.not_landed, "nothing visible yet is not 'not landed'"
    time.sleep(1.1)
    late = settle(ledger, client, wait="3s")
    assert late.decisions and all(d["decision"] == "landed" for d in late.decisions)
    assert _event_counts(sandbox).max() == 1


def test_a_batch_the_read_back_cannot_place_stays_undecided_with_users_and_evidence(
        export, sandbox, client, ledger):
    mapping = _mapping(export, "vip_customer")
    sandbox.set_faults(rate_drop_after=1.0, endpoints=("/users/track",))
    client.max_retries = 0
    p, _ = _sync(export, mapping, client, ledger, batch_size=75)
    sandbox.set_faults(None)
    batch = next(b for b in p.batches() if b.kind == "events")
    user = p.rows_of(batch)["uid"][0].split(":", 1)[1]
    stamp = datetime.fromisoformat(p.options["event_time"].replace("Z", "+00:00"))
    # the same event name, from elsewhere, a day before and a day after the plan's time
    client.track(events=[{"external_id": user, "name": "Audience Entered",
                          "time": (stamp + d).isoformat(), "properties": {}}
                         for d in (timedelta(days=-1), timedelta(days=1))])
    report = settle(ledger, client, now=_now() + LATER)
    undecided = {d["batch"]: d for d in report.undecided}
    assert batch.id in undecided and report.exit_code == 3
    d = undecided[batch.id]
    assert f"external_id:{user}" in d["users"] and len(d["users"]) == batch.objects
    assert "cannot be placed" in d["evidence"]
    evidence = report.evidence_frame()
    row = evidence[(evidence["batch"] == batch.id) & (evidence["seen"] != "present")]
    assert list(row["braze_user"]) == [f"external_id:{user}"]
    assert row["first"].iloc[0] < p.options["event_time"] < row["last"].iloc[0]
    text = "\n".join(report.lines())
    assert f"--landed {p.id}/{batch.id}" in text and f"external_id:{user}" in text
    # the other batches of the plan were decided; this one waits for a person
    assert len(ledger.uncertain_events()) == 1
    hand = settle(ledger, client, landed=[batch.id])
    assert [(d["batch"], d["decision"], d["by"]) for d in hand.decisions] == [
        (batch.id, "landed", "hand")]
    assert ledger.uncertain_events().empty


def test_update_only_users_braze_does_not_know_do_not_block_landed(sandbox, client, ledger):
    export = make_export(40, seed=2)
    mapping = _mapping(export, "vip_customer")
    members = export.profiles.loc[export.profiles["vip_customer"].fillna(False).astype(bool),
                                  "user_id"].dropna().tolist()
    known = members[: len(members) // 2]
    client.track(attributes=[{"external_id": u, "seen": True} for u in known])
    sandbox.set_faults(rate_drop_after=1.0, endpoints=("/users/track",))
    client.max_retries = 0
    _sync(export, mapping, client, ledger, create_users=False, batch_size=75)
    sandbox.set_faults(None)
    report = settle(ledger, client)
    assert [d["decision"] for d in report.decisions] == ["landed"]
    assert "not in Braze (update-only mode" in report.decisions[0]["evidence"]
    assert set(sandbox.events()["external_id"]) == set(known)


def test_batches_recorded_without_event_names_are_left_to_a_person(tmp_path, client):
    with Ledger(path=tmp_path / "l.sqlite", workspace=client) as led:
        items = json.dumps([["member:vip", "external_id:u1", "true"]])
        led.record_batches("p1", [("events-00001", "events", 1, items)])
        led.mark_sent("p1", "events-00001")
        report = settle(led, client, now=_now() + LATER)
        assert [d["decision"] for d in report.decisions] == ["undecided"]
        assert "settle it by hand" in report.decisions[0]["evidence"]
        assert report.requests == 0
        settle(led, client, not_landed=["p1/events-00001"])
        assert led.uncertain_events().empty


def test_settling_by_hand_names_batches_plainly(tmp_path, client):
    with Ledger(path=tmp_path / "l.sqlite", workspace=client) as led:
        items = json.dumps([["member:vip", "external_id:u1", "true"]])
        for p in ("plan-a", "plan-b"):
            led.record_batches(p, [("events-00001", "events", 1, items),
                                   ("events-00002", "events", 1, items)])
            led.mark_sent(p, ["events-00001", "events-00002"])
        with pytest.raises(LedgerError) as err:
            settle(led, landed=["events-00001"])             # two plans have that batch
        assert "plan-a/events-00001" in err.value.hint and "plan-b/events-00001" in err.value.hint
        with pytest.raises(LedgerError) as err:
            settle(led, landed=["plan-a/events-00009"])
        assert "plan-a/events-00002" in err.value.hint       # the batches that await a decision
        with pytest.raises(SettleError):
            settle(led, landed=["plan-a/events-00001"], not_landed=["plan-a/events-00001"])
        report = settle(led, landed=["plan-a/events-00001"], not_landed=["plan-b/events-00002"])
        decided = {(d["plan"], d["batch"]): d["decision"] for d in report.decisions}
        assert decided == {("plan-a", "events-00001"): "landed",
                           ("plan-a", "events-00002"): "undecided",
                           ("plan-b", "events-00001"): "undecided",
                           ("plan-b", "events-00002"): "not landed"}
        assert report.exit_code == 3
        assert led.state("member:vip").to_dict() == {"external_id:u1": "true"}
        # a Plan object works where a plan id does (what reports and findings show)
        led.resolve(type("P", (), {"id": "plan-b"})(), "events-00001", landed=False)
        with pytest.raises(LedgerError) as err:
            led.resolve("plan-b", "events-00001", landed=True)
        assert "it is failed" in str(err.value) and "restore" not in str(err.value)


def test_nothing_to_settle_is_said_plainly(ledger, client):
    report = settle(ledger, client)
    assert report.decisions == [] and report.exit_code == 0 and report.requests == 0
    assert "Nothing to settle" in report.lines()[0] and "Nothing to settle" in \
        report._repr_html_()


def test_wait_reads_durations():
    assert parse_wait("5m") == timedelta(minutes=5) and parse_wait(0) == timedelta(0)
    assert parse_wait("90s") == timedelta(seconds=90)
    for bad in ("soon", -1, "5 minutes"):
        with pytest.raises(toolkit.ConfigError):
            parse_wait(bad)


# -- plans and exit codes tell the truth ------------------------------------------------------

def test_a_plan_made_while_events_are_uncertain_says_so(sandbox, client, ledger, monkeypatch,
                                                       tmp_path, capsys):
    export = toolkit.load(FORMATTED)
    mapping = Mapping.from_export(export).set("vip_customer", send_as="event")
    sandbox.set_faults(rate_drop_after=1.0, endpoints=("/users/track",))
    client.max_retries = 0
    p, report = _sync(export, mapping, client, ledger, batch_size=75)
    assert report.exit_code == 3 and report.awaiting_settle == len(report.uncertain)
    assert "python -m toolkit settle" in report._repr_html_()
    sandbox.set_faults(None)
    apply(p, client, ledger, progress=False)               # attributes now acknowledged
    later = plan(export, mapping, ledger, workspace=client, create_users=True)
    assert later.is_empty                                  # nothing can be sent ...
    waiting = later.awaiting_settle                        # ... but it is not "in sync"
    assert waiting["batches"] == len(report.uncertain) and waiting["events"] > 0
    assert later.held_events == waiting["events"]
    assert "await settling" in ledger._repr_html_()
    assert "Nothing can be sent yet" in later.headline()
    assert "python -m toolkit settle" in later.headline()
    assert "await settling" in repr(later)
    assert "Nothing to send" not in later._repr_html_()
    assert "python -m toolkit settle" in later._repr_html_()
    finding = later.findings.of("uncertain_events_held")[0]
    assert "python -m toolkit settle" in finding.fix
    # the command line: plan exits 3 and says what to do; settle exits 0 once all is decided
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SANDBOX_URL", sandbox.url)
    monkeypatch.setenv("SANDBOX_API_KEY", sandbox.api_key)
    mapping.save(tmp_path / "m.yml")
    target = ["--sandbox", "--ledger", str(ledger.path)]
    code = main(["plan", str(FORMATTED), "--mapping", "m.yml", "--create-users", "--out",
                 "q.json", *target])
    out = capsys.readouterr().out
    assert code == 3 and "nothing to send" not in out.lower()
    assert "nothing can be sent yet" in out and "AWAITING SETTLE" in out
    code = main(["settle", *target])
    out = capsys.readouterr().out
    assert code == 0 and "LANDED" in out and "Every batch is settled" in out
    assert main(["plan", str(FORMATTED), "--mapping", "m.yml", "--create-users", "--out",
                 "r.json", *target]) == 0
    assert "nothing to send" in capsys.readouterr().out
    assert _event_counts(sandbox).max() == 1


# -- each plan's events carry a time of their own ---------------------------------------------

def test_each_plan_gets_a_second_of_its_own(export, ledger, client):
    mapping = _mapping(export, "vip_customer")
    times = [plan(export, mapping, ledger, workspace=client, create_users=True
                  ).options["event_time"] for _ in range(3)]
    assert times == ["2026-11-27T06:00:00.000Z", "2026-11-27T05:59:59.000Z",
                     "2026-11-27T05:59:58.000Z"]
    asked = plan(export, mapping, ledger, workspace=client, create_users=True,
                 event_time="2026-11-27T06:00:00Z")
    assert asked.options["event_time"] == "2026-11-27T05:59:57.000Z"
    assert asked.findings.of("event_time_moved")
    # a plan without events takes no second (and stays the same plan when made again)
    attrs = Mapping.from_export(export)
    a, b = (plan(export, attrs, ledger, workspace=client) for _ in range(2))
    assert a.fingerprint == b.fingerprint


def test_a_plan_cannot_resend_events_another_apply_left_uncertain(export, sandbox, client,
                                                                  ledger, tmp_path):
    """Two plans made from the same ledger: the first one's events end uncertain (and no
    attribute changed, so the ledger version did not move); the second must not send the same
    events again before they are settled."""
    mapping = Mapping.from_export(export).set("vip_customer", send_as="event")
    first = plan(export, mapping, ledger, workspace=client, create_users=True).approve(by="a")
    second = plan(export, mapping, ledger, workspace=client, create_users=True).approve(by="b")
    sandbox.set_faults(rate_drop_after=1.0, endpoints=("/users/track",))
    client.max_retries = 0
    apply(first, client, ledger, progress=False)
    sandbox.set_faults(None)
    sent = len(sandbox.events())
    with pytest.raises(LedgerMoved) as err:
        apply(second, client, ledger, progress=False)
    assert "settle" in err.value.hint
    assert len(sandbox.events()) == sent, "nothing was sent twice"


def test_a_copied_ledger_cannot_hand_out_a_used_second(export, sandbox, client, tmp_path):
    mapping = Mapping.from_export(export)
    for key in ("vip_customer", "dormant_shopper", "first_time_shopper"):
        mapping = mapping.set(key, send_as="event")
    path = tmp_path / "ledger.sqlite"
    Ledger(path=path, workspace=client).close()
    shutil.copy(path, tmp_path / "copy.sqlite")
    with Ledger(path=path, workspace=client) as led:
        a = plan(export, mapping, led, workspace=client, create_users=True).approve(by="a")
    with Ledger(path=tmp_path / "copy.sqlite", workspace=client) as copy:
        # another export taken at the same time: other operations, the same event time
        b = plan(make_export(120, seed=5), mapping, copy, workspace=client,
                 create_users=True).approve(by="b")
    assert a.options["event_time"] == b.options["event_time"] and a.id != b.id
    with Ledger(path=path, workspace=client) as led:
        sandbox.set_faults(rate_drop_before=1.0, endpoints=("/users/track",))
        client.max_retries = 0
        apply(a, client, led, progress=False)     # nothing lands, nothing is acknowledged
        sandbox.set_faults(None)
        settle(led, client, now=_now() + LATER)   # ... and settle says so
        assert led.uncertain_events().empty and led.version == 0
        with pytest.raises(LedgerMoved) as err:
            apply(b, client, led, progress=False)
    assert "stamped" in str(err.value) and "plan again" in err.value.hint
    assert sandbox.events().empty
