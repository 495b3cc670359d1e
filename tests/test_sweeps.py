"""Sweeps (Hydra multirun, joblib, submitit local), generated scripts and the report, end to end."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO_ROOT, TINY_ARGS, Cli

FAST = ("eval.val_tasks=5", "eval.test_tasks=10", "eval.top_k=2")


def multirun(cli: Cli, *args: str) -> subprocess.CompletedProcess:
    """Hydra wants -m before the overrides."""
    return cli.run("-m", *TINY_ARGS, *cli.data_args, *FAST, *args, tiny=False, timeout=600)


def results_under(root: Path) -> dict[Path, dict]:
    return {p.parent: json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))}


@pytest.fixture(scope="module")
def sweep(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2x2 multirun (seed x inner LR) with the basic launcher."""
    root = tmp_path_factory.mktemp("sweep")
    args = ("seed=0,1", "algorithm.inner_lr=0.1,0.3", f"hydra.sweep.dir={root}")
    done = multirun(cli, *args)
    assert done.returncode == 0, done.stderr
    return {"root": root, "args": args}


def test_multirun_makes_one_directory_per_job_and_rerun_trains_nothing(cli: Cli, sweep: dict):
    runs = results_under(sweep["root"])
    assert len(runs) == 4
    configs = [OmegaConf.load(d / "config.yaml") for d in runs]
    combos = {(c.seed, c.algorithm.inner_lr) for c in configs}
    assert combos == {(0, 0.1), (0, 0.3), (1, 0.1), (1, 0.3)}
    names = sorted(d.name for d in runs)
    assert all("seed=" in n and "algorithm.inner_lr=" in n for n in names), names
    stamps = {d: (d / "checkpoints" / "latest.pt").stat().st_mtime_ns for d in runs}
    again = multirun(cli, *sweep["args"])
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("run already finished") == 4
    assert {d: (d / "checkpoints" / "latest.pt").stat().st_mtime_ns for d in runs} == stamps


def test_report_table_equals_mean_of_results(sweep: dict, tmp_path: Path):
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "mamlpp.reports.report", str(sweep["root"]), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for name in ("results.md", "results.csv", "val_accuracy.png", "test_accuracy.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "val_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1  # one (dataset, ways, shots, algorithm): four runs over it
    accs = [100 * r["test_accuracy_mean"] for r in results_under(sweep["root"]).values()]
    assert int(rows[0]["seeds"]) == 4
    assert float(rows[0]["test_acc_mean"]) == pytest.approx(statistics.fmean(accs), abs=1e-9)
    assert float(rows[0]["test_acc_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-9)
    assert rows[0]["paper"] == "99.47"
    assert f"{statistics.fmean(accs):.2f}" in (out / "results.md").read_text()


def test_report_refuses_a_directory_without_results(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "mamlpp.reports.report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no results.json" in done.stderr and "Traceback" not in done.stderr


def test_joblib_launcher_runs_jobs_in_parallel_processes(cli: Cli, tmp_path: Path):
    done = multirun(
        cli,
        "hydra/launcher=local_parallel",
        "hydra.launcher.n_jobs=2",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert done.returncode == 0, done.stderr
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr
    assert len(results_under(tmp_path)) == 2


def test_submitit_local_launcher_runs_a_job(cli: Cli, tmp_path: Path):
    done = multirun(
        cli,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "seed=0",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert done.returncode == 0, done.stderr
    runs = results_under(tmp_path)
    assert len(runs) == 1
    assert (tmp_path / ".submitit").is_dir()


def test_generated_scripts_are_up_to_date_and_parse():
    gen = REPO_ROOT / "script_generation_tools" / "generate_scripts.py"
    check = subprocess.run([sys.executable, str(gen), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    scripts = sorted((REPO_ROOT / "experiment_scripts").glob("*.sh"))
    presets = [p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml")]
    assert len(scripts) == 3 * (len(presets) - 2) + 1  # 3 seeds per paper preset + run_all.sh
    for s in scripts:
        assert subprocess.run(["bash", "-n", str(s)]).returncode == 0, s


def test_generated_script_runs_on_cpu_and_resumes_after_sigterm(cli: Cli, tmp_path: Path):
    script = REPO_ROOT / "experiment_scripts" / "omniglot_5w1s_mamlpp_seed0.sh"
    train = Path(sys.executable).with_name("mamlpp-train")
    assert train.exists(), "the package's console script must be installed next to python"
    run_dir = tmp_path / "run"
    tiny = (
        "train.epochs=2",
        "train.iters_per_epoch=6",
        "train.meta_batch_size=2",
        "algorithm.inner_steps=1",
        "algorithm.inner_steps_eval=1",
        "progress_bar=false",
        "run.checkpoint_every_iters=1",
        *FAST,
        *cli.data_args,
        f"hydra.run.dir={run_dir}",
    )
    proc = subprocess.Popen(
        ["bash", str(script), "--", *tiny],
        cwd=tmp_path,
        env={**cli.env, "MAMLPP_TRAIN": str(train)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while not (run_dir / "checkpoints" / "latest.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(children) == 1
    os.kill(int(children[0]), signal.SIGTERM)  # the run alone, as a scheduler's preemption would
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "interrupted (exit 75); resuming" in err
    assert "resumed from" in err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["device"] == "cpu" and results["num_test_tasks"] == 10
