"""The API key never appears in repr, str, HTML, stats, exceptions (with their request and
response copies and tracebacks) or log records — only its fingerprint does."""
from __future__ import annotations

import logging
import pickle
import traceback

import pytest

from .scripted import API_KEY, ScriptedBraze, Step
from toolkit.braze.client import key_fingerprint
from toolkit.errors import BrazeAPIError

EVENTS = [{"external_id": "u", "name": "e", "time": "2026-01-01T00:00:00Z"}]


def everything_about(err: BaseException) -> str:
    parts = [str(err), repr(err), "".join(traceback.format_exception(err)),
             repr(getattr(err, "request", None)), repr(getattr(err, "response", None)),
             repr(getattr(err, "body", None)), repr(err.__dict__)]
    if hasattr(err, "_repr_html_"):
        parts.append(err._repr_html_())
    return "\n".join(parts)


def test_key_stays_out_of_everything(fake, make_client, caplog):
    fake.script("/users/track", Step(500, {"message": "boom"}),
                Step(401, {"message": f"Invalid API key: {API_KEY}"}), Step(drop=True))
    fake.script("/users/export/ids", Step(403, {"message": "Access Denied"}))
    client = make_client()
    nobody = ScriptedBraze()
    nobody.default("/users/track", lambda seen: Step(refuse=True))
    refused = make_client(transport=nobody.transport, max_retries=1)
    seen_errors = []
    with caplog.at_level(logging.DEBUG):
        for call in (lambda: client.track(attributes=[{"external_id": "u"}]),
                     lambda: client.export_ids(["u"]),
                     lambda: client.track(events=EVENTS, retry_unknown=False),
                     lambda: refused.track(events=EVENTS)):
            with pytest.raises(BrazeAPIError) as info:
                call()
            seen_errors.append(info.value)
        client.track(attributes=[{"external_id": "u"}])   # a success, logged at DEBUG
    assert len(seen_errors) == 4
    texts = [everything_about(e) for e in seen_errors]
    texts += [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    texts += [repr(client), str(client), client._repr_html_(), repr(client.stats),
              client.workspace, repr(client.__dict__), repr(refused)]
    assert caplog.records, "the client should log its requests"
    for text in texts:
        assert API_KEY not in text
    fingerprint = key_fingerprint(API_KEY)
    # the key shows as its fingerprint; the workspace identity does not depend on the key
    assert fingerprint in repr(client) and fingerprint in str(seen_errors[0])
    assert fingerprint not in client.workspace and client.legacy_workspace.endswith(fingerprint)
    assert "REDACTED" in seen_errors[0].request.headers["Authorization"]
    assert "<redacted sha256:" in seen_errors[0].body["message"]


def test_errors_survive_pickling_without_the_key(fake, make_client):
    fake.script("/users/track", Step(401, {"message": "Invalid API key"}))
    with pytest.raises(BrazeAPIError) as info:
        make_client().track(attributes=[{"external_id": "u"}])
    data = pickle.dumps(info.value)
    assert API_KEY.encode() not in data
    again = pickle.loads(data)
    assert again.status == 401 and again.outcome == "rejected"


def test_the_client_itself_cannot_be_pickled_into_a_file(make_client):
    with pytest.raises(TypeError):
        pickle.dumps(make_client())
