"""The layering of docs/architecture.md, checked on the code: imports point downward only.

Every import counts, including the lazy ones inside functions (they are dependencies all the same).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vla_structppo"

# docs/architecture.md#layers, top to bottom; units on one layer must not import each other
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"pipeline"},
    {"train", "testing"},  # testing: offline tiny models; above policies, so policies never imports it
    {"eval", "hub", "predict"},
    {"checkpoints", "data"},
    {"policies", "envs", "diagnostics"},
    {"algo"},
    {"config", "bins", "files"},
    {"errors", "__init__"},
]
LAYER_OF = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    """``vla_structppo.envs.sim`` -> ``envs`` (a top-level module or package of the project)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> set[str]:
    """Project modules ``module`` imports (absolute names), anywhere in the file."""
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - (node.level - 1)]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("vla_structppo"):
                found.add(target)
                for alias in node.names:  # `from . import layout` imports a module
                    found.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vla_structppo"))
    modules = _modules()
    return {t for t in found if t in modules}


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()}
    assert units <= set(LAYER_OF), f"add {units - set(LAYER_OF)} to LAYERS (and docs/architecture.md)"


def test_imports_point_downward_only():
    upward = []
    for module, path in _modules().items():
        src = _unit(module)
        for target in _imports(module, path):
            dst = _unit(target)
            if dst == src or dst == "__init__":
                continue
            if LAYER_OF[dst] <= LAYER_OF[src]:
                upward.append(f"{module} -> {target} ({src} on layer {LAYER_OF[src]}, {dst} on {LAYER_OF[dst]})")
    assert not upward, "\n".join(upward)


def test_only_the_pipeline_imports_the_testing_package():
    """The tiny offline models are for tests, demos and ``model.tiny_arch``: no loading path depends on them."""
    users = sorted(m for m, p in _modules().items() if _unit(m) != "testing"
                   and any(_unit(t) == "testing" for t in _imports(m, p)))
    assert users == ["vla_structppo.pipeline"]


def test_no_import_circles_between_files():
    graph = {m: _imports(m, p) - {m} for m, p in _modules().items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", ["vla_structppo.eval", "vla_structppo.hub", "vla_structppo.checkpoints",
                                    "vla_structppo.train.ppo"])
def test_lower_layers_never_load_the_cli(module):
    code = f"import sys, {module}; print('vla_structppo.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_all_lists_name_what_other_modules_import():
    """A name another module of the package imports from X is in X.__all__ (and every __all__ entry exists)."""
    modules = _modules()
    exported: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                exported[module] = set(ast.literal_eval(node.value))
    problems = []
    for module, path in modules.items():
        is_pkg = path.name == "__init__.py"
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            source = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            if source not in exported:
                continue
            for alias in node.names:
                name = alias.name
                if name.startswith("_") or f"{source}.{name}" in modules:
                    continue
                if name not in exported[source]:
                    problems.append(f"{module} imports {name} from {source}, which does not list it in __all__")
    for module, names in exported.items():
        import importlib

        mod = importlib.import_module(module)
        problems += [f"{module}.__all__ names {n}, which does not exist" for n in names if not hasattr(mod, n)]
    assert not problems, "\n".join(problems)


def test_the_vla_support_table_lists_exactly_the_implemented_architectures():
    """docs/vla.md's support table and policies/vla_arch.ARCHS agree (this was an import-time assert
    against a copy of the list in config/choices.py)."""
    import re

    from vla_structppo.policies.vla_arch import ARCHS

    doc = (PACKAGE.parent / "docs" / "vla.md").read_text()
    table = doc.split("## Supported architectures", 1)[1].split("\n## ", 1)[0]
    documented = [m for m in re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.M) if m != "model_type"]
    assert documented == list(ARCHS)


def test_files_and_functions_stay_small():
    """Small modules with one job, functions short enough to see whole (STYLE.md rule 7): no file of the package
    over 500 lines, no function over 80."""
    long_files, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 500:
            long_files.append(f"{path.relative_to(PACKAGE.parent)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: "
                                      f"{node.end_lineno - node.lineno + 1} lines")
    assert not long_files and not long_functions, "\n".join(long_files + long_functions)
