"""ARCHITECTURE.md names modules and tests; each must exist, so the map cannot drift silently."""

from __future__ import annotations

import re

from helpers.paths import REPO_ROOT

DOC = (REPO_ROOT / "ARCHITECTURE.md").read_text()
SRC = REPO_ROOT / "src" / "mamlpp"


def test_every_module_the_architecture_names_exists() -> None:
    named = set(re.findall(r"`((?:[a-z_0-9]+/)*[a-z_0-9]+\.py)", DOC))
    assert len(named) > 30
    missing = []
    for path in named:
        if path.startswith("tests/"):
            found = (REPO_ROOT / path).is_file()
        else:
            found = any((root / path).is_file() for root in (SRC, SRC / "apps", SRC.parent))
        if not found:
            missing.append(path)
    assert not missing, f"ARCHITECTURE.md names files that do not exist: {sorted(missing)}"


def test_every_recipe_names_the_test_that_exercises_it() -> None:
    recipes = DOC.split("## Recipes", 1)[1]
    for test in (
        "tests/integration/cli/test_user_components.py",
        "tests/unit/algorithms/test_inner_rules.py",
        "tests/integration/algorithms/test_algorithms_cli.py",
    ):
        assert test in recipes and (REPO_ROOT / test).is_file(), test
