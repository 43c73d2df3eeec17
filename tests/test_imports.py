"""The package's import graph: no module of sfpn imports, directly or through others, a
module that imports it back, and the two bottom modules import nothing from sfpn.

The graph is read from the source (every ``import`` statement, those inside functions too: a lazy
import that closes a cycle still ties the two modules together). The op layer, ``sfpn.ops`` and
``sfpn.kernels``, counts as one node: the ops register the Triton kernels and the kernels register
into the ops' library, one unit below everything else.
"""
import ast
import importlib.util
import os

import sfpn

#: Modules that every layer may import, so they import nothing from sfpn.
BOTTOM = ("sfpn.overrides", "sfpn.semantic_labels")
OP_LAYER = ("sfpn.ops", "sfpn.kernels")


def package_modules() -> dict[str, tuple[str, bool]]:
    """module name -> (file, whether it is a package's __init__), for every module of sfpn."""
    roots = {"sfpn": sfpn.__path__[0]}
    kernels = importlib.util.find_spec("sfpn.kernels")
    if kernels is not None:  # a separate folder (pyproject.toml's package-dir) or a link inside sfpn/
        roots["sfpn.kernels"] = kernels.submodule_search_locations[0]
    modules = {}
    for prefix, root in roots.items():
        for folder, subfolders, files in os.walk(root, followlinks=True):
            subfolders[:] = [name for name in subfolders if name != "__pycache__"]
            parts = os.path.relpath(folder, root).split(os.sep)
            package = ".".join([prefix, *(part for part in parts if part != ".")])
            for file in files:
                if file.endswith(".py"):
                    is_package = file == "__init__.py"
                    name = package if is_package else f"{package}.{file[:-3]}"
                    modules.setdefault(name, (os.path.join(folder, file), is_package))
    return modules


def import_graph(modules: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """module -> the sfpn modules it imports (``from . import x`` counts as importing ``x``)."""
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rsplit(".", 1)[0]
        with open(path) as file:
            tree = ast.parse(file.read(), path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module
                targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def layer(name: str) -> str:
    """The node of ``name``: the op layer for its modules, else the module itself."""
    return next((OP_LAYER[0] for top in OP_LAYER if name == top or name.startswith(top + ".")), name)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_sfpn():
    modules = package_modules()
    assert {"sfpn.config", "sfpn.modeling.build", "sfpn.data.coco", *BOTTOM} <= set(modules)
    graph = {}
    for name, targets in import_graph(modules).items():
        graph.setdefault(layer(name), set()).update(layer(target) for target in targets if layer(target) != layer(name))
    assert cycles(graph) == []


def test_the_bottom_modules_import_nothing_from_sfpn():
    graph = import_graph(package_modules())
    for name in BOTTOM:
        assert graph[name] == set(), name
