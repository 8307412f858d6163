"""The import graph of nodeopt: every import runs down the layers of DESIGN.md, and no module imports itself back.

Read from the source (every ``import`` statement, at module level or inside a function), so an
import hidden in a function to dodge a circle is found too.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "nodeopt"

# DESIGN.md's layers, bottom up; data and tasks share layer 5, where tasks may use data but not the reverse.
LAYERS = {"version": 0, "solvers": 1, "gradients": 2, "nn": 3, "optim": 4, "data": 5.0, "tasks": 5.5, "cli": 6,
          "compat": 6, "__main__": 7, "__init__": 7}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The nodeopt modules ``path`` imports (``from package import name`` counts ``package.name`` where that
    is a submodule, and ``package`` itself for the other names)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "nodeopt")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "nodeopt":
                continue
            subs = {f"{target}.{a.name}" for a in node.names}
            subs = {s for s in subs if (ROOT.parent / Path(*s.split("."))).with_suffix(".py").is_file()
                    or (ROOT.parent / Path(*s.split(".")) / "__init__.py").is_file()}
            out.update(subs)
            if len(subs) < len(node.names):  # some names come from the module itself
                out.add(target)
    out.discard(name)
    return out


GRAPH = {_module_name(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def _layer(module: str) -> float:
    parts = module.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


def test_the_graph_was_read():
    assert "nodeopt.tasks" in GRAPH["nodeopt.cli.build"] and "nodeopt.data.files" in GRAPH["nodeopt.tasks.rundir"]
    assert {"nodeopt.solvers", "nodeopt.gradients"} <= GRAPH["nodeopt.nn.odeblock"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_down_the_layers(module):
    upward = sorted(m for m in GRAPH[module] if _layer(m) > _layer(module) and m != "nodeopt.version")
    assert not upward, f"{module} (layer {_layer(module)}) imports from a higher layer: {upward}"


def test_no_module_imports_itself_back():
    """No cycle among modules (a package's ``__init__`` re-exporting its own modules is not a cycle back)."""
    def edges(module):
        return [m for m in GRAPH.get(module, ()) if not module.startswith(m + ".")]  # a module's own package

    cycles, state = [], {}

    def visit(module, stack):
        state[module] = "open"
        for target in edges(module):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
