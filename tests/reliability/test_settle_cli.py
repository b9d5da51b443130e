"""Done when: the command line alone — no Python written by the user — syncs the sample shop with
its audiences sent as events to a sandbox that fails 20% of requests (429s, 5xx, slow answers,
connections dropped before and after Braze applied a request, on every endpoint including the
read-back), and Braze shows writes only after a delay. apply → uncertain (exit 3) → settle →
plan/apply, until the plan is empty; then the sandbox holds exactly the export, every event once.
"""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from reliability_harness import SAMPLE, check_state
from toolkit.cli import main
from toolkit.engage.readers import load
from toolkit.mapping import Mapping
from toolkit.sandbox.server import BrazeSandbox
from toolkit.sync.ledger import Ledger
from toolkit.sync.plan import plan

# 20% of requests, every endpoint: the fault mix of the stand-in
FAULTS = {"rate_429": 0.03, "rate_500": 0.02, "rate_503": 0.02, "rate_slow": 0.01,
          "slow_seconds": 0.2, "rate_drop_before": 0.05, "rate_drop_after": 0.07}
READ_DELAY_S = 1.0          # Braze shows a write this long after it (sandbox)
WAIT = "2s"                 # settle's read-after-write wait: longer than that delay
MAPPING = """\
# audiences as Audience Entered / Exited events, traits as attributes
version: 1
rules:
- {key: vip_customer, kind: audience, send_as: event}
- {key: dormant_shopper, kind: audience, send_as: event}
- {key: first_time_shopper, kind: audience, send_as: event}
- {key: total_revenue_180_days, kind: trait, send_as: attribute}
- {key: last_product_viewed_item, kind: trait, send_as: attribute}
"""


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


@pytest.mark.slow
def test_command_line_sync_with_faults_settles_to_every_event_exactly_once(tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mapping.yml").write_text(MAPPING)
    target = ["--sandbox", "--env-file", "none.env"]
    figures = Counter()
    with BrazeSandbox(seed=11, faults=FAULTS, read_delay=READ_DELAY_S,
                      rate_limits={"/users/track": (3000, 1.0),
                                   "/users/export/ids": (2500, 60.0)}) as sb:
        monkeypatch.setenv("SANDBOX_URL", sb.url)
        monkeypatch.setenv("SANDBOX_API_KEY", sb.api_key)
        code, out = _cli(capsys, "plan", str(SAMPLE), "--mapping", "mapping.yml",
                         "--create-users", "--batch-size", "25", "--out", "plan-1.json", *target)
        assert code == 0, out
        for rounds in range(1, 9):
            name = f"plan-{rounds}.json"
            assert _cli(capsys, "approve", name, "--by", "scheduler", "--expires", "1h")[0] == 0
            code, out = _cli(capsys, "apply", name, "--no-progress", *target)
            report = json.loads((tmp_path / f"plan-{rounds}.report.json").read_text())
            figures["uncertain"] += len(report["uncertain"])
            assert code == (3 if report["uncertain"] else code) and code in (0, 1, 2, 3), out
            # settle with Braze's default 5-minute wait: what landed is decided at once (once
            # Braze shows it), what did not land must wait — exit 3, users and evidence listed
            code, out = _cli(capsys, "settle", *target)
            figures["settle runs"] += 1
            assert code in (0, 3), out
            if code == 3:
                figures["exit 3 from settle"] += 1
                assert "UNDECIDED" in out and "users:" in out and "run settle again after" in out
            # the sandbox's delay is known (1 s), so a shorter wait is safe here; settle again
            # until no batch awaits a decision
            attempts = 0
            while code != 0:
                attempts += 1
                assert attempts <= 10, f"settle never decided: {out}"
                time.sleep(0.5)
                code, out = _cli(capsys, "settle", "--wait", WAIT, *target)
                figures["settle runs"] += 1
                assert code in (0, 3), out
            code, out = _cli(capsys, "plan", str(SAMPLE), "--mapping", "mapping.yml",
                             "--create-users", "--batch-size", "25",
                             "--out", f"plan-{rounds + 1}.json", *target)
            assert code == 0, out                   # settled: nothing awaits any more
            if "nothing to send" in out:
                break
        else:
            raise AssertionError("the sync did not complete in 8 rounds")
        figures["rounds"] = rounds
        # verify reads back after Braze's delay, as a real run must
        assert main(["verify", f"plan-{rounds}.report.json", "--sample", "50", "--wait",
                     str(READ_DELAY_S + 0.2), *target]) == 0
        capsys.readouterr()
        # -- the checks (not part of the user's flow): Braze holds the export, events once
        export = load(SAMPLE)
        mapping = Mapping.load(tmp_path / "mapping.yml")
        everything = plan(export, mapping, None, create_users=True)   # the state from nothing
        ledger_path = next((tmp_path / ".toolkit").glob("ledger-sandbox*.sqlite"))
        with Ledger(path=ledger_path, workspace=f"sandbox@{sb.url}") as ledger:
            check = check_state(sb, ledger, everything)
            decided = dict(ledger._query(
                "SELECT status, count(*) FROM batches WHERE kind = 'events' AND reason LIKE "
                "'settled from Braze%' GROUP BY status"))
            by_hand = ledger._query("SELECT count(*) FROM batches WHERE reason LIKE "
                                    "'settled by hand%'")[0][0]
        faults = sb.request_log()["fault"].value_counts().to_dict()
        events = sb.events()
    figures["landed"] = decided.get("resolved", 0)
    figures["not landed"] = decided.get("failed", 0)
    keys = events["properties"].map(lambda p: p["audience_key"])
    per_user = events.assign(key=keys).groupby(["external_id", "name", "key"]).size()
    print(f"\nCLI settle run: faults {faults}; {dict(figures)}; duplicated "
          f"{check.duplicated_events}, missing {check.missing_events}")
    assert sum(faults.values()) > 0 and faults.get("drop_after") and faults.get("drop_before")
    assert figures["uncertain"] > 0, "the faults must leave event batches uncertain"
    assert figures["landed"] and figures["not landed"], "both decisions are exercised"
    assert figures["exit 3 from settle"], "'not landed' waited for Braze's delay"
    assert figures["landed"] + figures["not landed"] == figures["uncertain"] and by_hand == 0
    assert check.duplicated_events == 0 and check.missing_events == 0
    assert check.mismatches == 0, check.examples
    assert per_user.max() == 1 and len(per_user) == int(
        (everything.operations["op"] == "event").sum())
