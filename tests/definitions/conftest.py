"""A small shop with a known event history, for the definition tests (parser, evaluation,
translation): six profiles, their traits, and source events relative to the snapshot."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from toolkit.engage.model import EngageExport

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data" / "samples"
SNAPSHOT = pd.Timestamp("2026-11-20T06:00:00Z")


def ago(days: float = 0, hours: float = 0) -> pd.Timestamp:
    return SNAPSHOT - pd.Timedelta(days=days, hours=hours)


def make_shop(events: list[dict] | None = None) -> EngageExport:
    """Profiles p0…p5; `events` rows are dicts with user_id/anonymous_id, event, timestamp,
    properties (and optional context, source_id)."""
    profiles = pd.DataFrame({
        "segment_id": pd.array([f"p{i}" for i in range(6)], dtype="string"),
        "user_id": pd.array(["u0", "u1", "u2", "u3", None, "u5"], dtype="string"),
        "email": pd.array(["a@x.io", None, "c@x.io", None, None, "f@x.io"], dtype="string"),
        "anonymous_id": pd.array([None, "an1", None, None, "an4", None], dtype="string"),
        "braze_id": pd.array([None] * 6, dtype="string"),
        "emails": [["a@x.io"], [], ["c@x.io"], [], [], ["f@x.io"]],
        "anonymous_ids": [[], ["an1"], [], [], ["an4"], []],
        "plan": pd.array(["pro", "free", None, "Pro", "pro", "enterprise"], dtype="string"),
        "spend": pd.array([250.0, 0.0, None, 99.5, 10.0, 1200.0], dtype="Float64"),
        "beta": pd.array([True, False, None, True, None, False], dtype="boolean"),
        "signup_at": pd.to_datetime(pd.Series([ago(2), ago(40), None, ago(400), ago(0, 3),
                                               ago(-5)]), utc=True),
        "buyer": pd.array([True, True, False, False, False, True], dtype="boolean"),
    })
    computations = pd.DataFrame([
        {"key": "buyer", "kind": "audience", "computation_id": "aud_buyer",
         "value_type": "boolean", "name": "buyer"},
        {"key": "spend", "kind": "trait", "computation_id": "tra_spend", "value_type": "number",
         "name": "spend"},
    ])
    export = EngageExport(profiles=profiles, computations=computations, snapshot_at=SNAPSHOT,
                          source="definitions test shop")
    if events is None:
        events = DEFAULT_EVENTS
    return export.with_history(pd.DataFrame(events))


def _ev(who: str, event: str, when: pd.Timestamp, source: str = "web", **props) -> dict:
    kind, value = who.split(":", 1)
    return {"user_id": value if kind == "user_id" else None,
            "anonymous_id": value if kind == "anonymous_id" else None,
            "event": event, "timestamp": when, "properties": props,
            "context": {"page": {"url": f"https://shop.example/{event.lower().replace(' ', '-')}"}},
            "source_id": source}


DEFAULT_EVENTS = [
    # p0: three orders, the last two recent
    _ev("user_id:u0", "Order Completed", ago(100), revenue=50.0, brand="Acme", tags=["a", "b"]),
    _ev("user_id:u0", "Order Completed", ago(5), revenue=120.0, brand="Acme"),
    _ev("user_id:u0", "Order Completed", ago(1), revenue=30.0, brand="Zed", source="ios"),
    _ev("user_id:u0", "Order Returned", ago(0, 12), order="x"),
    # p1 (known by anonymous id): one order long ago, views
    _ev("anonymous_id:an1", "Order Completed", ago(200), revenue=500.0, brand="Acme"),
    _ev("anonymous_id:an1", "Product Viewed", ago(2), name="Camp Mug", price=12.0),
    _ev("anonymous_id:an1", "Product Viewed", ago(3), name="Camp Mug", price=12.0),
    _ev("anonymous_id:an1", "Product Viewed", ago(20), name="Down Vest", price=80.0),
    # p2: one order 8 days ago (inside 8 calendar days, outside 7×24 h? no: 8×24 h)
    _ev("user_id:u2", "Order Completed", ago(8), revenue=75.0, brand="Zed"),
    # p3: views only
    _ev("user_id:u3", "Product Viewed", ago(0, 2), name="Down Vest", price=80.0),
    # p4: anonymous-only, an order today
    _ev("anonymous_id:an4", "Order Completed", ago(0, 1), revenue=15.0, brand="Acme"),
    # someone the export does not list
    _ev("user_id:u9", "Order Completed", ago(3), revenue=999.0, brand="Acme"),
]


@pytest.fixture
def shop() -> EngageExport:
    return make_shop()


@pytest.fixture(scope="session")
def sample_export() -> EngageExport:
    import toolkit

    return toolkit.load(SAMPLES / "events" / "engage_events.ndjson.gz").with_history(
        SAMPLES / "events" / "source_events.ndjson.gz")
