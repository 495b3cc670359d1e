"""results.json's schema (Results): written by training and mamlpp-eval, read by re-runs,
mamlpp-report and the results table; files of main 3438f29 and older still read."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT
from mamlpp.config import AlgorithmConfig, Config
from mamlpp.errors import MamlppError
from mamlpp.experiment.results import Results, RunResults, code_version, git_commit, read_results
from mamlpp.experiment.results_table import format_results
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


# --------------------------------------------------------------------------- one schema

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_a_results_json_of_main_3438f29_reads_and_writes_back_unchanged() -> None:
    """Training's results.json as main 3438f29 wrote it (its smoke run, seed 1)."""
    written = _fixture("results-main-3438f29.json")
    results = Results.from_dict(written)
    assert not results.is_evaluation and results.extra == {}
    assert results.identity is not None and results.code == written["code"]
    assert results.to_dict() == written
    assert list(results.to_dict()) == list(written)  # the same field order too
    table = format_results(results)
    assert table == format_results(written)
    assert f"| ensemble of top-{written['ensemble_size']} " in table


def test_an_older_results_json_reads_without_inventing_its_missing_fields() -> None:
    old = _fixture("results-main-3438f29.json")
    del old["identity"], old["code"], old["schema_version"], old["config"]["algorithm_variant"]
    old["field_of_another_version"] = [1, 2]
    results = Results.from_dict(old)
    assert results.identity is None and results.code is None and results.schema_version is None
    assert results.extra == {"field_of_another_version": [1, 2]}
    assert results.to_dict() == old  # not today's code version: the file's provenance is unknown
    assert "omniglot 5-way 1-shot, mamlpp, seed 1" in format_results(old)


def test_mamlpp_evals_results_of_main_3438f29_read_and_write_back_unchanged() -> None:
    """mamlpp-eval's results.json as main 3438f29 wrote it (a hand-built dict then)."""
    written = _fixture("eval-results-main-3438f29.json")
    results = Results.from_dict(written)
    assert results.is_evaluation and results.split == "test" and results.extra == {}
    assert results.channels_converted is None and results.train_seconds is None
    assert results.to_dict() == written
    assert f"{written['num_test_tasks']} test tasks" in format_results(results)


def test_training_and_evaluation_write_their_own_fields() -> None:
    common = dict(
        test_accuracy_mean=0.5,
        test_accuracy_ci95=0.1,
        num_test_tasks=10,
        ensemble_size=1,
        per_model=[],
        best_val_accuracy=None,
    )
    trained = Results(**common, train_seconds=1.0, epochs=2, iterations=8).to_dict()
    assert "split" not in trained and "channels_converted" not in trained
    assert trained["epochs"] == 2 and trained["best_val_accuracy"] is None
    evaluated = Results(**common, split="val", members="best").to_dict()
    assert evaluated["channels_converted"] is None and "train_seconds" not in evaluated
    assert Results.from_dict(evaluated).to_dict() == evaluated


@pytest.mark.parametrize("missing", ["test_accuracy_mean", "per_model", "num_test_tasks"])
def test_a_file_without_the_common_fields_is_one_line(tmp_path: Path, missing: str) -> None:
    written = _fixture("results-main-3438f29.json")
    del written[missing]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(written))
    with pytest.raises(
        MamlppError, match=rf"^{re.escape(str(path))} is truncated .*\(no {missing}\)"
    ):
        read_results(path)


def test_mamlpp_report_reads_a_run_of_main_3438f29(tmp_path: Path) -> None:
    from mamlpp.reports.report import find_runs, summarize

    run = tmp_path / "runs" / "smoke" / "seed=1"
    run.mkdir(parents=True)
    (run / "results.json").write_text((FIXTURES / "results-main-3438f29.json").read_text())
    evaluated = run / "eval" / "default"
    evaluated.mkdir(parents=True)  # mamlpp-eval's results are not runs of their own
    (evaluated / "results.json").write_text(
        (FIXTURES / "eval-results-main-3438f29.json").read_text()
    )
    [row] = summarize(find_runs([tmp_path / "runs"]))
    written = _fixture("results-main-3438f29.json")
    assert row["seeds"] == 1 and row["test_acc_mean"] == pytest.approx(
        100 * written["test_accuracy_mean"]
    )
    assert row["train_hours"] == pytest.approx(written["train_seconds"] / 3600)
