"""The package's layers, read from the source: an import graph of every loopscale module, built from its
AST (``import x``, ``from x import y``, relative imports, imports inside functions), and the rules it keeps.

The layers (README, "Code map"), each allowed to import only the ones named after it:

- core, the modules directly in ``loopscale/`` (errors, atomic, fmt, paper, config, counting, grid, store, ...):
  core, ``loopscale.data.format`` (a data dir's files and metadata), the probes and the trackers;
- ``loopscale.probes`` and ``loopscale.trackers`` (plug-ins): core;
- ``loopscale.data`` (prepare and read token files): core;
- ``loopscale.training`` (the model and the trainer, torch): core, data, probes, trackers;
- ``loopscale.submit`` (sweep folders, executors, the scheduler): core, data, probes, trackers, and training
  only through the one bridge (``BRIDGE``: the function that runs inside a job and calls the trainer);
- ``loopscale.analysis`` (statistics and plots of results): core, ``loopscale.data.format``, probes;
- ``loopscale.rounds`` (adaptive sweeps that run: the policy's look, submitted round by round): core, data,
  probes, trackers, analysis, submit;
- ``loopscale.report``: core, probes, analysis, submit (the scheduler's word on runs in flight);
- ``loopscale.commands`` and ``loopscale.cli`` (parse and print): anything.

And: no module reaches torch from core's torch-free modules, data, submit (the bridge aside) or the analysis,
not even inside a function; no import cycle at all, imports inside functions included; no module over
``MAX_LINES`` lines; at most ``MAX_TOP_MODULES`` modules directly in ``loopscale/`` (shims of a few lines that
keep an old import path working do not count).

Imports under ``if TYPE_CHECKING:`` never run: they count for the layer rules (naming another layer's
types is a dependency too) but not for cycles.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

import loopscale

PACKAGE_DIR = Path(loopscale.__file__).resolve().parent
TORCH_FREE = ("loopscale.counting", "loopscale.grid", "loopscale.config", "loopscale.store", "loopscale.probes",
              "loopscale.data")  # probes: every plug-in; data: every module of the package
MAX_LINES = 500
MAX_TOP_MODULES = 16
SHIM_LINES = 10  # a module this short that only re-exports an old path is a shim
# The one import from submit into training: the job-side function that calls the trainer, inside the job.
BRIDGE = ("loopscale.submit.job", "loopscale.training.train")
LAYERS = ("core", "data", "probes", "trackers", "training", "submit", "analysis", "rounds", "report", "commands")
MAY_IMPORT = {
    "core": {"core", "data", "probes", "trackers"},  # data: its format module only (FORMAT)
    "data": {"core", "data"},
    "probes": {"core", "probes"},
    "trackers": {"core", "trackers"},
    "training": {"core", "data", "probes", "trackers", "training"},
    "submit": {"core", "data", "probes", "trackers", "submit"},  # training only through BRIDGE
    "analysis": {"core", "data", "probes", "analysis"},  # data: its format module only (FORMAT)
    "rounds": {"core", "data", "probes", "trackers", "analysis", "submit", "rounds"},  # adaptive sweeps that run
    "report": {"core", "probes", "analysis", "submit", "report"},
    "commands": set(LAYERS),
}
FORMAT = {"loopscale.data", "loopscale.data.format", "loopscale.data.identity", "loopscale.data.lock"}  # what core
# and analysis may import of data: its files, its metadata, its identity and its writer's lock (no tokens, no tokenizer)


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    top: set[str] = field(default_factory=set)  # loopscale modules imported when this module is imported
    lazy: set[str] = field(default_factory=set)  # ... inside functions (run when called)
    typing: set[str] = field(default_factory=set)  # ... under `if TYPE_CHECKING:` (never run)
    external: set[str] = field(default_factory=set)  # top-level names of other packages, any of the three ways


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Every import statement of a module with where it sits: module level, in a function, under TYPE_CHECKING."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, str]] = []
        self._where = ["top"]

    def _inside(self, where: str, nodes) -> None:
        self._where.append(where if self._where[-1] == "top" else self._where[-1])
        for n in nodes:
            self.visit(n)
        self._where.pop()

    def visit_FunctionDef(self, node) -> None:
        for d in node.decorator_list:  # decorators and defaults run at definition time
            self.visit(d)
        self.visit(node.args)
        self._inside("lazy", node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._inside("typing", node.body)
            for n in node.orelse:
                self.visit(n)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self._where[-1]))

    visit_ImportFrom = visit_Import


@cache
def graph() -> dict[str, Module]:
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        name, is_package = module_name(path)
        modules[name] = Module(name, path, is_package)
    for m in modules.values():
        visitor = _Imports()
        visitor.visit(ast.parse(m.path.read_text(), filename=str(m.path)))
        for node, where in visitor.found:
            for target in _targets(node, m, modules):
                if target.split(".")[0] != "loopscale":
                    m.external.add(target.split(".")[0])
                else:
                    getattr(m, where).add(target)
    return modules


def _targets(node, importer: Module, modules: dict[str, Module]) -> list[str]:
    """The modules an import statement loads: for ``from X import a``, X.a when that is a module, else X."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = importer.name.split(".")
        base = base if importer.is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module
    subs = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]
    names_left = len(subs) < len(node.names)
    return subs + ([source] if names_left or not subs else [])


