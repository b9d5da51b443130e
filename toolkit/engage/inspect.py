"""`python -m toolkit inspect FILE [FILE…] [--kind K]`: print an Engage export's summary table,
identifier coverage and findings as plain text."""
from __future__ import annotations

import argparse
from typing import TextIO

import pandas as pd

from toolkit.engage.model import EngageExport

__all__ = ["add_arguments", "run", "render"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # lazy: a stage loads when its command runs, not when the CLI builds its parser
    from toolkit.engage.readers import KINDS

    parser.add_argument("paths", nargs="+", metavar="FILE",
                        help="export file(s) or directory; several are merged into one export")
    parser.add_argument("--kind", choices=[k for k in KINDS if k not in ("profile_api",
                                                                          "dataframe")],
                        help="skip format detection")
    parser.add_argument("--key", dest="computation_key", metavar="KEY",
                        help="audience/trait key of a single CSV (default: from its file name)")
    parser.add_argument("--max-findings", type=int, default=50, metavar="N",
                        help="list at most N findings (default 50; counts are always complete)")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    # lazy: a stage loads when its command runs, not when the CLI builds its parser
    from toolkit.engage.readers import load

    source = args.paths[0] if len(args.paths) == 1 else list(args.paths)
    export = load(source, args.kind, computation_key=getattr(args, "computation_key", None))
    text = render(export, max_findings=getattr(args, "max_findings", 50))
    print(text, file=out)
    return 0


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "  (none)"
    cells = [[str(c) for c in frame.columns]] + [
        ["" if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)) else
         f"{int(v):,}" if isinstance(v, (int, float)) and not isinstance(v, bool)
         and float(v).is_integer() else str(v) for v in row]
        for row in frame.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(export: EngageExport, *, max_findings: int = 50) -> str:
    """The text `inspect` prints for `export`."""
    snap = export.snapshot_at.isoformat() if export.snapshot_at is not None else "unknown"
    lines = [f"Engage export: {export.source or '(in memory)'}",
             f"  {len(export.profiles):,} profiles, {len(export.audiences)} audiences, "
             f"{len(export.traits)} traits, {len(export.events):,} events; snapshot {snap}",
             "", "Computations:", _table(export.summary().astype(object)), "",
             "Identifiers:"]
    cov = export.identifier_coverage()
    lines.append("  " + ", ".join(f"{k} {v:,}" for k, v in cov.items()))
    if len(export.events):
        ev = export.events
        per = ev.groupby(["computation_key", "event"], dropna=False).size().reset_index(name="rows")
        per["event"] = per["event"].fillna("(identify)")
        lines += ["", "Event history (after collapsing the per-identifier fan-out):",
                  _table(per.astype(object))]
    findings = export.findings
    counts = findings.counts()
    lines += ["", f"Findings: {len(findings):,}" + (
        " (" + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) + ")" if counts else "")]
    order = {"error": 0, "warning": 1, "info": 2}
    if len(findings):
        by_code: dict[tuple[str, str], list] = {}
        for f in findings:
            by_code.setdefault((f.severity, f.code), []).append(f)
        summary = pd.DataFrame(
            [{"severity": sev, "code": code, "count": len(items), "first": items[0].message[:70]}
             for (sev, code), items in sorted(by_code.items(), key=lambda kv: order[kv[0][0]])])
        lines += [_table(summary.astype(object)), "", "Details:"]
        lines += _details(by_code, order, max_findings)
    return "\n".join(lines)


def _where(f, *, column: bool = True) -> str:
    parts = [f"row {f.row}" if f.row is not None else "",
             f"column {f.column}" if column and f.column else "", f.segment_id or ""]
    return " ".join(p for p in parts if p) or "whole file"


def _details(by_code: dict, order: dict, budget: int) -> list[str]:
    """Each finding's message and fix once, then where it occurs: 30 identical 'anonymous only'
    lines tell an analyst less than one line listing 30 places."""
    lines: list[str] = []
    for (severity, code), items in sorted(by_code.items(), key=lambda kv: order[kv[0][0]]):
        lines.append(f"  [{severity}] {code} ({len(items):,})")
        by_message: dict[str, list] = {}
        for f in items:
            by_message.setdefault(f.message, []).append(f)
        for message, same in list(by_message.items())[:5]:
            columns = {f.column for f in same}
            one_column = len(columns) == 1 and None not in columns
            places = [_where(f, column=not one_column) for f in same[:max(budget, 1)]]
            places = [p for p in places if p != "whole file"] if one_column else places
            more = (f", … {len(same) - len(places):,} more (use --max-findings)"
                    if len(same) > len(places) else "")
            lines.append(f"      {message}" + (f" (column {same[0].column})" if one_column else ""))
            if places:
                lines.append(f"        at: {'; '.join(places)}{more}")
        if len(by_message) > 5:
            lines.append(f"      … {len(by_message) - 5:,} other messages")
        fix = next((f.fix for f in items if f.fix), None)
        if fix:
            lines.append(f"      fix: {fix}")
    return lines
