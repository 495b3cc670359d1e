"""Sweeps (Hydra multirun, joblib, submitit local), generated scripts and the report, end to end."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers.cli import TINY_ARGS, Cli, result_accuracies
from helpers.paths import REPO_ROOT

FAST = ("eval.val_tasks=5", "eval.test_tasks=10", "eval.top_k=2")


def multirun_args(cli: Cli, *args: str) -> tuple[str, ...]:
    """Hydra wants -m before the overrides."""
    return ("-m", *TINY_ARGS, *cli.data_args, *FAST, *args)


def multirun(cli: Cli, *args: str) -> subprocess.CompletedProcess:
    return cli.run(*multirun_args(cli, *args), tiny=False, timeout=600)


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
    # Named by what differs from the preset: seed=0 and inner_lr=0.1 are smoke's own values.
    assert sum("seed=1" in n for n in names) == 2, names
    assert sum("algorithm.inner_lr=0.3" in n for n in names) == 2, names
    assert not any("seed=0" in n or "algorithm.inner_lr=0.1" in n for n in names), names
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
    # Two experiments (inner LR 0.1 and 0.3), two seeds each: never one row over both.
    assert sorted(r["algorithm.inner_lr"] for r in rows) == ["0.1", "0.3"]
    for row in rows:
        lr = float(row["algorithm.inner_lr"])
        accs = [
            100 * r["test_accuracy_mean"]
            for r in results_under(sweep["root"]).values()
            if r["identity"]["algorithm.inner_lr"] == lr
        ]
        assert int(row["seeds"]) == len(accs) == 2
        assert float(row["test_acc_mean"]) == pytest.approx(statistics.fmean(accs), abs=1e-9)
        assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-9)
        assert row["paper"] == ""  # a tiny schedule is not the paper's protocol
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


# One job through submitit's local executor, which mirrors Slurm: the job is a worker process
# (`python -m submitit.core._submit`) under a controller (`python -m submitit.local._local`, whose
# pid is the job id) that restarts the worker when it exits with submitit's requeue code.
SUBMITIT_LOCAL = (
    "hydra/launcher=submitit_local",
    "hydra.launcher.timeout_min=10",
    "run.checkpoint_every_iters=1",
    "seed=0",
)


@pytest.fixture(scope="module")
def submitit_reference(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted SUBMITIT_LOCAL multirun."""
    root = tmp_path_factory.mktemp("submitit_reference")
    done = multirun(cli, *SUBMITIT_LOCAL, f"hydra.sweep.dir={root}")
    assert done.returncode == 0, done.stderr
    return {"root": root, "results": results_under(root)}


def test_submitit_local_launcher_runs_a_job(submitit_reference: dict):
    assert len(submitit_reference["results"]) == 1
    assert (submitit_reference["root"] / ".submitit").is_dir()


def _children(pid: int, pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _signal_submitit_job(cli: Cli, root: Path, signum: int) -> subprocess.Popen:
    """Start the SUBMITIT_LOCAL multirun into `root`; once its job has checkpointed a trained
    iteration, send `signum` to the job's worker alone, as Slurm signals a job step."""
    command = cli.command(
        *multirun_args(cli, *SUBMITIT_LOCAL, f"hydra.sweep.dir={root}"), tiny=False
    )
    with open(root / "multirun.out", "w") as out, open(root / "multirun.err", "w") as err:
        proc = subprocess.Popen(
            command,
            cwd=cli.cwd,
            env=cli.env,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group: the test can always clean it up
        )
    deadline = time.monotonic() + 120
    worker = None
    while worker is None or not list(root.glob("*/checkpoints/latest.pt")):
        assert proc.poll() is None, (root / "multirun.err").read_text()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        for controller in _children(proc.pid, "submitit.local._local"):
            workers = _children(controller, "submitit.core._submit")
            if workers:
                assert (root / ".submitit" / str(controller)).is_dir()  # the job id
                worker = workers[0]
        time.sleep(0.05)
    os.kill(worker, signum)
    return proc


def _finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _job_logs(root: Path) -> str:
    return "".join(p.read_text() for p in sorted((root / ".submitit").rglob("*_log.*")))


def test_submitit_local_sigusr2_checkpoints_then_submitit_requeues_and_resumes(
    cli: Cli, submitit_reference: dict, tmp_path: Path
):
    """Slurm's timeout signal (--signal=USR2@signal_delay_s): mamlpp checkpoints at once, then
    passes the signal on to submitit, which requeues the job; it resumes where it stopped."""
    rc = _finish(_signal_submitit_job(cli, tmp_path, signal.SIGUSR2))
    logs = _job_logs(tmp_path)
    assert rc == 0, (tmp_path / "multirun.err").read_text() + logs
    stopped = re.search(r"interrupted by SIGUSR2 at iteration (\d+)", logs)
    assert stopped, logs  # our checkpoint, not only submitit's abrupt exit mid-iteration
    assert "Requeued job" in logs
    assert re.search(rf"resumed from \S+ at iteration {stopped[1]}\n", logs), logs
    (results,) = results_under(tmp_path).values()
    (reference,) = submitit_reference["results"].values()
    assert result_accuracies(results) == result_accuracies(reference)


def test_submitit_local_sigterm_checkpoints_and_same_multirun_resumes(
    cli: Cli, submitit_reference: dict, tmp_path: Path
):
    """SIGTERM (scancel, or preemption without the user signal) checkpoints and exits 75.
    Submitit does not requeue it (on Slurm only PreemptMode=REQUEUE would), so the sweep fails;
    running the same multirun again resumes the job from that checkpoint."""
    rc = _finish(_signal_submitit_job(cli, tmp_path, signal.SIGTERM))
    err = (tmp_path / "multirun.err").read_text()
    assert rc != 0, err
    stopped = re.search(r"interrupted by SIGTERM at iteration (\d+)", err)
    assert stopped, err + _job_logs(tmp_path)
    assert "Requeued job" not in _job_logs(tmp_path)
    assert not results_under(tmp_path)
    again = multirun(cli, *SUBMITIT_LOCAL, f"hydra.sweep.dir={tmp_path}")
    assert again.returncode == 0, again.stderr
    logs = _job_logs(tmp_path)
    assert re.search(rf"resumed from \S+ at iteration {stopped[1]}\n", logs), logs
    (results,) = results_under(tmp_path).values()
    (reference,) = submitit_reference["results"].values()
    assert result_accuracies(results) == result_accuracies(reference)


def test_generated_scripts_are_up_to_date_and_parse():
    gen = REPO_ROOT / "script_generation_tools" / "generate_scripts.py"
    check = subprocess.run([sys.executable, str(gen), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    scripts = sorted((REPO_ROOT / "experiment_scripts").glob("*.sh"))
    presets = [p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml")]
    # 3 seeds per paper preset + run_all.sh; the generator's SKIP (smoke, quick, sweeps, the
    # algorithm menu) have none.
    spec = importlib.util.spec_from_file_location("generate_scripts", gen)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(presets) >= module.SKIP
    assert len(scripts) == 3 * len(set(presets) - module.SKIP) + 1
    for s in scripts:
        assert subprocess.run(["bash", "-n", str(s)]).returncode == 0, s


def test_generated_script_runs_on_cpu_and_resumes_after_sigterm(cli: Cli, tmp_path: Path):
    script = REPO_ROOT / "experiment_scripts" / "omniglot_5w1s_mamlpp_seed0.sh"
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
    )
    proc = cli.start_script(script, run_dir, *tiny, cwd=tmp_path, timeout=180)
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
