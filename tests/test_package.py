"""The package as a whole: no import circle, and ``kadam.stability`` is a real module (issue 11)."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import kadam

SOURCE = Path(kadam.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the kadam modules it imports anywhere in its body (functions included, since an import
    at call time closes a circle as surely as one at import time). ``from p import name`` counts as an
    import of the module ``p.name`` when that is a module, else of ``p``."""
    modules = {_module_name(path): path for path in SOURCE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    imported.add(submodule if submodule in modules else base)
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a list of modules (first = last), or None."""
    colour: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if colour.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in colour and (cycle := visit(target)):
                return cycle
        path.pop()
        colour[node] = 2
        return None

    for start in sorted(graph):
        if start not in colour and (cycle := visit(start)):
            return cycle
    return None


def test_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "kadam.optimizer.kadam" in graph["kadam.optimizer"]
    assert "kadam.stability" in graph["kadam.optimizer.levels"]


def test_no_import_circle_in_kadam():
    assert find_cycle(import_graph()) is None


def test_stability_is_a_real_module():
    from kadam.stability import update_bound  # noqa: PLC0415

    assert kadam.stability.__name__ == "kadam.stability"
    assert pickle.loads(pickle.dumps(update_bound)) is update_bound
    script = "import kadam.stability, sys; from kadam.stability import update_bound; print(update_bound(0.9, 0.999))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(result.stdout) == update_bound(0.9, 0.999)
    subprocess.run([sys.executable, "-m", "kadam.stability"], capture_output=True, text=True, check=True)
