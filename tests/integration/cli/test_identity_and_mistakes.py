"""A new user's first hour (issue 15): run identity, config mistakes, console and train.log.

Real CLI subprocesses on real Omniglot (and image folders made of real Omniglot PNGs or
Tiny-ImageNet JPEGs), as a user would run them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

import mamlpp
from helpers.cli import TINY_ARGS, Cli, read_scalars
from helpers.errors import error_lines
from helpers.paths import REPO_ROOT, SHARED
from mamlpp.config import algorithm_label
from mamlpp.train import EXIT_ABORTED, missing_plugin

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def omniglot_folder(omniglot_source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pre-split image folder of real Omniglot PNGs: 6 characters per split, 4 drawings each."""
    root = tmp_path_factory.mktemp("omniglot_folder") / "folder"
    by_char: dict[str, list[str]] = defaultdict(list)
    with zipfile.ZipFile(omniglot_source_dir / "images_evaluation.zip") as z:
        for name in z.namelist():
            if name.endswith(".png"):
                by_char[os.path.dirname(name)].append(name)
        chars = sorted(by_char)[:18]
        for i, char in enumerate(chars):
            split = ("train", "val", "test")[i // 6]
            out = root / split / char.replace("/", "_")
            out.mkdir(parents=True)
            for member in sorted(by_char[char])[:4]:
                (out / os.path.basename(member)).write_bytes(z.read(member))
    return root


FOLDER_ARGS = (
    "dataset=image_folder",
    "dataset.image_size=28",
    "task.targets=1",
    "train.epochs=2",
    "train.iters_per_epoch=3",
    "train.meta_batch_size=2",
    "algorithm.inner_steps=1",
    "eval.val_tasks=4",
    "eval.test_tasks=6",
    "eval.top_k=1",
    "device=cpu",
    "progress_bar=false",
)


# --------------------------------------------------------------------------- run identity


def test_spelt_defaults_and_neutral_keys_name_the_same_directory() -> None:
    base = mamlpp.compose("experiment=smoke").run.dir
    assert base == "runs/smoke/base"
    for spelt in (
        ("seed=0",),
        ("experiment_name=smoke",),
        ("algorithm=mamlpp", "dataset=omniglot", "task=5w1s"),
        ("algorithm.inner_lr=0.1",),  # MAML++'s own value
        ("device=cpu", "run.resume=auto", "progress_bar=false", "speed.channels_last=true"),
    ):
        assert mamlpp.compose("experiment=smoke", *spelt).run.dir == base, spelt
    assert mamlpp.compose("experiment=smoke", "seed=1").run.dir == "runs/smoke/seed=1"
    assert mamlpp.compose("experiment=smoke", "algorithm=maml").run.dir == (
        "runs/smoke/algorithm=maml"
    )


def test_the_cli_finds_a_run_however_it_is_spelt(cli: Cli, tmp_path: Path) -> None:
    done = cli.run(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    again = cli.run("seed=0", "experiment_name=smoke", "algorithm=mamlpp", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "run already finished" in again.stderr
    assert len(list((tmp_path / "runs" / "smoke").iterdir())) == 1


def test_another_image_folder_is_another_run_and_a_changed_one_is_refused(
    cli: Cli, omniglot_folder: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(omniglot_folder, other)
    a = mamlpp.compose(*FOLDER_ARGS, f"dataset.source={omniglot_folder}").run.dir
    b = mamlpp.compose(*FOLDER_ARGS, f"dataset.source={other}").run.dir
    assert a != b and "dataset.source=folder-" in a and "dataset.source=other-" in b

    data = f"dataset.data_dir={tmp_path / 'cache'}"
    # 20 epochs: the run is still training when SIGTERM lands, however fast the machine.
    folder_args = tuple(a for a in FOLDER_ARGS if not a.startswith("train.epochs="))
    args = (*folder_args, "train.epochs=20", f"dataset.source={other}", data)
    args = (*args, "run.checkpoint_every_iters=1")
    run = cli.start(*args, cwd=tmp_path, tiny=False)
    run.wait_for(r"epoch 0: train loss")
    run.signal(signal.SIGTERM)
    assert run.finish().returncode == 75
    victim = sorted((other / "train").iterdir())[0]
    sorted(victim.iterdir())[0].unlink()  # the data changes under the run

    done = cli.run(*args, cwd=tmp_path, tiny=False)
    assert done.returncode == 2, done.stderr
    [line] = error_lines(done.stderr)
    assert "dataset.identity" in line and "the images of dataset.source differ" in line
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- config mistakes


# Every added key's message is checked in-process (unit/config/test_config_messages.py); here
# the command line refuses one, before any training.
@pytest.mark.parametrize(
    ("override", "needles"),
    [("+algorithm.inner_lrr=0.5", ("algorithm.inner_lrr", "did you mean algorithm.inner_lr"))],
)
def test_added_unknown_keys_fail(cli: Cli, tmp_path: Path, override: str, needles) -> None:
    done = cli.run(override, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    [line] = error_lines(done.stderr)
    for needle in needles:
        assert needle in line, line
    assert not list(tmp_path.rglob("checkpoints"))  # refused before any training


def test_a_preset_with_another_algorithm_says_what_ran(cli: Cli, tmp_path: Path) -> None:
    """smoke sets first-order epochs (a MAML++ feature); with algorithm=maml the run is
    labelled maml+DA, and fixed inner learning rates draw no LSLR curves."""
    assert algorithm_label(mamlpp.compose("experiment=smoke", "algorithm=maml").algorithm) == (
        "maml+DA"
    )
    done = cli.run("algorithm=maml", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "algorithm maml+DA" in done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["algorithm_variant"] == "maml+DA"
    assert "maml+DA" in done.stdout.splitlines()[0]
    tags = read_scalars(tmp_path / "run" / "tb")
    assert not any(t.startswith("lslr/") for t in tags) and "val/acc" in tags


def test_natural_images_get_natural_image_defaults(tmp_path: Path) -> None:
    for algorithm, omniglot_lr in (("mamlpp", 0.1), ("maml", 0.4)):
        grey = mamlpp.compose(f"algorithm={algorithm}").algorithm
        assert (grey.inner_lr, grey.grad_clip) == (omniglot_lr, None)
        for dataset in ("image_folder", "tiny_imagenet", "miniimagenet"):
            rgb = mamlpp.compose(f"algorithm={algorithm}", f"dataset={dataset}", "dataset.source=x")
            assert (rgb.algorithm.inner_lr, rgb.algorithm.grad_clip) == (0.01, 10.0)
    own = mamlpp.compose("dataset=image_folder", "dataset.source=x", "algorithm.inner_lr=0.05")
    assert own.algorithm.inner_lr == 0.05  # the command line still wins
    preset = mamlpp.compose("experiment=omniglot_5w1s_mamlpp")
    assert preset.algorithm.inner_lr == 0.1


def test_readme_image_folder_command_does_not_diverge(cli: Cli, tmp_path: Path) -> None:
    """The README's own-folder command on natural images (Tiny-ImageNet JPEGs, 32 px and a
    short budget to fit CI): the loss stays near chance level (ln 5 = 1.61) instead of the
    4.5 and rising that Omniglot's inner LR of 0.1 gives here."""
    source = SHARED / "datasets" / "tiny-imagenet-subset"
    folder = tmp_path / "my_images"
    with zipfile.ZipFile(source / "tiny-imagenet-200-train-100pc.zip") as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith(".jpeg"))
        by_class: dict[str, list[str]] = defaultdict(list)
        for n in names:
            by_class[n.split("/")[2]].append(n)
        for cls in sorted(by_class)[:40]:
            (folder / cls).mkdir(parents=True)
            for n in by_class[cls][:30]:
                (folder / cls / os.path.basename(n)).write_bytes(z.read(n))
    args = (
        "dataset=image_folder",
        f"dataset.source={folder}",
        "task.targets=5",  # as the README prints it; the rest shrinks the budget
        "dataset.image_size=32",
        "train.epochs=2",
        "train.iters_per_epoch=10",
        "train.meta_batch_size=2",
        "eval.val_tasks=10",
        "eval.test_tasks=10",
        "eval.top_k=1",
        f"dataset.data_dir={tmp_path / 'data'}",
        "progress_bar=false",
    )
    done = cli.run(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, tiny=False)
    assert done.returncode == 0, done.stderr
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[2]) for r in rows]
    print(f"\nnatural images, default inner LR: train loss per epoch {losses}")
    assert max(losses) < 2.5


def test_one_bad_job_does_not_stop_a_sweep(cli: Cli, tmp_path: Path) -> None:
    args = ("-m", *TINY_ARGS, *cli.data_args, "task.ways=2000,5", f"hydra.sweep.dir={tmp_path}")
    done = cli.run(*args, cwd=tmp_path, tiny=False)
    assert done.returncode == 2, done.stderr
    assert "sweep finished with 1 failed job(s):" in done.stderr
    assert "#0 " in done.stderr and "'task.ways' = 2000" in done.stderr
    finished = [p.parent.name for p in tmp_path.rglob("results.json")]
    assert len(finished) == 1  # the 5-way job ran to the end after the 2000-way one failed
    assert not list(tmp_path.glob(".failed-jobs-*"))  # the records are cleaned up
    # Jobs' lines carry their number and run name, so parallel jobs' logs can be told apart.
    assert any(line.startswith("[mamlpp #1 ") for line in done.stderr.splitlines())


def test_missing_plugin_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    assert missing_plugin(["-m", "hydra/launcher=local_parallel"]) is None  # installed here
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    line = missing_plugin(["-m", "hydra/launcher=local_parallel", "seed=0,1"])
    assert line is not None and "pip install 'mamlpp[sweep]'" in line
    assert "hydra-joblib-launcher" in line
    assert missing_plugin(["seed=1"]) is None
    line = missing_plugin(["hparams_search=omniglot_mamlpp"])
    assert line is not None and "pip install 'mamlpp[optuna]'" in line
    assert missing_plugin(["hparams_search=null"]) is None


# --------------------------------------------------------------------------- console and log


def test_console_and_train_log_tell_what_happened(reference_run: dict) -> None:
    run_dir: Path = reference_run["dir"]
    assert f"run directory: {run_dir}" in reference_run["stderr"]
    assert f"outputs are in {run_dir}" in reference_run["stderr"]
    log = (run_dir / "train.log").read_text()
    for needle in (
        f"run directory: {run_dir}",
        "epoch 0: train loss",
        "epoch 1: validating on 20 tasks",
        "testing the top-2 models",
        "| ensemble of top-2 |",
        f"outputs are in {run_dir}",
    ):
        assert needle in log, needle
    metrics = (run_dir / "metrics.csv").read_text()
    assert max(len(v) for line in metrics.splitlines()[1:] for v in line.split(",")) <= 13


def test_help_explains_groups_keys_and_exit_codes(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mamlpp.train", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for needle in (
        "Config groups",
        "experiment: ",
        # every option of the group, as conf/algorithm holds them
        "algorithm: "
        + ", ".join(sorted(p.stem for p in (REPO_ROOT / "conf" / "algorithm").glob("*.yaml"))),
        "75 ",
        "130",
    ):
        assert needle in done.stdout, needle
    assert "MAMLPP_ROOT" in done.stdout and "Exit codes" in done.stdout


def test_double_ctrl_c_is_one_line_and_keeps_the_checkpoint(cli: Cli, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = (f"hydra.run.dir={run_dir}", "run.checkpoint_every_iters=2", "eval.val_tasks=600")
    run = cli.start(*args, cwd=tmp_path)
    run.wait_for(r"epoch 0: validating on 600 tasks")  # a long validation: after iteration 4
    run.signal(signal.SIGINT)
    run.wait_for(r"SIGINT received: finishing this iteration.*Ctrl-C again aborts", timeout=10)
    run.signal(signal.SIGINT)
    done = run.finish()
    assert done.returncode == EXIT_ABORTED, done.stderr
    assert "Traceback" not in done.stderr
    assert len([ln for ln in done.stderr.splitlines() if "aborted by a second Ctrl-C" in ln]) == 1
    assert "aborted by a second Ctrl-C" in (run_dir / "train.log").read_text()

    again = cli.run(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr and "at iteration 2" in again.stderr


def test_paths_root_puts_data_and_runs_in_one_place(
    omniglot_source_dir: Path, tmp_path: Path
) -> None:
    """MAMLPP_ROOT: the README's bare command works from any directory."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "datasets" / "omniglot").mkdir(parents=True)
    elsewhere.mkdir()
    for name in ("images_background.zip", "images_evaluation.zip"):
        os.symlink(omniglot_source_dir / name, root / "datasets" / "omniglot" / name)
    env = {**os.environ, "MAMLPP_ROOT": str(root)}
    cmd = [sys.executable, "-m", "mamlpp.train", "experiment=smoke"]  # progress_bar on
    done = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (root / "runs" / "smoke" / "base" / "results.json").exists()
    assert any((root / "datasets" / "omniglot" / "cache").glob("*.npy"))
    assert list(elsewhere.iterdir()) == []
    assert f"run directory: {root / 'runs' / 'smoke' / 'base'}" in done.stderr
    assert "\r" not in done.stderr  # no progress bar into a pipe: log lines stay whole lines


def test_a_checkpoint_that_does_not_fit_is_one_line(
    cli: Cli, reference_run: dict, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run["dir"], run_dir)
    for name in ("done", "results.json"):  # unfinished: the next command resumes
        (run_dir / name).unlink()
    args = (f"hydra.run.dir={run_dir}", "model.filters=8", "run.allow_config_change=true")
    done = cli.run(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = error_lines(done.stderr)
    assert "does not fit the model its config describes" in line
    assert "net.convs.0.weight is (64, 1, 3, 3), the model needs (8, 1, 3, 3)" in line


def test_the_entry_point_returns_validation_unless_asked_for_test() -> None:
    """What mamlpp-train returns is a sweeper's objective: never the test set by default."""
    from mamlpp.config import objective

    results = {"best_val_accuracy": 0.61, "test_accuracy_mean": 0.72}
    cfg = mamlpp.compose("experiment=smoke")
    assert cfg.optimized_metric == "val/best_acc"
    assert objective(results, cfg.optimized_metric) == 0.61
    asked = mamlpp.compose("experiment=smoke", "optimized_metric=test/acc")
    assert objective(results, asked.optimized_metric) == 0.72
    assert asked.run.dir == cfg.run.dir  # the objective does not change the experiment
