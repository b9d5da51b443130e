"""Profile API client against a local fake server: auth, id escaping, pagination, 429, 404."""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

import toolkit
from toolkit.engage.profile_api import ProfileAPI, load_profile_api, profile_path_id
from toolkit.errors import ProfileAPIError

TOKEN = "sgp_secret_token_value"
SPACE = "spa_test"
PROFILES = {
    "user_id:u_1": {
        "audience": {"vip_customer": True, "dormant_shopper": False},
        "computed_trait": {"total_revenue_180_days": 450.0, "last_product_viewed_item": "Camp Mug",
                           "last_order_at": "2025-03-01T10:00:00Z"},
        "external_ids": [{"type": "user_id", "id": "u_1"}, {"type": "email", "id": "Ana@x.com"},
                         {"type": "email", "id": "ana.work@x.com"},
                         {"type": "anonymous_id", "id": "anon-1"}],
    },
    "email:jun+shop@x.com": {
        "audience": {"vip_customer": False, "dormant_shopper": True},
        "computed_trait": {"total_revenue_180_days": 12.0},
        "external_ids": [{"type": "email", "id": "jun+shop@x.com"}],
    },
}


class FakeProfiles(BaseHTTPRequestHandler):
    log: list = []
    throttle_next = 1

    def log_message(self, *args):  # keep test output quiet
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
        type(self).log.append((url.path, query, self.headers.get("Authorization")))
        expected = "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()
        if self.headers.get("Authorization") != expected:
            return self._send(401, {"error": {"code": "authentication_error",
                                              "message": "bad token"}})
        if type(self).throttle_next:
            type(self).throttle_next -= 1
            return self._send(429, {"error": {"code": "rate_limit_error", "message": "slow"}},
                              [("Retry-After", "0")])
        parts = url.path.split("/")
        # /v1/spaces/<space>/collections/users/profiles/<id>/<what>
        ident, what = unquote(parts[7]), parts[8]
        profile = PROFILES.get(ident)
        if parts[3] != SPACE or profile is None:
            return self._send(404, {"error": {"code": "not_found",
                                              "message": "Profile was not found."}})
        if what == "traits":
            items = sorted(profile[query["class"]].items())
            limit = int(query.get("limit", 10))
            start = int(query.get("next") or 0)
            page = dict(items[start:start + limit])
            more = start + limit < len(items)
            return self._send(200, {"traits": page, "cursor": {
                "url": url.path, "has_more": more, "next": str(start + limit) if more else "",
                "limit": limit}})
        if what == "external_ids":
            return self._send(200, {"data": profile["external_ids"],
                                    "cursor": {"url": url.path, "has_more": False, "next": ""}})
        return self._send(404, {"error": {"code": "not_found", "message": "?"}})


@pytest.fixture
def server():
    FakeProfiles.log = []
    FakeProfiles.throttle_next = 1
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeProfiles)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_profile_path_id_lowercases_and_escapes_plus():
    assert profile_path_id("email:Jun+Shop@X.com") == "email:jun%2Bshop@x.com"
    assert profile_path_id("user_id:U 1") == "user_id:u%201"
    with pytest.raises(ProfileAPIError):
        profile_path_id("u_1")


def test_load_profile_api_paginates_backs_off_and_types(server):
    export = load_profile_api(SPACE, TOKEN, ids=["user_id:u_1", "email:Jun+Shop@x.com",
                                                "user_id:missing"],
                              base_url=server, page_size=2, backoff=0.01)
    p = export.profiles.set_index("segment_id")
    assert list(p.index) == ["user_id:u_1", "email:jun+shop@x.com"]
    assert set(export.audiences) == {"vip_customer", "dormant_shopper"}
    assert set(export.traits) == {"total_revenue_180_days", "last_product_viewed_item",
                                  "last_order_at"}
    assert p.loc["user_id:u_1", "vip_customer"] and p.loc["email:jun+shop@x.com", "dormant_shopper"]
    assert tuple(p.loc["user_id:u_1", "emails"]) == ("ana@x.com", "ana.work@x.com")
    assert str(p["last_order_at"].dtype) == "datetime64[ns, UTC]"
    assert p["total_revenue_180_days"].tolist() == [450.0, 12.0]
    (missing,) = export.findings.of("profile_not_found")
    assert missing.row == 3
    paths = [path for path, _, _ in FakeProfiles.log]
    assert any("email:jun%2Bshop@x.com" in path for path in paths)
    pages = [q.get("next") for path, q, _ in FakeProfiles.log
             if path.endswith("/traits") and q.get("class") == "computed_trait"
             and "u_1" in path]
    assert pages == [None, "2"]                 # three traits, page size 2 → two pages
    statuses = FakeProfiles.throttle_next
    assert statuses == 0                        # the 429 was served and retried


def test_load_via_toolkit_load_kind(server):
    export = toolkit.load(["user_id:u_1"], kind="profile_api", space_id=SPACE, token=TOKEN,
                          base_url=server, backoff=0.01)
    assert len(export.profiles) == 1 and export.source.endswith("profile_api)")


def test_bad_token_raises_without_leaking_it(server):
    with pytest.raises(ProfileAPIError) as err:
        load_profile_api(SPACE, "wrong-token", ids=["user_id:u_1"], base_url=server,
                         backoff=0.01)
    assert err.value.status == 401
    assert "wrong-token" not in str(err.value) and TOKEN not in repr(err.value)
    api = ProfileAPI(SPACE, TOKEN, base_url=server)
    assert TOKEN not in repr(api) and TOKEN not in api._repr_html_()


def test_persistent_429_gives_up(server):
    FakeProfiles.throttle_next = 100
    with pytest.raises(ProfileAPIError, match="429") as err:
        load_profile_api(SPACE, TOKEN, ids=["user_id:u_1"], base_url=server, max_retries=2,
                         backoff=0.0)
    assert err.value.status == 429


def test_all_missing_raises(server):
    with pytest.raises(ProfileAPIError, match="none of the profiles"):
        load_profile_api(SPACE, TOKEN, ids=["user_id:nobody"], base_url=server, backoff=0.0)
