"""results.json's schema (RunResults): old fields kept, identity and code version added."""

from __future__ import annotations

import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from mamlpp.config import AlgorithmConfig, Config
from mamlpp.experiment.results import RunResults, code_version, git_commit
from mamlpp.experiment.run_state import config_diffs, run_identity

# Fields that results.json had before RunResults; readers (report, eval, tests) rely on them.
LEGACY_FIELDS = (
    "test_accuracy_mean",
    "test_accuracy_ci95",
    "num_test_tasks",
    "ensemble_size",
    "per_model",
    "best_val_accuracy",
    "train_seconds",
    "test_seconds",
    "wall_time_s",
    "epochs",
    "iterations",
    "device",
    "config",
)


def test_run_results_keeps_the_old_fields_first_and_adds_identity_and_code() -> None:
    names = [f.name for f in fields(RunResults)]
    assert tuple(names[: len(LEGACY_FIELDS)]) == LEGACY_FIELDS
    values = {name: i for i, name in enumerate(LEGACY_FIELDS)}
    out = RunResults(**values, identity=run_identity(Config())).to_dict()
    assert {k: out[k] for k in LEGACY_FIELDS} == values
    assert out["identity"]["algorithm.multi_step_loss"] is True  # Config(): MAML++
    assert out["code"] == code_version() and out["schema_version"] == 1


def test_git_commit_is_the_checkouts_head() -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True)
    commit = git_commit(REPO_ROOT)
    assert commit is not None and commit.removesuffix("-dirty") == head.stdout.decode().strip()


def test_git_commit_is_none_outside_a_repository_or_without_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable anywhere
    assert git_commit(REPO_ROOT) is None
    assert code_version()["git_commit"] is None


def test_a_key_added_later_is_no_drift_while_at_its_default() -> None:
    """Checkpoints written before algorithm.cosine_per_epoch existed still resume."""
    saved = run_identity(Config())
    del saved["algorithm.cosine_per_epoch"]
    assert config_diffs(saved, Config()) == ""
    per_epoch = Config(algorithm=AlgorithmConfig(cosine_meta_lr=True, cosine_per_epoch=True))
    saved_ca = run_identity(Config(algorithm=AlgorithmConfig(cosine_meta_lr=True)))
    del saved_ca["algorithm.cosine_per_epoch"]
    assert config_diffs(saved_ca, per_epoch) == "algorithm.cosine_per_epoch: False -> True"
