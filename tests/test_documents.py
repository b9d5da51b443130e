"""`read_document`, the one reader of plan, report and mapping files: every failure is the
caller's error class, naming the file (and line) and how to fix it."""
from __future__ import annotations

import pytest

from toolkit.documents import read_document
from toolkit.errors import PlanError


def _read(path, **options):
    options.setdefault("format", "JSON")
    return read_document(path, error=PlanError, what="plan", missing_hint="make one",
                         damaged_hint="make a new one", **options)


def test_a_good_document_is_parsed(tmp_path):
    (tmp_path / "p.json").write_text('{"a": [1, 2]}')
    (tmp_path / "m.yml").write_text("a:\n  - 1\n")
    assert _read(tmp_path / "p.json") == {"a": [1, 2]}
    assert _read(tmp_path / "m.yml", format="YAML") == {"a": [1]}


@pytest.mark.parametrize("content,format,message,line", [
    (None, "JSON", "plan file not found", None),
    ("dir", "JSON", "found a directory", None),
    (b"\xff\xfe{}", "JSON", "not UTF-8", None),
    ('{\n  "a": 1,\n  oops\n}', "JSON", "not valid JSON", 3),
    ("a: [1,\nb: 2\n", "YAML", "not valid YAML", 3),
    ("[" * 100_000 + "]" * 100_000, "JSON", "nested too deeply", None),
])
def test_every_failure_is_the_callers_error(tmp_path, content, format, message, line):
    path = tmp_path / "doc"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(PlanError, match=message) as info:
        _read(path, format=format)
    assert info.value.file == str(path) and info.value.hint
    assert info.value.line == line


def test_too_deep_is_refused_before_parsing(tmp_path):
    path = tmp_path / "deep.yml"
    path.write_text("a: 1\n")
    with pytest.raises(PlanError, match="nested too deeply"):
        _read(path, format="YAML", too_deep=lambda text: True)
