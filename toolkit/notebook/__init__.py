"""Notebook front: the guided-sync wizard, HTML views, the sync vocabulary and matplotlib plots.

``from toolkit.notebook import GuidedSync, plots``; names load lazily so importing the toolkit
does not pull in ipywidgets or matplotlib until they are used.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["GuidedSync", "GuidedSyncState", "SyncProgress", "STEP_DEFINITIONS", "bundled_samples",
           "findings_table", "readable", "totals_frame", "TERMS", "plots", "views", "terms"]

_WHERE = {"GuidedSync": "wizard", "GuidedSyncState": "wizard", "STEP_DEFINITIONS": "wizard",
          "bundled_samples": "wizard", "SyncProgress": "progress",
          "findings_table": "views", "readable": "views", "totals_frame": "terms", "TERMS": "terms"}
_MODULES = {"plots", "views", "terms"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"toolkit.notebook.{name}")
    if name in _WHERE:
        return getattr(importlib.import_module(f"toolkit.notebook.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'toolkit.notebook' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
