"""Fixtures for the Braze sandbox tests: a fresh sandbox per test and a tiny JSON client."""
from __future__ import annotations

import pytest
import requests

from toolkit.sandbox import BrazeSandbox


class Api:
    """Minimal keep-alive client for the sandbox: returns (status, json body, headers)."""

    def __init__(self, sb: BrazeSandbox) -> None:
        self.sb = sb
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {sb.api_key}"

    def post(self, path: str, body, **kw):
        r = self.session.post(self.sb.url + path, json=body, timeout=10, **kw)
        return r.status_code, r.json(), r.headers

    def get(self, path: str, **kw):
        r = self.session.get(self.sb.url + path, timeout=10, **kw)
        return r.status_code, r.json(), r.headers

    def track(self, **arrays):
        return self.post("/users/track", arrays)


@pytest.fixture
def sb():
    with BrazeSandbox(seed=7) as sandbox:
        yield sandbox


@pytest.fixture
def api(sb):
    client = Api(sb)
    yield client
    client.session.close()


@pytest.fixture
def make_api():
    """Start a sandbox with options and return an Api on it (closed at teardown)."""
    opened = []

    def factory(**options):
        sandbox = BrazeSandbox(**options)
        client = Api(sandbox)
        opened.append((sandbox, client))
        return client

    yield factory
    for sandbox, client in opened:
        client.session.close()
        sandbox.close()
