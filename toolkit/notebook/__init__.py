"""Notebook front: the guided-sync wizard, HTML displays and matplotlib plots.

``from toolkit.notebook import GuidedSync, plots``; names load lazily so importing the toolkit
does not pull in ipywidgets or matplotlib until they are used.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["GuidedSync", "GuidedSyncState", "SyncProgress", "bundled_samples", "plots"]

_WIZARD = {"GuidedSync", "GuidedSyncState", "SyncProgress", "bundled_samples"}


def __getattr__(name: str) -> Any:
    if name == "plots":
        return importlib.import_module("toolkit.notebook.plots")
    if name in _WIZARD:
        return getattr(importlib.import_module("toolkit.notebook.wizard"), name)
    raise AttributeError(f"module 'toolkit.notebook' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