def with_parents(name: str, modules: dict[str, Module]) -> set[str]:
    """Importing a.b.c runs a and a.b first (their __init__)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules}


@cache
def reach(name: str, past_bridge: bool = True) -> tuple[frozenset[str], frozenset[str]]:
    """(loopscale modules, other packages) that importing ``name`` can load: its imports at module level,
    inside functions and under TYPE_CHECKING, and theirs, transitively, parent packages included. With
    ``past_bridge`` False, not through BRIDGE's import (which runs only inside a job)."""
    modules = graph()
    seen, todo, external = set(), [name], set()
    while todo:
        m = modules[todo.pop()]
        if m.name in seen:
            continue
        seen.add(m.name)
        external |= m.external
        for target in m.top | m.lazy | m.typing:
            assert target in modules, f"{m.name} imports {target}, which is not a module of the package"
            if past_bridge or (m.name, target) != BRIDGE:
                todo += sorted(with_parents(target, modules) - seen)
    return frozenset(seen), frozenset(external)


def path_to(start: str, goal) -> list[str]:
    """A chain of imports from ``start`` to the first module ``goal(name)`` accepts (for the failure message)."""
    modules = graph()
    parent, todo = {start: None}, [start]
    while todo:
        name = todo.pop(0)
        if goal(name):
            chain = []
            while name is not None:
                chain.append(name)
                name = parent[name]
            return chain[::-1]
        m = modules[name]
        for target in sorted(m.top | m.lazy | m.typing):
            for t in sorted(with_parents(target, modules)):
                if t not in parent:
                    parent[t] = name
                    todo.append(t)
    return []


def _in(package: str):
    return lambda name: name == package or name.startswith(package + ".")


def _imports_torch(name: str) -> bool:
    return "torch" in graph()[name].external


# --- the graph itself ------------------------------------------------------------------------------

def test_the_graph_sees_every_kind_of_import():
    """The rules below are only as good as the graph: it must see module-level, function-level, relative
    and TYPE_CHECKING imports, and other packages (else every rule would pass on an empty graph)."""
    g = graph()
    assert {"loopscale.analysis.fit", "loopscale.analysis.plan", "loopscale.report.build", "loopscale.training.model",
            "loopscale.counting", "loopscale.grid", "loopscale.config", "loopscale.store"} <= set(g)
    assert "loopscale.analysis.law" in reach("loopscale.analysis.fit")[0]
    assert BRIDGE[1] in g[BRIDGE[0]].lazy  # the bridge imports the trainer inside a function
    assert "loopscale.config" in g["loopscale.lr_transfer"].typing
    assert "torch" in g["loopscale.training.model"].external and "numpy" in reach("loopscale.analysis.fit")[1]
    assert "torch" in reach("loopscale.training.train")[1]  # through its own import and model's
    assert "loopscale.training.model" in reach("loopscale.training.train")[0]


