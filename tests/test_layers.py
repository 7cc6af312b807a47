"""Imports point one way: `trainer` never imports `search`, inside `search` a sub-package imports
only those below it in `LAYERS`, and no module imports itself through others (a cycle).

Every import is read from the syntax tree, those inside functions and under `TYPE_CHECKING`
included: an import moved into a function still ties two modules together, it only fails
later. A module of `search` that is no sub-package (`search/cli.py`) sits at the top.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. Each may import those before it, never one after it.
LAYERS: tuple[str, ...] = (
    "trainer",  # training detectors: torch, never optuna
    "search.trainers",  # adapters for the trainers a study drives
    "search.study",  # what a study is: study file, space, samplers, pruner
    "search.bookkeeping",  # the study in its storage: records, storage, locks, proxy client
    "search.confirm",  # seeds: the incumbent's rules, confirm plans, results, statistics
    "search.control",  # the study's control: manager, start gate, reaping, the proxy server
    "search.report",  # the offline report
    "search.commands",  # read-only commands: status, best, export; dashboard, train
    "search.running",  # running trials: worker, launch, objective, packs
    "search",  # the command line
)


def layer_of(module: str) -> str:
    """The entry of `LAYERS` a module belongs to (its longest prefix there)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} belongs to no layer of {LAYERS}")


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for package in ("trainer", "search"):
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(source: str, module: str, known: Iterable[str], is_package: bool = False) -> set[str]:
    """The modules of `known` that `source` (the text of `module`, a package's `__init__` when
    `is_package`) imports, anywhere in it."""
    known = set(known)
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {
        name: imports(path.read_text(), name, known, path.name == "__init__.py")
        for name, path in known.items()
    }


def upward(graph: Mapping[str, set[str]]) -> list[str]:
    """Each import of a layer above the importer's, as `importer -> imported (layers)`."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    found = []
    for importer, imported in sorted(graph.items()):
        for target in sorted(imported):
            low, high = layer_of(importer), layer_of(target)
            if rank[high] > rank[low]:
                found.append(f"{importer} -> {target} ({low} imports {high})")
    return found


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The import cycles between layers (each as the layers on it)."""
    edges: dict[str, set[str]] = {}
    for importer, imported in graph.items():
        for target in imported:
            if layer_of(importer) != layer_of(target):
                edges.setdefault(layer_of(importer), set()).add(layer_of(target))
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            found.append([*path[path.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(edges):
        visit(node, [])
    return found


def module_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan's
    strongly connected components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_trainer_never_imports_search() -> None:
    graph = import_graph()
    wrong = [
        f"{m} -> {t}" for m, ts in graph.items() if m.startswith("trainer") for t in ts
        if t.startswith("search")
    ]  # fmt: skip
    assert not wrong, wrong


def test_no_layer_imports_one_above_it() -> None:
    wrong = upward(import_graph())
    assert not wrong, "\n".join(["imports that point up (LAYERS is lowest first):", *wrong])


def test_no_cycle_between_layers() -> None:
    assert not cycles(import_graph())


def test_no_module_imports_itself_through_others() -> None:
    # a cycle held apart by an import inside a function or under TYPE_CHECKING is still one: a
    # type or a helper sits in the wrong module
    assert not module_cycles(import_graph())


def test_the_check_sees_an_import_inside_a_function_and_a_relative_one(tmp_path: Path) -> None:
    (tmp_path / "search" / "bookkeeping").mkdir(parents=True)
    (tmp_path / "search" / "running").mkdir()
    (tmp_path / "trainer").mkdir()
    for package in ("search", "search/bookkeeping", "search/running", "trainer"):
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "search" / "running" / "worker.py").write_text("X = 1\n")
    (tmp_path / "search" / "bookkeeping" / "storage.py").write_text(
        "def f():\n    from search.running.worker import X\n    return X\n"
    )
    (tmp_path / "search" / "bookkeeping" / "budget.py").write_text("from ..running import worker\n")
    graph = import_graph(tmp_path)
    assert graph["search.bookkeeping.storage"] == {"search.running.worker"}
    assert graph["search.bookkeeping.budget"] == {"search.running", "search.running.worker"}
    assert upward(graph) == [
        "search.bookkeeping.budget -> search.running (search.bookkeeping imports search.running)",
        "search.bookkeeping.budget -> search.running.worker "
        "(search.bookkeeping imports search.running)",
        "search.bookkeeping.storage -> search.running.worker "
        "(search.bookkeeping imports search.running)",
    ]
    (tmp_path / "search" / "running" / "worker.py").write_text(
        "from search.bookkeeping import storage\n"
    )
    both = graph | import_graph(tmp_path)
    assert cycles(both) == [["search.bookkeeping", "search.running", "search.bookkeeping"]]
    assert module_cycles(both) == [["search.bookkeeping.storage", "search.running.worker"]]
