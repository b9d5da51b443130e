"""Sources of definitions: a pasted query, a file of the Public API's JSON response, and the
Public API itself against a local stand-in that follows its documented contract (Bearer token,
pagination.count / pagination.cursor, data.audiences, 429 with Retry-After)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

import toolkit
from toolkit.engage.definitions import SegmentPublicAPI, load_definitions
from toolkit.errors import DefinitionError, PublicAPIError

from .conftest import SAMPLES

TOKEN = "sgp_public_api_secret_value"
SPACE = "spa_9aQ1Lj62S4bomZKLF4DPqW"
AUDIENCES = json.loads((SAMPLES / "definitions" / "audiences.json").read_text())["data"][
    "audiences"]


class FakePublicAPI(BaseHTTPRequestHandler):
    """GET /spaces/{spaceId}/audiences as api.segmentapis.com answers it."""

    log: list = []
    throttle_next = 0

    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        type(self).log.append((url.path, query))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, {"errors": [{"type": "unauthorized",
                                                "message": "Unauthorized"}]})
        if type(self).throttle_next:
            type(self).throttle_next -= 1
            return self._send(429, {"errors": [{"type": "too-many-requests",
                                                "message": "Too many requests"}]},
                              [("Retry-After", "0")])
        parts = url.path.strip("/").split("/")
        if parts[:1] != ["spaces"] or len(parts) != 3 or parts[2] != "audiences":
            return self._send(404, {"errors": [{"type": "not-found", "message": "not found"}]})
        if parts[1] != SPACE:
            return self._send(404, {"errors": [{"type": "not-found",
                                                "message": "Space not found"}]})
        count = int(query.get("pagination.count", 10))
        start = int(query.get("pagination.cursor") or 0)
        page = AUDIENCES[start:start + count]
        nxt = str(start + count) if start + count < len(AUDIENCES) else None
        return self._send(200, {"data": {"audiences": page, "pagination": {
            "current": str(start), "next": nxt, "totalEntries": len(AUDIENCES)}}})


@pytest.fixture
def server():
    FakePublicAPI.log = []
    FakePublicAPI.throttle_next = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakePublicAPI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_public_api_pages_through_every_audience(server):
    FakePublicAPI.throttle_next = 1
    api = SegmentPublicAPI(SPACE, TOKEN, base_url=server, page_size=2, backoff=0)
    defs = api.audiences()
    assert defs.keys() == ["dormant_shopper", "first_time_shopper", "vip_customer"]
    cursors = [q.get("pagination.cursor") for _, q in FakePublicAPI.log]
    assert cursors == [None, None, "2"]          # one 429, retried; then two pages
    assert api.stats["429s"] == 1
    assert defs["vip_customer"].definition.functions[0] == "OR"


def test_public_api_token_from_the_environment_and_never_shown(server, monkeypatch):
    monkeypatch.setenv("SEGMENT_PUBLIC_API_TOKEN", TOKEN)
    api = toolkit.SegmentPublicAPI(SPACE, base_url=server)
    assert len(api.audiences()) == 3
    assert TOKEN not in repr(api) and TOKEN not in api._repr_html_()
    monkeypatch.delenv("SEGMENT_PUBLIC_API_TOKEN")
    with pytest.raises(PublicAPIError, match="no Segment Public API token") as info:
        SegmentPublicAPI(SPACE)
    assert "SEGMENT_PUBLIC_API_TOKEN" in info.value.hint


def test_public_api_errors_are_clear_and_keep_the_token_secret(server):
    bad = SegmentPublicAPI(SPACE, "sgp_wrong_token_1234", base_url=server, backoff=0)
    with pytest.raises(PublicAPIError) as info:
        bad.audiences()
    err = info.value
    assert err.status == 401 and "Unauthorized" in err.message
    assert "sgp_wrong_token_1234" not in str(err) and "#" in err.hint
    with pytest.raises(PublicAPIError) as info:
        SegmentPublicAPI("spa_other", TOKEN, base_url=server).audiences()
    assert info.value.status == 404 and "space id" in info.value.hint
    FakePublicAPI.throttle_next = 10
    with pytest.raises(PublicAPIError) as info:
        SegmentPublicAPI(SPACE, TOKEN, base_url=server, max_retries=2, backoff=0).audiences()
    assert info.value.status == 429 and "25 list requests per minute" in info.value.hint
    with pytest.raises(PublicAPIError, match="could not be reached"):
        SegmentPublicAPI(SPACE, TOKEN, base_url="http://127.0.0.1:9", max_retries=0).audiences()


def test_definitions_from_the_sample_file_and_a_pasted_query():
    defs = load_definitions(SAMPLES / "definitions" / "audiences.json")
    assert len(defs) == 3 and defs.source.endswith("audiences.json")
    assert defs["dormant_shopper"].name == "Dormant shopper"
    assert list(defs.to_frame().columns) == ["key", "name", "type", "enabled", "query"]
    assert "3 audience definitions" in defs._repr_html_()
    pasted = toolkit.load_definitions("event('Order Completed').count() >= 1", key="buyers")
    assert pasted["buyers"].query == "event('Order Completed').count() >= 1"
    assert pasted.source == "pasted query"
    with pytest.raises(DefinitionError, match="no audience definition with key 'nope'"):
        defs["nope"]
    assert load_definitions(SAMPLES / "definitions").keys() == defs.keys()   # a folder


def test_bad_definition_files_point_at_the_problem(tmp_path):
    f = tmp_path / "audiences.json"
    f.write_text('{"data": {"audiences": [\n  {"key": "x",}\n]}}')
    with pytest.raises(DefinitionError) as info:
        load_definitions(f)
    assert (info.value.file, info.value.line) == (str(f), 2)
    f.write_text(json.dumps({"data": {"audiences": [
        AUDIENCES[0], {"key": "broken", "definition": {"query": "event('a').cout() >= 1",
                                                       "type": "USERS"}}]}}))
    with pytest.raises(DefinitionError) as info:
        load_definitions(f)
    err = info.value
    assert "audience 2 (broken)" in err.message and "unknown function 'cout'" in err.message
    assert err.column == 12 and err.file == str(f) and "count" in err.hint
    f.write_text(json.dumps({"data": {"audiences": [{"key": "app_built", "name": "x",
                                                     "definition": None}]}}))
    with pytest.raises(DefinitionError, match="has no definition.query"):
        load_definitions(f)
    f.write_text(json.dumps({"something": 1}))
    with pytest.raises(DefinitionError, match="holds no audiences"):
        load_definitions(f)
    with pytest.raises(DefinitionError, match="file not found"):
        load_definitions(tmp_path / "missing.json")
    with pytest.raises(DefinitionError, match="unknown function"):
        load_definitions("event('a').frob() >= 1")
