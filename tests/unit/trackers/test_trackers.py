"""Experiment trackers (the `logger` group): config, missing packages, the environment's
MLFLOW_*/WANDB_* variables, a parallel sweep sharing one MLflow store, and a killed-and-resumed
run whose TensorBoard, CSV, MLflow and wandb records are read back with their own readers."""

from __future__ import annotations

import csv
import json
import random
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from helpers.cli import TINY_ITERATIONS, Cli, CliRun, read_metric_rows, read_scalars
from helpers.errors import error_lines
from mamlpp import compose
from mamlpp.config import experiment_keys
from mamlpp.errors import ConfigError
from mamlpp.trackers import check_installed
from mamlpp.trackers.mlflow_store import runs_root, tracking_uri

WALL_CLOCK = ("train/s_per_iter", "train/images_per_s")
EXTRA_OF = {"mlflow": "mlflow", "wandb": "wandb"}


# --------------------------------------------------------------------------- config
def test_logger_choice_is_neutral() -> None:
    """Choosing trackers names no other run directory and is no experiment key (resume works)."""
    base = compose("experiment=smoke")
    both = compose("experiment=smoke", "logger=[tensorboard,csv,mlflow,wandb]")
    assert base.logger.chosen() == ["tensorboard"]
    assert both.logger.chosen() == ["tensorboard", "csv", "mlflow", "wandb"]
    assert compose("experiment=smoke", "logger=[]").logger.chosen() == []
    assert both.run.dir == base.run.dir
    assert experiment_keys(both) == experiment_keys(base)


