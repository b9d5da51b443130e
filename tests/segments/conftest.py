"""Fixtures for the segment-check tests: a small export synced to a fresh sandbox."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pytest

import toolkit
from tests.notebook.conftest import build_export
from toolkit.sandbox import BrazeSandbox


def recent_export(days_ago: int = 20):
    """The notebook tests' export, snapshotted `days_ago` days before now (events the sync
    sends carry that time, so an event window shorter than that finds none of them)."""
    export = build_export()
    export.snapshot_at = pd.Timestamp.now(tz="UTC").normalize() - pd.Timedelta(days=days_ago)
    return export


@dataclass
class Synced:
    sandbox: Any
    client: Any
    export: Any
    mapping: Any
    preview: Any
    report: Any = None

    def build(self, key: str, filters=None, **options) -> str:
        """Build `key`'s segment in the sandbox, named by the mapping's convention."""
        return self.sandbox.create_segment(self.mapping.segment_name(key),
                                           filters if filters is not None
                                           else self.preview.filter_for(key), **options)


@pytest.fixture
def synced():
    """A factory: sync the export with a mapping (dormant_shopper sent as events) to a new
    sandbox; ``create_users=False`` leaves out users the sandbox does not know already."""
    opened = []

    def make(*, estimate_error: float = 0.0, create_users: bool = True, known=None,
             permissions=None, seed: int = 5, export=None) -> Synced:
        export = export if export is not None else recent_export()
        mapping = toolkit.Mapping.from_export(export)
        if "dormant_shopper" in mapping:
            mapping = mapping.set("dormant_shopper", send_as="event")
        sandbox = BrazeSandbox(seed=seed, estimate_error=estimate_error, export_delay=0.05)
        tmp = tempfile.TemporaryDirectory()
        client = toolkit.BrazeClient.for_sandbox(sandbox, backoff=(0.01, 0.05), seed=1)
        opened.append((sandbox, client, tmp))
        if known:
            client.track(attributes=[{"external_id": x, "_update_existing_only": False,
                                      "seen": True} for x in known])
        ledger = toolkit.Ledger(client, directory=tmp.name)
        plan = toolkit.plan(export, mapping, ledger, workspace=client,
                            create_users=create_users)
        plan.approve(by="tests")
        report = toolkit.apply(plan, client, ledger, progress=False)
        ledger.close()
        sandbox.set_permissions(permissions)
        return Synced(sandbox, client, export, mapping, mapping.preview(export), report)

    yield make
    for sandbox, client, tmp in opened:
        client.close()
        sandbox.close()
        tmp.cleanup()
