"""Synthetic EngageExport objects for the mapping / filter / preview tests (built per model.py)."""
from __future__ import annotations

import pandas as pd
import pytest

from toolkit.engage.model import EVENT_COLUMNS, EngageExport

SNAPSHOT = pd.Timestamp("2026-11-20T06:00:00Z")


def make_export(profiles: dict, computations: list[tuple], *, events: list[dict] | None = None,
                snapshot_at=SNAPSHOT) -> EngageExport:
    """Build an export: `profiles` maps column → list; computations are (key, kind, value_type)."""
    n = len(next(iter(profiles.values())))
    frame = {}
    for col in ("segment_id", "user_id", "email", "anonymous_id", "braze_id"):
        values = profiles.get(col, [None] * n)
        frame[col] = pd.array(values, dtype="string")
    comps = []
    for key, kind, value_type in computations:
        values = profiles[key]
        dtype = {"boolean": "boolean", "number": "Float64", "string": "string"}.get(value_type)
        if value_type == "datetime":
            frame[key] = pd.to_datetime(pd.Series(values), utc=True)
        elif dtype is None:
            frame[key] = pd.Series(values, dtype=object)
        else:
            frame[key] = pd.array(values, dtype=dtype)
        comps.append({"key": key, "kind": kind,
                      "computation_id": ("aud_" if kind == "audience" else "tra_") + key,
                      "value_type": value_type, "name": key})
    ev = pd.DataFrame(events or [], columns=list(EVENT_COLUMNS))
    if len(ev):
        ev["timestamp"] = pd.to_datetime(ev["timestamp"], utc=True)
    return EngageExport(profiles=pd.DataFrame(frame), computations=pd.DataFrame(comps),
                        events=ev, snapshot_at=snapshot_at, source="synthetic")


@pytest.fixture
def shop() -> EngageExport:
    """Ten profiles covering every identifier situation and awkward value."""
    return make_export(
        {
            "segment_id": [f"use_{i}" for i in range(10)],
            "user_id": ["u0", "u1", "u2", None, None, None, "u6", "u7", "u8", None],
            "email": ["a@x.io", None, "c@x.io", "d@x.io", None, None, None, "h@x.io", None, None],
            "anonymous_id": [None, "an1", None, None, "an4", None, "an6", None, None, "an9"],
            "braze_id": [None, None, None, None, None, "bz5", None, None, None, None],
            "vip": [True, True, False, True, True, True, None, False, True, False],
            "dormant": [False, True, True, False, False, False, True, False, False, True],
            "fav": ["Shoes", "shoes", "x" * 300, "Hats", None, "Shoes", "", "Bags", None, "Shoes"],
            "revenue": [10.0, 0.0, None, 250.5, 3.0, 40.0, 7.0, None, 99.0, 1.0],
            "last_order_at": ["2026-11-18T10:00:00Z", "2026-10-01T00:00:00Z", None,
                              "2026-11-19T23:00:00Z", None, "2026-01-01T00:00:00Z", None,
                              "2026-11-01T12:00:00Z", "2026-06-30T00:00:00Z", None],
        },
        [("vip", "audience", "boolean"), ("dormant", "audience", "boolean"),
         ("fav", "trait", "string"), ("revenue", "trait", "number"),
         ("last_order_at", "trait", "datetime")],
    )
