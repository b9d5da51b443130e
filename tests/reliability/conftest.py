"""Makes the shared campaign machinery (`reliability_harness`) importable by name, whether
pytest imports this folder as a package or as loose modules; bench/bench_faults.py does the same."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
