"""The house rules a newcomer relies on: toolkit's modules import each other without a cycle (a
cycle hidden inside a function counts), and a module imports inside a function only a heavy or
optional dependency, saying why with a ``# lazy:`` comment."""
from __future__ import annotations

import ast
from pathlib import Path

TOOLKIT = Path(__file__).resolve().parent.parent / "toolkit"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(TOOLKIT.rglob("*.py")):
        parts = path.relative_to(TOOLKIT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return "TYPE_CHECKING" in (getattr(test, "id", None), getattr(test, "attr", None))


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(line, imported module, inside a function) for every import outside TYPE_CHECKING."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield child, alias.name, in_function
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package
                    for _ in range(child.level - 1):
                        parent = parent.rpartition(".")[0]
                    base = f"{parent}.{base}" if base else parent
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    yield child, full if full in modules else base, in_function
            yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text(encoding="utf-8")), False)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for _, target, _ in _imports(name, path, modules):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("toolkit"):
                graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_toolkit_has_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_imports_inside_functions_are_lazy_on_purpose_and_say_why():
    modules = _modules()
    unexplained = []
    for name, path in modules.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node, target, in_function in _imports(name, path, modules):
            if not in_function:
                continue
            # the reason sits on the import's line, or above the block of imports it starts
            i = node.lineno - 1
            while i > 0 and lines[i - 1].lstrip().startswith(("import ", "from ")):
                i -= 1
            if "# lazy:" not in lines[node.lineno - 1] and "# lazy:" not in lines[i - 1]:
                unexplained.append(f"{path.relative_to(TOOLKIT.parent)}:{node.lineno} "
                                   f"imports {target}")
    assert not unexplained, ("import at the top of the module, or say why it must wait with a "
                             "'# lazy:' comment:\n" + "\n".join(unexplained))


# stage -> packages it must never import (docs/ARCHITECTURE.md: imports go one way)
_LAYERS = {
    "toolkit.braze": ("toolkit.engage", "toolkit.mapping", "toolkit.preview", "toolkit.sync",
                      "toolkit.notebook", "toolkit.sandbox"),
    "toolkit.engage": ("toolkit.mapping", "toolkit.preview", "toolkit.sync", "toolkit.notebook",
                       "toolkit.sandbox"),
    "toolkit.sandbox": ("toolkit.engage", "toolkit.mapping", "toolkit.preview", "toolkit.sync",
                        "toolkit.notebook"),
    "toolkit.sync": ("toolkit.notebook",),
}


def test_stages_import_one_way():
    wrong = [f"{module} imports {target}" for module, targets in _graph().items()
             for target in targets for layer, banned in _LAYERS.items()
             if module.startswith(layer) and target.startswith(banned)]
    assert not wrong, "\n".join(sorted(wrong))
