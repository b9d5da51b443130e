"""Write the deterministic sample Engage exports of one fictional shop ("Northwind Outfitters").

    python data/samples/generate.py                              # rewrites data/samples/
    python data/samples/generate.py --profiles 1000000 --out data/large   # benchmark files

    python data/samples/generate.py --profiles 1000000 --out DIR --change 0.1   # + a 10% change
    python data/samples/generate.py --database duckdb:///tmp/engage.duckdb   # Profiles Sync tables
    python data/samples/generate.py --database postgresql://user:pw@host/db --schema my_space

The same ~2,000 profiles are written in every export shape Engage produces (see README.md in
this folder), so loading any of them yields the same audience membership per profile. Large mode
(``--profiles`` above 10,000) writes only the formatted audience CSVs plus ``all_shoppers.csv``
(every profile, formatted) for the benchmarks; those files are not committed. It draws the same
distributions with numpy, one independent random stream per block of `BLOCK` profiles, and
builds and writes each block's CSV lines with Arrow compute, so 10M profiles take about a minute
in bounded memory. ``--change F`` also writes ``all_shoppers_changed.csv``: the same profiles, a
fraction F of them with a different ``total_revenue_180_days`` and ``last_product_viewed_item``.
``--database URL`` writes only the sample's Profiles Sync tables, into a schema of that database
(``toolkit.load(URL, schema=…)`` reads them back).
"""
from __future__ import annotations

import argparse
import csv
import functools
import gzip
import hashlib
import io
import json
import random
import sys
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SEED = 20250314
HERE = Path(__file__).resolve().parent
SNAPSHOT = datetime(2025, 3, 14, 8, 0, tzinfo=timezone.utc)
BACKFILL = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)      # audiences created
TRAITS_CREATED = datetime(2025, 1, 5, 14, 0, tzinfo=timezone.utc)
SPACE = "spa_9aQ1Lj62S4bomZKLF4DPqW"
AUDIENCES = {
    "dormant_shopper": "aud_2kQ8aB1cD2eF3gH4iJ5kL6mN7oP",
    "first_time_shopper": "aud_2kQ8aC9xQ2rT5uV8wY1zB4dE7gJ",
    "vip_customer": "aud_2kQ8aD3fG6hJ9kL2mN5pQ8rS1tU",
}
TRAITS = {
    "last_product_viewed_item": "tra_2kQ7zY6xW5vU4tS3rQ2pO1nM0lK",
    "total_revenue_180_days": "tra_2kQ7zZ1aB2cD3eF4gH5iJ6kL7mN",
    "last_order_at": "tra_2kQ7zA9bC8dE7fG6hH5iI4jJ3kK",
}
# How each computation reaches the destination (Engage lets each be sent as identify and/or
# track; dormant_shopper's events were renamed in the destination settings).
SEND = {
    "dormant_shopper": ("track", "Dormant Shopper Entered", "Dormant Shopper Exited"),
    "first_time_shopper": ("both", "Audience Entered", "Audience Exited"),
    "vip_customer": ("identify", None, None),
    "last_product_viewed_item": ("track", "Trait Computed", None),
    "total_revenue_180_days": ("identify", None, None),
    "last_order_at": ("identify", None, None),
}
FIRST = ["ana", "ben", "chloe", "dev", "elif", "farah", "gus", "hana", "ivan", "jun", "kofi",
         "lena", "marco", "nia", "omar", "priya", "quinn", "rosa", "sam", "tariq", "uma", "vera",
         "wei", "xena", "yusuf", "zoe"]
LAST = ["silva", "kim", "okafor", "novak", "garcia", "larsen", "haddad", "tanaka", "mwangi",
        "rossi", "dubois", "nguyen", "kowalski", "ali", "fischer", "murphy", "sato", "costa"]
DOMAINS = ["example.com", "example.org", "mail.example.net", "shop.example.io"]
PRODUCTS = ["Trail Runner 2 Shoe", "Merino Base Layer", "Packable Rain Shell", "Canvas Tote",
            "Insulated Bottle 750ml", "Alpine Beanie", "Hiking Sock 3-Pack", "Down Vest",
            "Waxed Field Jacket", "Camp Mug", "Trekking Poles", "Fleece Quarter-Zip"]
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LONG_PRODUCT = ("Limited Edition Collaboration Bundle: " + "Trail Runner 2 Shoe + Merino Base "
                "Layer + Packable Rain Shell + Alpine Beanie, " * 4).strip()


@dataclass
class Profile:
    segment_id: str
    user_id: str | None
    emails: list[str]
    anonymous_ids: list[str]
    first_name: str | None
    last_name: str | None
    traits: dict = field(default_factory=dict)
    audiences: dict = field(default_factory=dict)
    orders: int = 0          # all-time orders, the basis of the audiences (source events)


