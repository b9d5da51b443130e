"""Command line for scheduled runs and the demo: `python -m toolkit COMMAND …`.

Each command lives next to the code it drives and exposes ``add_arguments(parser)`` and
``run(args) -> int``; this module only routes. Exit codes: 0 success, 1 partial rejects,
2 refused or failed, 3 event batches with an unknown outcome await `settle`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from toolkit.errors import ToolkitError

# command -> ("module" or "module:object" holding add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("toolkit.engage.inspect", "print an Engage export's summary and findings"),
    "sandbox": ("toolkit.sandbox.cli", "run the local Braze-compatible sandbox server"),
    "plan": ("toolkit.sync.cli:plan", "plan a sync of an export with a mapping"),
    "approve": ("toolkit.sync.cli:approve", "approve a saved plan"),
    "apply": ("toolkit.sync.cli:apply", "apply an approved plan to Braze"),
    "verify": ("toolkit.sync.cli:verify", "read back a sample of a sync report from Braze"),
    "settle": ("toolkit.sync.cli:settle",
               "decide event batches whose outcome is unknown, from Braze's read-back"),
    "segments": ("toolkit.segment_check:command",
                 "check the Braze segments analysts built against the computations they mirror"),
    "demo": ("toolkit.sync.cli:demo", "the whole flow on the bundled sample against the sandbox"),
}


def _command_module(spec: str):
    """Resolve "package.module" or "package.module:object" to what holds add_arguments/run."""
    module, _, attr = spec.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attr) if attr else loaded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m toolkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (spec, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_spec=spec)
        try:
            _command_module(spec).add_arguments(p)
        except (ImportError, AttributeError):
            p.set_defaults(_unavailable=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_unavailable", False):
        print(f"error: command {args.command!r} is not available in this build", file=sys.stderr)
        return 2
    try:
        return int(_command_module(args._spec).run(args) or 0)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 2
