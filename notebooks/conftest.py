"""nbval rules for the notebooks: a notebook that needs a service this machine cannot start is
skipped, saying what is missing and how to install it (as the PostgreSQL tests do), instead of
failing cell by cell."""
from __future__ import annotations

import pytest

from toolkit.sandbox.postgres import LocalPostgres

# notebook file name -> a function returning why it cannot run here (None: it can)
NEEDS = {
    "05_team_sync.ipynb": lambda: LocalPostgres().unavailable(),
}


def pytest_collection_modifyitems(config, items):
    reasons: dict[str, str | None] = {}
    for item in items:
        name = item.path.name
        if name not in NEEDS:
            continue
        if name not in reasons:
            reasons[name] = NEEDS[name]()
        if reasons[name]:
            item.add_marker(pytest.mark.skip(reason=f"{name} needs PostgreSQL: {reasons[name]}"))
