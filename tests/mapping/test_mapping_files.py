"""Mapping files that cannot be read: a clear `MappingError` naming the file, never a raw
Python error, and exit code 2 from the command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.errors import MappingError
from toolkit.mapping import Mapping

ROOT = Path(__file__).resolve().parents[2]
GOOD_CSV = ("key,user_id,vip_customer\nuse_1,u1,true\nuse_2,u2,false\n")

DEEP = {
    "json_list_100k_deep": '{"version": 1, "rules": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "json_object_5k_deep": '{"version": 1, "rules": ' + '{"a": ' * 5_000 + "1" + "}" * 5_000
                           + "}",
    "yaml_block_list_3k_deep": "rules:\n" + "".join("  " * i + "-\n" for i in range(3_000)),
    "yaml_flow_mapping_5k_deep": "version: 1\nrules: " + "{a: " * 5_000 + "1" + "}" * 5_000
                                 + "\n",
}


@pytest.mark.parametrize("text", DEEP.values(), ids=DEEP.keys())
def test_deeply_nested_mapping_is_a_mapping_error_naming_the_file(tmp_path, text):
    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(MappingError) as info:
        Mapping.load(path)
    err = info.value
    assert err.file == str(path)
    assert "nested" in err.message and "deep" in err.message
    assert err.hint and "mapping.save" in err.hint
    assert "Traceback" not in str(err) and "RecursionError" not in str(err)


def test_mapping_nested_a_little_is_still_checked_field_by_field(tmp_path):
    """Nesting Python can follow is not "too deep": the usual field checks answer."""
    path = tmp_path / "m.yml"
    path.write_text("version: 1\nrules:\n  - key: vip\n    kind: audience\n    attribute: "
                    + "[" * 50 + "]" * 50 + "\n")
    with pytest.raises(MappingError, match="must be text") as info:
        Mapping.load(path)
    assert info.value.file == str(path) and info.value.field == "attribute"


def test_cli_plan_with_a_deeply_nested_mapping_exits_2_without_a_traceback(tmp_path):
    export = tmp_path / "vip_customer.csv"
    export.write_text(GOOD_CSV)
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP["json_list_100k_deep"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAZE_", "SANDBOX_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-m", "toolkit", "plan", str(export), "--mapping",
                          str(deep), "--endpoint", "US-03", "--env-file", str(tmp_path / "none"),
                          "--out", str(tmp_path / "plan.json")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr and "RecursionError" not in out.stderr
    assert str(deep) in out.stderr and "nested" in out.stderr
    assert not (tmp_path / "plan.json").exists()
