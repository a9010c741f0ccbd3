"""The package's layout by stage (the house issue): each stage imports only the stages
below it, and no module imports itself back through others.

The stages, lowest first, follow the data flow: files -> data -> network + criterion ->
inference -> evaluation / training -> export. The graph is read from the source with `ast`
(imports inside functions count too), so the test needs no TensorFlow.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "cornernet_tf")

# Lowest first. A module's stage is its first dotted component under cornernet_tf.
STAGES = (
    ("__init__", "errors", "keys", "boxes", "compat", "console"),
    ("config",),
    ("data",),
    ("losses",),
    ("modeling",),
    ("inference",),
    ("evaluation",),
    ("training",),
    ("export",),
    ("convert",),
    ("run", "demo", "cli"),
)
RANK = {name: rank for rank, names in enumerate(STAGES) for name in names}


def _modules() -> dict:
    """{dotted module name: path} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), REPO)[:-3]
                name = rel.replace(os.sep, ".")
                found[name[:-len(".__init__")] if name.endswith(".__init__") else name] = \
                    os.path.join(folder, f)
    return found


def _imports(path: str, modules: dict) -> set:
    """The package modules a file imports (anywhere in it)."""
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n.startswith("cornernet_tf") and n in modules:
                out.add(n)
    return out


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = _modules()
GRAPH = {m: _imports(p, MODULES) - {m} for m, p in MODULES.items()}


def test_every_module_has_a_stage():
    assert {_stage(m) for m in MODULES} <= set(RANK), \
        f"modules outside the stages: {sorted({_stage(m) for m in MODULES} - set(RANK))}"


def test_no_module_imports_a_higher_stage():
    upward = sorted(f"{m} ({_stage(m)}) imports {i} ({_stage(i)})"
                    for m, deps in GRAPH.items() for i in deps
                    if RANK[_stage(i)] > RANK[_stage(m)]
                    # a package's __init__ re-exporting its own modules is not upward
                    and not m == "cornernet_tf")
    assert not upward, "\n".join(upward)


def test_evaluation_and_training_never_import_export():
    for m, deps in GRAPH.items():
        if _stage(m) in ("evaluation", "training"):
            assert not [d for d in deps if _stage(d) == "export"], m


def test_no_import_cycle():
    # Package __init__ modules that re-export their own submodules are edges a cycle can
    # pass through harmlessly; they are left out, every other edge counts.
    graph = {m: {d for d in deps if not (d in MODULES and MODULES[d].endswith("__init__.py"))}
             for m, deps in GRAPH.items()}
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_a_known_edge():
    # Guards the test itself: an edge that exists must be found.
    assert "cornernet_tf.modeling.model" in GRAPH["cornernet_tf.training.loop"]
    assert "cornernet_tf.config.schema" in GRAPH["cornernet_tf.modeling.model"]


def test_nothing_in_the_package_imports_torch_or_the_benchmarks():
    # The benchmark tooling (benchmarks/, with its torch half) stays out of the wheel.
    offending = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offending += [f"{m}: {n}" for n in names
                          if n.split(".")[0] == "torch"
                          or (n.split(".")[0] == "benchmarks" and m != "cornernet_tf.cli")]
    assert not offending, offending
