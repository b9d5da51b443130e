"""`python -m toolkit plan|approve|apply|verify|settle|demo`: the sync steps for scheduled runs.

    python -m toolkit plan EXPORT --mapping M.yml --endpoint US-03 --out plan.json
    python -m toolkit approve plan.json --by "Ana" --expires 24h
    python -m toolkit apply plan.json --endpoint US-03 --report report.json
    python -m toolkit verify report.json --endpoint US-03
    python -m toolkit settle --endpoint US-03          # only when apply or plan exits 3
    python -m toolkit demo

API keys come from the environment or ``.env`` (``BRAZE_API_KEY``, ``BRAZE_PARTNER_API_KEY``,
``BRAZE_DATA_IMPORT_KEY``), never from a flag, and are never printed; so does a team's shared
ledger (``BRAZE_LEDGER_URL``, or ``--ledger postgresql://…``), shown only with its password
hidden; the workspace name from
``BRAZE_WORKSPACE`` or ``--workspace`` (the ledger belongs to the instance and that name, not to
the key). ``--sandbox [URL]`` targets a sandbox started with ``python -m toolkit sandbox`` (URL
and key from ``SANDBOX_URL`` / ``SANDBOX_API_KEY``; workspace name "sandbox"). Exit codes: 0
success, 1 partial rejects, 2 refused or failed, 3 event batches with an unknown outcome await
``settle``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from toolkit.braze.limits import LIMITS
from toolkit.errors import ConfigError

__all__ = ["plan_command", "approve_command", "apply_command", "verify_command", "settle_command",
           "demo_command", "EXIT_SETTLE", "target_arguments", "client_from_args",
           "ledger_setting"]

EXIT_SETTLE = 3     # event batches with an unknown outcome await `python -m toolkit settle`


def _out(text: str = "") -> None:
    print(text, flush=True)


# -- shared options ------------------------------------------------------------------------
def target_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--endpoint", default=None,
                       help="Braze instance (US-03, EU-01, …) or REST URL; default "
                            "$BRAZE_REST_ENDPOINT. The key comes from $BRAZE_API_KEY or .env")
    group.add_argument("--sandbox", nargs="?", const="", default=None, metavar="URL",
                       help="a local sandbox (`python -m toolkit sandbox`); URL default "
                            "$SANDBOX_URL, key from $SANDBOX_API_KEY")
    parser.add_argument("--workspace", default=None, metavar="NAME",
                        help="the Braze workspace's name (default $BRAZE_WORKSPACE; 'sandbox' "
                             "with --sandbox); the ledger belongs to it, not to the API key")
    parser.add_argument("--env-file", default=".env", help="file of KEY=VALUE settings")
    parser.add_argument("--ledger", default=None, metavar="FILE|URL",
                        help="the sync ledger: a file (default .toolkit/ledger-<workspace>.sqlite)"
                             " or a team's shared ledger on PostgreSQL, postgresql://USER@HOST:"
                             "5432/DB (schema braze_sync; ?schema=NAME for another). Default "
                             "$BRAZE_LEDGER_URL, from the environment or the env file; keep the "
                             "password there (or in PGPASSWORD / ~/.pgpass), not on the command "
                             "line. Shown with its password hidden")


LEDGER_URL = "BRAZE_LEDGER_URL"   # a team's shared ledger; like a key, it may carry a password


def _check_ledger_url(value: str, where: str) -> None:
    """Refuse a ledger setting that is neither a file path nor a ``postgresql://`` URL (another
    scheme would otherwise be taken for a file name)."""
    from toolkit.sync.journal import is_ledger_url  # lazy: the ledger loads with its command

    scheme = value.split("://", 1)[0] if "://" in value else None
    if scheme is not None and not is_ledger_url(value):
        raise ConfigError(f"{where} must be a ledger file or a postgresql:// URL, not a "
                          f"{scheme}:// URL", field=where,
                          hint="write it as postgresql://user:password@host:5432/database "
                               "(?schema=NAME for a schema other than braze_sync), or give a "
                               "file path such as .toolkit/ledger.sqlite")
    if where == LEDGER_URL and not is_ledger_url(value):
        raise ConfigError(f"{LEDGER_URL} must be a postgresql:// URL", field=LEDGER_URL,
                          hint="write it as postgresql://user:password@host:5432/database; for "
                               "a ledger file use --ledger FILE instead")


@contextmanager
def ledger_setting(args: argparse.Namespace):
    """While a command runs: ``BRAZE_LEDGER_URL`` from the env file when the environment has
    none, so a ``.env`` line works exactly like the variable (the default ledger of every step,
    and the password of a saved plan's shared ledger). The URL is never printed: outputs show
    the ledger's ``location``, password hidden."""
    if getattr(args, "ledger", None):
        _check_ledger_url(args.ledger, "--ledger")
    env_file = getattr(args, "env_file", None)
    added = False
    if not os.environ.get(LEDGER_URL) and env_file:
        from toolkit.secrets import read_env_file  # lazy: only commands that use a ledger

        found = read_env_file(env_file).get(LEDGER_URL)
        if found:
            os.environ[LEDGER_URL] = found
            added = True
    try:
        if os.environ.get(LEDGER_URL):
            _check_ledger_url(os.environ[LEDGER_URL], LEDGER_URL)
        yield
    finally:
        if added:
            os.environ.pop(LEDGER_URL, None)


def client_from_args(args: argparse.Namespace, *, workers: int = 4):
    # lazy: a stage loads when its command runs, not when the CLI builds its parser
    from toolkit.braze.client import SANDBOX_WORKSPACE, BrazeClient

    if args.sandbox is not None:
        url = args.sandbox or os.environ.get("SANDBOX_URL")
        if not url:
            raise ConfigError("no sandbox URL", field="--sandbox",
                              hint="pass --sandbox http://127.0.0.1:PORT or set SANDBOX_URL")
        key = os.environ.get("SANDBOX_API_KEY") or None
        return BrazeClient(url, key, env_file=args.env_file, interactive=False,
                           max_workers=workers, workspace=args.workspace or SANDBOX_WORKSPACE)
    return BrazeClient(args.endpoint, env_file=args.env_file, interactive=False,
                       max_workers=workers, workspace=args.workspace)


def _partner_keys(args: argparse.Namespace) -> dict:
    """Partner cohort keys of a command-line sandbox (its SANDBOX_* variables); for Braze they
    come from BRAZE_PARTNER_API_KEY / BRAZE_DATA_IMPORT_KEY, read where they are used."""
    if args.sandbox is None:
        return {}
    return {"partner_api_key": os.environ.get("SANDBOX_PARTNER_API_KEY") or None,
            "client_secret": os.environ.get("SANDBOX_CLIENT_SECRET") or None}


def _print_plan(p) -> None:
    c = p.cost()
    _out(f"Plan {p.id} for {p.workspace} (ledger version {p.ledger_version})")
    if p.ledger_path:
        _out(f"  ledger: {p.ledger_path}")
    if p.diff_site and "://" in (p.ledger_path or ""):
        _out(f"  {p.diff_site}")
    if p.is_empty:
        headline = p.headline()
        _out("  " + headline[:1].lower() + headline[1:])
    else:
        for row in p.summary().itertuples(index=False):
            _out(f"  {row.rule:<28} {row.op:<9} {row.change:<7} {row.name:<28} "
                 f"{row.operations:>9,}")
    _out(f"  {c['operations']:,} operations for {c['users']:,} users · {c['requests']:,} requests "
         f"· {c['data_points']:,} data points · about {c['estimated_seconds']:.1f}s")
    for f in p.findings:
        _out(f"  {f}")
    waiting = p.awaiting_settle
    if waiting["batches"]:
        _out(f"  AWAITING SETTLE: {waiting['events']:,} event(s) in {waiting['batches']:,} batch(es) "
             "have an unknown outcome; run `python -m toolkit settle` (same target options), "
             f"then plan again (exit code {EXIT_SETTLE})")


def _print_report(r) -> None:
    s = r.summary()
    _out(f"Sync {r.plan_id}: {s['status']} — {s['acknowledged']:,} acknowledged, "
         f"{s['rejected']:,} rejected, {s['skipped']:,} skipped, {s['uncertain']:,} uncertain, "
         f"{s['failed']:,} failed")
    _out(f"  {s['requests']:,} requests, {s['retries']:,} retries, {s['429s']:,} 429s, "
         f"{s['data_points']:,} data points in {s['elapsed_s']:.2f}s")
    for row in r.rejected[:10]:
        _out(f"  rejected {row['braze_user']} ({row['fields']}): {row['reason']}")
    for row in r.uncertain:
        _out(f"  UNCERTAIN {r.plan_id}/{row['batch']} ({row['objects']} events, {row['users']}): "
             f"{row['reason']}")
    if r.error:
        _out(f"  stopped: {r.error}")
    for note in r.notes:
        _out(f"  note: {note}")
    if r.exit_code == EXIT_SETTLE:
        _out(f"  AWAITING SETTLE: run `python -m toolkit settle` (same target options); it reads "
             f"those users back from Braze and decides each batch (exit code {EXIT_SETTLE})")


def _print_verify(v) -> None:
    _out(repr(v))
    for row in v.mismatches.head(10).itertuples(index=False):
        _out(f"  {row.braze_user} {row.kind} {row.name}: expected {row.expected}, "
             f"Braze has {row.actual}")


# -- plan ----------------------------------------------------------------------------------
def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export", help="Engage export file or folder")
    parser.add_argument("--kind", default=None, help="export kind (default: detected)")
    parser.add_argument("--mapping", default=None,
                        help="mapping YAML (default: every computation as an attribute)")
    parser.add_argument("--out", default="plan.json", help="where to write the plan")
    parser.add_argument("--create-users", action="store_true",
                        help="create users Braze does not know (default: update existing only)")
    parser.add_argument("--alias-label", default=None,
                        help="address profiles without user_id by alias {segment_id, LABEL}")
    parser.add_argument("--email-opt-in", action="store_true",
                        help="address profiles without user_id by email")
    parser.add_argument("--batch-size", type=int, default=LIMITS.objects_per_array,
                        help=f"objects per array (≤{LIMITS.objects_per_array})")
    parser.add_argument("--combined-limit", type=int, default=None,
                        help="objects per request across arrays (50 on MAU contracts)")
    parser.add_argument("--diff-at", choices=("auto", "local", "server"), default="auto",
                        help="with a ledger on PostgreSQL: where the diff runs (default auto: "
                             "the smaller side moves; the plan says which and why)")
    target_arguments(parser)


def _run_plan(args: argparse.Namespace) -> int:
    # lazy: a stage loads when its command runs, not when the CLI builds its parser
    from toolkit.engage.readers import load
    from toolkit.mapping import Mapping
    from toolkit.sync.plan import plan as make_plan

    export = load(args.export, kind=args.kind)
    mapping = Mapping.load(args.mapping) if args.mapping else Mapping.from_export(export)
    client = client_from_args(args)
    p = make_plan(export, mapping, args.ledger, workspace=client, create_users=args.create_users,
                  alias_label=args.alias_label, email_opt_in=args.email_opt_in,
                  batch_size=args.batch_size, combined_limit=args.combined_limit,
                  rate_limit=client.rate_limit_for("/users/track") or (3000, 3.0),
                  diff_at=args.diff_at, **_partner_keys(args))
    p.save(args.out)
    _print_plan(p)
    _out(f"written to {args.out}; approve it with: python -m toolkit approve {args.out} --by NAME")
    return EXIT_SETTLE if p.awaiting_settle["batches"] else 0


# -- approve -------------------------------------------------------------------------------
def _approve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", help="plan file written by `plan`")
    parser.add_argument("--by", required=True, help="who approves")
    parser.add_argument("--expires", default="24h", help="approval lifetime: 30m, 24h, 7d …")
    parser.add_argument("--out", default=None, help="write the approved plan here (default: "
                                                    "in place)")


def _run_approve(args: argparse.Namespace) -> int:
    # lazy: a stage loads when its command runs, not when the CLI builds its parser
    from toolkit.sync.plan import Plan

    p = Plan.load(args.plan).approve(by=args.by, expires_in=args.expires)
    p.save(args.out or args.plan)
    _print_plan(p)
    _out(f"approved by {p.approval['by']} until {p.approval['expires_at']} "
         f"(fingerprint {p.fingerprint[:16]}…)")
    return 0


# -- apply ---------------------------------------------------------------------------------
def _apply_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", help="approved plan file")
    target_arguments(parser)
    parser.add_argument("--report", default=None,
                        help="write the sync report (JSON) here (default: <plan>.report.json "
                             "next to the plan)")
    parser.add_argument("--resend-uncertain-events", action="store_true",
                        help="resend event batches whose outcome is unknown (may double-count)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent requests")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_apply(args: argparse.Namespace) -> int:
    # lazy: a stage loads when its command runs, not when the CLI builds its parser
    from toolkit.sync.apply import apply as run_apply

    client = client_from_args(args, workers=args.workers)
    report = run_apply(args.plan, client, args.ledger,
                       resend_uncertain_events=args.resend_uncertain_events,
                       progress=not args.no_progress, **_partner_keys(args))
    path = report.save(args.report or default_report_path(args.plan))
    _print_report(report)
    _out(f"report written to {path}; read a sample back with: python -m toolkit verify {path}")
    return report.exit_code


def default_report_path(plan_path: str) -> Path:
    """``<plan stem>.report.json`` beside the plan file (plan.json → plan.report.json)."""
    path = Path(plan_path)
    stem = path.name[:-5] if path.name.endswith(".json") else path.name
    return path.with_name(stem + ".report.json")


# -- verify --------------------------------------------------------------------------------
def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", help="sync report file written by `apply` (plan.report.json by default)")
    target_arguments(parser)
    parser.add_argument("--sample", type=int, default=50, help="users to read back")
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait first")


def _run_verify(args: argparse.Namespace) -> int:
    # lazy: a stage loads when its command runs, not when the CLI builds its parser
    from toolkit.sync.verify import verify as run_verify

    v = run_verify(args.report, client_from_args(args), sample=args.sample, wait=args.wait)
    _print_verify(v)
    return 0 if v.ok else 1


# -- settle --------------------------------------------------------------------------------
def _settle_arguments(parser: argparse.ArgumentParser) -> None:
    target_arguments(parser)
    parser.add_argument("--landed", action="append", default=[], metavar="BATCH",
                        help="settle by hand: this batch's events are in Braze (PLAN/BATCH as "
                             "settle prints it, or a batch name when unique; repeatable)")
    parser.add_argument("--not-landed", action="append", default=[], metavar="BATCH",
                        help="settle by hand: this batch's events are not in Braze (the next "
                             "plan sends them; repeatable)")
    parser.add_argument("--wait", default="5m",
                        help="Braze's read-after-write delay: 'did not land' is decided only "
                             "this long after the batch was sent (default 5m)")


def _run_settle(args: argparse.Namespace) -> int:
    # lazy: a stage loads when its command runs, not when the CLI builds its parser
    from toolkit.sync.settle import parse_wait, settle as run_settle

    wait = parse_wait(args.wait)
    client = client_from_args(args)
    try:
        report = run_settle(args.ledger, client, wait=wait, landed=args.landed,
                            not_landed=args.not_landed)
    finally:
        client.close()
    for line in report.lines():
        _out(line)
    if report.undecided:
        _out(f"{len(report.undecided):,} batch(es) still await a decision (exit code "
             f"{EXIT_SETTLE}); their events are held back from every plan until settled")
    elif report.decisions:
        _out("Every batch is settled: plan again to send what did not land.")
    return report.exit_code


# -- demo ----------------------------------------------------------------------------------
def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export", default=None,
                        help="export to sync (default: the bundled sample shop)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def sample_export_path() -> Path:
    """The bundled sample export the demo syncs (every audience and trait of the sample shop)."""
    root = Path(__file__).resolve().parents[2] / "data" / "samples"
    for candidate in ("profiles_sync", "all_shoppers.csv", "audience_csv"):
        if (root / candidate).exists():
            return root / candidate
    raise ConfigError("the bundled sample exports are missing", file=str(root),
                      hint="run `python data/samples/generate.py`")


def _run_demo(args: argparse.Namespace) -> int:
    # lazy: a stage loads when its command runs, not when the CLI builds its parser
    from toolkit.braze.client import BrazeClient
    from toolkit.engage.readers import load
    from toolkit.mapping import Mapping
    from toolkit.sandbox.server import BrazeSandbox
    from toolkit.sync.apply import apply as run_apply
    from toolkit.sync.ledger import Ledger
    from toolkit.sync.plan import plan as make_plan
    from toolkit.sync.verify import verify as run_verify

    path = Path(args.export) if args.export else sample_export_path()
    export = load(path)
    _out(f"1. Loaded {export!r}")
    mapping = Mapping.from_export(export)
    if export.audiences:
        # One audience also as Audience Entered/Exited events, to show events are sent once.
        mapping = mapping.set(export.audiences[-1], send_as="both")
    with BrazeSandbox() as sb, tempfile.TemporaryDirectory(prefix="toolkit-demo-") as tmp:
        client = BrazeClient.for_sandbox(sb)
        _out(f"2. Started a Braze sandbox at {sb.url}; client {client!r}")
        with Ledger(client, directory=tmp) as ledger:
            p = make_plan(export, mapping, ledger, workspace=client, create_users=True)
            _out("3. Planned the first sync:")
            _print_plan(p)
            p.approve(by="demo", expires_in="1h")
            _out(f"4. Approved by demo (fingerprint {p.fingerprint[:16]}…)")
            report = run_apply(p, client, ledger, progress=not args.no_progress)
            _out("5. Applied:")
            _print_report(report)
            _out(f"   sandbox now holds {len(sb.profiles()):,} users, {len(sb.events()):,} events,"
                 f" {sb.data_points:,} data points")
            check = run_verify(report, client, sample=50)
            _out("6. Verified a sample read back from Braze:")
            _print_verify(check)
            again = make_plan(export, mapping, ledger, workspace=client, create_users=True)
            _out("7. Planned again from the same export (nothing changed, so nothing to send):")
            _print_plan(again)
        client.close()
    ok = report.exit_code == 0 and check.ok and again.is_empty
    _out("Demo " + ("finished: every step as expected." if ok else "found problems (see above)."))
    return 0 if ok else 2


def _command(add, run, doc):
    """A command for `toolkit.cli`: its ``add_arguments(parser)`` and ``run(args)``; named
    ``<verb>_command`` so it is never mistaken for the function it runs (`toolkit.plan` …)."""
    return SimpleNamespace(add_arguments=add, run=run, __doc__=doc)


def _with_ledger(run):
    """``run`` inside `ledger_setting`: the commands that open a ledger."""
    def wrapped(args: argparse.Namespace) -> int:
        with ledger_setting(args):
            return run(args)
    wrapped.__doc__ = run.__doc__
    return wrapped


plan_command = _command(_plan_arguments, _with_ledger(_run_plan),
                        "plan a sync of an export with a mapping")
approve_command = _command(_approve_arguments, _run_approve, "approve a saved plan")
apply_command = _command(_apply_arguments, _with_ledger(_run_apply),
                         "apply an approved plan to Braze")
verify_command = _command(_verify_arguments, _run_verify, "read back a sample of a sync report")
settle_command = _command(_settle_arguments, _with_ledger(_run_settle),
                  "decide event batches whose outcome is unknown, from Braze's read-back")
demo_command = _command(_demo_arguments, _run_demo, "the whole flow on the bundled sample")
