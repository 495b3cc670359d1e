"""Sinusoid regression through the command line: train, stop, resume, report and plot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CliRun, result_accuracies

# Epochs long enough (a second or more) for a SIGTERM sent after epoch 0 to land in epoch 1.
SMOKE = (
    "experiment=sinusoid_smoke",
    "device=cpu",
    "progress_bar=false",
    "train.iters_per_epoch=60",
)


def _train(run_dir: Path, cwd: Path, *args: str) -> CliRun:
    return CliRun(
        subprocess.Popen(
            [sys.executable, "-m", "mamlpp.train", *SMOKE, f"hydra.run.dir={run_dir}", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )


@pytest.mark.slow
def test_sinusoid_preset_trains_resumes_reports_and_plots(tmp_path: Path) -> None:
    """A sinusoid run stopped by SIGTERM mid-epoch and run again ends with the numbers of an
    uninterrupted one; results.json, the results table and mamlpp-report speak of MSE, and
    mamlpp-sinusoid writes the MSE table and the figure."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ref = _train(tmp_path / "ref", cwd).finish()
    assert ref.returncode == 0, ref.stderr
    assert "| model | val mse | test mse | 95% CI |" in ref.stdout
    results = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert results["metric"] == "mse" and results["config"]["dataset"] == "sinusoid"
    assert 0 < results["test_accuracy_mean"] < 10  # an MSE, not a fraction correct
    # Top-k keeps the lowest validation MSE: the best member is first and none is better.
    vals = [m["val_accuracy"] for m in results["per_model"]]
    assert results["best_val_accuracy"] == min(vals) == vals[0]

    run = _train(tmp_path / "cut", cwd, "run.checkpoint_every_iters=3")
    run.wait_for(r"epoch 0: train loss")
    run.signal(signal.SIGTERM)
    stopped = run.finish()
    assert stopped.returncode == 75, stopped.stderr
    assert not (tmp_path / "cut" / "results.json").exists()
    again = _train(tmp_path / "cut", cwd).finish()
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert result_accuracies(cut) == result_accuracies(results)

    report = subprocess.run(
        [sys.executable, "-m", "mamlpp.reports.report", str(tmp_path / "ref")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    assert "test acc % or MSE" in report.stdout and " MSE " in report.stdout

    plot = subprocess.run(
        [sys.executable, "-m", "mamlpp.reports.sinusoid", str(tmp_path / "ref")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plot.returncode == 0, plot.stderr
    out = tmp_path / "ref" / "eval" / "sinusoid"
    mse = json.loads((out / "mse.json").read_text())["mse"]
    assert set(mse) == {"MAML", "pretrained"}
    assert (out / "adaptation.png").read_bytes()[:4] == b"\x89PNG"
