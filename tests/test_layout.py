"""The package's shape: rooms stay small, the import graph has no cycles, and the layers point one way.

These read the source (no import side effects) so that a move or a new module is checked the moment it lands.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mcp_gateway"
MAX_MODULE_LINES = 400
MAX_CALL_PATH_FUNCTION_LINES = 60
# The modules a tools/call passes through, from the transport's handler to the backend and back.
CALL_PATH = (
    "transports/handlers.py",
    "gateway.py",
    "call.py",
    "limits.py",
    "ratelimit.py",
    "dlp/",
    "backends/",
    "audit/log.py",
    "store/chain.py",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str) -> Iterator[str]:
    """The package modules ``name`` imports at run time (lazy imports included; TYPE_CHECKING ones not)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    typing_only = _type_checking_lines(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in typing_only:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mcp_gateway"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in MODULES else node.module


GRAPH = {name: set(_imports(name)) - {name} for name in MODULES}


def test_the_graph_sees_the_whole_package() -> None:
    # A guard on the guard: if parsing found nothing, every test below would pass vacuously.
    assert len(MODULES) >= 40
    assert "mcp_gateway.gateway" in GRAPH["mcp_gateway.server"]
    assert "mcp_gateway.backends" in GRAPH["mcp_gateway.gateway"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_stays_under_the_line_budget(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines: split it along a seam"


def _call_path_files() -> list[str]:
    files: list[str] = []
    for entry in CALL_PATH:  # a folder stands for every module in it
        paths = sorted((PACKAGE / entry).glob("*.py")) if entry.endswith("/") else [PACKAGE / entry]
        files += [str(path.relative_to(PACKAGE)) for path in paths]
    return files


@pytest.mark.parametrize("relative", _call_path_files())
def test_call_path_functions_stay_short(relative: str) -> None:
    tree = ast.parse((PACKAGE / relative).read_text(encoding="utf-8"))
    long = [
        f"{node.name} ({(node.end_lineno or node.lineno) - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_CALL_PATH_FUNCTION_LINES
    ]
    assert not long, f"{relative}: {long}"


def test_import_graph_has_no_cycles() -> None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = [*visiting[visiting.index(name) :], name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        visiting.append(name)
        for target in sorted(GRAPH[name]):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)


def _importers_of(prefix: str) -> set[str]:
    return {name for name, targets in GRAPH.items() if any(t == prefix or t.startswith(prefix + ".") for t in targets)}


def _inside(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_transports_are_imported_only_from_above_the_core() -> None:
    outside = {name for name in _importers_of("mcp_gateway.transports") if not _inside(name, *_ABOVE_CORE)}
    assert not outside


def test_the_cli_is_imported_by_nothing_but_itself() -> None:
    outside = {name for name in _importers_of("mcp_gateway.cli") if not _inside(name, "mcp_gateway.cli")}
    assert outside <= {"mcp_gateway.__main__"}


def test_wiring_is_imported_only_from_above_it() -> None:
    assert _importers_of("mcp_gateway.server") <= {name for name in MODULES if _inside(name, "mcp_gateway.cli")}


_ABOVE_CORE = ("mcp_gateway.transports", "mcp_gateway.cli", "mcp_gateway.server", "mcp_gateway.__main__")
# The bottom of the package: storage knows nothing of policy, identity, backends or the core.
_STORE_MAY_IMPORT = ("mcp_gateway.store", "mcp_gateway.errors", "mcp_gateway.canonical", "mcp_gateway.config")


def test_the_store_sits_at_the_bottom() -> None:
    for name in (name for name in MODULES if _inside(name, "mcp_gateway.store")):
        above = {target for target in GRAPH[name] if not _inside(target, *_STORE_MAY_IMPORT)}
        assert not above, f"{name} imports {sorted(above)}"


def test_the_core_imports_no_transport_wiring_or_cli() -> None:
    core = [name for name in MODULES if not _inside(name, *_ABOVE_CORE)]
    for name in core:
        upward = {target for target in GRAPH[name] if _inside(target, *_ABOVE_CORE)}
        assert not upward, f"{name} imports {sorted(upward)}"


def _blocking_sleeps(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for function in ast.walk(tree):
        if not isinstance(function, ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and func.attr == "sleep" and isinstance(func.value, ast.Name):
                if func.value.id == "time":
                    yield f"{path.name}:{node.lineno} in {function.name}"


def test_no_async_test_blocks_its_event_loop_with_time_sleep() -> None:
    # Wait on a condition with an anyio deadline instead: a blocking sleep stalls every task on the loop.
    found = [hit for path in sorted(Path(__file__).parent.glob("*.py")) for hit in _blocking_sleeps(path)]
    assert not found


def test_tests_import_no_private_gateway_names() -> None:
    private = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mcp_gateway"):
                private += [f"{path.name}: {alias.name}" for alias in node.names if alias.name.startswith("_")]
    assert not private
