"""Lower layers never import higher ones: data and nn know nothing of algorithms, experiments,
reports or the entry points (README: data -> meta-layers/backbones -> algorithms -> trackers ->
experiment)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "mamlpp"
LAYERS = ["layout", "tasks", "data", "nn", "algorithms", "trackers", "experiment", "reports"]
TOP = {"apps", "train", "api", "inference", "image_inputs", "evaluate", "naming"}
# The training loop's modules: the front-ends start runs through experiment.builder only.
LOOP = {"mamlpp.experiment.loop", "mamlpp.experiment.callbacks"}


def _modules(path: Path) -> set[str]:
    """The mamlpp modules `path` imports (`from mamlpp.x import y` counts mamlpp.x and
    mamlpp.x.y, as y may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mamlpp"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mamlpp.")}
    return found


def _imports(path: Path) -> set[str]:
    return {m.split(".")[1] for m in _modules(path) if m.startswith("mamlpp.")}


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_a_higher_one(layer: str) -> None:
    paths = [PACKAGE / f"{layer}.py"] if (PACKAGE / f"{layer}.py").exists() else []
    paths += sorted((PACKAGE / layer).glob("*.py")) if (PACKAGE / layer).is_dir() else []
    assert paths, layer
    higher = set(LAYERS[LAYERS.index(layer) + 1 :]) | TOP
    for path in paths:
        bad = _imports(path) & higher
        assert not bad, f"{path.relative_to(REPO_ROOT)} imports {sorted(bad)}"


def test_front_ends_never_import_the_training_loop() -> None:
    """train, evaluate, api and the sweep glue (mamlpp.apps, and the old names that are it)
    start runs through experiment.builder; the loop and its callbacks are the runtime's."""
    paths = sorted((PACKAGE / "apps").glob("*.py"))
    paths += [PACKAGE / f"{name}.py" for name in ("train", "evaluate", "api", "inference")]
    assert len(paths) > 6
    for path in paths:
        bad = _modules(path) & LOOP
        assert not bad, f"{path.relative_to(REPO_ROOT)} imports {sorted(bad)}"


def test_the_run_layout_is_a_leaf() -> None:
    """Trackers, the runtime, the front-ends and reports all ask mamlpp.layout for a run
    directory's names; it asks nobody."""
    assert not _modules(PACKAGE / "layout.py")
