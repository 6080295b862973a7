"""The import graph of compkit's modules has no circle: module-level imports (what runs at import time)
form no cycle at all, and the verbs' modules (compkit.pipeline's) do not reach back into each other even
through the imports inside their functions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "compkit"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported(path: Path, modules: dict[str, Path], *, everywhere: bool, source: str | None = None) -> set[str]:
    """The compkit modules ``path`` (or ``source`` as if it were there) imports: at module level (not under
    ``if TYPE_CHECKING``), or anywhere."""
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    nodes = ast.walk(tree) if everywhere else iter(tree.body)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = absolute(node, path)
            submodules = [f"{module}.{alias.name}" for alias in node.names]
            found.update(name for name in submodules if name in modules)
            if not all(name in modules for name in submodules):
                found.add(module)  # a name from the module itself
    return {name for name in found if name in modules}


def absolute(node: ast.ImportFrom, path: Path) -> str:
    """The module an ``from X import ...`` names, a relative one (``from . import x``) resolved from ``path``."""
    if not node.level:
        return node.module or ""
    package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_module_level_imports_form_no_circle():
    modules = module_names()
    graph = {name: imported(path, modules, everywhere=False) - {name} for name, path in modules.items()}
    assert cycles(graph) == []


def test_the_test_can_see_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# -- compkit.pipeline: one module per verb over shared (underscored) wiring --------------------------------

PIPELINE = "compkit.pipeline"


def pipeline_graph() -> dict[str, set[str]]:
    """compkit.pipeline's modules and the pipeline modules each imports anywhere in its file (functions too)."""
    modules = module_names()
    inside = {name: path for name, path in modules.items() if name == PIPELINE or name.startswith(PIPELINE + ".")}
    return {name: {other for other in imported(path, modules, everywhere=True) - {name}
                   if other == PIPELINE or other.startswith(PIPELINE + ".")}
            for name, path in inside.items()}


def is_verb(name: str) -> bool:
    """A verb module (``data``, ``training``...): not the package itself, not a shared ``_module``."""
    return name != PIPELINE and not name.rsplit(".", 1)[-1].startswith("_")


def verb_crossings(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a pipeline module imports a verb module or the package (whose names
    are the verbs): a verb module may import only shared modules, and a shared module no verb at all."""
    return sorted((name, other) for name, others in graph.items() for other in others
                  if is_verb(other) or other == PIPELINE)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through the modules it imports."""
    seen, todo = set(), [start]
    while todo:
        for other in graph.get(todo.pop(), ()):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def test_the_pipeline_has_verb_and_shared_modules():
    graph = pipeline_graph()
    verbs = {name for name in graph if is_verb(name)}
    assert {f"{PIPELINE}.training", f"{PIPELINE}.submitting"} <= verbs and len(verbs) < len(graph)


def test_the_pipeline_modules_form_no_circle_counting_imports_inside_functions():
    assert cycles(pipeline_graph()) == []


def test_no_verb_module_imports_another_and_no_shared_module_imports_a_verb():
    assert verb_crossings(pipeline_graph()) == []


def test_submit_does_not_reach_training_even_through_the_shared_modules():
    graph = pipeline_graph()
    assert f"{PIPELINE}._common" in reachable(graph, f"{PIPELINE}.submitting")  # the walk does walk
    assert f"{PIPELINE}.training" not in reachable(graph, f"{PIPELINE}.submitting")


def test_the_pipeline_checks_can_fail():
    p = PIPELINE
    assert not is_verb(p) and not is_verb(f"{p}._build") and is_verb(f"{p}.data")
    graph = {f"{p}.submitting": {f"{p}._predict"}, f"{p}._predict": {f"{p}._fit"}, f"{p}._fit": {f"{p}.training"},
             f"{p}.training": {f"{p}._common", p}, f"{p}._common": set(), p: set()}
    assert f"{p}.training" in reachable(graph, f"{p}.submitting")  # through two shared modules
    assert verb_crossings(graph) == [(f"{p}._fit", f"{p}.training"), (f"{p}.training", p)]
    assert cycles(graph) == []
    graph[f"{p}._common"] = {f"{p}._fit"}  # an import inside a function of _common closes a circle
    assert cycles(graph) == [sorted([f"{p}._common", f"{p}._fit", f"{p}.training"])]


def test_imports_inside_functions_and_relative_imports_are_seen():
    modules = module_names()
    path = PACKAGE / "pipeline" / "_example.py"  # never written: only its place in the package matters
    source = "def f():\n    from compkit.pipeline import training\n    from . import _common\n    from .data import x\n"
    assert imported(path, modules, everywhere=True, source=source) == {
        f"{PIPELINE}.training", f"{PIPELINE}._common", f"{PIPELINE}.data"}
    assert imported(path, modules, everywhere=False, source=source) == set()