def test_relative_and_from_package_imports_resolve():
    """``from . import x``, ``from .. import y``, ``from pkg import submodule`` and ``import a.b`` resolve to
    the modules they load."""
    g = graph()
    importer = Module("loopscale.analysis.fit", PACKAGE_DIR / "analysis" / "fit.py", False)
    package = Module("loopscale.analysis", PACKAGE_DIR / "analysis" / "__init__.py", True)
    cases = {
        "from . import law": (importer, ["loopscale.analysis.law"]),
        "from .law import Law": (importer, ["loopscale.analysis.law"]),
        "from .. import counting": (importer, ["loopscale.counting"]),
        "from ..counting import Arch": (importer, ["loopscale.counting"]),
        "from . import fit": (package, ["loopscale.analysis.fit"]),
        "from loopscale.analysis import fit, not_a_module": (importer, ["loopscale.analysis.fit",
                                                                       "loopscale.analysis"]),
        "import loopscale.analysis.plan as p": (importer, ["loopscale.analysis.plan"]),
        "from loopscale import __version__": (importer, ["loopscale"]),
    }
    for code, (who, expected) in cases.items():
        (node,) = ast.parse(code).body
        assert _targets(node, who, g) == expected, code


# --- the rules --------------------------------------------------------------------------------------

def layer(name: str) -> str:
    """The layer of a loopscale module: its package under loopscale/, or core for the modules directly in it
    (cli and the old-path shims count as commands: they may import anything)."""
    parts = name.split(".")
    if len(parts) == 1:
        return "core"  # loopscale/__init__.py
    if parts[1] in LAYERS:
        return parts[1]
    if parts[1] == "cli" or name in shims():
        return "commands"
    return "core"


@cache
def shims() -> frozenset[str]:
    """Modules directly in loopscale/ of at most SHIM_LINES lines that import only from loopscale: old paths."""
    out = set()
    for m in graph().values():
        if m.name.count(".") != 1 or m.is_package:
            continue
        lines = m.path.read_text().splitlines()
        if len(lines) <= SHIM_LINES and not m.external and (m.top or m.lazy):
            out.add(m.name)
    return frozenset(out)


def edges(m: Module) -> set[str]:
    return m.top | m.lazy | m.typing


def _layer_breaks(m: Module) -> list[str]:
    mine, breaks = layer(m.name), []
    for target in sorted(edges(m)):
        theirs = layer(target)
        if theirs in MAY_IMPORT[mine] and not (mine in ("core", "analysis") and theirs == "data" and target not in FORMAT):
            continue
        if (m.name, target) == BRIDGE and target not in m.top:
            continue
        breaks.append(f"{m.name} ({mine}) imports {target} ({theirs})")
    return breaks


@pytest.mark.parametrize("name", sorted(graph()))
def test_each_module_imports_only_the_layers_below_it(name):
    assert not _layer_breaks(graph()[name]), _layer_breaks(graph()[name])


def test_the_layer_rule_catches_a_break():
    """A fake analysis module that imports the trainer, and a core module that reads a tokenizer: both refused."""
    bad = Module("loopscale.analysis.fake", PACKAGE_DIR / "analysis" / "fake.py", False,
                 lazy={"loopscale.training.train"})
    core = Module("loopscale.fake", PACKAGE_DIR / "fake.py", False, top={"loopscale.data.tokenizer"})
    assert _layer_breaks(bad) == ["loopscale.analysis.fake (analysis) imports loopscale.training.train (training)"]
    assert _layer_breaks(core) and not _layer_breaks(Module("loopscale.fake", core.path, False,
                                                            top={"loopscale.data.format"}))


def _torch_free(name: str) -> list[str]:
    loaded, external = reach(name, past_bridge=False)
    if "torch" in external:
        return [" -> ".join(path_to(name, _imports_torch)) + " -> torch"]
    return [m for m in loaded if layer(m) == "training"]


@pytest.mark.parametrize("name", sorted(n for n in graph() if layer(n) in ("analysis", "submit", "data")
                                        or any(_in(t)(n) for t in TORCH_FREE)))
