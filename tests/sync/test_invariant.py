"""Preview and plan share one desired-state projection: after a sync to the sandbox, every
recommended Braze filter, evaluated on what the sandbox holds, selects exactly the users the
preview said it would — including profiles that share a Braze identifier."""
from __future__ import annotations

import pandas as pd
import pytest

from .builders import AUDIENCES, make_export
from toolkit.braze.client import BrazeClient
from toolkit.braze.state import BrazeState
from toolkit.mapping import Mapping
from toolkit.sandbox.server import BrazeSandbox
from toolkit.sync.apply import apply
from toolkit.sync.ledger import Ledger
from toolkit.sync.plan import plan


def _export_with_shared_identifiers():
    export = make_export(120, seed=3, anonymous=5, email_only=4)
    p = export.profiles
    # three later rows reuse earlier user ids with the opposite membership and another value
    for src, dst in ((2, 40), (7, 41), (11, 42)):
        p.loc[dst, "user_id"] = p.loc[src, "user_id"]
        p.loc[dst, "vip_customer"] = not bool(p.loc[src, "vip_customer"])
        p.loc[dst, "total_revenue_180_days"] = 999.5
    return export


def _sandbox_state(sandbox: BrazeSandbox, as_of) -> BrazeState:
    held = sandbox.profiles()
    users = "external_id:" + held["external_id"]
    attributes = held.drop(columns=["external_id", "braze_id", "alias_name", "alias_label",
                                    "email", "phone"]).set_index(users)
    stored = sandbox.events()
    events = pd.DataFrame({"user": "external_id:" + stored["external_id"], "name": stored["name"],
                           "time": stored["time"], "properties": stored["properties"]})
    return BrazeState(attributes, events, as_of=as_of)


@pytest.mark.parametrize("send_as", ["attribute", "event", "both"])
def test_recommended_filters_select_in_the_sandbox_what_the_preview_said(tmp_path, send_as):
    export = _export_with_shared_identifiers()
    mapping = Mapping.from_export(export)
    for key in AUDIENCES:
        mapping = mapping.set(key, send_as=send_as)
    preview = mapping.preview(export)
    with BrazeSandbox() as sandbox, BrazeClient.for_sandbox(sandbox) as client:
        with Ledger(client, directory=tmp_path) as ledger:
            p = plan(export, mapping, ledger, workspace=client, create_users=True)
            assert p.findings.of("shared_identifier")
            report = apply(p.approve(by="tester"), client, ledger, progress=False)
            assert report.ok, report
        braze = _sandbox_state(sandbox, preview.as_of)
    frame = preview.to_frame().query("recommended").drop_duplicates("key")
    for key in frame["key"]:
        f = preview.filter_for(key)
        expected = f.evaluate(preview.state)
        actual = f.evaluate(braze)
        expected_users = set(expected.index[expected.to_numpy(dtype=bool)])
        actual_users = set(actual.index[actual.to_numpy(dtype=bool)])
        assert actual_users == expected_users, (key, actual_users ^ expected_users)
        assert len(actual_users) == int(frame.set_index("key").loc[key, "filter_selects"])
