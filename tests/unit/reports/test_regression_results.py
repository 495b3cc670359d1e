"""A regression run's results say MSE: its config, top-k order, results.json, the printed
table and mamlpp-report (in-process, with results.json written as training writes it)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import mamlpp
from mamlpp.errors import ConfigError
from mamlpp.experiment.results import RunResults, config_summary
from mamlpp.experiment.results_table import format_results
from mamlpp.experiment.run_state import run_identity
from mamlpp.experiment.topk import update_top_k
from mamlpp.reports.report import main


def results_of(score: float, *overrides: str, metric: str | None = None) -> dict:
    cfg = mamlpp.compose(*overrides)
    return RunResults(
        test_accuracy_mean=score,
        test_accuracy_ci95=0.01,
        num_test_tasks=600,
        ensemble_size=1,
        per_model=[
            {
                "epoch": 3,
                "val_accuracy": score,
                "test_accuracy_mean": score,
                "test_accuracy_ci95": 0.01,
            }
        ],
        best_val_accuracy=score,
        train_seconds=60.0,
        test_seconds=1.0,
        wall_time_s=61.0,
        epochs=cfg.train.epochs,
        iterations=cfg.train.epochs * cfg.train.iters_per_epoch,
        device="cpu",
        config=config_summary(cfg),
        identity=run_identity(cfg),
        metric=metric,
    ).to_dict()


def test_sinusoid_presets_compose_with_their_components() -> None:
    cfg = mamlpp.compose("experiment=sinusoid_maml", "task.shots=5")
    assert (cfg.dataset.name, cfg.model.name, cfg.model.hidden) == ("sinusoid", "mlp", [40, 40])
    assert cfg.dataset.amplitude == [0.1, 5.0] and cfg.dataset.input_range == [-5.0, 5.0]
    assert cfg.algorithm.inner_lr == 0.01 and cfg.task.shots == 5
    pp = mamlpp.compose("experiment=sinusoid_mamlpp")
    assert pp.algorithm.learn_inner_lr and pp.algorithm.multi_step_loss
    assert not (pp.algorithm.per_step_bn_stats or pp.algorithm.per_step_bn_weights)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("experiment=sinusoid_maml", "model=conv4"), "model.name"),
        (("model=mlp",), "model.name"),
        (
            ("experiment=sinusoid_maml", "algorithm.per_step_bn_stats=true"),
            "algorithm.per_step_bn_stats",
        ),
        (("experiment=sinusoid_maml", "dataset.amplitude=[5.0,0.1]"), "dataset.amplitude"),
        (("experiment=sinusoid_maml", "model.hidden=[]"), "model.hidden"),
        (("experiment=sinusoid_maml", "algorithm=protomaml"), "algorithm.name"),
        (("experiment=sinusoid_maml", "dataset.protocol=maml"), "dataset.protocol"),
    ],
)
def test_bad_regression_settings_are_one_line_errors(overrides: tuple, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        mamlpp.compose(*overrides)
    message = str(exc.value)
    assert f"'{key}'" in message and "\n" not in message


def test_top_k_keeps_the_lowest_mse() -> None:
    table: list[dict] = []
    for epoch, mse in enumerate((0.9, 0.3, 0.5, 0.2)):
        table, _, _ = update_top_k(table, epoch, mse, 2, higher_is_better=False)
    assert [e["epoch"] for e in table] == [3, 1]
    accuracy: list[dict] = []
    for epoch, acc in enumerate((0.9, 0.3, 0.5, 0.2)):
        accuracy, _, _ = update_top_k(accuracy, epoch, acc, 2)
    assert [e["epoch"] for e in accuracy] == [0, 2]


def test_results_name_their_metric_only_when_it_is_not_accuracy() -> None:
    mse = results_of(0.123, "experiment=sinusoid_maml", metric="mse")
    acc = results_of(0.9, "experiment=quick")
    assert mse["metric"] == "mse" and "metric" not in acc
    table = format_results(mse)
    assert "sinusoid 10-shot" in table and "-way" not in table
    assert "| model | val mse | test mse | 95% CI |" in table
    assert "| 0.123 (best) | 0.123 | +- 0.01 |" in table
    assert "| model | val acc (%) | test acc (%) | 95% CI (%) |" in format_results(acc)
    assert "| 90.00 | +- 1.00 |" in format_results(acc)


def test_report_shows_mse_beside_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    for name, res in (
        ("sine", results_of(0.123, "experiment=sinusoid_maml", metric="mse")),
        ("quick", results_of(0.9, "experiment=quick")),
    ):
        (runs / name).mkdir(parents=True)
        (runs / name / "results.json").write_text(json.dumps(res))
    main([str(runs), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "test acc % or MSE" in printed
    assert "0.123 MSE (1 seed)" in printed and "90.00 (1 seed)" in printed
    with open(tmp_path / "out" / "results.csv") as f:
        rows = {r["experiment"]: r for r in csv.DictReader(f)}
    assert rows["sinusoid_maml"]["metric"] == "mse" and rows["quick"]["metric"] == ""
    assert float(rows["sinusoid_maml"]["test_acc_mean"]) == pytest.approx(0.123)
    assert float(rows["quick"]["test_acc_mean"]) == pytest.approx(90.0)


def test_the_validation_curve_keeps_a_regression_runs_mse_unscaled(tmp_path: Path) -> None:
    """metrics.csv names the score val_acc for both families: accuracy is drawn in %, MSE as is."""
    from mamlpp.reports.plots import _val_curve

    (tmp_path / "metrics.csv").write_text("epoch,iteration,val_acc\n0,10,0.25\n1,20,0.125\n")
    assert _val_curve(tmp_path, percent=True) == ([10, 20], [25.0, 12.5])
    assert _val_curve(tmp_path, percent=False) == ([10, 20], [0.25, 0.125])
