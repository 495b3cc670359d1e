"""Lower layers never import higher ones: errors -> config -> data -> meta-layers/backbones ->
algorithms -> trackers -> experiment -> reports -> the front-ends (train, api, evaluate,
inference). Read from the source with `ast`, so nothing is imported to check it.

Three views: what each module names in an import (anywhere, lazy ones too); what importing a
module loads (its module-level imports, their packages' __init__ and so on, transitively); and
`from mamlpp import X`, whose lazy names load front-ends through the package root's __getattr__.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "mamlpp"
# Bottom to top; a layer is a top-level module or subpackage of mamlpp (or several).
LAYERS = [
    ("errors", "targets"),
    ("config",),
    ("tasks",),
    ("data",),
    ("nn",),
    ("algorithms",),
    ("trackers",),
    ("experiment",),
    ("reports",),
]
LOW = [name for layer in LAYERS for name in layer]
FRONT_ENDS = ("train", "api", "apps", "evaluate", "inference", "image_inputs")


def _layer_of(top: str, seen: frozenset[str] = frozenset()) -> int:
    """The index of the layer a top-level name belongs to; front-ends are above every layer. A
    top-level module in no list sits just above what it imports (0 if it imports nothing)."""
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    if top in FRONT_ENDS or top in seen:
        return len(LAYERS)
    tops = {_top(m) for module in _modules_of(top) for m in _all_imports(module)} - {"", top}
    return max((_layer_of(t, seen | {top}) for t in tops), default=0)


def _module_path(module: str) -> Path | None:
    """The file of a mamlpp module (a package's __init__.py), or None if there is none."""
    parts = module.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _modules_of(top: str) -> list[str]:
    """Every module of a layer name: mamlpp.<top> and, for a package, all of its modules."""
    path = PACKAGE / top
    if path.is_dir():
        return sorted(
            "mamlpp."
            + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
            for p in path.rglob("*.py")
        )
    return [f"mamlpp.{top}"] if (PACKAGE / f"{top}.py").is_file() else []


@cache
def _lazy_names() -> dict[str, str]:
    """The package root's lazy names (its _LAZY table): name -> the module that defines it."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in targets):
            return ast.literal_eval(node.value)
    raise AssertionError("mamlpp/__init__.py has no _LAZY table")


def _resolve(module: str, node: ast.ImportFrom) -> str | None:
    """The absolute module an ImportFrom names (relative imports resolved), if it is mamlpp's."""
    if node.level:
        package = module.split(".")
        if _module_path(module) != PACKAGE.joinpath(*package[1:]) / "__init__.py":
            package = package[:-1]
        base = package[: len(package) - node.level + 1]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    return name if name == "mamlpp" or name.startswith("mamlpp.") else None


def _imported(module: str, node: ast.stmt) -> set[str]:
    """The mamlpp modules one import statement loads (a lazy root name: its module)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.startswith("mamlpp.") or a.name == "mamlpp"}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = _resolve(module, node)
    if base is None:
        return set()
    found = {base}
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if _module_path(sub) is not None:
            found.add(sub)
        elif base == "mamlpp" and alias.name in _lazy_names():
            found.add(_lazy_names()[alias.name])
    return found


def _is_type_checking(node: ast.stmt) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith(
        "TYPE_CHECKING"
    )


@cache
def _parse(module: str) -> ast.Module:
    path = _module_path(module)
    assert path is not None, module
    return ast.parse(path.read_text())


def _all_imports(module: str) -> set[str]:
    """Every mamlpp module `module` names in an import, at any depth (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(_parse(module)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            found |= _imported(module, node)
    return found


def _load_time_imports(module: str) -> set[str]:
    """The mamlpp modules importing `module` runs: module-level statements (also inside if,
    try and with, not under TYPE_CHECKING; not inside functions) and the packages above them."""
    found: set[str] = set()
    todo = list(_parse(module).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or _is_type_checking(node):
            continue
        found |= _imported(module, node)
        for field in ("body", "orelse", "finalbody", "handlers"):
            todo += getattr(node, field, [])
    with_parents = set(found)
    for name in found:
        parts = name.split(".")
        with_parents |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return with_parents - {module}


@cache
def _loads(module: str) -> frozenset[str]:
    """Everything `import <module>` loads of mamlpp, transitively."""
    seen: set[str] = set()
    todo = [module, *(".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1))]
    while todo:
        name = todo.pop()
        if name in seen or _module_path(name) is None:
            continue
        seen.add(name)
        todo += _load_time_imports(name)
    return frozenset(seen)


def _top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _is_leaf(module: str) -> bool:
    """A module that imports nothing of mamlpp (facts, a file format) can form no cycle and
    pulls nothing in: any layer may import it."""
    return _module_path(module) is not None and not _all_imports(module)


def _above(modules: set[str] | frozenset[str], layer: str) -> set[str]:
    """The modules of `modules` that belong to a layer above `layer`'s (or to a front-end)."""
    return {
        m for m in modules if _top(m) and _layer_of(_top(m)) > _layer_of(layer) and not _is_leaf(m)
    }


@pytest.mark.parametrize("layer", LOW)
def test_no_layer_imports_a_higher_one(layer: str) -> None:
    modules = _modules_of(layer)
    assert modules, layer
    for module in modules:
        higher = _above(_all_imports(module), layer)
        assert not higher, f"{module} imports {sorted(higher)}"


@pytest.mark.parametrize("layer", LOW)
def test_importing_a_layer_loads_nothing_above_it(layer: str) -> None:
    """What `import mamlpp.<module>` runs, through packages' __init__ and `from mamlpp import`."""
    for module in _modules_of(layer):
        higher = _above(_loads(module), layer)
        assert not higher, f"importing {module} loads {sorted(higher)}"


def test_the_package_root_loads_no_submodule() -> None:
    """`import mamlpp` stays quick: its public names are loaded on first use."""
    assert _loads("mamlpp") == {"mamlpp"}
    assert set(_lazy_names()) >= {"compose", "load", "train", "ConfigError"}


def test_lower_layers_take_no_lazy_name_from_the_root() -> None:
    """`from mamlpp import compose` (or train, load, ...) in a lower layer would load the
    front-ends through the root's __getattr__; the errors come from mamlpp.errors."""
    for layer in LOW:
        for module in _modules_of(layer):
            for node in ast.walk(_parse(module)):
                if isinstance(node, ast.ImportFrom) and _resolve(module, node) == "mamlpp":
                    lazy = sorted({a.name for a in node.names} & set(_lazy_names()))
                    assert not lazy, f"{module}: from mamlpp import {', '.join(lazy)}"


@pytest.mark.slow
def test_the_static_view_matches_a_fresh_interpreter() -> None:
    """The `ast` reading above against what Python really loads, for the two lowest layers and
    the root (a fresh interpreter: this one has loaded everything)."""
    code = (
        "import sys, mamlpp, mamlpp.errors, mamlpp.config\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] == 'mamlpp')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(done.stdout.split())
    expected = _loads("mamlpp") | _loads("mamlpp.errors") | _loads("mamlpp.config")
    assert loaded == expected
    assert not _above(loaded, "config")


# The training loop's modules: the front-ends start runs through experiment.builder only.
LOOP = {"mamlpp.experiment.loop", "mamlpp.experiment.callbacks"}


def test_front_ends_never_import_the_training_loop() -> None:
    """train, evaluate, api and the sweep glue (mamlpp.apps, and the old names that are it)
    start runs through experiment.builder; the loop and its callbacks are the runtime's."""
    modules = _modules_of("apps") + [
        f"mamlpp.{n}" for n in ("train", "evaluate", "api", "inference")
    ]
    assert len(modules) > 6
    for module in modules:
        bad = _all_imports(module) & LOOP
        assert not bad, f"{module} imports {sorted(bad)}"


def test_the_run_layout_is_a_leaf() -> None:
    """Trackers, the runtime, the front-ends and reports all ask mamlpp.layout for a run
    directory's names; it asks only mamlpp.files (standard library only) for the temp names."""
    assert _all_imports("mamlpp.layout") <= {"mamlpp.files"}
