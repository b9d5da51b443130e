"""Fixtures of the client tests: a scripted Braze behind a `MockTransport`, and a factory of
clients sending to it (no server, no sockets)."""
from __future__ import annotations

import pytest

from .scripted import API_KEY, ScriptedBraze
from toolkit.braze.client import BrazeClient


@pytest.fixture
def fake():
    return ScriptedBraze()


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
        options.setdefault("transport", fake.transport)
        client = BrazeClient(options.pop("endpoint", fake.url), options.pop("api_key", API_KEY),
                             **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
