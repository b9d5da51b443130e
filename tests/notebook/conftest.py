"""Fixtures for the notebook-front tests: a small hand-built export and a headless widget comm."""
from __future__ import annotations

import pandas as pd
import pytest

from toolkit.engage.model import EngageExport, Findings


def build_export(n: int = 40) -> EngageExport:
    """A deterministic export: 3 audiences, 3 traits, mixed identifiers (some anonymous only)."""
    rows = []
    for i in range(n):
        rows.append({
            "segment_id": f"use_{i:04d}",
            "user_id": f"u{i:04d}" if i % 5 else None,          # every 5th has no user_id
            "email": f"p{i}@example.com" if i % 10 == 0 else None,  # half of those have email
            "anonymous_id": f"anon-{i}" if i % 5 == 0 and i % 10 else None,
            "braze_id": None,
            "vip_customer": i % 4 == 0,
            "dormant_shopper": i % 3 == 0,
            "first_time_shopper": None if i == 1 else i % 2 == 1,
            "total_revenue_180_days": float(i * 10) if i % 7 else None,
            "last_product_viewed_item": ["hat", "shoe", "sock"][i % 3],
            "last_order_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=i),
        })
    p = pd.DataFrame(rows)
    for c in ("segment_id", "user_id", "email", "anonymous_id", "braze_id",
              "last_product_viewed_item"):
        p[c] = p[c].astype("string")
    for c in ("vip_customer", "dormant_shopper", "first_time_shopper"):
        p[c] = p[c].astype("boolean")
    p["total_revenue_180_days"] = p["total_revenue_180_days"].astype("Float64")
    comps = pd.DataFrame([
        ("dormant_shopper", "audience", "aud_1", "boolean", "Dormant shopper"),
        ("first_time_shopper", "audience", "aud_2", "boolean", "First-time shopper"),
        ("vip_customer", "audience", "aud_3", "boolean", "VIP customer"),
        ("last_order_at", "trait", "tra_1", "datetime", "Last order at"),
        ("last_product_viewed_item", "trait", "tra_2", "string", "Last product viewed"),
        ("total_revenue_180_days", "trait", "tra_3", "number", "Revenue 180 days"),
    ], columns=["key", "kind", "computation_id", "value_type", "name"])
    return EngageExport(profiles=p, computations=comps,
                        snapshot_at=pd.Timestamp("2026-03-01", tz="UTC"),
                        source="hand-built test export", findings=Findings())


@pytest.fixture
def export() -> EngageExport:
    return build_export()


@pytest.fixture(autouse=True)
def _dummy_comm(monkeypatch):
    """Widgets need a comm; outside a kernel give them one that swallows messages."""
    import comm

    class DummyComm(comm.base_comm.BaseComm):
        def publish_msg(self, *args, **kwargs):
            pass

    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: DummyComm(*a, **k))
    yield


@pytest.fixture
def wizard(tmp_path):
    """A factory of headless GuidedSync wizards (no plots, no background thread), closed after."""
    from toolkit.notebook.wizard import GuidedSync

    made = []

    def make(**options):
        options.setdefault("output_dir", tmp_path / "reports")
        options.setdefault("plots", False)
        options.setdefault("background", False)
        w = GuidedSync(**options)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()