def _ksuid(rng: random.Random, prefix: str) -> str:
    return prefix + "".join(rng.choice(B62) for _ in range(27))


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def make_profiles(n: int, seed: int = SEED) -> list[Profile]:
    """The shop's profiles with their current traits and audience membership."""
    rng = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        sid = _ksuid(rng, "use_")
        roll = rng.random()
        anon = [str(uuid.UUID(int=rng.getrandbits(128), version=4))]
        if roll < 0.065:                       # anonymous-only visitor
            out.append(Profile(sid, None, [], anon, None, None))
        else:
            first, last = rng.choice(FIRST), rng.choice(LAST)
            emails = [f"{first}.{last}{i}@{rng.choice(DOMAINS)}"]
            user_id = None if roll < 0.095 else f"u_{i:06d}"   # a few known only by email
            # a second (work) email → fan-out; only with a userId, which ties the messages of
            # both emails to one profile (two bare emails would look like two people)
            if rng.random() < 0.12 and user_id:
                emails.append(f"{first[0]}{last}.work{i}@{rng.choice(DOMAINS)}")
            if rng.random() < 0.35:
                anon = []
            elif rng.random() < 0.1:
                anon.append(str(uuid.UUID(int=rng.getrandbits(128), version=4)))
            out.append(Profile(sid, user_id, emails, anon, first.title(), last.title()))
        p = out[-1]
        orders = 0 if p.user_id is None and not p.emails else rng.choice([0, 0, 1, 1, 1, 2, 3, 5, 8])
        if p.user_id is None and not p.emails and rng.random() < 0.3:
            orders = 1                         # guest checkout, never identified
        p.orders = orders
        if rng.random() < 0.85:
            p.traits["last_product_viewed_item"] = rng.choice(PRODUCTS)
        if orders:
            days_ago = rng.choice([rng.randint(1, 30), rng.randint(31, 90), rng.randint(91, 400)])
            last_order = SNAPSHOT - timedelta(days=days_ago, seconds=rng.randint(0, 86399))
            p.traits["last_order_at"] = last_order.strftime("%Y-%m-%dT%H:%M:%SZ")
            if days_ago <= 180:
                p.traits["total_revenue_180_days"] = round(
                    orders * rng.uniform(18, 140) * (3 if orders >= 5 else 1), 2)
        revenue = p.traits.get("total_revenue_180_days", 0.0)
        days = (SNAPSHOT - datetime.fromisoformat(p.traits["last_order_at"])).days \
            if "last_order_at" in p.traits else None
        p.audiences = {
            "dormant_shopper": bool(orders and days is not None and days > 90),
            "first_time_shopper": bool(orders == 1 and days is not None and days <= 60),
            "vip_customer": bool(revenue >= 600 or (orders >= 5 and revenue >= 400)),
        }
    if n >= 100:
        # one glitchy catalogue name longer than Braze's 255-character string limit
        out[41].traits["last_product_viewed_item"] = LONG_PRODUCT
    return out


def drift_profile(profiles: list[Profile]) -> str | None:
    """The profile whose total_revenue_180_days is sent once as text (type drift)."""
    return next((p.segment_id for p in profiles[10:] if "total_revenue_180_days" in p.traits
                 and p.audiences["vip_customer"]), None)


# -- CSV writers ---------------------------------------------------------------------------------

