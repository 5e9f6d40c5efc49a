"""The package's modules import one another without a cycle, deferred (function-level) imports included.

A cycle makes the import order matter and hides which module is the lower layer; an import moved
into a function only to break one is still a cycle.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tigerrec"


def module_names(package: Path) -> dict[str, Path]:
    """Every module of ``package``, by its dotted name (a package by its own name: its ``__init__.py``)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports(source: str, name: str, is_package: bool, modules) -> set[str]:
    """The modules of ``modules`` that the code of module ``name`` imports anywhere: at the top, in
    functions, relative or absolute. ``from .x import y`` imports the module ``x.y`` when there is one."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # tigerrec.config.RunConfig -> tigerrec.config
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
                break
    found.discard(name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(package)
    return {
        name: imports(path.read_text(), name, path.name == "__init__.py", modules) for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return path[path.index(child) :] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_holds_top_level_deferred_and_package_relative_imports():
    graph = import_graph()
    assert {"tigerrec.train", "tigerrec.rundir"} <= graph["tigerrec.pipeline"]  # top level
    assert "tigerrec.serve" in graph["tigerrec.cli"]  # inside a function
    assert "tigerrec.data.custom" in graph["tigerrec.catalogue"]  # a module of a subpackage
    assert "tigerrec.io" in graph["tigerrec.data.p5"]  # two dots, from a subpackage


def test_a_deferred_import_that_closes_a_loop_is_found():
    modules = {"pkg", "pkg.a", "pkg.b"}
    graph = {
        "pkg.a": imports("from .b import x\n", "pkg.a", False, modules),
        "pkg.b": imports("def f():\n    from pkg import a\n", "pkg.b", False, modules),
    }
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert find_cycle({"pkg.a": {"pkg.b"}, "pkg.b": set()}) is None
