"""The house rules, checked on the source: imports point down (no cycle, counting imports
inside functions and under TYPE_CHECKING), Ray is imported only under ``distributed/``
and ``cluster/``, ``sweeps/`` plans and ``studies/`` measure without Ray, modules stay readable in one sitting,
private names stay in their module, and every subpackage has a face whose names
resolve without pulling torch or Ray into a process that does not use them."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "optical_ray"
#: Read best whole (their docstrings say why): the Sinkhorn solver, the format table.
LONG_ON_PURPOSE = {"optical_ray.ot", "optical_ray.data.formats"}
MAX_LINES = 600
SUBPACKAGES = [
    "catalog",
    "cli",
    "cluster",
    "config",
    "data",
    "distributed",
    "evaluation",
    "models",
    "report",
    "studies",
    "sweeps",
    "tracking",
    "training",
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[str]:
    """Every module name ``name`` imports, anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out += [module] + [f"{module}.{a.name}" for a in node.names]
    return out


def _target(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for imported in _imports(m, path):
            if imported.startswith("optical_ray"):
                t = _target(imported)
                if t and t != m:
                    graph[m].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle_hidden_inside_a_function() -> None:
    """The check itself: an import inside a function closes a cycle too."""
    graph = {"a": {"b"}, "b": {"c"}, "c": set()}
    assert _cycles(graph) == []
    graph["c"].add("a")
    assert _cycles(graph) == [["a", "b", "c"]]
    src = "def f():\n    from optical_ray.config import Config\n"
    tree_imports = [n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)]
    assert tree_imports == ["optical_ray.config"]


def test_ray_is_imported_only_under_distributed_and_cluster() -> None:
    allowed = ("optical_ray.distributed", "optical_ray.cluster")
    users = sorted(
        m
        for m, path in MODULES.items()
        if not m.startswith(allowed)
        and any(i == "ray" or i.startswith("ray.") for i in _imports(m, path))
    )
    assert users == []


def test_sweeps_plan_without_ray_or_torch() -> None:
    heavy = ("ray", "torch", "transformers")
    users = {
        m: sorted({i for i in _imports(m, path) if i.split(".")[0] in heavy})
        for m, path in MODULES.items()
        if m.startswith("optical_ray.sweeps")
    }
    assert {m: i for m, i in users.items() if i} == {}


def test_studies_plan_and_measure_without_ray_or_torch() -> None:
    heavy = ("ray", "torch", "transformers")
    users = {
        m: sorted({i for i in _imports(m, path) if i.split(".")[0] in heavy})
        for m, path in MODULES.items()
        if m.startswith("optical_ray.studies")
    }
    assert {m: i for m, i in users.items() if i} == {}


def test_modules_stay_readable_in_one_sitting() -> None:
    long = {
        m: n
        for m, path in MODULES.items()
        if m not in LONG_ON_PURPOSE
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_private_names_stay_in_their_module() -> None:
    crossing = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optical_ray"):
                for alias in node.names:
                    name = alias.name
                    # the package's own private modules (_lazy, _moved) serve its faces
                    if (
                        name.startswith("_")
                        and not name.startswith("__")
                        and node.module != "optical_ray"
                    ):
                        crossing.append(f"{m}: {node.module}.{name}")
    assert crossing == []


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_every_subpackage_has_a_face_whose_names_resolve(sub: str) -> None:
    face = importlib.import_module(f"optical_ray.{sub}")
    assert face.__doc__ and face.__all__
    missing = [n for n in face.__all__ if getattr(face, n, None) is None]
    assert missing == []


def test_faces_do_not_import_torch_or_ray_until_used() -> None:
    """The CLI, the driver's planning and the catalog stay light: importing a face (or
    the whole package) loads neither torch nor Ray."""
    faces = ", ".join(f"optical_ray.{s}" for s in SUBPACKAGES)
    code = (
        f"import sys, {faces}\n"
        "print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
