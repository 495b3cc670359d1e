"""Hyperparameter search (hparams_search=omniglot_mamlpp): an Optuna study in the sweep folder,
read back with Optuna's own storage API, that survives a SIGKILL in the middle of a trial, is
another study for other fixed overrides, refuses a second search at the same time, and prints
one line per trial."""

from __future__ import annotations

import csv
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from omegaconf import OmegaConf

from helpers.cli import TINY_ARGS, Cli, CliRun
from mamlpp import compose
from mamlpp.apps.optuna_sweeper import IDENTITY, INTERRUPTED
from mamlpp.config import experiment_keys

pytestmark = pytest.mark.slow

N_TRIALS = 3
STUDY = "omniglot_mamlpp"
PARAMS = ("algorithm.inner_lr", "algorithm.meta_lr", "algorithm.msl_epochs")


def search_args(cli: Cli, root: Path) -> tuple[str, ...]:
    """The preset sets hydra.mode=MULTIRUN: no -m. A checkpoint every iteration, so that a kill
    lands after one."""
    return (
        *TINY_ARGS,
        *cli.data_args,
        "eval.val_tasks=5",
        "eval.test_tasks=10",
        "eval.top_k=2",
        "run.checkpoint_every_iters=1",
        "hparams_search=omniglot_mamlpp",
        f"hydra.sweeper.n_trials={N_TRIALS}",
        f"hydra.sweep.dir={root}",
    )


def studies(root: Path) -> list[str]:
    """The names of the studies in the sweep folder's storage."""
    summaries = optuna.get_all_study_summaries(storage=f"sqlite:///{root}/optuna.db")
    return sorted(s.study_name for s in summaries)


def load(root: Path, name: str | None = None) -> optuna.Study:
    """The study `name`, or the only one, in the sweep folder's storage."""
    if name is None:
        (name,) = studies(root)
    assert name.startswith(f"{STUDY}-"), name  # the preset's name and the experiment's hash
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root}/optuna.db")


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/config.yaml"))


def params_of(run_dir: Path) -> dict[str, float | int]:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    return {key: OmegaConf.select(cfg, key) for key in PARAMS}


def wait_for_checkpoint(run: CliRun, path: Path, timeout: float = 600) -> None:
    """Until `path` holds at least one iteration (it is replaced atomically)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state["progress"]["next_iteration"] >= 1:
                return
        if run.proc.poll() is not None:
            pytest.fail(f"the search ended before {path} was written:\n{run.stderr}")
        time.sleep(0.05)
    run.kill()
    pytest.fail(f"no checkpoint {path} within {timeout}s")


def test_choosing_the_search_changes_no_experiment() -> None:
    """The preset configures the sweeper only: a run picks its name from the trial's overrides."""
    base = compose("experiment=smoke")
    search = compose("experiment=smoke", "hparams_search=omniglot_mamlpp")
    assert search.run.dir == base.run.dir
    assert experiment_keys(search) == experiment_keys(base)


