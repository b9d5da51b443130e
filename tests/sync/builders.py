"""Builders for the sync tests: deterministic in-memory exports and a ledger shortcut."""
from __future__ import annotations

import numpy as np
import pandas as pd

from toolkit.engage.model import EngageExport

AUDIENCES = ("dormant_shopper", "first_time_shopper", "vip_customer")
SNAPSHOT = pd.Timestamp("2026-11-27T06:00:00Z")


def make_export(n: int = 200, *, seed: int = 0, anonymous: int = 0, email_only: int = 0,
                traits: bool = True) -> EngageExport:
    """``n`` identified profiles (user_id u00000…) plus some anonymous and email-only ones, three
    audiences and (optionally) a string and a number trait — deterministic for a seed."""
    rng = np.random.default_rng(seed)
    total = n + anonymous + email_only
    user_id = [f"u{i:05d}" for i in range(n)] + [None] * (anonymous + email_only)
    email = ([f"user{i}@example.com" for i in range(n)] + [None] * anonymous
             + [f"only{i}@example.com" for i in range(email_only)])
    anon = [f"anon-{i}" for i in range(total)]
    profiles = pd.DataFrame({
        "segment_id": pd.array([f"use_{i:06d}" for i in range(total)], dtype="string"),
        "user_id": pd.array(user_id, dtype="string"),
        "email": pd.array(email, dtype="string"),
        "anonymous_id": pd.array(anon, dtype="string"),
        "braze_id": pd.array([None] * total, dtype="string"),
    })
    comps = []
    for key in AUDIENCES:
        profiles[key] = pd.array(rng.random(total) < 0.3, dtype="boolean")
        comps.append({"key": key, "kind": "audience", "computation_id": f"aud_{key}",
                      "value_type": "boolean", "name": key})
    if traits:
        items = np.array(["Blue Shirt", "Red Shoes", "Green Hat", None], dtype=object)
        profiles["last_product_viewed_item"] = pd.array(items[rng.integers(0, 4, total)],
                                                        dtype="string")
        revenue = np.round(rng.random(total) * 500, 2)
        profiles["total_revenue_180_days"] = pd.array(revenue, dtype="Float64")
        comps += [{"key": "last_product_viewed_item", "kind": "trait", "computation_id": "tra_1",
                   "value_type": "string", "name": "last_product_viewed_item"},
                  {"key": "total_revenue_180_days", "kind": "trait", "computation_id": "tra_2",
                   "value_type": "number", "name": "total_revenue_180_days"}]
    return EngageExport(profiles=profiles, computations=pd.DataFrame(comps), snapshot_at=SNAPSHOT,
                        source="test export")


def acknowledge_all(plan, ledger) -> None:
    """Record every batch of ``plan`` as acknowledged, as if Braze took it all (no network)."""
    ops = plan.operations
    for b in plan.batches():
        state = list(zip(ops["field"].iloc[b.start:b.stop], ops["uid"].iloc[b.start:b.stop],
                         ops["after"].iloc[b.start:b.stop]))
        ledger.finish(plan.id, b.id, "acknowledged", state=state)


def acknowledge_all_rows(plan, ledger) -> None:
    """Record every batch of ``plan`` as acknowledged the way apply does: by reference to its
    rows of the ledger's copy of the plan."""
    from toolkit.sync.ledger import Rows

    ledger.record_plan(plan)
    ledger.record_batches(plan.id, [(b.id, b.kind, b.objects, None, b.index)
                                    for b in plan.batches()])
    ledger.finish_many(plan.id, [(b.id, "acknowledged", Rows(b.index, b.stop - b.start), None)
                                 for b in plan.batches()])


def edit_operations(manifest, edit) -> None:
    """Hand-edit a saved plan's operations file: ``edit(frame)`` changes a DataFrame of the
    operations in place (or returns a new one), which is written back in the same format."""
    import json
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = Path(manifest)
    path = manifest.with_name(json.loads(manifest.read_text())["operations_file"])
    table = pq.read_table(path)
    frame = table.to_pandas()
    result = edit(frame)
    frame = result if result is not None else frame
    schema = pa.schema([f.with_nullable(True) for f in table.schema])
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)
