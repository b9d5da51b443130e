"""Fixtures for the sync tests: an in-memory export, a sandbox, a client and a ledger."""
from __future__ import annotations

import pytest

from .builders import make_export


@pytest.fixture
def export():
    return make_export(200, anonymous=5, email_only=3)


@pytest.fixture
def sandbox():
    from toolkit.sandbox.server import BrazeSandbox

    with BrazeSandbox(seed=1) as sb:
        yield sb


@pytest.fixture
def client(sandbox):
    from toolkit.braze.client import BrazeClient

    c = BrazeClient.for_sandbox(sandbox, backoff=(0.01, 0.05), seed=0)
    yield c
    c.close()


@pytest.fixture
def ledger(client, tmp_path):
    from toolkit.sync.ledger import Ledger

    with Ledger(client, directory=tmp_path) as led:
        yield led

