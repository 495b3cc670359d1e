"""Algorithms through the CLI on real Omniglot: a user's inner rule from tests/user_code (chosen
by algorithm.inner_rule._target_) trains and its learned rates are saved; Reptile and ProtoMAML
run the same episodes, validation and top-k ensemble test as MAML."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, Cli

USER_CODE = REPO_ROOT / "tests" / "user_code"


def _train(cli: Cli, tmp_path: Path, *args: str) -> Path:
    run_dir = tmp_path / "r"
    done = subprocess.run(
        cli.command(*args, f"hydra.run.dir={run_dir}"),
        cwd=tmp_path,
        env={**cli.env, "PYTHONPATH": str(USER_CODE)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_a_users_inner_rule_trains_through_the_cli(cli: Cli, tmp_path: Path) -> None:
    run_dir = _train(
        cli,
        tmp_path,
        "algorithm=maml",
        "algorithm.inner_rule._target_=user_rules.MomentumSGD",
        "+algorithm.inner_rule.kwargs.momentum=0.5",
        "algorithm.inner_steps=2",
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.2 < results["test_accuracy_mean"] <= 1, results
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["learner"]
    rates = {k: v for k, v in state.items() if k.startswith("inner_lrs.lrs.")}
    assert rates and all(k.startswith(("net.", "inner_lrs.")) for k in state)
    # Meta-learned: the rates left their initial value (the maml preset's inner_lr, 0.4).
    assert any(not math.isclose(v.item(), 0.4, rel_tol=1e-6) for v in rates.values())


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["reptile", "protomaml"])
def test_reptile_and_protomaml_train_validate_and_test(
    cli: Cli, tmp_path: Path, algorithm: str
) -> None:
    run_dir = _train(cli, tmp_path, f"algorithm={algorithm}")
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.2 < results["test_accuracy_mean"] <= 1, results
    assert (run_dir / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs
