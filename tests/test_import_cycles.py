"""Import cycles inside gd2po_openrlhf, read from the source (imports inside functions count: a lazy import still ties
two modules together). There is none: the reward server's modules, and the integration layer's, where the features
import OpenRLHF's originals from the patch table (``openrlhf_patches``) and only ``patching``, which the import hook
calls, imports the features."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gd2po_openrlhf"


def import_graph():
    """module -> the package's modules it imports, names relative to the package (``serving.server``)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
                targets |= {module} | {f"{module}.{alias.name}".lstrip(".") for alias in node.names}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                absolute = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                prefix = "gd2po_openrlhf."
                targets |= {module[len(prefix) :] for module in absolute if module and module.startswith(prefix)}
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix):
                    targets |= {f"{node.module[len(prefix) :]}.{alias.name}" for alias in node.names}
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def modules_in_cycles(graph):
    """Every module that can reach itself through the graph."""
    found = set()
    for start in graph:
        seen, frontier = set(), list(graph[start])
        while frontier:
            module = frontier.pop()
            if module == start:
                found.add(start)
                break
            if module not in seen:
                seen.add(module)
                frontier += graph[module]
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"serving.protocol", "serving.server", "serving.supervisor", "serving.ray_serve"} <= set(graph)
    assert "serving.protocol" in graph["serving.ray_serve"] and "serving.ray_serve" in graph["serve_rewards"]
    # the edges that used to close cycles are there, one way only
    assert "integration.openrlhf_patches" in graph["integration.patching"]
    assert (
        "integration.patching" in graph["integration.hook"]
        and "integration.resume" in graph["integration.argparse_patch"]
    )
    assert modules_in_cycles(graph) == set()


def test_the_cycle_finder_finds_a_lazy_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert modules_in_cycles(graph) == {"a", "b", "c"}
    assert modules_in_cycles({"a": {"b"}, "b": set()}) == set()
