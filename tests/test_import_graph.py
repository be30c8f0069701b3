"""The package's import graph has one direction: no module of ``tus/`` or ``storage/`` imports, even
indirectly, one that imports it back. The graph is read from the source with ``ast``, so every import
counts: those under ``if TYPE_CHECKING:`` and those inside functions too, because a circle a type
checker or a late import hides is still a circle a reader has to untangle."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import upload_service

PACKAGE = "upload_service"
ROOT = Path(upload_service.__file__).parent


def module_names() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported(module: str, source: str, modules: Iterable[str], *, package: bool) -> Iterator[str]:
    """The modules of the package that ``module`` (whose text is ``source``; ``package``: an
    ``__init__``) imports, in any scope."""
    modules = set(modules)
    here = module if package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from owner(alias.name, modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            yield from owner(source, modules)
            for alias in node.names:
                # `from pkg import module` imports the submodule itself
                if f"{source}.{alias.name}" in modules:
                    yield f"{source}.{alias.name}"


def owner(name: str, modules: set[str]) -> Iterator[str]:
    """The package module ``name`` denotes, or the nearest package of it that exists."""
    parts = name.split(".")
    while parts and parts[0] == PACKAGE:
        candidate = ".".join(parts)
        if candidate in modules:
            yield candidate
            return
        parts.pop()


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        source = path.read_text(encoding="utf-8")
        targets = imported(module, source, modules, package=path.name == "__init__.py")
        graph[module] = {target for target in targets if target != module}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively; only components of two or more modules are returned."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def a_cycle(graph: dict[str, set[str]], component: Iterable[str]) -> list[str]:
    """One circle through the component's first module, by breadth-first search inside it."""
    members = set(component)
    start = min(members)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for successor in sorted(graph[node] & members):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if successor not in previous:
                    previous[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"no cycle in {sorted(members)}")


def describe(graph: dict[str, set[str]], components: list[list[str]]) -> str:
    return "\n".join(
        f"{' -> '.join(a_cycle(graph, component))}  (component: {', '.join(component)})"
        for component in components
    )


def restricted(graph: dict[str, set[str]], prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    def inside(module: str) -> bool:
        return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)

    return {
        module: {target for target in targets if inside(target)}
        for module, targets in graph.items()
        if inside(module)
    }


SAMPLE = """
from __future__ import annotations

import upload_service.errors
from typing import TYPE_CHECKING

from . import protocol
from .request import TusRequest
from ..storage.base import Store
from upload_service.tus import checksum

if TYPE_CHECKING:
    from upload_service.repository import UploadRepository


def late() -> None:
    from upload_service.storage import s3
"""


def test_the_graph_sees_every_kind_of_import() -> None:
    found = set(imported("upload_service.tus.sample", SAMPLE, module_names(), package=False))
    assert found >= {
        "upload_service.errors",
        "upload_service.tus.protocol",  # from . import module
        "upload_service.tus.request",  # relative
        "upload_service.storage.base",  # two levels up
        "upload_service.tus.checksum",  # from package import module
        "upload_service.repository",  # under TYPE_CHECKING
        "upload_service.storage.s3",  # inside a function
    }
    assert "typing" not in found  # only the package's own modules


def test_the_cycle_finder_finds_and_names_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_tus_and_storage_have_no_import_cycle() -> None:
    graph = restricted(import_graph(), (f"{PACKAGE}.tus", f"{PACKAGE}.storage"))
    components = strongly_connected(graph)
    assert not components, "import cycles in tus/ and storage/:\n" + describe(graph, components)


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    components = strongly_connected(graph)
    assert not components, "import cycles:\n" + describe(graph, components)
