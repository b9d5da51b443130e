"""`python -m toolkit inspect`: summary, identifiers, event history and findings as text."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from toolkit.cli import build_parser, main
from toolkit.engage import inspect

ROOT = Path(__file__).resolve().parents[2]


def test_inspect_ndjson_sample_prints_summary_and_findings(samples):
    args = build_parser().parse_args(["inspect", str(samples / "events" /
                                                      "engage_events.ndjson.gz"),
                                      "--max-findings", "3"])
    out = io.StringIO()
    assert inspect.run(args, out=out) == 0
    text = out.getvalue()
    assert "Computations:" in text and "dormant_shopper" in text and "members" in text
    assert "Dormant Shopper Entered" in text
    assert "string_boolean" in text and "anonymous_only" in text
    assert "more (use --max-findings)" in text


def test_inspect_several_files_with_kind(samples, capsys):
    files = [str(p) for p in sorted((samples / "audience_csv" / "formatted").glob("*.csv"))]
    assert main(["inspect", *files, "--kind", "csv_formatted"]) == 0
    text = capsys.readouterr().out
    assert "3 exports merged" in text and "vip_customer" in text


def test_inspect_error_exit_code(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.csv")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_inspect_as_a_module_command(samples):
    proc = subprocess.run([sys.executable, "-m", "toolkit", "inspect",
                           str(samples / "audience_csv" / "legacy" / "dormant_shopper.csv")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "csv_legacy" in proc.stdout and "repaired_quotes" in proc.stdout