@pytest.fixture(scope="module")
def killed_search(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 3-trial search SIGKILLed after trial #1's first checkpoint, then the same command."""
    root = tmp_path_factory.mktemp("search")
    args = search_args(cli, root)
    first = cli.start(*args, tiny=False)
    first.wait_for(r"\[mamlpp #0 .*\] outputs are in ", timeout=600)  # a shared machine
    killed_dir = Path(first.wait_for(r"\[mamlpp #1 .*\] run directory: (.+)$", 600)[1].strip())
    wait_for_checkpoint(first, killed_dir / "checkpoints" / "latest.pt")
    first.kill()
    killed_states = {t.number: t.state for t in load(root).trials}
    again = cli.run(*args, tiny=False, timeout=600)
    assert again.returncode == 0, again.stderr
    return {
        "root": root,
        "args": args,
        "first": first.stderr,
        "again": again.stderr,
        "killed_dir": killed_dir,
        "killed_states": killed_states,
    }


def test_study_has_n_trials_complete_with_each_runs_best_val_accuracy(killed_search: dict):
    root = killed_search["root"]
    complete = load(root).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == N_TRIALS
    dirs = run_dirs(root)
    assert len(dirs) == N_TRIALS  # one run directory per trial, the killed one included
    by_params = {tuple(params_of(d).values()): d for d in dirs}
    for trial in complete:
        run_dir = by_params[tuple(trial.params[k] for k in PARAMS)]
        results = json.loads((run_dir / "results.json").read_text())
        assert trial.value == results["best_val_accuracy"], run_dir.name


def test_killed_trial_reruns_with_its_parameters_and_resumes(killed_search: dict):
    root, killed_dir = killed_search["root"], killed_search["killed_dir"]
    running = optuna.trial.TrialState.RUNNING
    assert killed_search["killed_states"] == {0: optuna.trial.TrialState.COMPLETE, 1: running}
    name = load(root).study_name
    assert (
        f"optuna study '{name}' in sqlite:///{root}/optuna.db: 1 trial(s) done, 2 to run; "
        "interrupted trial(s) [1] run again"
    ) in killed_search["again"]
    trials = load(root).trials
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [1] and failed[0].user_attrs[INTERRUPTED] is True
    retried = [t for t in trials if t.number > 1 and t.params == failed[0].params]
    assert len(retried) == 1 and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert params_of(killed_dir) == failed[0].params  # the same overrides, the same directory
    log = (killed_dir / "train.log").read_text()
    assert log.count("resumed from ") == 1, log
    assert f"run directory: {killed_dir}" in killed_search["again"]


def test_no_trial_trained_twice(killed_search: dict):
    root = killed_search["root"]
    started = killed_search["first"].count("] run directory: ")
    started += killed_search["again"].count("] run directory: ")
    assert started == N_TRIALS + 1  # the killed trial twice, the others once
    for run_dir in run_dirs(root):
        with open(run_dir / "metrics.csv", newline="") as f:
            epochs = [row["epoch"] for row in csv.DictReader(f)]
        assert epochs == ["0", "1"], run_dir.name
        if run_dir != killed_search["killed_dir"]:
            assert "resumed from" not in (run_dir / "train.log").read_text()


def test_rerunning_a_finished_search_adds_and_trains_nothing(cli: Cli, killed_search: dict):
    root = killed_search["root"]
    before = len(load(root).trials)
    stamps = {d: (d / "checkpoints" / "latest.pt").stat().st_mtime_ns for d in run_dirs(root)}
    done = cli.run(*killed_search["args"], tiny=False)
    assert done.returncode == 0, done.stderr
    name = load(root).study_name
    assert (
        f"optuna study '{name}' in sqlite:///{root}/optuna.db: {N_TRIALS} trial(s) done, 0 to run"
        in done.stderr
    )
    assert "run directory:" not in done.stderr
    assert len(load(root).trials) == before
    assert {d: (d / "checkpoints" / "latest.pt").stat().st_mtime_ns for d in stamps} == stamps


def test_a_search_prints_trials_parameters_and_objectives_only(killed_search: dict):
    """No alembic plugin lines, optuna INFO lines, launcher listings or ExperimentalWarnings:
    per trial its parameters, then its objective."""
    output = killed_search["first"] + killed_search["again"]
    for noise in ("alembic", "ExperimentalWarning", "[HYDRA]", "[I 20", "Study name:"):
        assert noise not in output, noise
    again = killed_search["again"].splitlines()
    trials = [line for line in again if line.startswith("[mamlpp] trial ")]
    assert trials[0].startswith("[mamlpp] trial 2: algorithm.inner_lr=")  # the re-queued #1
    assert " algorithm.meta_lr=" in trials[0] and " algorithm.msl_epochs=" in trials[0]
    values = [line for line in trials if ": val/best_acc = " in line]
    assert len(values) == 2, trials
    best = load(killed_search["root"]).best_trial
    assert f"[mamlpp] best: trial {best.number}, val/best_acc = {best.value:.6g}: " in again[-1]


def test_a_study_an_earlier_mamlpp_named_is_continued(
    cli: Cli, killed_search: dict, tmp_path: Path
) -> None:
    """Earlier identities held every component's keys (a conv4 run's model.channels, a MAML++
    run's algorithm.finetune_steps), so their hash named the study otherwise: the same search
    finds the study by its stored identity and continues it instead of starting another."""
    root = killed_search["root"]
    (name,) = studies(root)
    copy = tmp_path / "earlier"
    copy.mkdir()
    shutil.copy(root / "optuna.db", copy / "optuna.db")
    earlier = f"{STUDY}-0123abcd"
    with sqlite3.connect(copy / "optuna.db") as db:
        db.execute("UPDATE studies SET study_name = ? WHERE study_name = ?", (earlier, name))
        where = (
            "key = ? AND study_id = (SELECT study_id FROM studies WHERE study_name = ?)",
            (IDENTITY, earlier),
        )
        (value,) = db.execute(
            f"SELECT value_json FROM study_user_attributes WHERE {where[0]}", where[1]
        ).fetchone()
        identity = {**json.loads(value), "algorithm.finetune_steps": 100, "model.channels": [64]}
        db.execute(
            f"UPDATE study_user_attributes SET value_json = ? WHERE {where[0]}",
            (json.dumps(identity), *where[1]),
        )
    args = [a for a in killed_search["args"] if not a.startswith("hydra.sweep.dir=")]
    done = cli.run(*args, f"hydra.sweep.dir={copy}", tiny=False, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"optuna study '{earlier}' is this experiment" in done.stderr
    assert (
        f"optuna study '{earlier}' in sqlite:///{copy}/optuna.db: {N_TRIALS} trial(s) done, "
        "0 to run" in done.stderr
    )
    assert studies(copy) == [earlier]


def test_other_fixed_overrides_are_another_study(cli: Cli, killed_search: dict):
    """task.shots=2 on the same sweep folder: a study of its own, the old one untouched."""
    root = killed_search["root"]
    (old,) = studies(root)
    before = len(load(root, old).trials)
    args = [a for a in killed_search["args"] if not a.startswith("hydra.sweeper.n_trials=")]
    other = cli.run(*args, "task.shots=2", "hydra.sweeper.n_trials=1", tiny=False, timeout=600)
    assert other.returncode == 0, other.stderr
    (new,) = [n for n in studies(root) if n != old]
    assert f"optuna study '{new}' in sqlite:///{root}/optuna.db: 0 trial(s) done, 1 to run" in (
        other.stderr
    )
    assert len(load(root, old).trials) == before
    study = load(root, new)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    assert study.user_attrs[IDENTITY]["task.shots"] == 2
    assert load(root, old).user_attrs[IDENTITY]["task.shots"] == 1
    assert "algorithm.inner_lr" not in study.user_attrs[IDENTITY]  # searched: no identity


def test_a_second_search_of_a_running_study_is_refused(cli: Cli, tmp_path: Path):
    root = tmp_path / "search"
    args = [
        *(a for a in search_args(cli, root) if not a.startswith("hydra.sweeper.n_trials=")),
        "hydra.sweeper.n_trials=1",
        "train.iters_per_epoch=20",  # time for the second command to start
    ]
    first = cli.start(*args, tiny=False)
    first.wait_for(r"^\[mamlpp\] trial 0: ", timeout=300)
    second = cli.run(*args, tiny=False, timeout=300)
    done = first.finish(timeout=600)
    assert second.returncode == 2, second.stderr
    assert "Traceback" not in second.stderr
    name = load(root).study_name
    assert second.stderr.splitlines()[-1] == (
        f"mamlpp: error: optuna study '{name}' is being searched by pid {first.proc.pid} on "
        f"host {socket.gethostname()}; a second search at the same time would corrupt its "
        "trials: wait for it or stop it"
    )
    assert done.returncode == 0, done.stderr
    assert [t.state for t in load(root).trials] == [optuna.trial.TrialState.COMPLETE]
    assert "run directory:" not in second.stderr


@pytest.mark.parametrize("choice", ["hparams_search=omniglot_mamlpp", "hydra/sweeper=optuna"])
def test_missing_optuna_is_one_line_naming_the_extra(cli: Cli, tmp_path: Path, choice: str) -> None:
    argv = ["-m", *cli.command(f"hydra.sweep.dir={tmp_path / 'sweep'}", choice)[3:]]
    code = (
        "import sys; sys.modules['hydra_plugins.hydra_optuna_sweeper'] = None; "
        f"sys.argv = ['mamlpp-train', *{argv!r}]; "
        "from mamlpp.train import main; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=cli.env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"mamlpp: error: {choice} needs hydra-optuna-sweeper, which is not installed: "
        "pip install 'mamlpp[optuna]'"
    ]
    assert not (tmp_path / "sweep").exists()
