"""`assemble`: the one place every Engage reader turns its typed columns into an `EngageExport`.

It builds the profiles and computations frames per the `EngageExport` contract, then runs
`toolkit.engage.validation.check`, so the same shop read from different formats comes out
identical, findings included.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from toolkit.engage import validation
from toolkit.engage.frames import Typed, computations_frame, empty_events
from toolkit.engage.model import IDENTIFIER_COLUMNS, EngageExport, Findings

__all__ = ["assemble", "ID_LIST_COLUMNS"]

ID_LIST_COLUMNS = ("emails", "anonymous_ids")


def assemble(ids: pd.DataFrame, columns: dict[str, Typed], computations: list[dict], *,
             events: pd.DataFrame | None, snapshot_at, source: str, findings: Findings,
             rows: np.ndarray | None = None,
             duplicate_user_ids: bool | Callable[[], bool] | None = None,
             id_list_columns: Callable[[], dict[str, pd.Series]] | None = None) -> EngageExport:
    """Build the `EngageExport` from an identifier frame and typed computation columns, then
    record the validation findings. `rows` maps positions to 1-based source rows;
    `duplicate_user_ids`: whether a user_id repeats (or a callable that tells, e.g. a pending
    result), when the caller already knows. `id_list_columns`: when `ids` has no ``emails`` /
    ``anonymous_ids`` yet, a callable returning them, called on first use of the export's
    `profiles` (`EngageExport._defer`): the validation, the preview and the plan never read
    them, so a load does not pay for building them."""
    ids = ids.reset_index(drop=True)
    lists = () if id_list_columns is not None else ID_LIST_COLUMNS
    data = {c: ids[c] for c in (*IDENTIFIER_COLUMNS, *lists)}
    for key, typed in columns.items():
        values = typed.values.reset_index(drop=True)
        data[key] = values
    profiles = pd.DataFrame(data, copy=False)  # copy-on-write already guards the inputs
    for comp in computations:
        comp.setdefault("value_type", columns[comp["key"]].value_type if comp["key"] in columns
                        else "boolean")
        comp.setdefault("computation_id", None)
        comp.setdefault("name", comp["key"])
    comps = computations_frame(computations)
    export = EngageExport(profiles=profiles, computations=comps,
                          events=events if events is not None else empty_events(),
                          snapshot_at=snapshot_at, source=source, findings=findings)
    validation.check(export, columns, rows=rows, duplicate_user_ids=duplicate_user_ids)
    if id_list_columns is not None:
        order = [*IDENTIFIER_COLUMNS, *ID_LIST_COLUMNS,
                 *(c for c in profiles.columns if c not in IDENTIFIER_COLUMNS)]

        def with_lists(frame: pd.DataFrame) -> pd.DataFrame:
            """The frame with the lists in their place after the identifiers (no copies)."""
            built = id_list_columns()
            ordered = {c: frame[c] for c in IDENTIFIER_COLUMNS}
            ordered.update({c: built[c].set_axis(frame.index) for c in ID_LIST_COLUMNS})
            ordered.update({c: frame[c] for c in frame.columns if c not in IDENTIFIER_COLUMNS})
            return pd.DataFrame(ordered, copy=False)
        export._defer(ID_LIST_COLUMNS, order, with_lists)
    return export
