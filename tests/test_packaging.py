"""Packaging rules: environment.yml and pyproject agree; every public name is documented."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

import toolkit

ROOT = Path(__file__).resolve().parent.parent


def _names(requirements):
    return {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"]) | _names(project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = _names(d for d in env["dependencies"] if isinstance(d, str)) - {"python", "pip"}
    assert conda == wanted
    pip_part = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert pip_part and "-e ." in pip_part[0]["pip"], "environment.yml must pip-install the package"


def test_every_public_name_resolves_and_is_documented():
    missing = []
    for name in toolkit.__all__:
        obj = getattr(toolkit, name)
        if not (getattr(obj, "__doc__", None) or "").strip():
            missing.append(name)
    assert not missing, f"public names without a docstring: {missing}"


def test_every_module_says_what_it_is_for():
    for path in sorted((ROOT / "toolkit").rglob("*.py")):
        text = path.read_text()
        assert text.lstrip().startswith(('"""', "'''", "#")), f"{path} has no first-line docstring"


def test_cli_lists_every_command():
    from toolkit.cli import COMMANDS, build_parser

    help_text = build_parser().format_help()
    for name in COMMANDS:
        assert name in help_text
