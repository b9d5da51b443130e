"""Engage → Braze analyst toolkit: load Segment Engage exports, preview them as Braze segments,
and push approved audiences to Braze through a planned, delta-only, resumable sync.

The public surface is the names in ``__all__``; they are imported lazily so that
``import toolkit`` stays fast in a notebook kernel.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC: dict[str, str] = {
    # stage 1: load
    "load": "toolkit.engage.readers",
    "EngageExport": "toolkit.engage.model",
    "StoredExport": "toolkit.engage.store",
    "Finding": "toolkit.engage.model",
    "Findings": "toolkit.engage.model",
    # stage 2-3: map and preview
    "Mapping": "toolkit.mapping",
    "Rule": "toolkit.mapping",
    "Preview": "toolkit.preview",
    # audience definitions: parse, evaluate locally, translate to native Braze segments
    "parse_definition": "toolkit.engage.query",
    "load_definitions": "toolkit.engage.definitions",
    "Definitions": "toolkit.engage.definitions",
    "SegmentPublicAPI": "toolkit.engage.definitions",
    "evaluate_definition": "toolkit.engage.evaluate",
    "Evaluation": "toolkit.engage.evaluate",
    "braze_segment_for": "toolkit.native",
    "NativeSegment": "toolkit.native",
    # stage 4-5: plan, approve, apply, verify
    "plan": "toolkit.sync.plan",
    "Plan": "toolkit.sync.plan",
    "Ledger": "toolkit.sync.ledger",
    "apply": "toolkit.sync.apply",
    "SyncReport": "toolkit.sync.apply",
    "verify": "toolkit.sync.verify",
    "VerifyReport": "toolkit.sync.verify",
    "settle": "toolkit.sync.settle",
    "SettleReport": "toolkit.sync.settle",
    "check_segments": "toolkit.segment_check",
    "SegmentCheck": "toolkit.segment_check",
    # Braze side
    "BrazeClient": "toolkit.braze.client",
    "BrazeSandbox": "toolkit.sandbox.server",
    # notebook front
    "GuidedSync": "toolkit.notebook.wizard",
    # errors
    "ToolkitError": "toolkit.errors",
    "ExportFormatError": "toolkit.errors",
    "ExportValidationError": "toolkit.errors",
    "ExportTooLarge": "toolkit.errors",
    "MappingError": "toolkit.errors",
    "DefinitionError": "toolkit.errors",
    "PublicAPIError": "toolkit.errors",
    "FilterError": "toolkit.errors",
    "PlanError": "toolkit.errors",
    "PlanNotApproved": "toolkit.errors",
    "LedgerError": "toolkit.errors",
    "BrazeAPIError": "toolkit.errors",
    "ConfigError": "toolkit.errors",
    "WarehouseError": "toolkit.errors",
    "SegmentCheckError": "toolkit.errors",
}

__all__ = sorted(_PUBLIC)


# public name -> its name in the defining module, where the two differ
_ALIASES = {"parse_definition": "parse"}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
