"""The data engine's own helpers: progress reported from DuckDB's estimate while a statement runs."""
from __future__ import annotations

import io

from tqdm import tqdm

from toolkit import engine


class _Seen(tqdm):
    """A bar that remembers every position it was moved to."""

    def __init__(self, *args, **kwargs):
        self.positions: list[float] = []
        super().__init__(*args, **kwargs)

    def update(self, n=1):
        out = super().update(n)
        self.positions.append(self.n)
        return out


def test_reporting_moves_the_bar_through_its_share_while_a_statement_runs():
    with engine.connect() as db:
        bar = _Seen(total=100, file=io.StringIO(), mininterval=0)
        bar.update(10)
        with engine.reporting(db, bar, 60, every=0.02):
            # long enough (a second or so on two cores) for several estimates
            db.execute("CREATE TABLE t AS SELECT i % 999983 AS g, count(*) AS n "
                       "FROM range(40000000) r(i) GROUP BY 1")
        assert bar.n == 70                       # the end of its share, exactly
        during = bar.positions[1:-1]
        assert all(10 <= p <= 70 for p in during) and any(10 < p < 70 for p in during)
        assert during == sorted(during)                        # never backwards
        # progress is watched only while reporting: the setting is off again
        assert db.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0] is False
        quiet = _Seen(total=100, disable=True)
        with engine.reporting(db, quiet, 50):
            db.execute("SELECT 1")
        assert quiet.n == 0 and quiet.positions == []
