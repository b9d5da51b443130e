"""Every notebook under notebooks/ is listed in README's table of notebooks, and nothing else."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_lists_every_notebook():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## The notebooks", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(\d\d_\w+)` \|", table, flags=re.MULTILINE)
    on_disk = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert listed == on_disk
