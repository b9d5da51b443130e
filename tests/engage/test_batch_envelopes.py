"""Segment batch envelopes ``{"batch": [...]}``: a precise error when ``batch`` is not a list,
and findings located as "batch N, message M" rather than at the envelope."""
from __future__ import annotations

import json

import pytest

import toolkit
from toolkit.errors import ExportFormatError

from .test_events import msg

TS = "2025-01-06T09:00:00.000Z"


@pytest.mark.parametrize("batch,found", [({"type": "identify"}, "object"), ("x", "text"),
                                         (5, "number"), (None, "null")])
def test_batch_that_is_not_a_list_is_a_precise_error(write, batch, found):
    path = write("batch.json", json.dumps({"batch": batch, "sentAt": TS}))
    with pytest.raises(ExportFormatError) as info:
        toolkit.load(path)
    err = info.value
    assert "'batch' must be a list of messages" in err.message and found in err.message
    assert err.file == str(path) and err.field == "batch"
    assert "no Engage" not in err.message and '{"batch": [' in err.hint


def test_ndjson_line_with_a_batch_that_is_not_a_list_names_the_line(write):
    good = json.dumps(msg("identify", "vip", True, TS, user_id="u_1"))
    path = write("e.ndjson", good + "\n" + json.dumps({"batch": {"userId": "u_2"}}) + "\n")
    with pytest.raises(ExportFormatError, match="must be a list") as info:
        toolkit.load(path)
    assert info.value.line == 2 and info.value.field == "batch"


def test_batch_entry_not_an_object_names_batch_and_message(write):
    good = msg("identify", "vip", True, TS, user_id="u_1")
    path = write("batch.json", json.dumps({"batch": [good, good, 7]}))
    with pytest.raises(ExportFormatError) as info:
        toolkit.load(path)
    err = info.value
    assert "batch 1, message 3 is a number" in err.message and "not a JSON object" in err.message
    assert err.field == "batch" and err.batch == 1


def test_findings_in_a_batch_envelope_name_batch_and_message(write):
    messages = [msg("identify", "vip", True, TS, user_id="u_1"),
                msg("identify", "vip", "maybe", TS, user_id="u_2"),       # no boolean
                msg("identify", "vip", "true", TS, user_id="u_3"),        # string boolean
                msg("identify", "total", 5, TS, klass="trait", user_id="u_1"),
                msg("identify", "total", "lots", TS, klass="trait", user_id="u_2"),  # drift
                {**msg("identify", "vip", True, TS), "userId": None}]    # no identifier
    path = write("batch.json", json.dumps({"batch": messages}, indent=2))
    export = toolkit.load(path)
    f = export.findings
    (drift_vip,) = [x for x in f.of("type_drift") if x.column == "vip"]
    assert drift_vip.message.startswith("batch 1, message 2: ") and drift_vip.row == 2
    (sb,) = f.of("string_boolean")
    assert sb.message.startswith("batch 1, message 3: ") and sb.row == 3
    (drift_total,) = [x for x in f.of("type_drift") if x.column == "total"]
    assert drift_total.message.startswith("batch 1, message 5: ") and drift_total.row == 5
    (no_id,) = f.of("no_identifier")
    assert no_id.message.startswith("batch 1, message 6: ") and no_id.row == 6


def test_ndjson_of_envelopes_names_line_batch_and_message(write):
    first = {"batch": [msg("identify", "vip", True, TS, user_id="u_1")]}
    second = {"batch": [msg("identify", "vip", True, TS, user_id="u_2"),
                        msg("identify", "vip", "yes", TS, user_id="u_3")]}
    path = write("batches.ndjson", json.dumps(first) + "\n\n" + json.dumps(second) + "\n")
    export = toolkit.load(path)
    (drift,) = export.findings.of("type_drift")
    assert drift.message.startswith("line 3, batch 2, message 2: ")
    assert drift.row == 3 and drift.column == "vip"


def test_plain_ndjson_findings_keep_their_line_numbers(write):
    lines = [msg("identify", "vip", True, TS, user_id="u_1"),
             msg("identify", "vip", "maybe", TS, user_id="u_2")]
    export = toolkit.load(write("e.ndjson", "\n".join(json.dumps(m) for m in lines) + "\n"))
    (drift,) = export.findings.of("type_drift")
    assert drift.row == 2 and not drift.message.startswith(("line", "batch"))