def test_setting_of_an_unchosen_tracker_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'logger\.mlflow\.tracking_uri' is for a tracker"):
        compose("experiment=smoke", "logger.mlflow.tracking_uri=sqlite:///x.db")
    with pytest.raises(ConfigError, match=r"'logger\.wandb\.mode' = 'cloud' is invalid"):
        compose("logger=wandb", "logger.wandb.mode=cloud")


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_missing_package_names_the_extra(tracker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose(f"logger=[tensorboard,{tracker}]")
    check_installed(cfg.logger)  # installed here (the dev extra)
    monkeypatch.setitem(sys.modules, tracker, None)  # import now fails, find_spec finds nothing
    with pytest.raises(ConfigError) as err:
        check_installed(cfg.logger)
    assert str(err.value) == (
        f"config key 'logger' chooses {tracker}, but {tracker} is not installed: "
        f"pip install 'mamlpp[{EXTRA_OF[tracker]}]'"
    )


@pytest.mark.slow
def test_cli_refuses_a_missing_tracker_before_training(cli: Cli, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = cli.command(f"hydra.run.dir={run_dir}", "logger=[tensorboard,mlflow]")[3:]
    code = (
        "import sys; sys.modules['mlflow'] = None; "
        f"sys.argv = ['mamlpp-train', *{argv!r}]; "
        "from mamlpp.train import main; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=cli.env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    errors = error_lines(proc.stderr)
    assert errors == [
        "mamlpp: error: config key 'logger' chooses mlflow, but mlflow is not installed: "
        "pip install 'mamlpp[mlflow]'"
    ], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "checkpoints").exists()


# --------------------------------------------------------------------------- the environment
def without_tracker_variables(env: dict[str, str]) -> dict[str, str]:
    """`env` without MLFLOW_*, WANDB_* and HTTP proxies (the servers here are loopback)."""
    drop = ("MLFLOW_", "WANDB_", "HTTP_PROXY", "HTTPS_PROXY")
    return {k: v for k, v in env.items() if not k.upper().startswith(drop)}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_store_is_the_key_then_the_variable_then_one_per_runs_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = tmp_path / "runs"
    run_dir = runs / "smoke" / "base"
    cfg = compose("experiment=smoke", "logger=mlflow").logger.mlflow
    assert tracking_uri(cfg, run_dir, runs) == f"sqlite:///{runs / 'mlflow' / 'mlflow.db'}"
    elsewhere = tmp_path / "sweep" / "seed=1"  # hydra.sweep.dir outside the runs root
    assert runs_root(elsewhere, runs) == tmp_path / "sweep"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////shared/m.db")
    assert tracking_uri(cfg, run_dir, runs) == "sqlite:////shared/m.db"
    cfg = compose("experiment=smoke", "logger=mlflow", "logger.mlflow.tracking_uri=http://h:1")
    assert tracking_uri(cfg.logger.mlflow, run_dir, runs) == "http://h:1"


def test_unreachable_mlflow_server_is_one_line_in_seconds(monkeypatch: pytest.MonkeyPatch):
    port = closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    for var in ("http_proxy", "HTTP_PROXY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    cfg = compose("experiment=smoke", "logger=[tensorboard,mlflow]")
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        check_installed(cfg.logger)
    assert time.monotonic() - start < 10
    assert str(err.value) == (
        f"MLflow tracking server http://127.0.0.1:{port} (from MLFLOW_TRACKING_URI) is "
        "unreachable (Connection refused): start it, or choose another with "
        "logger.mlflow.tracking_uri or MLFLOW_TRACKING_URI (neither set: a SQLite store in the "
        "runs folder)"
    )


def test_unreachable_wandb_server_online_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    for var in ("http_proxy", "HTTP_PROXY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    check_installed(compose("logger=wandb").logger)  # offline: no server needed
    online = compose("logger=wandb", "logger.wandb.mode=online")
    with pytest.raises(ConfigError) as err:
        check_installed(online.logger)
    assert str(err.value) == (
        f"wandb server http://127.0.0.1:{port} is unreachable (Connection refused) and "
        "logger.wandb.mode is online: set logger.wandb.mode=offline (then `wandb sync`), or "
        "WANDB_BASE_URL"
    )


@pytest.mark.slow
def test_cli_refuses_an_unreachable_mlflow_server_before_training(cli: Cli, tmp_path: Path):
    run_dir = tmp_path / "run"
    env = {
        **without_tracker_variables(cli.env),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}",
    }
    start = time.monotonic()
    proc = cli.run(
        f"hydra.run.dir={run_dir}",
        "logger=[tensorboard,mlflow]",
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("mamlpp: error: MLflow tracking server http")
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60  # Python and torch start-up; MLflow retried minutes
    assert not (run_dir / "checkpoints").exists()


def test_wandb_keys_default_to_the_wandb_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    plain = compose("logger=wandb").logger.wandb
    assert (plain.project, plain.entity, plain.mode, plain.dir) == ("mamlpp", None, "offline", None)
    monkeypatch.setenv("WANDB_PROJECT", "proj")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", "/tmp/wandb-here")
    env = compose("logger=wandb").logger.wandb
    assert (env.project, env.entity, env.mode, env.dir) == (
        "proj",
        "team",
        "disabled",
        "/tmp/wandb-here",
    )
    key = compose("logger=wandb", "logger.wandb.project=mine").logger.wandb
    assert key.project == "mine"  # a key on the command line wins


@pytest.mark.slow
def test_wandb_run_goes_where_the_variables_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tracker itself, in-process: WANDB_DIR, WANDB_PROJECT and WANDB_RUN_GROUP reach the
    offline run's files."""
    from mamlpp.trackers.wandb_files import offline_files, records
    from mamlpp.trackers.wandb_tracker import WandbLogger

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_root"))
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_RUN_GROUP", "group-env")
    cfg = compose("experiment=smoke", "logger=wandb")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logger = WandbLogger(cfg.logger.wandb, run_dir, cfg.experiment_name)
    logger.resume(1)
    logger.log_scalars({"train/loss": 1.5}, 1)
    logger.close()
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["run_id"]
    (segment,) = offline_files(tmp_path / "wandb_root" / "wandb", run_id)
    deadline = time.monotonic() + 60  # wandb's service process may still be writing the file
    while not (runs := [r.run for r in records(segment) if r.WhichOneof("record_type") == "run"]):
        assert time.monotonic() < deadline, f"no run record in {segment}"
        time.sleep(0.5)
    run = runs[0]
    assert (run.project, run.run_group) == ("from-env", "group-env")
    assert not (run_dir / "wandb").exists()


# --------------------------------------------------------------------------- a parallel sweep
@pytest.mark.slow
def test_parallel_sweep_shares_one_mlflow_store_and_loses_no_point(cli: Cli, tmp_path: Path):
    """Three runs at once through hydra-joblib-launcher, each logging to the default store of
    their sweep folder: every point of every run is read back with MLflow's own client."""
    from mlflow.tracking import MlflowClient

    root = tmp_path / "sweep"
    env = without_tracker_variables(cli.env)
    proc = subprocess.run(
        [
            *cli.command("-m", tiny=False),
            *cli.command(tiny=True)[3:],
            "hydra/launcher=local_parallel",
            "hydra.launcher.n_jobs=3",
            "seed=0,1,2",
            "logger=[tensorboard,mlflow]",
            "run.checkpoint_every_iters=1",  # a flush to the store every iteration
            f"hydra.sweep.dir={root}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    run_dirs = sorted(p.parent for p in root.glob("*/results.json"))
    assert len(run_dirs) == 3
    assert not list(root.glob("*/mlflow"))  # no store per run directory
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3
    by_dir = {Path(r.data.tags["mamlpp.run_dir"]): r for r in runs}
    assert sorted(by_dir) == run_dirs
    for run_dir, run in by_dir.items():
        assert run.info.status == "FINISHED"
        curves = {
            key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics
        }
        _assert_curves(curves, read_scalars(run_dir / "tb"))


# --------------------------------------------------------------------------- killed and resumed
def _wait_for_checkpoint(run_dir: Path, iteration: int, run: CliRun, timeout: float = 120) -> None:
    import torch

    latest = run_dir / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            pytest.fail(f"run ended before checkpoint {iteration}:\n{run.stderr}")
        if latest.exists():
            state = torch.load(latest, map_location="cpu", weights_only=True)
            if state["progress"]["next_iteration"] >= iteration:
                return
        time.sleep(0.02)
    pytest.fail(f"no checkpoint at iteration {iteration} within {timeout}s")


@pytest.fixture(scope="module")
def tracked_run(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every tracker at once; SIGKILLed in epoch 0 and in epoch 1 (each time at a random moment
    after an iteration checkpoint), then run to the end."""
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    args = (
        f"hydra.run.dir={run_dir}",
        "run.checkpoint_every_iters=1",
        "logger=[tensorboard,csv,mlflow,wandb]",
    )
    rng = random.Random()
    env = cli.env
    cli.env = without_tracker_variables(env)  # the stores these tests read back
    try:
        for iteration in (1, 5):
            run = cli.start(*args)
            _wait_for_checkpoint(run_dir, iteration, run)
            time.sleep(rng.uniform(0.0, 0.2))
            run.kill()
        done = cli.run(*args)
    finally:
        cli.env = env
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("resumed from") == 1, done.stderr
    return run_dir


def _assert_curves(curves: dict[str, list[tuple[int, float]]], reference: dict) -> None:
    """Every reference tag, each step once and in order, with the reference's values."""
    assert sorted(curves) == sorted(reference)
    for tag, points in curves.items():
        steps = [s for s, _ in points]
        assert steps == [s for s, _ in reference[tag]], f"{tag}: {steps}"
        if tag not in WALL_CLOCK:
            values = [v for _, v in points]
            assert values == pytest.approx([v for _, v in reference[tag]], rel=1e-6), tag
    assert [s for s, _ in curves["train/loss"]] == list(range(1, TINY_ITERATIONS + 1))
    assert [s for s, _ in curves["val/acc"]] == [4, 8]
    assert [s for s, _ in curves["test/acc"]] == [TINY_ITERATIONS + 1]


@pytest.mark.slow
def test_tensorboard_and_metrics_csv_unchanged(tracked_run: Path, reference_run: dict) -> None:
    ref_dir = reference_run["dir"]
    assert read_metric_rows(tracked_run / "metrics.csv") == read_metric_rows(
        ref_dir / "metrics.csv"
    )
    _assert_curves(read_scalars(tracked_run / "tb"), read_scalars(ref_dir / "tb"))


@pytest.mark.slow
def test_csv_tracker_has_each_step_once(tracked_run: Path, reference_run: dict) -> None:
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(tracked_run / "scalars.csv", newline="") as f:
        for row in csv.DictReader(f):
            curves[row["name"]].append((int(row["step"]), float(row["value"])))
    _assert_curves(dict(curves), read_scalars(reference_run["dir"] / "tb"))


@pytest.mark.slow
def test_mlflow_run_has_params_and_each_step_once(tracked_run: Path, reference_run: dict) -> None:
    from mlflow.tracking import MlflowClient

    # Outside paths.runs_dir the store is shared by the run directory's siblings.
    client = MlflowClient(tracking_uri=f"sqlite:///{tracked_run.parent / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the killed processes continued the same MLflow run
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["algorithm.inner_steps"] == "1"  # TINY_ARGS
    assert run.data.params["train.meta_batch_size"] == "2"
    assert "device" not in run.data.params  # neutral keys may change on resume
    curves = {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }
    _assert_curves(curves, read_scalars(reference_run["dir"] / "tb"))


@pytest.mark.slow
def test_wandb_offline_segments_have_each_step_at_most_once(
    tracked_run: Path, reference_run: dict
) -> None:
    """wandb's service buffers records: a SIGKILLed process may leave none in its segment, so
    only the last segment (from its resume step on) is complete; no step may appear twice."""
    import json

    from mamlpp.trackers.wandb_files import config, history, offline_files

    run_id = json.loads((tracked_run / "trackers.json").read_text())["wandb"]["run_id"]
    segments = offline_files(tracked_run / "wandb", run_id)
    assert len(segments) == 3, segments  # one per process
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for segment in segments:
        for row in history(segment):
            for key, value in row.items():
                if not key.startswith("_"):
                    curves[key].append((row["_step"], value))
    reference = read_scalars(reference_run["dir"] / "tb")
    assert sorted(curves) == sorted(reference)
    last = {row["_step"] for row in history(segments[-1])}
    resumed_at = min(last) - 1
    assert 5 <= resumed_at < TINY_ITERATIONS
    for tag, points in curves.items():
        steps = sorted(s for s, _ in points)
        assert steps == sorted(set(steps)), f"{tag}: duplicated steps {steps}"
        expected = [(s, v) for s, v in reference[tag] if s > resumed_at]
        assert [s for s, _ in expected] == [s for s, _ in points if s > resumed_at], tag
        if tag not in WALL_CLOCK:
            got = [v for s, v in sorted(points) if s > resumed_at]
            assert got == pytest.approx([v for _, v in expected], rel=1e-6), tag
    params = config(segments[-1])
    assert params["algorithm.inner_steps"] == 1
    assert params["eval.top_k"] == 3