def _write_csv(path: Path, header: list[str], rows, *, delimiter: str = ",", bom: bool = False,
               translate=None) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    text = buf.getvalue()
    if translate:
        text = translate(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _external_ids(p: Profile) -> dict:
    ids = {}
    if p.user_id:
        ids["user_id"] = [p.user_id]
    if p.emails:
        ids["email"] = list(p.emails)
    if p.anonymous_ids:
        ids["anonymous_id"] = list(p.anonymous_ids)
    return ids


def _trait_json(p: Profile, drift: bool) -> dict:
    out = {}
    if p.first_name:
        out["first_name"], out["last_name"] = p.first_name, p.last_name
    for k in TRAITS:
        if k in p.traits:
            out[k] = p.traits[k]
    if drift and "total_revenue_180_days" in out:
        out["total_revenue_180_days"] = f"{out['total_revenue_180_days']:.2f}"  # sent as text
    return out


def formatted_rows(members: list[Profile]):
    width_e = max([len(p.emails) for p in members] + [1])
    width_a = max([len(p.anonymous_ids) for p in members] + [1])
    header = (["key", "user_id"] + ["email" if j == 0 else f"email_{j}" for j in range(width_e)]
              + ["anonymous_id" if j == 0 else f"anonymous_id_{j}" for j in range(width_a)]
              + ["first_name", "last_name", *TRAITS])
    rows = []
    for p in members:
        rows.append([p.segment_id, p.user_id or ""]
                    + [p.emails[j] if j < len(p.emails) else "" for j in range(width_e)]
                    + [p.anonymous_ids[j] if j < len(p.anonymous_ids) else ""
                       for j in range(width_a)]
                    + [p.first_name or "", p.last_name or ""]
                    + [_fmt(p.traits.get(k)) for k in TRAITS])
    return header, rows


def write_audience_csvs(profiles: list[Profile], out: Path) -> None:
    drift_id = drift_profile(profiles)
    for key in AUDIENCES:
        members = [p for p in profiles if p.audiences[key]]
        header, rows = formatted_rows(members)
        # vip_customer was saved from a spreadsheet in a ';' locale, with a byte-order mark
        semi = key == "vip_customer"
        _write_csv(out / "audience_csv" / "formatted" / f"{key}.csv", header, rows,
                   delimiter=";" if semi else ",", bom=semi)
        _write_csv(out / "audience_csv" / "unformatted" / f"{key}.csv",
                   ["key", "external_ids", "traits"],
                   [[p.segment_id, json.dumps(_external_ids(p), separators=(",", ":")),
                     json.dumps({key: True, **_trait_json(p, p.segment_id == drift_id)},
                                separators=(",", ":"))] for p in members])
    # legacy key,external_ids — with the typographic quotes Segment's own sample file has
    dormant = [p for p in profiles if p.audiences["dormant_shopper"]]
    smart = {dormant[i].segment_id for i in (3, 11)}

    def curly(text: str) -> str:
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if line.split(",", 1)[0] in smart:
                key, rest = line.split(",", 1)
                inner = rest[1:-1].replace('""', '"')
                inner = inner.replace('["', "[\u201c").replace('"]', "\u201d]")
                lines[i] = key + ',"' + inner.replace('"', '""') + '"'
        return "\n".join(lines)
    _write_csv(out / "audience_csv" / "legacy" / "dormant_shopper.csv", ["key", "external_ids"],
               [[p.segment_id, json.dumps(_external_ids(p))] for p in dormant], translate=curly)
    vip = [p for p in profiles if p.audiences["vip_customer"] and p.emails]
    _write_csv(out / "audience_csv" / "hashed" / "vip_customer.csv", ["email"],
               [[hashlib.sha256(p.emails[0].encode()).hexdigest().upper()] for p in vip])


def write_trait_csvs(profiles: list[Profile], out: Path) -> None:
    d = out / "trait_csv"
    key = "total_revenue_180_days"   # shape a: key,value,external_ids
    _write_csv(d / "unformatted" / f"{key}.csv", ["key", "value", "external_ids"],
               [[p.segment_id, _fmt(p.traits[key]), json.dumps(_external_ids(p))]
                for p in profiles if key in p.traits])
    key = "last_product_viewed_item"  # shape b: indexed identifier columns
    have = [p for p in profiles if key in p.traits]
    width = max(len(p.emails) for p in have)
    _write_csv(d / "columns" / f"{key}.csv",
               ["key", "value", "external_ids", "user_id", "anonymous_id"]
               + ["email" if j == 0 else f"email_{j}" for j in range(width)],
               [[p.segment_id, p.traits[key], json.dumps(_external_ids(p)), p.user_id or "",
                 p.anonymous_ids[0] if p.anonymous_ids else ""]
                + [p.emails[j] if j < len(p.emails) else "" for j in range(width)] for p in have])
    key = "last_order_at"            # shape c: one extra row per extra identifier value
    rows = []
    for p in profiles:
        if key not in p.traits:
            continue
        ext = json.dumps(_external_ids(p))
        extra = max(len(p.emails), len(p.anonymous_ids), 1)
        for j in range(extra):
            rows.append([p.segment_id, p.traits[key], ext,
                         p.anonymous_ids[j] if j < len(p.anonymous_ids) else "",
                         p.emails[j] if j < len(p.emails) else ""])
    _write_csv(d / "rows" / f"{key}.csv", ["key", "value", "external_ids", "anonymous_id",
                                           "email"], rows)


def profiles_sync_rows(profiles: list[Profile], rng: random.Random):
    """(profile_traits header, its rows, external_id_mapping rows), as the CSV dumps hold them."""
    header = ["canonical_segment_id", "first_name", "last_name", *AUDIENCES, *TRAITS, "merged_to"]
    rows, mapping = [], []
    for p in profiles:
        rows.append([p.segment_id, p.first_name or "", p.last_name or ""]
                    + [_fmt(p.audiences[k]) for k in AUDIENCES]
                    + [_fmt(p.traits.get(k)) for k in TRAITS] + [""])
        seen = BACKFILL - timedelta(days=rng.randint(30, 600))
        for t, values in (("anonymous_id", p.anonymous_ids), ("user_id", [p.user_id] if p.user_id
                                                              else []), ("email", p.emails)):
            for v in values:
                seen += timedelta(minutes=rng.randint(1, 5000))
                mapping.append([p.segment_id, t, v, seen.strftime("%Y-%m-%d %H:%M:%S")])
    # profiles merged into others by identity resolution: kept with merged_to set
    for p in profiles[5:10]:
        rows.append([_ksuid(rng, "use_"), "", ""] + ["false"] * len(AUDIENCES)
                    + [""] * len(TRAITS) + [p.segment_id])
    return header, rows, mapping


def write_profiles_sync(profiles: list[Profile], out: Path, rng: random.Random) -> None:
    d = out / "profiles_sync"
    header, rows, mapping = profiles_sync_rows(profiles, rng)
    _write_csv(d / "profile_traits.csv", header, rows)
    _write_csv(d / "external_id_mapping.csv",
               ["canonical_segment_id", "external_id_type", "external_id_value", "timestamp"],
               mapping)
    try:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        return
    (d / "parquet").mkdir(exist_ok=True)
    for name in ("profile_traits", "external_id_mapping"):
        table = pacsv.read_csv(d / f"{name}.csv",
                               convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        pq.write_table(table, d / "parquet" / f"{name}.parquet", compression="zstd")


MAPPING_HEADER = ["canonical_segment_id", "external_id_type", "external_id_value", "timestamp"]


def profiles_sync_tables(profiles: list[Profile], rng: random.Random, layout: str = "all"):
    """The Profiles Sync tables as Arrow tables, holding what the CSV dumps hold.

    ``materialised``: profile_traits + external_id_mapping (typed as the parquet dumps), as
    segmentio/profiles-sync-dbt builds them; ``segment``: user_traits, user_identifiers and
    id_graph, as Segment writes them (one text row per trait value); ``all``: both.
    """
    import pyarrow.csv as pacsv

    header, rows, mapping = profiles_sync_rows(profiles, rng)
    tables = {}
    if layout in ("materialised", "all"):
        for name, head, body in (("profile_traits", header, rows),
                                 ("external_id_mapping", MAPPING_HEADER, mapping)):
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows([head, *body])
            tables[name] = pacsv.read_csv(
                io.BytesIO(text.getvalue().encode()),
                convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    if layout in ("segment", "all"):
        traits, seq = [], 0
        for row in rows:
            for name, value in zip(header[1:-1], row[1:-1]):
                if value != "":
                    seq += 1
                    traits.append((row[0], name, value, seq))
        received = SNAPSHOT.replace(tzinfo=None)
        tables["user_traits"] = pa.table({
            "canonical_segment_id": [t[0] for t in traits], "name": [t[1] for t in traits],
            "value": [t[2] for t in traits], "seq": pa.array([t[3] for t in traits], pa.int64()),
            "received_at": pa.array([received] * len(traits), pa.timestamp("s")),
            "timestamp": pa.array([received] * len(traits), pa.timestamp("s"))})
        tables["user_identifiers"] = pa.table({
            "canonical_segment_id": [m[0] for m in mapping], "type": [m[1] for m in mapping],
            "value": [m[2] for m in mapping],
            "seq": pa.array(range(1, len(mapping) + 1), pa.int64()),
            "timestamp": pa.array([datetime.strptime(m[3], "%Y-%m-%d %H:%M:%S")
                                   for m in mapping], pa.timestamp("s"))})
        graph = [(row[0], row[-1] or row[0]) for row in rows]
        tables["id_graph"] = pa.table({
            "segment_id": [g[0] for g in graph], "canonical_segment_id": [g[1] for g in graph],
            "timestamp": pa.array([received] * len(graph), pa.timestamp("s"))})
    return tables


def write_database(profiles: list[Profile], url: str, schema: str, layout: str,
                   rng: random.Random) -> list[str]:
    """Write the Profiles Sync tables into `schema` of the database at `url`; their names."""
    try:
        from toolkit.engage.warehouse import write_tables
    except ImportError:   # run from a checkout without the package installed
        sys.path.insert(0, str(HERE.parents[1]))
        from toolkit.engage.warehouse import write_tables
    tables = profiles_sync_tables(profiles, rng, layout)
    write_tables(url, schema, tables)
    return list(tables)


# -- NDJSON of Engage messages ----------------------------------------------------------------

def _timeline(rng: random.Random, member: bool) -> list[tuple[datetime, bool]]:
    """Enter/exit history ending in the current state: backfill bursts, later churn."""
    def backfill():
        return BACKFILL + timedelta(seconds=rng.uniform(0, 900))

    def later(after: datetime):
        span = (SNAPSHOT - timedelta(hours=2) - after).total_seconds()
        return after + timedelta(seconds=rng.uniform(0.1, 1.0) * max(span, 60))
    events: list[tuple[datetime, bool]] = []
    if member:
        start = backfill() if rng.random() < 0.75 else later(BACKFILL)
        events.append((start, True))
        if rng.random() < 0.1:           # exited and came back
            out_ts = later(start)
            events += [(out_ts, False), (later(out_ts), True)]
    elif rng.random() < 0.08:            # was a member, left
        start = backfill() if rng.random() < 0.6 else later(BACKFILL)
        events += [(start, True), (later(start), False)]
    return events


def _messages(p: Profile, key: str, klass: str, value, ts: datetime, rng: random.Random,
              *, string_value: bool = False):
    """One Engage message per identifier of the profile (Engage's fan-out)."""
    mode, enter, exit_ = SEND[key]
    comp_id = AUDIENCES.get(key) or TRAITS[key]
    personas = {"computation_class": klass, "computation_id": comp_id, "computation_key": key,
                "namespace": SPACE, "space_id": SPACE}
    # identifier sets: the first carries userId + primary email; then one per extra value
    idsets = []
    if p.user_id or p.emails:
        idsets.append({"userId": p.user_id, "email": p.emails[0] if p.emails else None})
        idsets += [{"userId": p.user_id, "email": e} for e in p.emails[1:]]
        idsets += [{"userId": p.user_id, "email": None if p.user_id else p.emails[0],
                    "anonymousId": a} for a in p.anonymous_ids]
    else:
        idsets += [{"anonymousId": a} for a in p.anonymous_ids]
    types = ["identify", "track"] if mode == "both" else [mode]
    out = []
    for mtype in types:
        for ids in idsets:
            received = ts + timedelta(milliseconds=rng.randint(150, 900))
            m: dict = {"type": mtype}
            if mtype == "track":
                m["event"] = enter if (klass == "trait" or value) else exit_
            if ids.get("userId"):
                m["userId"] = ids["userId"]
            if ids.get("anonymousId"):
                m["anonymousId"] = ids["anonymousId"]
            m["messageId"] = _ksuid(rng, "personas_")
            m["timestamp"] = _iso(ts)
            m["receivedAt"] = _iso(received)
            m["context"] = {"personas": personas}
            sent = ("true" if value else "false") if string_value else value
            if mtype == "identify":
                m["traits"] = {key: sent}
                if ids.get("email"):
                    m["traits"]["email"] = ids["email"]
            else:
                if ids.get("email"):
                    m["context"] = {"personas": personas, "traits": {"email": ids["email"]}}
                m["properties"] = {("audience_key" if klass == "audience" else "trait_key"): key,
                                   key: sent}
            m["integrations"] = {"All": False}
            out.append(m)
    return out


def event_messages(profiles: list[Profile], seed: int = SEED) -> list[tuple[datetime, int, dict]]:
    rng = random.Random(seed + 1)
    msgs = []
    order = 0
    drift_id = drift_profile(profiles)
    for p in profiles:
        for key in AUDIENCES:
            for ts, value in _timeline(rng, p.audiences[key]):
                for m in _messages(p, key, "audience", value, ts, rng):
                    msgs.append((ts, order, m))
                    order += 1
        for key in TRAITS:
            if key not in p.traits:
                continue
            final = p.traits[key]
            history = []
            if key == "total_revenue_180_days" and rng.random() < 0.3:
                history.append((TRAITS_CREATED + timedelta(seconds=rng.uniform(0, 600)),
                                round(final * rng.uniform(0.3, 0.9), 2)))
                history.append((BACKFILL + timedelta(days=rng.randint(5, 60)), final))
            else:
                history.append((TRAITS_CREATED + timedelta(seconds=rng.uniform(0, 600)), final))
            for ts, value in history:
                if key == "total_revenue_180_days" and p.segment_id == drift_id:
                    value = f"{value:.2f}"                  # one value sent as text
                for m in _messages(p, key, "trait", value, ts, rng):
                    msgs.append((ts, order, m))
                    order += 1
    # a Journeys v1-style duplicate: the string "true", which must not count as membership
    vip = next(p for p in profiles if p.audiences["vip_customer"] and p.user_id)
    ts = SNAPSHOT - timedelta(days=3)
    for m in _messages(vip, "vip_customer", "audience", True, ts, rng, string_value=True):
        msgs.append((ts, order, m))
        order += 1
    msgs.sort(key=lambda t: (t[0], t[1]))
    return msgs


def write_events(profiles: list[Profile], out: Path) -> None:
    d = out / "events"
    d.mkdir(parents=True, exist_ok=True)
    msgs = event_messages(profiles)
    # gzip keeps the committed samples small (13k messages); mtime=0 keeps the bytes stable
    text = "".join(json.dumps(m, separators=(",", ":")) + "\n" for _, _, m in msgs)
    with open(d / "engage_events.ndjson.gz", "wb") as raw, \
            gzip.GzipFile(filename="engage_events.ndjson", mode="wb", fileobj=raw, mtime=0) as fh:
        fh.write(text.encode("utf-8"))
    # the same messages of the first 100 profiles, as Segment batch envelopes of 100 messages
    first = {p.user_id for p in profiles[:100] if p.user_id} | \
        {e for p in profiles[:100] for e in p.emails} | \
        {a for p in profiles[:100] for a in p.anonymous_ids}
    subset = [m for _, _, m in msgs if m.get("userId") in first or m.get("anonymousId") in first
              or (m.get("traits") or {}).get("email") in first
              or ((m.get("context") or {}).get("traits") or {}).get("email") in first]
    batches = [{"batch": subset[i:i + 100], "sentAt": subset[min(i + 99, len(subset) - 1)][
        "receivedAt"]} for i in range(0, len(subset), 100)]
    (d / "engage_events_batch.json").write_text(
        "[\n" + ",\n".join(json.dumps(b, separators=(",", ":")) for b in batches) + "\n]\n",
                                                encoding="utf-8")


# -- the shop's own track events (what Engage computes the audiences from) -------------------

HISTORY_START = datetime(2024, 6, 1, tzinfo=timezone.utc)   # the event export starts here
SOURCES = {"web": "QgRHeujRJBM9j18yChyC", "ios": "hSBZDqGDPvXCKHbikPmA"}
PRICES = {name: round(12 + 9.5 * i, 2) for i, name in enumerate(PRODUCTS)}
# The shop's audience definitions, in Segment's query language, as the Public API returns them.
# They are the rules make_profiles applies ("days" there is whole days since the last order, so
# "more than 90 days" is "nothing in the last 91 days" and "at most 60" is "in the last 61").
DEFINITIONS = {
    "dormant_shopper": ("Dormant shopper", "ordered before, but not in the last 13 weeks",
                        "event('Order Completed').count() >= 1 AND "
                        "event('Order Completed').within(91 days).count() = 0"),
    "first_time_shopper": ("First-time shopper", "exactly one order, in the last 61 days",
                           "event('Order Completed').count() = 1 AND "
                           "event('Order Completed').within(61 days).count() >= 1"),
    "vip_customer": ("VIP customer", "$600 in 180 days, or 5+ orders and $400 in 180 days",
                     "event('Order Completed').within(180 days).sum(property('revenue')) >= 600 "
                     "OR (event('Order Completed').count() >= 5 AND event('Order Completed')"
                     ".within(180 days).sum(property('revenue')) >= 400)"),
}


def _order_times(p: Profile, rng: random.Random) -> list[datetime]:
    """All of the profile's orders, oldest first, the last at its last_order_at trait."""
    if not p.orders or "last_order_at" not in p.traits:
        return []
    times = [datetime.fromisoformat(p.traits["last_order_at"].replace("Z", "+00:00"))]
    for _ in range(p.orders - 1):
        times.append(times[-1] - timedelta(days=rng.randint(6, 75), seconds=rng.randint(0, 86399)))
    return times[::-1]


def _revenues(p: Profile, times: list[datetime], rng: random.Random) -> list[float]:
    """Order revenues; those of the last 180 days add up to total_revenue_180_days."""
    recent = [SNAPSHOT - t <= timedelta(days=180) for t in times]
    out = [round(rng.uniform(18, 140), 2) for _ in times]
    total = p.traits.get("total_revenue_180_days")
    idx = [i for i, r in enumerate(recent) if r]
    if total is not None and idx:
        weights = [rng.uniform(0.5, 1.5) for _ in idx]
        cents = round(total * 100)
        shares = [int(cents * w / sum(weights)) for w in weights]
        shares[-1] = cents - sum(shares[:-1])
        for i, c in zip(idx, shares):
            out[i] = c / 100
    return out


def source_messages(profiles: list[Profile], seed: int = SEED + 3) -> list[dict]:
    """Track calls of the shop's web and iOS sources (Order Completed, Product Viewed, Signed
    In) since HISTORY_START, shaped like the Profile API's /events items (``source_id`` on each)."""
    rng = random.Random(seed)
    msgs: list[tuple[datetime, int, dict]] = []

    def emit(ts: datetime, event: str, ids: dict, props: dict, source: str) -> None:
        if not HISTORY_START <= ts <= SNAPSHOT:
            return
        m: dict = {"type": "track", "event": event}
        m.update({k: v for k, v in ids.items() if k in ("userId", "anonymousId") and v})
        m["messageId"] = f"ajs-next-{rng.getrandbits(64):016x}"
        m["timestamp"] = _iso(ts)
        m["source_id"] = SOURCES[source]
        m["context"] = {"library": {"name": "analytics.js" if source == "web" else
                                    "analytics-ios"}}
        if ids.get("email"):
            m["context"]["traits"] = {"email": ids["email"]}
        if source == "web":
            m["context"]["page"] = {"url": f"https://northwind.example/{event.lower().replace(' ', '-')}"}
        m["properties"] = props
        msgs.append((ts, len(msgs), m))

    guests = 0
    for i, p in enumerate(profiles):
        ids = {"userId": p.user_id, "email": None if p.user_id else (p.emails[0] if p.emails
                                                                     else None),
               "anonymousId": None if (p.user_id or p.emails) else
               (p.anonymous_ids[0] if p.anonymous_ids else None)}
        if not any(ids.values()):
            continue
        times = _order_times(p, rng)
        revenues = _revenues(p, times, rng)
        for n, (ts, revenue) in enumerate(zip(times, revenues)):
            item = rng.choice(PRODUCTS)
            props = {"order_id": f"ord_{i:05d}_{n + 1}", "revenue": revenue, "currency": "USD",
                     "products": [{"product_id": f"sku_{PRODUCTS.index(item):03d}", "name": item,
                                   "price": PRICES[item], "quantity": 1}]}
            order_ids = ids
            if n == 0 and p.user_id and guests < 12 and ts >= HISTORY_START and rng.random() < 0.2:
                # a guest checkout on a new device, tied to the account by the sign-in after it
                guests += 1
                device = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                order_ids = {"anonymousId": device}
                emit(ts + timedelta(minutes=rng.randint(2, 30)), "Signed In",
                     {"userId": p.user_id, "anonymousId": device}, {"method": "password"}, "web")
            emit(ts, "Order Completed", order_ids, props, rng.choice(["web", "web", "ios"]))
        if "last_product_viewed_item" in p.traits:
            views = sorted(SNAPSHOT - timedelta(days=rng.uniform(0.05, 40))
                           for _ in range(rng.randint(1, 4)))
            for n, ts in enumerate(views):
                item = p.traits["last_product_viewed_item"] if n == len(views) - 1 else \
                    rng.choice(PRODUCTS)
                if item not in PRICES:
                    item = PRODUCTS[0]      # the glitchy long catalogue name was never viewed
                emit(ts, "Product Viewed", ids, {"product_id": f"sku_{PRODUCTS.index(item):03d}",
                                                 "name": item, "price": PRICES[item]},
                     rng.choice(["web", "ios"]))
    # a shared tablet: one view carries one customer's userId and another's anonymousId
    a, b = [q for q in profiles if q.user_id and q.anonymous_ids][3:5]
    emit(SNAPSHOT - timedelta(days=2), "Product Viewed",
         {"userId": a.user_id, "anonymousId": b.anonymous_ids[0]},
         {"product_id": "sku_009", "name": "Camp Mug", "price": PRICES["Camp Mug"]}, "ios")
    msgs.sort(key=lambda t: (t[0], t[1]))
    return [m for _, _, m in msgs]


def write_source_events(profiles: list[Profile], out: Path, seed: int = SEED + 3) -> None:
    d = out / "events"
    d.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(m, separators=(",", ":")) + "\n"
                   for m in source_messages(profiles, seed))
    with open(d / "source_events.ndjson.gz", "wb") as raw, \
            gzip.GzipFile(filename="source_events.ndjson", mode="wb", fileobj=raw, mtime=0) as fh:
        fh.write(text.encode("utf-8"))


def write_definitions(out: Path) -> None:
    """The shop's audiences as GET /spaces/{spaceId}/audiences answers (Public API)."""
    audiences = [{"id": AUDIENCES[key], "spaceId": SPACE, "name": name, "description": about,
                  "key": key, "enabled": True, "definition": {"query": query, "type": "USERS"},
                  "status": "Completed", "createdBy": "ana@northwind.example",
                  "updatedBy": "ana@northwind.example", "createdAt": _iso(BACKFILL),
                  "updatedAt": _iso(BACKFILL),
                  "options": {"includeHistoricalData": True, "includeAnonymousUsers": True}}
                 for key, (name, about, query) in DEFINITIONS.items()]
    body = {"data": {"audiences": audiences,
                     "pagination": {"current": "MA==", "next": None, "totalEntries": len(audiences)}}}
    d = out / "definitions"
    d.mkdir(parents=True, exist_ok=True)
    (d / "audiences.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


# -- large mode: vectorised, written block by block ------------------------------------------

BLOCK = 250_000   # profiles per random stream and per write; changing it changes the files
WIDE = ["key", "user_id", "email", "email_1", "anonymous_id", "anonymous_id_1", "first_name",
        "last_name", *TRAITS]
ORDERS = np.array([0, 0, 1, 1, 1, 2, 3, 5, 8])
_B62 = np.frombuffer(B62.encode(), dtype=np.uint8)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _fixed(chars: np.ndarray) -> pa.Array:
    """An (n, width) uint8 array of ASCII as n strings."""
    n, width = chars.shape
    raw = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n,
                                               [None, pa.py_buffer(np.ascontiguousarray(chars))])
    return raw.cast(pa.binary()).cast(pa.string())


def _ksuids(rng: np.random.Generator, n: int, prefix: str) -> pa.Array:
    chars = np.empty((n, len(prefix) + 27), dtype=np.uint8)
    chars[:, :len(prefix)] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    chars[:, len(prefix):] = _B62[rng.integers(0, len(_B62), (n, 27), dtype=np.uint8)]
    return _fixed(chars)


def _uuid4s(rng: np.random.Generator, n: int) -> pa.Array:
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40             # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80             # RFC 4122 variant
    digits = np.empty((n, 32), dtype=np.uint8)
    digits[:, 0::2], digits[:, 1::2] = _HEX[raw >> 4], _HEX[raw & 15]
    chars = np.full((n, 36), ord("-"), dtype=np.uint8)
    for src, dst in ((0, 0), (8, 9), (12, 14), (16, 19), (20, 24)):
        width = {0: 8, 20: 12}.get(src, 4)
        chars[:, dst:dst + width] = digits[:, src:src + width]
    return _fixed(chars)


def _pick(values: list[str], index: np.ndarray) -> pa.Array:
    return pc.take(pa.array(values), pa.array(index))


def _join(*parts) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _only(mask: np.ndarray, values: pa.Array) -> pa.Array:
    """``values`` where ``mask``, else the empty field."""
    return pc.if_else(pa.array(mask), values, "")


def _cents_text(cents: np.ndarray) -> pa.Array:
    """Integer cents as ``123.45``: the text ``_fmt`` writes for a rounded float."""
    whole = pa.array(cents // 100).cast(pa.string())
    return _join(whole, ".", pc.utf8_lpad(pa.array(cents % 100).cast(pa.string()), 2, "0"))


def _iso_seconds(seconds: np.ndarray) -> pa.Array:
    """Unix seconds as ``2025-03-14T08:00:00Z``, from a table of the few dates and the 86,400
    times of day (Arrow's strftime is 4× slower)."""
    days, clock = np.divmod(seconds, 86400)
    first = int(days.min()) if len(days) else 0
    dates = [(_EPOCH + timedelta(days=d)).strftime("%Y-%m-%d")
             for d in range(first, int(days.max()) + 1 if len(days) else first)]
    return _join(_pick(dates, days - first), "T", pc.take(_clocks(), pa.array(clock)), "Z")


@functools.cache
def _clocks() -> pa.Array:
    return pa.array([f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86400)])


def _csv_field(values: pa.Array) -> pa.Array:
    """Quote a free-text column as ``csv.writer`` does (only values that need it)."""
    needs = pc.match_substring_regex(values, '[,"\r\n]')
    quoted = _join('"', pc.replace_substring(values, '"', '""'), '"')
    return pc.if_else(needs, quoted, values)


@dataclass
class LargeBlock:
    """Profiles ``start+1 … stop`` as formatted-CSV columns, their audiences, and (with a change
    fraction) which of them change and their changed columns."""
    columns: dict[str, pa.Array]
    audiences: dict[str, np.ndarray]
    changed: np.ndarray | None = None
    changed_columns: dict[str, pa.Array] = field(default_factory=dict)


def large_block(start: int, stop: int, total: int, seed: int = SEED, change: float = 0.0,
                block: int = BLOCK) -> LargeBlock:
    """The profiles ``start+1 … stop`` of ``total``, with `make_profiles`'s distributions, drawn
    from the random stream of block ``start // block`` alone (so a block never depends on the
    profiles before it)."""
    rng = np.random.default_rng([seed, start // block])
    n = stop - start
    number = pa.array(np.arange(start + 1, stop + 1)).cast(pa.string())
    key = _ksuids(rng, n, "use_")
    roll = rng.random(n)
    anon_only = roll < 0.065
    has_uid = roll >= 0.095                                        # else email only
    first, last = rng.integers(0, len(FIRST), n), rng.integers(0, len(LAST), n)
    domain, work_domain = rng.integers(0, len(DOMAINS), (2, n))
    work = has_uid & (rng.random(n) < 0.12)                        # a second (work) email
    no_anon = ~anon_only & (rng.random(n) < 0.35)
    two_anon = ~anon_only & ~no_anon & (rng.random(n) < 0.1)
    anon, anon_1 = _uuid4s(rng, n), _uuid4s(rng, n)
    orders = np.where(anon_only, (rng.random(n) < 0.3).astype(int),  # guest checkout
                      ORDERS[rng.integers(0, len(ORDERS), n)])
    has_product = rng.random(n) < 0.85
    product = rng.integers(0, len(PRODUCTS), n)
    days_ago = np.choose(rng.integers(0, 3, n), [rng.integers(1, 31, n), rng.integers(31, 91, n),
                                                 rng.integers(91, 401, n)])
    order_second = rng.integers(0, 86400, n)
    revenue = np.rint(orders * rng.uniform(18, 140, n) * np.where(orders >= 5, 3, 1) * 100)
    has_order = orders > 0
    has_revenue = has_order & (days_ago <= 180)
    cents = np.where(has_revenue, revenue, 0).astype(np.int64)
    audiences = {
        "dormant_shopper": has_order & (days_ago > 90),
        "first_time_shopper": (orders == 1) & (days_ago <= 60),
        "vip_customer": (cents >= 60000) | ((orders >= 5) & (cents >= 40000)),
    }
    named = ~anon_only
    products = _pick(PRODUCTS, product)
    if total >= 100 and start <= 41 < stop:
        has_product[41 - start] = True
        products = pc.replace_with_mask(products, pa.array(np.arange(n) == 41 - start),
                                        pa.array([LONG_PRODUCT]))
    snapshot = int(SNAPSHOT.timestamp())
    columns = {
        "key": key,
        "user_id": _only(has_uid, _join("u_", pc.utf8_lpad(number, 6, "0"))),
        "email": _only(named, _join(_pick(FIRST, first), ".", _pick(LAST, last), number, "@",
                                    _pick(DOMAINS, domain))),
        "email_1": _only(work, _join(_pick([f[0] for f in FIRST], first), _pick(LAST, last),
                                     ".work", number, "@", _pick(DOMAINS, work_domain))),
        "anonymous_id": _only(~no_anon, anon),
        "anonymous_id_1": _only(two_anon, anon_1),
        "first_name": _only(named, _pick([f.title() for f in FIRST], first)),
        "last_name": _only(named, _pick([s.title() for s in LAST], last)),
        "last_product_viewed_item": _csv_field(_only(has_product, products)),
        "total_revenue_180_days": _only(has_revenue, _cents_text(cents)),
        "last_order_at": _only(has_order, _iso_seconds(snapshot - days_ago * 86400
                                                       - order_second)),
    }
    out = LargeBlock(columns, audiences)
    if change:
        # a separate stream, so the unchanged file is the same with or without --change
        crng = np.random.default_rng([seed, start // block, 1])
        out.changed = crng.random(n) < change
        k = int(out.changed.sum())
        was = cents[out.changed]
        new_cents = np.where(has_revenue[out.changed], was + crng.integers(100, 20000, k),
                             crng.integers(1800, 42000, k))
        new_product = (product[out.changed] + crng.integers(1, len(PRODUCTS), k)) % len(PRODUCTS)
        out.changed_columns = {"last_product_viewed_item": _pick(PRODUCTS, new_product),
                               "total_revenue_180_days": _cents_text(new_cents)}
    return out


def _lines(columns: dict[str, pa.Array]) -> pa.Array:
    """One CSV line (with its newline) per row, in `WIDE` order."""
    return _join(pc.binary_join_element_wise(*(columns[c] for c in WIDE), ","), "\n")


def _write_lines(handle, lines: pa.Array) -> None:
    """Write the lines' character data as is: it is already the file's bytes."""
    if not len(lines):
        return
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1,
                            offset=lines.offset * 4)
    handle.write(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]])


def write_large(profiles: int, out: Path, seed: int = SEED, change: float = 0.0,
                block: int = BLOCK) -> dict[str, int]:
    """``all_shoppers.csv`` (every profile), the three formatted audience CSVs and, with a
    change fraction, ``all_shoppers_changed.csv``; returns the rows written per file."""
    paths = {"all_shoppers": out / "all_shoppers.csv",
             **{k: out / "audience_csv" / "formatted" / f"{k}.csv" for k in AUDIENCES}}
    if change:
        paths["all_shoppers_changed"] = out / "all_shoppers_changed.csv"
    counts = dict.fromkeys(paths, 0)
    header = (",".join(WIDE) + "\n").encode()
    with ExitStack() as stack:
        files = {}
        for name, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            files[name] = stack.enter_context(open(path, "wb"))
            files[name].write(header)
        for start in range(0, profiles, block):
            b = large_block(start, min(start + block, profiles), profiles, seed, change, block)
            lines = _lines(b.columns)
            written = {"all_shoppers": lines}
            written.update((k, lines.filter(pa.array(b.audiences[k]))) for k in AUDIENCES)
            if change:
                mask = pa.array(b.changed)
                subset = {c: v.filter(mask) for c, v in b.columns.items()}
                subset.update(b.changed_columns)
                written["all_shoppers_changed"] = pc.replace_with_mask(lines, mask,
                                                                       _lines(subset))
                counts.setdefault("changed", 0)
                counts["changed"] += int(b.changed.sum())
            for name, rows in written.items():
                _write_lines(files[name], rows)
                counts[name] += len(rows)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=2000, help="number of profiles (2000)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: data/samples, or data/large when "
                             "--profiles is above 10,000)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--change", type=float, default=0.0, metavar="FRACTION",
                        help="large mode: also write all_shoppers_changed.csv, the same profiles "
                             "with this fraction of them changed (e.g. 0.1)")
    parser.add_argument("--database", metavar="URL", default=None,
                        help="write only the Profiles Sync tables, into this database "
                             "(postgresql://user:password@host/db or duckdb:///path/file.duckdb)")
    parser.add_argument("--schema", default="northwind_profiles",
                        help="--database: the schema to write them in (northwind_profiles)")
    parser.add_argument("--tables", choices=("all", "segment", "materialised"), default="all",
                        help="--database: Segment's own tables (user_traits, user_identifiers, "
                             "id_graph), the dbt-materialised ones (profile_traits, "
                             "external_id_mapping) or all five (all)")
    args = parser.parse_args(argv)
    if args.database:
        if args.profiles > 10_000:
            parser.error("--database writes the sample (at most 10,000 profiles)")
        names = write_database(make_profiles(args.profiles, args.seed), args.database,
                               args.schema, args.tables, random.Random(args.seed + 2))
        from toolkit.engage.warehouse import redact
        print(f"wrote {', '.join(names)} ({args.profiles:,} profiles) to schema {args.schema} "
              f"of {redact(args.database)}", file=sys.stderr)
        return 0
    large = args.profiles > 10_000
    if args.change and not large:
        parser.error("--change needs --profiles above 10,000 (large mode)")
    if not 0 <= args.change <= 1:
        parser.error("--change is a fraction between 0 and 1")
    out = args.out or (HERE.parent / "large" if large else HERE)
    if large:
        counts = write_large(args.profiles, out, args.seed, args.change)
        changed = f", {counts['changed']:,} of them changed" if args.change else ""
        print(f"wrote {args.profiles:,} profiles to {out}{changed}", file=sys.stderr)
        return 0
    profiles = make_profiles(args.profiles, args.seed)
    write_audience_csvs(profiles, out)
    write_trait_csvs(profiles, out)
    write_profiles_sync(profiles, out, random.Random(args.seed + 2))
    write_events(profiles, out)
    write_source_events(profiles, out, args.seed + 3)
    write_definitions(out)
    print(f"wrote {args.profiles:,} profiles to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
