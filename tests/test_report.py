"""mamlpp-report on synthetic results.json: grouping by identity, old files, the ablation table."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

import mamlpp
from mamlpp.experiment.results import RunResults, config_summary
from mamlpp.experiment.run_state import run_identity
from mamlpp.reports.report import main


def write_run(root: Path, name: str, accuracy: float, *overrides: str) -> dict:
    """A results.json as training writes it for the config of `overrides`."""
    cfg = mamlpp.compose(*overrides)
    results = RunResults(
        test_accuracy_mean=accuracy,
        test_accuracy_ci95=0.01,
        num_test_tasks=600,
        ensemble_size=1,
        per_model=[],
        best_val_accuracy=accuracy,
        train_seconds=3600.0,
        test_seconds=1.0,
        wall_time_s=3601.0,
        epochs=cfg.train.epochs,
        iterations=cfg.train.epochs * cfg.train.iters_per_epoch,
        device="cpu",
        config=config_summary(cfg),
        identity=run_identity(cfg),
    ).to_dict()
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(results))
    return results


def report(runs: Path, out: Path) -> list[dict[str, str]]:
    main([str(runs), "--out", str(out)])
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_different_experiments_never_share_a_row(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, acc in ((0, 0.90), (1, 0.92)):
        write_run(runs, f"quick{seed}", acc, "experiment=quick", f"seed={seed}")
        write_run(
            runs, f"paper{seed}", acc - 0.1, "experiment=omniglot_5w1s_mamlpp", f"seed={seed}"
        )
    rows = report(runs, tmp_path / "out")
    assert sorted(r["experiment"] for r in rows) == ["omniglot_5w1s_mamlpp", "quick"]
    assert {r["seeds"] for r in rows} == {"2"}
    quick = next(r for r in rows if r["experiment"] == "quick")
    assert float(quick["test_acc_mean"]) == pytest.approx(91.0)
    assert float(quick["test_acc_std"]) == pytest.approx(statistics.stdev([90.0, 92.0]))
    # What tells them apart is a column; what they share is not.
    assert (quick["train.epochs"], quick["algorithm.inner_steps"]) == ("20", "3")
    assert "task.ways" not in quick and "algorithm.inner_lr" not in quick


@pytest.mark.parametrize(
    "other,column",
    [
        ("algorithm.inner_lr=0.3", "algorithm.inner_lr"),
        ("algorithm.multi_step_loss=false", "algorithm.multi_step_loss"),
    ],
)
def test_one_key_apart_is_two_rows(tmp_path: Path, other: str, column: str) -> None:
    """Same experiment name, same seeds: a changed inner LR or MSL switched off is a new row."""
    runs = tmp_path / "runs"
    write_run(runs, "a", 0.5, "experiment=smoke")
    write_run(runs, "b", 0.7, "experiment=smoke", other)
    rows = report(runs, tmp_path / "out")
    assert len(rows) == 2 and {r["seeds"] for r in rows} == {"1"}
    assert len({r[column] for r in rows}) == 2
    assert column in (tmp_path / "out" / "results.md").read_text()


def test_old_results_without_identity_are_still_read_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    for seed in (0, 1):
        old = write_run(runs, f"old{seed}", 0.6 + seed / 10, "experiment=smoke", f"seed={seed}")
        del old["identity"], old["code"], old["schema_version"], old["config"]["algorithm_variant"]
        (runs / f"old{seed}" / "results.json").write_text(json.dumps(old))
    write_run(runs, "new", 0.9, "experiment=smoke", "algorithm.inner_lr=0.3")
    rows = report(runs, tmp_path / "out")
    assert "2 results.json without an identity" in capsys.readouterr().err
    assert len(rows) == 2  # a summary is never merged with a full identity
    (old_row,) = [r for r in rows if r["seeds"] == "2"]
    assert float(old_row["test_acc_mean"]) == pytest.approx(65.0)
    assert old_row["algorithm"] == "mamlpp"  # no variant in old files: the algorithm's name


def test_ablation_table_and_chart_from_the_presets_variants(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    variants = ("maml", "msl", "da", "bn", "lslr", "ca", "mamlpp")
    accs = {}
    for i, variant in enumerate(reversed(variants)):  # written out of order on purpose
        for seed in (0, 1):
            acc = 0.8 + i / 100 + seed / 1000
            accs.setdefault(variant, []).append(100 * acc)
            overrides = ("experiment=omniglot_5w1s_ablation", f"ablation={variant}", f"seed={seed}")
            write_run(runs, f"{variant}{seed}", acc, *overrides)
    write_run(runs, "quick", 0.95, "experiment=quick")  # another experiment: not in the table
    out = tmp_path / "out"
    report(runs, out)
    with open(out / "ablation.csv") as f:
        table = list(csv.DictReader(f))
    expected = ["maml", "maml+MSL", "maml+DA", "maml+BNRS+BNWB", "maml+LSLR", "maml+CA", "mamlpp"]
    assert [r["variant"] for r in table] == expected
    for row, variant in zip(table, variants):
        assert float(row["test_acc_mean"]) == pytest.approx(statistics.fmean(accs[variant]))
        assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(accs[variant]))
        assert row["seeds"] == "2"
    papers = {r["variant"]: r["paper"] for r in table}
    assert (papers["maml"], papers["mamlpp"], papers["maml+MSL"]) == ("98.7 +- 0.4", "99.47", "")
    assert "| maml+LSLR |" in (out / "ablation.md").read_text()
    pytest.importorskip("matplotlib")
    png = out / "ablation_omniglot_5w1s_ablation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_ablation_table_without_an_ablation(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "a", 0.5, "experiment=smoke")
    write_run(runs, "b", 0.6, "experiment=smoke", "algorithm.inner_lr=0.3")
    report(runs, tmp_path / "out")
    assert not (tmp_path / "out" / "ablation.md").exists()
