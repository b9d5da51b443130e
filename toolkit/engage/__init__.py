"""Segment side: readers for every Engage export shape, the EngageExport model, validation."""

# EngageExport.with_history's reader registers itself on import (see toolkit.engage.model.HISTORY)
from toolkit.engage import evaluate as _evaluate  # noqa: E402,F401
