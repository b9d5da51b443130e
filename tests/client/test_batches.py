"""track_batches: bounded concurrency, lazy payload consumption, per-index results, errors as
values, on_result callbacks, and early stop."""
from __future__ import annotations

import threading

import pytest

from .scripted import Step
from toolkit.errors import BrazeAPIError, BrazeConnectionError


def payloads(n):
    return [{"attributes": [{"external_id": f"u{i}", "i": i}]} for i in range(n)]


def test_concurrency_is_bounded_by_max_workers(fake, make_client):
    fake.default("/users/track", lambda seen: Step(delay=0.08))
    client = make_client(max_workers=3)
    results = list(client.track_batches(payloads(15)))
    assert sorted(i for i, _ in results) == list(range(15))
    assert fake.max_active == 3


def test_payloads_are_drawn_lazily(fake, make_client):
    fake.default("/users/track", lambda seen: Step(delay=0.05))
    drawn = []

    def source():
        for i, p in enumerate(payloads(20)):
            drawn.append(i)
            yield p

    client = make_client(max_workers=2)
    stream = client.track_batches(source())
    first_index, first = next(stream)
    assert first.status == 201
    assert len(drawn) <= 2 + 1                 # the workers' payloads plus one refill
    rest = list(stream)
    assert len(rest) == 19 and len(drawn) == 20


def test_each_result_carries_its_payload_index_and_body_is_unchanged(fake, make_client):
    client = make_client(max_workers=4)
    sent = payloads(12)
    for index, result in client.track_batches(sent):
        assert result.status == 201
    bodies = sorted((s.body["attributes"][0]["i"], s.body) for s in fake.seen)
    assert [b for _, b in bodies] == sent


def test_failures_are_yielded_as_errors_naming_the_batch(fake, make_client):
    def answer(seen):
        i = seen.body["attributes"][0]["i"]
        if i == 3:
            return Step(400, {"message": "bad batch"})
        if i == 5:
            return Step(drop=True)
        return Step()

    fake.default("/users/track", answer)
    client = make_client(max_workers=2)
    results = dict(client.track_batches(payloads(8), retry_unknown=False))
    assert sorted(results) == list(range(8))
    assert isinstance(results[3], BrazeAPIError) and results[3].outcome == "rejected"
    assert results[3].batch == 3 and "batch 3" in str(results[3])
    assert isinstance(results[5], BrazeConnectionError) and results[5].outcome == "unknown"
    assert all(results[i].status == 201 for i in (0, 1, 2, 4, 6, 7))


def test_event_batches_are_not_resent_after_an_unknown_outcome_by_default(fake, make_client):
    fake.script("/users/track", Step(drop=True))
    client = make_client(max_workers=1)
    batch = [{"events": [{"external_id": "u", "name": "Audience Entered", "time": "2026-01-01"}]}]
    ((index, outcome),) = list(client.track_batches(batch))
    assert index == 0 and outcome.outcome == "unknown"
    assert len(fake.seen) == 1


def test_on_result_runs_in_the_calling_thread_for_every_result(fake, make_client):
    client = make_client(max_workers=3)
    calls = []
    caller = threading.get_ident()
    for _ in client.track_batches(payloads(9),
                                  on_result=lambda i, r: calls.append((i, threading.get_ident()))):
        pass
    assert sorted(i for i, _ in calls) == list(range(9))
    assert {t for _, t in calls} == {caller}


def test_stopping_early_still_reports_requests_in_flight(fake, make_client):
    fake.default("/users/track", lambda seen: Step(delay=0.1))
    client = make_client(max_workers=3)
    reported = []
    stream = client.track_batches(payloads(30), on_result=lambda i, r: reported.append(i))
    next(stream)
    stream.close()
    sent = len(fake.requests_to("/users/track"))
    assert sent <= 3 + 1 + 1
    assert sorted(reported) == sorted(set(reported)) and len(reported) == sent


def test_an_exception_in_on_result_stops_the_run(fake, make_client):
    client = make_client(max_workers=2)

    def boom(i, r):
        raise RuntimeError("ledger full")

    with pytest.raises(RuntimeError, match="ledger full"):
        list(client.track_batches(payloads(10), on_result=boom))
    assert len(fake.seen) < 10
