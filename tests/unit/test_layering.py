"""Lower layers never import higher ones: data and nn know nothing of algorithms, experiments,
reports or the entry points (README: data -> meta-layers/backbones -> algorithms -> trackers ->
experiment)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "mamlpp"
LAYERS = ["tasks", "data", "nn", "algorithms", "trackers", "experiment", "reports"]
TOP = {"train", "api", "inference", "image_inputs", "evaluate", "naming"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mamlpp."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mamlpp.")}
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_a_higher_one(layer: str) -> None:
    paths = [PACKAGE / f"{layer}.py"] if (PACKAGE / f"{layer}.py").exists() else []
    paths += sorted((PACKAGE / layer).glob("*.py")) if (PACKAGE / layer).is_dir() else []
    assert paths, layer
    higher = set(LAYERS[LAYERS.index(layer) + 1 :]) | TOP
    for path in paths:
        bad = _imports(path) & higher
        assert not bad, f"{path.relative_to(REPO_ROOT)} imports {sorted(bad)}"