def test_torch_free_layers_never_reach_torch(name):
    """Not even inside a function: `fit`, `plan`, `status` and `cancel` start without torch, and a data dir is
    prepared on a machine without it. submit reaches the trainer only through the job-side BRIDGE."""
    assert not _torch_free(name)


def test_the_bridge_is_the_only_way_from_submit_to_training():
    g = graph()
    crossing = sorted((m.name, t) for m in g.values() if layer(m.name) == "submit"
                      for t in edges(m) if layer(t) == "training")
    assert crossing == [BRIDGE]
    assert BRIDGE[1] not in g[BRIDGE[0]].top  # inside the function that runs in the job


def test_torch_stays_out_of_a_fresh_interpreter():
    """Importing the torch-free modules (and the analysis that `fit` and `plan` run, and `loopscale cancel`, which
    lists checkpoints) loads no torch."""
    code = ("import sys, loopscale.analysis.fit, loopscale.analysis.plan, loopscale.counting, loopscale.grid, "
            "loopscale.config, loopscale.probes, loopscale.submit, loopscale.submit.cancel, loopscale.submit.job, "
            "loopscale.data.format, loopscale.report.build; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'); assert not bad, bad[:5]")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def cycles(g: dict[str, Module], kinds=("top", "lazy")) -> list[list[str]]:
    """Tarjan's strongly connected components over the imports that run (module level and inside functions):
    each component of more than one module, or a module importing itself, is a cycle."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def targets(v: str) -> list[str]:
        return sorted(t for k in kinds for t in getattr(g[v], k) if t in g)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in targets(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in targets(v):
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_not_even_inside_functions():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_rule_sees_a_cycle_through_a_function():
    a = Module("loopscale.a", PACKAGE_DIR / "a.py", False, top={"loopscale.b"})
    b = Module("loopscale.b", PACKAGE_DIR / "b.py", False, lazy={"loopscale.a"})
    c = Module("loopscale.c", PACKAGE_DIR / "c.py", False, typing={"loopscale.a"})
    assert cycles({"loopscale.a": a, "loopscale.b": b, "loopscale.c": c}) == [["loopscale.a", "loopscale.b"]]
    b.lazy, b.typing = set(), {"loopscale.a"}
    assert cycles({"loopscale.a": a, "loopscale.b": b}) == []


@pytest.mark.parametrize("name", sorted(graph()))
def test_no_module_is_over_the_line_limit(name):
    n = len(graph()[name].path.read_text().splitlines())
    assert n <= MAX_LINES, f"{graph()[name].path.relative_to(PACKAGE_DIR.parent)}: {n} lines > {MAX_LINES}: split it"


def test_few_modules_directly_in_the_package():
    top = sorted(n for n, m in graph().items() if n.count(".") == 1 and not m.is_package and n not in shims())
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules directly in loopscale/ (at most {MAX_TOP_MODULES}): {top}"


def test_the_old_paths_are_shims():
    assert {"loopscale.job", "loopscale.train"} <= shims()


# --- the old paths ---------------------------------------------------------------------------------

def test_a_job_queued_before_the_move_still_loads():
    """SLURM may hold jobs pickled when TrainJob lived in loopscale/job.py (a real pickle of commit e82f5f4,
    made by submitit's own dump): today's code must load it as the job it was, in a fresh interpreter."""
    pkl = Path(__file__).parent / "data" / "queued_job_e82f5f4.pkl"
    assert b"loopscale.job" in pkl.read_bytes()
    code = ("import sys, submitit; d = submitit.helpers.DelayedSubmission.load(sys.argv[1]); j = d.function; "
            "from loopscale.submit.job import TrainJob; assert type(j) is TrainJob, type(j); print(j.run_dir)")
    out = subprocess.run([sys.executable, "-c", code, str(pkl)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "/sweeps/tiny/runs/r2-d128-f1e12-s0"


def test_python_m_loopscale_train_is_the_trainer():
    """The documented ``python -m loopscale.train RUN_DIR`` runs the trainer's own entry point (its usage line)."""
    for module in ("loopscale.train", "loopscale.training.train"):
        out = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and "usage: python -m loopscale.training.train RUN_DIR" in out.stderr, out.stderr
