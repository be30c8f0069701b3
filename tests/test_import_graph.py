"""The package's import graph has one direction: no module of ``tus/`` or ``storage/`` imports, even
indirectly, one that imports it back; and the layers keep to their rules (``LAYERS``). The graph
is read from the source with ``ast``, so every import counts: those under ``if TYPE_CHECKING:``
and those inside functions too, because a circle a type checker or a late import hides is still a
circle a reader has to untangle, and a layer reached that way is still reached."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    from upload_service.db.base import UploadRepository


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
        "upload_service.db.base",  # under TYPE_CHECKING
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


def libraries(path: Path) -> set[str]:
    """The top-level names of what ``path`` imports from outside the package, in any scope."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found - {PACKAGE}


def reached(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module ``start`` imports, directly or not, with one chain of imports to it."""
    chains = {start: [start]}
    waiting = [start]
    while waiting:
        module = waiting.pop()
        for target in sorted(graph.get(module, ())):
            if target not in chains:
                chains[target] = [*chains[module], target]
                waiting.append(target)
    return chains


@dataclass(frozen=True)
class Layer:
    """Modules under ``prefixes`` (but ``exempt``) reach, through any chain of imports, no module
    under ``forbidden`` and no module that imports one of ``libraries``."""

    name: str
    prefixes: tuple[str, ...]
    forbidden: tuple[str, ...] = ()
    libraries: frozenset[str] = frozenset()
    exempt: tuple[str, ...] = ()


WEB = frozenset({"fastapi", "starlette", "uvicorn", "httpx", "h11"})
LAYERS = (
    # the protocol knows no web framework and no settings (routes.py is its HTTP adapter)
    Layer(
        "the protocol",
        (f"{PACKAGE}.tus",),
        forbidden=(f"{PACKAGE}.settings", f"{PACKAGE}.api", f"{PACKAGE}.app"),
        libraries=WEB,
        exempt=(f"{PACKAGE}.tus.routes",),
    ),
    # stores know nothing of tus, of the database or of HTTP
    Layer(
        "the stores",
        (f"{PACKAGE}.storage",),
        forbidden=(f"{PACKAGE}.tus", f"{PACKAGE}.db", f"{PACKAGE}.api", f"{PACKAGE}.settings"),
        libraries=WEB | {"sqlalchemy"},
    ),
    # the repository knows no wire format (only tus/ encodes and decodes headers)
    Layer(
        "the repository",
        (f"{PACKAGE}.repository", f"{PACKAGE}.db"),
        forbidden=(f"{PACKAGE}.tus", f"{PACKAGE}.api"),
        libraries=WEB,
    ),
)


def violations(graph: dict[str, set[str]], paths: dict[str, Path], layer: Layer) -> list[str]:
    def under(module: str, prefixes: tuple[str, ...]) -> bool:
        return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)

    found: list[str] = []
    for module in sorted(graph):
        if not under(module, layer.prefixes) or under(module, layer.exempt):
            continue
        for target, chain in reached(graph, module).items():
            why = sorted(libraries(paths[target]) & layer.libraries)
            if under(target, layer.forbidden) or why:
                found.append(" -> ".join(chain) + (f" (imports {', '.join(why)})" if why else ""))
    return found


def test_the_layer_check_follows_chains_to_what_is_forbidden(tmp_path: Path) -> None:
    web = tmp_path / "web.py"
    web.write_text("from fastapi import FastAPI\n")
    plain = tmp_path / "plain.py"
    plain.write_text("import json\n")
    graph = {"p.tus.a": {"p.tus.b"}, "p.tus.b": {"p.web"}, "p.web": set(), "p.ok": set()}
    paths = {"p.tus.a": plain, "p.tus.b": plain, "p.web": web, "p.ok": plain}
    layer = Layer("t", ("p.tus",), forbidden=("p.ok",), libraries=frozenset({"fastapi"}))
    assert violations(graph, paths, layer) == [
        "p.tus.a -> p.tus.b -> p.web (imports fastapi)",
        "p.tus.b -> p.web (imports fastapi)",
    ]
    graph["p.tus.b"] = {"p.ok"}
    assert violations(graph, paths, layer) == ["p.tus.a -> p.tus.b -> p.ok", "p.tus.b -> p.ok"]


@pytest.mark.parametrize("layer", LAYERS, ids=[layer.name for layer in LAYERS])
def test_each_layer_keeps_to_its_rules(layer: Layer) -> None:
    found = violations(import_graph(), module_names(), layer)
    assert not found, f"{layer.name} reaches what it must not:\n" + "\n".join(found)
