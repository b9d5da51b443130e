"""Fixtures of the client tests: a running fake Braze and a factory of clients pointed at it."""
from __future__ import annotations

import pytest

from .fakebraze import API_KEY, FakeBraze
from toolkit.braze.client import BrazeClient


@pytest.fixture
def fake():
    with FakeBraze() as server:
        yield server


@pytest.fixture
def make_client(fake, monkeypatch):
    monkeypatch.delenv("BRAZE_API_KEY", raising=False)
    monkeypatch.delenv("BRAZE_REST_ENDPOINT", raising=False)
    clients = []

    def make(**options) -> BrazeClient:
        options.setdefault("env_file", None)
        options.setdefault("backoff", (0.01, 0.05))
        options.setdefault("timeout", 5)
        options.setdefault("seed", 7)
        client = BrazeClient(options.pop("endpoint", fake.url), options.pop("api_key", API_KEY),
                             **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
