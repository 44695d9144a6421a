"""The package's import graph: no cycle, and no import from a lower layer up to a higher one.

Every ``import`` and ``from ... import`` of every module is read with :mod:`ast`, at module
level and inside functions alike, relative forms (``from . import x``) resolved. An import
of ``lvmlt.a.b`` is an edge to that module; ``from lvmlt.a import b`` is an edge to the
module ``lvmlt.a.b`` when it exists, else to ``lvmlt.a``. The package ``__init__`` that
Python runs implicitly before a submodule is not an edge (else every package that
re-exports its submodules would be a cycle).
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

import lvmlt

# Bottom to top. A module may import from its own layer and the layers below; a unit (a
# top-level module or a first-level package) is the longest name below that prefixes it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # errors, the registry, the config and low-level helpers used by training and extraction alike
    ("base", ("lvmlt", "lvmlt.errors", "lvmlt.registry", "lvmlt.config",
              "lvmlt.distributed", "lvmlt.hardware", "lvmlt.rundir", "lvmlt.inputs", "lvmlt.safepickle", "lvmlt.locks",
              "lvmlt.outputs", "lvmlt.systems")),
    # images in, encoders
    ("inputs", ("lvmlt.data", "lvmlt.encoders")),
    # the pieces a run is made of and what reads its outputs
    ("parts", ("lvmlt.features", "lvmlt.models", "lvmlt.losses", "lvmlt.evaluation", "lvmlt.calibration")),
    # the one trainer
    ("training", ("lvmlt.training",)),
    # systems built on the trainer, grids of runs and their reports
    ("applications", ("lvmlt.experiments", "lvmlt.reporting", "lvmlt.deploy")),
    # the command line
    ("cli", ("lvmlt.cli", "lvmlt.__main__")),
]

# Upward imports still to be removed: (importing module, imported module) -> why it is here.
# An entry that no longer matches an import only warns, so removing an import never breaks
# the suite; delete the entry then.
# Example: ("lvmlt.calibration.run", "lvmlt.training.runtime"): "atomic_write_json; moves to lvmlt.rundir".
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

LAYER_OF = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


def module_files(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file under ``root`` (the package's folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, function-level imports included."""
    files = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for a in node.names:
                    sub = f"{source}.{a.name}"
                    targets.add(sub if sub in files else source)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def unit_of(module: str) -> str | None:
    """The layer-table entry that holds ``module`` (the longest prefix), or None.

    The root ``lvmlt`` holds only the package's own ``__init__``.
    """
    units = [u for u in LAYER_OF if module == u or (u != "lvmlt" and module.startswith(u + "."))]
    return max(units, key=len, default=None)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(Path(lvmlt.__file__).parent, "lvmlt")


def test_the_walker_reads_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub import b\n")
    (pkg / "a.py").write_text("def f():\n    from . import c\n    import pkg.sub.b\n")
    (pkg / "c.py").write_text("x = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..c import x\nfrom .. import c\nimport os\n")
    g = import_graph(pkg, "pkg")
    assert g == {
        "pkg": {"pkg.sub.b"},
        "pkg.a": {"pkg.c", "pkg.sub.b"},
        "pkg.c": set(),
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.c"},
    }
    assert find_cycle(g) is None
    g["pkg.c"].add("pkg.a")
    assert find_cycle(g) in (["pkg.a", "pkg.c", "pkg.a"], ["pkg.c", "pkg.a", "pkg.c"])


def test_every_module_has_a_layer(graph):
    missing = sorted(m for m in graph if unit_of(m) is None)
    assert not missing, f"add these modules (or their package) to LAYERS in {__file__}: {missing}"


def test_no_import_cycle_between_modules(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_packages(graph):
    units: dict[str, set[str]] = {}
    for m, targets in graph.items():
        units.setdefault(unit_of(m), set()).update(unit_of(t) for t in targets if unit_of(t) != unit_of(m))
    cycle = find_cycle(units)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_no_import_from_a_lower_layer_to_a_higher_one(graph):
    upward, allowed = [], set()
    for m in sorted(graph):
        for t in sorted(graph[m]):
            lo, hi = LAYER_OF[unit_of(m)], LAYER_OF[unit_of(t)]
            if hi <= lo:
                continue
            if (m, t) in ALLOWED_UPWARD:
                allowed.add((m, t))
                continue
            upward.append(f"{m} ({LAYERS[lo][0]}) imports {t} ({LAYERS[hi][0]})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)
    for stale in sorted(set(ALLOWED_UPWARD) - allowed):
        warnings.warn(f"ALLOWED_UPWARD entry {stale} matches no import any more: delete it", stacklevel=1)


def test_the_trainer_does_not_pull_in_the_other_systems(graph):
    pulled = reachable(graph, "lvmlt.training.trainer")
    assert "lvmlt.losses.ifl" in pulled  # the IFL term is a loss term
    assert not [m for m in pulled if unit_of(m) in dict(LAYERS)["applications"]]


def _imports(path):
    """(module, imported names) of every import in a source file, nested ones included."""
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def test_the_floor_plan_prediction_knows_no_trainer_and_no_private_name_crosses_a_package():
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "lvmlt"
    for f in sorted((src / "deploy").glob("*.py")):
        for module, _ in _imports(f):
            assert not module.startswith("lvmlt.training"), f"{f.name} imports {module}"
    for f in sorted(src.rglob("*.py")):
        package = f.relative_to(src).parts[0]
        for module, names in _imports(f):
            parts = module.split(".")
            if parts[0] != "lvmlt" or len(parts) < 2 or parts[1] == package.removesuffix(".py"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{f.relative_to(src)} imports {private} from {module}"


def test_a_model_knows_no_registry(graph):
    """models/scilt.py reached the systems registry through the config package (its loading
    checks systems): models read their sections from lvmlt.config.sections, which knows none."""
    reach = {m: reachable(graph, m) for m in graph if m.startswith("lvmlt.models")}
    bad = sorted(m for m, r in reach.items() if "lvmlt.systems" in r)
    assert not bad, bad
