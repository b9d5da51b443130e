"""Benchmark: Braze filters evaluated by DuckDB SQL against the pandas reference evaluator.

    python bench/bench_filters_sql.py [--users 1000000] [--events-per-user 2] [--repeat 2]

One synthetic Braze state (users with a boolean audience, a text, a number and a time trait,
about two events per user with properties, a Segment cohort) and, per recommended-filter type
(the filters `toolkit.preview.recommended_filters` and its value checks build), the best of
``--repeat`` timings of:

- ``pandas``: ``Filter.evaluate(state)``, the reference (the baseline of the ratios);
- ``evaluate_sql``: `toolkit.braze.filters_sql.evaluate_sql(filter, state)` end to end, loading
  what the filter reads from the pandas state into DuckDB (Arrow) and running the SQL;
- ``SQL only``: the compiled expression (`to_sql`) on the same data already held in DuckDB
  tables, which is what an engine-backed preview pays.

Every SQL selection is compared with the pandas one. Prints a table and ratios; no targets.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit import engine  # noqa: E402
from toolkit.braze.filters import (AllOf, BooleanAttribute, CustomEventCount,  # noqa: E402
                                   CustomEventPropertyCount, DateAttribute, NumberAttribute,
                                   SegmentCohort, StringAttribute)
from toolkit.braze.filters_sql import SqlNames, evaluate_sql, to_sql  # noqa: E402
from toolkit.braze.state import BrazeState  # noqa: E402

from bench_preview import _best  # noqa: E402  (best of N runs, as the preview bench times)

AS_OF = pd.Timestamp("2026-11-20T06:00:00Z")
ITEMS = ["Trail Runner 2 Shoe", "Canvas Tote", "Camp Mug", "Down Vest", "trail runner 2 shoe"]
ATTRIBUTE_TYPES = {"vip_customer": "boolean", "last_product_viewed_item": "text",
                   "total_revenue_180_days": "number", "last_order_at": "time"}


def synthetic_state(users: int, events_per_user: float, seed: int = 0) -> BrazeState:
    """Users keyed like the preview keys them; events as audiences and traits sent as events
    produce them (Audience Entered / Exited with ``audience_key``, Trait Computed with ``trait_key``)."""
    rng = np.random.default_rng(seed)
    keys = pd.Index(pd.array(np.char.add("external_id:u", np.arange(users).astype(str)),
                             dtype="string"), name="user")
    blank = lambda share: rng.random(users) < share  # noqa: E731
    item = pd.array(rng.choice(ITEMS, users), dtype="string")
    item[blank(0.2)] = pd.NA
    revenue = pd.array(np.round(rng.gamma(2, 80, users), 2), dtype="Float64")
    revenue[blank(0.3)] = pd.NA
    ordered = pd.Series(AS_OF - pd.to_timedelta(rng.integers(0, 180 * 86400, users), unit="s"))
    ordered[blank(0.25)] = pd.NaT
    vip = pd.array(rng.random(users) < 0.3, dtype="boolean")
    vip[blank(0.1)] = pd.NA
    attributes = pd.DataFrame({"vip_customer": vip, "last_product_viewed_item": item,
                               "total_revenue_180_days": revenue,
                               "last_order_at": ordered.to_numpy()}, index=keys)

    # (event name, properties, share of all events); property dicts shared like a payload cache
    kinds = [("Audience Entered", {"audience_key": "vip_customer", "vip_customer": True}, 0.30),
             ("Audience Exited", {"audience_key": "vip_customer", "vip_customer": False}, 0.05),
             ("Audience Entered", {"audience_key": "dormant_shopper", "dormant_shopper": True}, 0.25),
             ("Audience Exited", {"audience_key": "dormant_shopper", "dormant_shopper": False}, 0.05),
             ("Trait Computed", {"trait_key": "last_product_viewed_item",
                                 "last_product_viewed_item": "Camp Mug"}, 0.35)]
    total = int(users * events_per_user)
    which = rng.choice(len(kinds), total, p=[share for *_, share in kinds])
    names = np.array([name for name, *_ in kinds], dtype=object)[which]
    props = np.empty(len(kinds), dtype=object)
    props[:] = [p for _, p, _ in kinds]
    events = pd.DataFrame({
        "user": pd.array(keys.to_numpy()[rng.integers(0, users, total)], dtype="string"),
        "name": pd.array(names, dtype="string"),
        "time": AS_OF - pd.to_timedelta(rng.integers(0, 60 * 86400, total), unit="s"),
        "properties": props[which]})
    members = keys.to_numpy()[vip.to_numpy(dtype=bool, na_value=False)]
    cohorts = pd.DataFrame({"user": pd.array(members, dtype="string"),
                            "cohort": pd.array(["vip_customer"] * len(members), dtype="string")})
    return BrazeState(attributes, events, cohorts, as_of=AS_OF)


def recommended_filters(state: BrazeState) -> list[tuple[str, object]]:
    """(type, filter) for each recommended-filter type of toolkit.preview, on this state."""
    revenue = state.attributes["total_revenue_180_days"]
    median_day = state.attributes["last_order_at"].dropna().median().normalize()
    return [
        ("audience as attribute: is true", BooleanAttribute("vip_customer", "is_true")),
        ("text trait: is not blank", StringAttribute("last_product_viewed_item", "is_not_blank")),
        ("text trait: value (anchored regex)",
         StringAttribute("last_product_viewed_item", "matches_regex", r"^Trail Runner 2 Shoe$")),
        ("number trait: is not blank", NumberAttribute("total_revenue_180_days", "is_not_blank")),
        ("number trait: value > median",
         NumberAttribute("total_revenue_180_days", "more_than", float(revenue.median()))),
        ("time trait: is not blank", DateAttribute("last_order_at", "is_not_blank")),
        ("time trait: value after day", DateAttribute("last_order_at", "after",
                                                      median_day.date().isoformat())),
        ("audience as events: entered, not exited",
         AllOf(CustomEventCount("Audience Entered", "more_than", 0),
               CustomEventCount("Audience Exited", "exactly", 0))),
        ("audience as shared events: by audience_key",
         AllOf(CustomEventPropertyCount("Audience Entered", "audience_key", "vip_customer",
                                        "more_than", 0),
               CustomEventPropertyCount("Audience Exited", "audience_key", "vip_customer",
                                        "exactly", 0))),
        ("trait as events: computed", CustomEventCount("Trait Computed", "more_than", 0)),
        ("cohort: includes", SegmentCohort("vip_customer")),
    ]


def engine_tables(db, state: BrazeState) -> SqlNames:
    """The state as DuckDB tables (the data an engine-backed preview already holds)."""
    users = {"uid": pa.array(state.users.astype("string")),
             "pos": np.arange(len(state.users), dtype=np.int64)}
    for name in ATTRIBUTE_TYPES:
        users[name] = pa.array(state.attributes[name])
    events = state.events
    db.register("users_arrow", pa.table(users))
    db.register("events_arrow", pa.table({
        "uid": pa.array(events["user"]), "name": pa.array(events["name"]),
        "time": pa.array(events["time"]),
        "properties": pa.array([json.dumps(p) for p in events["properties"]], type=pa.string())}))
    db.register("cohorts_arrow", pa.table({"uid": pa.array(state.cohorts["user"]),
                                           "cohort": pa.array(state.cohorts["cohort"])}))
    for table in ("users", "events", "cohorts"):
        db.execute(f"CREATE TABLE {table} AS SELECT * FROM {table}_arrow")
    return SqlNames(as_of=state.as_of, columns={name: {kind: name}
                                                for name, kind in ATTRIBUTE_TYPES.items()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--events-per-user", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs for each timing")
    args = ap.parse_args(argv)

    state = synthetic_state(args.users, args.events_per_user)
    print(f"state: {len(state.users):,} users, {state.attributes.shape[1]} attributes, "
          f"{len(state.events):,} events, {len(state.cohorts):,} cohort rows; "
          f"engine settings {engine.settings()}")
    rows = []
    with engine.connect() as db:
        names = engine_tables(db, state)
        for kind, f in recommended_filters(state):
            pandas_s, reference = _best(lambda: f.evaluate(state), args.repeat)
            sql_s, selected = _best(lambda: evaluate_sql(f, state), args.repeat)
            query = f"SELECT pos FROM users WHERE {to_sql(f, names)}"
            engine_s, positions = _best(lambda: db.execute(query).fetchnumpy()["pos"], args.repeat)
            in_engine = np.zeros(len(state.users), dtype=bool)
            in_engine[positions] = True
            same = selected.equals(reference) and bool((in_engine == reference.to_numpy()).all())
            rows.append((kind, int(reference.sum()), pandas_s, sql_s, engine_s, same))

    head = (f"{'recommended filter type':<44} {'selects':>9} {'pandas s':>9} {'evaluate_sql s':>15} "
            f"{'ratio':>6} {'SQL only s':>11} {'ratio':>6}  same")
    print(head)
    print("-" * len(head))
    for kind, count, pandas_s, sql_s, engine_s, same in rows:
        print(f"{kind:<44} {count:>9,} {pandas_s:>9.3f} {sql_s:>15.3f} {sql_s / pandas_s:>6.2f} "
              f"{engine_s:>11.3f} {engine_s / pandas_s:>6.2f}  {'yes' if same else 'NO'}")
    total = [sum(r[i] for r in rows) for i in (2, 3, 4)]
    print(f"{'all types':<44} {'':>9} {total[0]:>9.3f} {total[1]:>15.3f} {total[1] / total[0]:>6.2f} "
          f"{total[2]:>11.3f} {total[2] / total[0]:>6.2f}")
    print("ratio = SQL time / pandas time (below 1: SQL faster)")
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
