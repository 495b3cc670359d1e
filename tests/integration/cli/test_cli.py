"""End-to-end tests of `python -m mamlpp.train` (Issue A): outputs, run dirs, errors, determinism.

Every test runs the real CLI as a subprocess on real Omniglot with the tiny config of conftest.py
(TINY_ARGS); the uninterrupted reference run is shared with test_resume.py.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

import mamlpp
from helpers.cli import (
    METRIC_COLUMNS,
    TINY_ARGS,
    TINY_ITERATIONS,
    Cli,
    read_metric_rows,
    read_scalars,
    result_accuracies,
)
from helpers.errors import assert_failed_without_traceback, error_lines
from helpers.paths import REPO_ROOT
from mamlpp.config import is_neutral

pytestmark = pytest.mark.slow

EPOCHS, ITERS_PER_EPOCH = 2, 4


def test_training_run_writes_all_outputs(reference_run: dict) -> None:
    run_dir: Path = reference_run["dir"]
    print(f"\nreference run: {reference_run['seconds']:.1f}s")
    assert "Traceback" not in reference_run["stderr"]
    assert list(reference_run["cwd"].iterdir()) == []  # every output went to hydra.run.dir
    expected = {".hydra", "checkpoints", "config.yaml", "done", "metrics.csv", "results.json"}
    assert expected | {"tb"} <= {p.name for p in run_dir.iterdir()}

    # config.yaml: the resolved config, overrides applied.
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["experiment_name"] == "smoke"
    assert cfg["algorithm"]["inner_steps"] == 1
    assert cfg["train"]["meta_batch_size"] == 2
    assert cfg["eval"]["top_k"] == 3
    assert "${" not in (run_dir / "config.yaml").read_text()

    # metrics.csv: one row per epoch, every column filled.
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in (*METRIC_COLUMNS, "epoch_seconds", "s_per_iter"):
        assert column in header
    rows = read_metric_rows(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == [str(e) for e in range(EPOCHS)]
    assert [int(r["iteration"]) for r in rows] == [ITERS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    for row in rows:
        assert 0.0 <= float(row["train_acc"]) <= 1.0 and 0.0 <= float(row["val_acc"]) <= 1.0
        assert float(row["train_loss"]) > 0 and float(row["val_loss"]) > 0
        assert float(row["meta_lr"]) > 0

    # TensorBoard, read back: per-iteration train scalars, per-epoch val and LSLR scalars.
    scalars = read_scalars(run_dir / "tb")
    every_iter = list(range(1, TINY_ITERATIONS + 1))
    epoch_ends = [ITERS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    for tag in ("train/loss", "train/acc", "train/s_per_iter", "train/lr"):
        assert [s for s, _ in scalars[tag]] == every_iter, tag
    for tag in ("val/acc", "val/loss"):
        assert [s for s, _ in scalars[tag]] == epoch_ends, tag
    lslr = [t for t in scalars if t.startswith("lslr/")]
    assert lslr, sorted(scalars)
    for tag in lslr:
        assert [s for s, _ in scalars[tag]] == epoch_ends, tag
    val_acc = [v for _, v in scalars["val/acc"]]
    assert val_acc == pytest.approx([float(r["val_acc"]) for r in rows])
    assert len(scalars["test/acc"]) == 1

    # checkpoints: latest, previous and the top-k members, all loadable with weights_only.
    ckpt_dir = run_dir / "checkpoints"
    names = sorted(p.name for p in ckpt_dir.iterdir())
    assert names == ["epoch_0000.pt", "epoch_0001.pt", "latest.pt", "previous.pt"], names
    for path in ckpt_dir.iterdir():
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert "learner" in state
    latest = torch.load(ckpt_dir / "latest.pt", map_location="cpu", weights_only=True)
    assert latest["progress"]["next_iteration"] == TINY_ITERATIONS
    assert {"optimizer", "rng", "experiment", "config"} <= set(latest)
    assert latest["experiment"]["algorithm.inner_steps"] == 1

    # results.json
    results = reference_run["results"]
    n = results["num_test_tasks"]
    assert n == 40
    assert results["ensemble_size"] == len(results["per_model"]) == EPOCHS  # epochs < top_k
    assert sorted(m["epoch"] for m in results["per_model"]) == list(range(EPOCHS))
    # metrics.csv keeps 7 significant digits (float32's precision) of the same numbers.
    assert f"{results['best_val_accuracy']:.7g}" == max((r["val_acc"] for r in rows), key=float)
    assert all(len(r["val_acc"].replace(".", "").lstrip("0")) <= 7 for r in rows)
    for summary in (results, *results["per_model"]):
        mean, ci = summary["test_accuracy_mean"], summary["test_accuracy_ci95"]
        assert 0.0 <= mean <= 1.0
        # Per-task accuracies are multiples of 1/targets_per_task (5 targets here): the CI is
        # 1.96 * std / sqrt(n) of such values, so std^2 = (ci * sqrt(n) / 1.96)^2 must be a
        # plausible population variance of n values in {0, .2, .4, .6, .8, 1} with that mean.
        std = ci * math.sqrt(n) / 1.96
        assert 0.0 <= std <= 0.5 + 1e-9
        assert std**2 <= mean * (1 - mean) + 1e-9  # Bhatia-Davis bound for values in [0, 1]
    for key in ("train_seconds", "test_seconds", "wall_time_s"):
        assert results[key] > 0
    assert results["config"]["algorithm"] == "mamlpp" and results["config"]["ways"] == 5
    # The identity is the run's experiment keys, the ones the done marker checks re-runs with.
    identity = results["identity"]
    assert identity == json.loads((run_dir / "done").read_text())["experiment"]
    assert identity["algorithm.inner_steps"] == 1 and identity["task.ways"] == 5
    assert "seed" in identity and not any(is_neutral(k) for k in identity)
    assert results["code"]["mamlpp"] == mamlpp.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True)
    assert results["code"]["git_commit"].startswith(head.stdout.decode().strip())
    assert (run_dir / "done").exists()
    assert "ensemble of top-2" in reference_run["stdout"]


def test_ci95_matches_per_task_accuracies(reference_run: dict) -> None:
    """Re-evaluate the saved top-k members in-process: results.json must be 1.96*std/sqrt(n)."""
    from omegaconf import OmegaConf

    from mamlpp.config import saved_config
    from mamlpp.experiment.builder import ExperimentBuilder
    from mamlpp.experiment.evaluation import ensemble, predict_tasks
    from mamlpp.experiment.topk import member_file

    run_dir: Path = reference_run["dir"]
    results = reference_run["results"]
    cfg = saved_config(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")))
    builder = ExperimentBuilder(cfg, run_dir)
    builder._build()
    members, n = [], results["num_test_tasks"]
    for entry in results["per_model"]:
        learner = builder._new_learner()
        state = torch.load(run_dir / "checkpoints" / member_file(entry["epoch"]), weights_only=True)
        learner.load_state_dict(state["learner"])
        preds = predict_tasks(learner, builder.sampler, "test", 0, n, cfg.eval.batch_size)
        members.append(preds)
        _check_summary(entry, preds.accuracies(), n)
    _check_summary(results, ensemble(members).accuracies(), n)


def _check_summary(summary: dict, per_task: torch.Tensor, n: int) -> None:
    assert per_task.numel() == n
    acc = per_task.double()
    mean = acc.mean().item()
    std = acc.std(unbiased=False).item()
    assert summary["test_accuracy_mean"] == pytest.approx(mean, rel=1e-9, abs=1e-9)
    assert summary["test_accuracy_ci95"] == pytest.approx(
        1.96 * std / math.sqrt(n), rel=1e-9, abs=1e-9
    )


def test_cfg_job_prints_composed_config(cli: Cli, tmp_path: Path) -> None:
    done = cli.run("algorithm.inner_lr=0.3", "--cfg", "job", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    cfg = yaml.safe_load(done.stdout)
    assert cfg["experiment_name"] == "smoke"
    assert cfg["algorithm"]["inner_lr"] == 0.3
    assert cfg["train"]["iters_per_epoch"] == ITERS_PER_EPOCH
    assert "hydra" not in cfg
    assert not (tmp_path / "runs").exists()  # printing the config runs nothing


def test_same_command_lands_in_deterministic_dir_and_reproduces(
    cli: Cli, reference_run: dict, tmp_path: Path
) -> None:
    """Without hydra.run.dir the run goes to runs/<experiment>/<overrides>; numbers are exact."""
    done = cli.run(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    experiment_overrides = sorted(a for a in TINY_ARGS if a.split("=")[0] not in _EXCLUDED)
    expected = tmp_path / "runs" / "smoke" / ",".join(experiment_overrides)
    assert sorted(p.name for p in (tmp_path / "runs" / "smoke").iterdir()) == [expected.name]
    for name in ("config.yaml", "metrics.csv", "results.json", "done", "tb", "checkpoints"):
        assert (expected / name).exists(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing outside the run dir

    # Determinism: a second process with the same config and seed reproduces every number.
    import json

    results = json.loads((expected / "results.json").read_text())
    assert result_accuracies(results) == result_accuracies(reference_run["results"])
    ref_dir = reference_run["dir"]
    assert read_metric_rows(expected / "metrics.csv") == read_metric_rows(ref_dir / "metrics.csv")


_EXCLUDED = {"experiment", "device", "progress_bar", "dataset.source", "dataset.data_dir"}


def test_speed_switches_keep_the_run_and_its_numbers(
    cli: Cli, reference_run: dict, tmp_path: Path
) -> None:
    """speed.* keys do not name the run directory and do not change the numbers: checkpointed
    inner steps recompute exactly; CUDA-only switches say that they do nothing on CPU."""
    done = cli.run("speed.checkpoint_inner_steps=true", "speed.tf32=true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "speed.tf32: CUDA-only, no effect on cpu" in done.stderr
    experiment_overrides = sorted(a for a in TINY_ARGS if a.split("=")[0] not in _EXCLUDED)
    run_dir = tmp_path / "runs" / "smoke" / ",".join(experiment_overrides)
    assert (run_dir / "done").exists()
    ref_dir = reference_run["dir"]
    assert read_metric_rows(run_dir / "metrics.csv") == read_metric_rows(ref_dir / "metrics.csv")


def test_config_errors_are_one_line(cli: Cli, tmp_path: Path) -> None:
    """The exit code and the one printed line of a config mistake, once through the real CLI;
    every mistake's message is checked in-process (unit/config/test_config_messages.py)."""
    done = cli.run("algorithm.meta_lr=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr
    assert_failed_without_traceback(done, "algorithm.meta_lr", "> 0")
    [line] = error_lines(done.stderr)
    assert "config key 'algorithm.meta_lr' = -1.0 is invalid" in line
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_debug_true_shows_the_traceback(cli: Cli, tmp_path: Path) -> None:
    done = cli.run("algorithm.meta_lr=-1", "debug=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "ConfigError" in done.stderr, done.stderr


def test_missing_dataset_is_one_line(cli: Cli, tmp_path: Path) -> None:
    done = cli.run(
        "dataset.source=/nonexistent",
        f"dataset.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_failed_without_traceback(done, "/nonexistent", "dataset.source")


def test_unreadable_zip_is_one_line(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "garbage"
    source.mkdir()
    for name in ("images_background.zip", "images_evaluation.zip"):
        (source / name).write_bytes(b"this is not a zip file\n" * 10)
    done = cli.run(
        f"dataset.source={source}",
        f"dataset.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_failed_without_traceback(done, "images_background.zip")
