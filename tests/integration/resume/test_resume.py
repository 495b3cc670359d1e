"""Fault tolerance of `python -m mamlpp.train` (Issue B), with real subprocesses and signals.

The reference is the uninterrupted tiny run of conftest.py; every interrupted run must end with
exactly its numbers (wall-clock columns aside).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import socket
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from helpers.cli import (
    TINY_ITERATIONS,
    Cli,
    CliRun,
    read_metric_rows,
    read_scalars,
    result_accuracies,
)
from helpers.errors import error_lines
from mamlpp.experiment import checksum
from mamlpp.experiment.results_table import format_results
from mamlpp.experiment.signals import EXIT_RESUMABLE

pytestmark = pytest.mark.slow

EPOCH_ENDS = [4, 8]
RESUMED = r"resumed from (\S+) at iteration (\d+)"


def _iteration(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["progress"]["next_iteration"]


def _saved_iteration(path: Path) -> int:
    """Iterations in the checkpoint at `path` (atomically replaced, so never half-written); -1
    if there is none yet."""
    return _iteration(path) if path.exists() else -1


def _search(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    assert match, f"no {pattern!r} in:\n{text}"
    return match[1]


def _wait_until(
    condition: Callable[[], bool], run: CliRun, what: str, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if run.proc.poll() is not None:
            pytest.fail(f"run exited (rc {run.proc.returncode}) before {what}:\n{run.stderr}")
        if time.monotonic() > deadline:
            run.kill()
            pytest.fail(f"timed out waiting for {what}:\n{run.stderr}")
        time.sleep(0.02)


def _assert_same_as_reference(run_dir: Path, reference_run: dict) -> None:
    """results.json accuracies, metrics.csv metric columns and TensorBoard curves all match."""
    results = json.loads((run_dir / "results.json").read_text())
    assert result_accuracies(results) == result_accuracies(reference_run["results"])
    ref_dir = reference_run["dir"]
    assert read_metric_rows(run_dir / "metrics.csv") == read_metric_rows(ref_dir / "metrics.csv")
    scalars, ref_scalars = read_scalars(run_dir / "tb"), read_scalars(ref_dir / "tb")
    assert sorted(scalars) == sorted(ref_scalars)
    for tag, events in scalars.items():
        steps = [s for s, _ in events]
        assert steps == sorted(set(steps)), f"{tag}: duplicated or backwards steps {steps}"
        assert steps == [s for s, _ in ref_scalars[tag]], tag
        if not tag.endswith(("s_per_iter", "images_per_s")):  # wall-clock
            assert [v for _, v in events] == [v for _, v in ref_scalars[tag]], tag
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, TINY_ITERATIONS + 1))
    assert [s for s, _ in scalars["val/acc"]] == EPOCH_ENDS
    assert [s for s, _ in scalars["test/acc"]] == [TINY_ITERATIONS + 1]
    leftovers = [p.name for p in run_dir.rglob(".*") if p.is_file() and p.name != ".lock"]
    assert [n for n in leftovers if not n.startswith(".hydra")] == [], leftovers


def test_sigkill_at_random_moments_resumes_exactly(
    cli: Cli, reference_run: dict, tmp_path: Path
) -> None:
    """SIGKILL in training (epochs 0 and 1), in validation and in the test phase; then finish."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"\nkill delays drawn with random seed {seed}")
    run_dir = tmp_path / "killed"
    args = (f"hydra.run.dir={run_dir}", "run.checkpoint_every_iters=1")
    latest = run_dir / "checkpoints" / "latest.pt"
    start = time.perf_counter()

    # 1. Training, epoch 0: at a random moment after the first checkpoint.
    run = cli.start(*args)
    _wait_until(lambda: _saved_iteration(latest) >= 1, run, "the first checkpoint")
    time.sleep(rng.uniform(0.0, 0.1))
    run.kill()
    pids = [run.proc.pid]

    def restart() -> tuple[CliRun, int]:
        run = cli.start(*args)
        run.wait_for(f"taking over the lock left by pid {pids[-1]} ")
        resumed_at = int(run.wait_for(RESUMED)[2])
        pids.append(run.proc.pid)
        return run, resumed_at

    # 2. Training, epoch 1: at a random moment after its first iteration was saved.
    run, resumed_at = restart()
    assert 1 <= resumed_at <= 4
    _wait_until(lambda: _saved_iteration(latest) >= 5, run, "a checkpoint in epoch 1")
    time.sleep(rng.uniform(0.0, 0.1))
    run.kill()

    # 3. During the validation of epoch 1 (after iteration 8, before its checkpoint).
    run, resumed_at = restart()
    assert 5 <= resumed_at < 8
    run.wait_for(r"epoch 1: validating")
    run.kill()
    assert len(read_metric_rows(run_dir / "metrics.csv")) == 1  # epoch 1 never finished
    assert _iteration(latest) == 7

    # 4. During the test phase.
    run, resumed_at = restart()
    assert resumed_at == 7  # the iteration checkpoint before the interrupted validation
    run.wait_for(r"testing the top-2 models")
    time.sleep(rng.uniform(0.0, 0.1))
    run.kill()
    assert not (run_dir / "results.json").exists()

    # 5. To the end.
    run, resumed_at = restart()
    assert resumed_at == TINY_ITERATIONS
    done = run.finish()
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    print(f"killed 4 times and resumed: {time.perf_counter() - start:.1f}s")
    _assert_same_as_reference(run_dir, reference_run)
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["epoch_0000.pt", "epoch_0001.pt", "latest.pt", "previous.pt"], names


def test_signals_checkpoint_and_truncated_checkpoint_falls_back(
    cli: Cli, reference_run: dict, tmp_path: Path
) -> None:
    """SIGTERM mid-epoch and SIGUSR1 mid-validation exit 75 after a checkpoint at the current
    iteration; a truncated latest.pt is moved aside and previous.pt resumes to the same numbers.
    No iteration checkpoints here: only epoch ends and signals write one."""
    run_dir = tmp_path / "signalled"
    ckpt = run_dir / "checkpoints"
    arg = f"hydra.run.dir={run_dir}"

    run = cli.start(arg)
    run.wait_for(r"epoch 0: train loss")
    # Into epoch 1: the iteration under way is finished, then saved. Epoch 1's four iterations
    # take ~0.1 s on an idle machine, so a longer wait could let the epoch (and its validation,
    # which the second half needs) finish before the signal lands.
    time.sleep(0.03)
    run.signal(signal.SIGTERM)
    done = run.finish()
    assert done.returncode == EXIT_RESUMABLE, done.stderr
    assert "Traceback" not in done.stderr
    stopped_at = int(_search(done.stderr, r"interrupted by SIGTERM at iteration (\d+)"))
    assert 5 <= stopped_at <= 7, "the signal must land inside epoch 1"
    assert _iteration(ckpt / "latest.pt") == stopped_at
    assert _iteration(ckpt / "previous.pt") == 4

    # Resume cleanly from the SIGTERM checkpoint; SIGUSR1 during the validation of epoch 1
    # lets the validation finish and saves the end of the epoch.
    run = cli.start(arg)
    assert int(run.wait_for(RESUMED)[2]) == stopped_at
    run.wait_for(r"epoch 1: validating")
    run.signal(signal.SIGUSR1)
    done = run.finish()
    assert done.returncode == EXIT_RESUMABLE, done.stderr
    assert "interrupted by SIGUSR1 at iteration 8" in done.stderr
    assert _iteration(ckpt / "latest.pt") == 8
    assert len(read_metric_rows(run_dir / "metrics.csv")) == 2

    # Truncate latest.pt: it is reported in one line, moved aside, and previous.pt is used.
    data = (ckpt / "latest.pt").read_bytes()
    (ckpt / "latest.pt").write_bytes(data[: len(data) // 2])
    done = cli.run(arg)
    assert done.returncode == 0, done.stderr
    reports = [line for line in done.stderr.splitlines() if "is unreadable" in line]
    assert len(reports) == 1 and "latest.pt" in reports[0], done.stderr
    aside = list(ckpt.glob("latest.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == data[: len(data) // 2]
    assert aside[0].name in reports[0]
    resumed = [line for line in done.stderr.splitlines() if "resumed from" in line]
    assert resumed and "previous.pt at iteration " + str(stopped_at) in resumed[0], done.stderr
    _assert_same_as_reference(run_dir, reference_run)


@pytest.fixture(scope="module")
def interrupted_dir(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir holding a checkpoint after iteration >= 1 (stopped by SIGTERM); copy, don't use."""
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    run = cli.start(f"hydra.run.dir={run_dir}", "run.checkpoint_every_iters=1")
    _wait_until((run_dir / "checkpoints" / "latest.pt").exists, run, "the first checkpoint")
    run.signal(signal.SIGTERM)
    done = run.finish()
    assert done.returncode == EXIT_RESUMABLE, done.stderr
    return run_dir


def test_second_process_is_refused_and_stale_lock_taken_over(
    cli: Cli, interrupted_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted_dir, run_dir)
    arg = f"hydra.run.dir={run_dir}"
    first = cli.start(arg)
    first.wait_for(RESUMED)  # it holds the lock now
    first.signal(signal.SIGSTOP)  # keep it holding the lock while the second one tries
    try:
        second = cli.run(arg)
    finally:
        first.kill()  # a dead holder: its lock file stays, its flock is gone
    assert second.returncode == 2, second.stderr
    assert "Traceback" not in second.stderr
    holder = f"pid {first.proc.pid} on host {socket.gethostname()}"
    assert f"in use by {holder}" in second.stderr, second.stderr

    # A stale lock file naming a dead process (no flock held) is taken over.
    (run_dir / ".lock").write_text(f"{holder}\n")
    third = cli.start(arg)
    third.wait_for(f"taking over the lock left by {holder}")
    resumed_at = int(third.wait_for(RESUMED)[2])
    third.signal(signal.SIGINT)  # finish the iteration, checkpoint, exit 75
    done = third.finish()
    assert done.returncode == EXIT_RESUMABLE, done.stderr
    stopped = int(_search(done.stderr, r"interrupted by SIGINT at iteration (\d+)"))
    assert stopped >= resumed_at  # an iteration under way is finished first
    assert _iteration(run_dir / "checkpoints" / "latest.pt") == stopped
    assert (run_dir / ".lock").read_text() == ""  # released on exit


def test_config_change_refused_unless_allowed(
    cli: Cli, interrupted_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted_dir, run_dir)
    arg = f"hydra.run.dir={run_dir}"
    config_before = (run_dir / "config.yaml").read_text()
    latest = run_dir / "checkpoints" / "latest.pt"
    latest_before = latest.read_bytes()

    # eval.batch_size and run.* keys do not change the numbers: they are not reported.
    done = cli.run(arg, "algorithm.meta_lr=0.002", "eval.batch_size=3")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    assert "algorithm.meta_lr: 0.001 -> 0.002" in errors[0]
    assert "run.allow_config_change=true" in errors[0]
    assert "eval.batch_size" not in errors[0]
    assert (run_dir / "config.yaml").read_text() == config_before
    assert latest.read_bytes() == latest_before

    run = cli.start(arg, "algorithm.meta_lr=0.002", "run.allow_config_change=true")
    run.wait_for(RESUMED)
    run.signal(signal.SIGTERM)
    done = run.finish()
    assert done.returncode == EXIT_RESUMABLE, done.stderr
    assert "meta_lr: 0.002" in (run_dir / "config.yaml").read_text()


def _flip_tensor_byte(path: Path) -> bytes:
    """One bit flipped in the largest tensor record (stored uncompressed); the new bytes."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        record = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    off = record.header_offset
    names = int.from_bytes(data[off + 26 : off + 28], "little")
    extra = int.from_bytes(data[off + 28 : off + 30], "little")
    data[off + 30 + names + extra + record.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return bytes(data)


def test_flipped_byte_falls_back_and_old_checkpoints_resume(
    cli: Cli, interrupted_dir: Path, tmp_path: Path
) -> None:
    """latest.pt with one flipped bit in its weights (which torch.load accepts) is reported and
    moved aside like a truncated file; previous.pt, rewritten as mamlpp wrote checkpoints
    before they carried a checksum, still resumes."""
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted_dir, run_dir)
    ckpt = run_dir / "checkpoints"
    previous = torch.load(ckpt / "previous.pt", map_location="cpu", weights_only=True)
    del previous[checksum.KEY]
    torch.save(previous, ckpt / "previous.pt")
    flipped = _flip_tensor_byte(ckpt / "latest.pt")
    torch.load(ckpt / "latest.pt", weights_only=True)  # PyTorch alone would not notice

    run = cli.start(f"hydra.run.dir={run_dir}")
    report = run.wait_for(r"latest.pt is corrupt: .*checksum.*; moved it to (\S+), trying")
    resumed = run.wait_for(RESUMED + r" \(an older checkpoint: no checksum\)")
    assert resumed[1].endswith("previous.pt")
    assert int(resumed[2]) == previous["progress"]["next_iteration"]
    run.signal(signal.SIGTERM)
    done = run.finish()
    assert done.returncode == EXIT_RESUMABLE, done.stderr
    assert "Traceback" not in done.stderr
    assert (ckpt / report[1]).read_bytes() == flipped  # kept for inspection, never deleted


def test_no_valid_checkpoint(cli: Cli, tmp_path: Path) -> None:
    """Garbage latest.pt and previous.pt: resume=must refuses, resume=auto starts afresh."""
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "latest.pt").write_bytes(b"garbage" * 100)
    (ckpt / "previous.pt").write_bytes(b"")
    arg = f"hydra.run.dir={run_dir}"

    done = cli.run(arg, "run.resume=must")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if "is unreadable" in line]) == 2
    assert "run.resume=must" in done.stderr
    assert sorted(p.name.split(".corrupt-")[0] for p in ckpt.iterdir()) == [
        "latest.pt",
        "previous.pt",
    ]
    assert not (ckpt / "latest.pt").exists()  # moved aside, never deleted

    (ckpt / "latest.pt").write_bytes(b"garbage again")
    run = cli.start(arg)  # run.resume=auto
    run.wait_for("is unreadable")
    run.wait_for("starting from scratch")
    _wait_until((ckpt / "latest.pt").exists, run, "a fresh checkpoint")
    run.signal(signal.SIGTERM)
    done = run.finish()
    assert done.returncode == EXIT_RESUMABLE, done.stderr
    assert _iteration(ckpt / "latest.pt") >= 1
    assert len(list(ckpt.glob("latest.pt.corrupt-*"))) == 2


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every output file (Hydra's own files and the lock aside)."""
    skip = (".hydra", "train.log", ".lock")
    files = (p for p in run_dir.rglob("*") if p.is_file())
    return {
        str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in files
        if not str(p.relative_to(run_dir)).startswith(skip)
    }


def test_finished_run_is_not_retrained(cli: Cli, reference_run: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run["dir"], run_dir)
    arg = f"hydra.run.dir={run_dir}"
    before = _snapshot(run_dir)
    table = format_results(reference_run["results"])
    assert table in reference_run["stdout"]

    start = time.perf_counter()
    done = cli.run(arg)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert "run already finished" in done.stderr
    assert table in done.stdout
    assert "validating" not in done.stderr and "train loss" not in done.stderr  # no training
    assert _snapshot(run_dir) == before  # no new checkpoints, events, metrics or results
    print(
        f"\nre-run of a finished run: {seconds:.1f}s (the run itself took "
        f"{reference_run['seconds']:.1f}s)"
    )

    # A finished run re-run with another experiment config is refused, not silently reported:
    # also with run.allow_config_change=true, whose results would not be this config's.
    for allow in ("false", "true"):
        done = cli.run(arg, "algorithm.meta_lr=0.002", f"run.allow_config_change={allow}")
        assert done.returncode == 2, done.stderr
        errors = error_lines(done.stderr)
        assert len(errors) == 1 and "algorithm.meta_lr: 0.001 -> 0.002" in errors[0], done.stderr
        assert table not in done.stdout
    assert _snapshot(run_dir) == before

    done = cli.run(arg, "run.retest=true")
    assert done.returncode == 0, done.stderr
    assert "testing the top-2 models" in done.stderr
    assert "validating" not in done.stderr
    assert table in done.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert result_accuracies(results) == result_accuracies(reference_run["results"])
    after = _snapshot(run_dir)
    assert {k: v for k, v in after.items() if k.startswith("checkpoints")} == {
        k: v for k, v in before.items() if k.startswith("checkpoints")
    }
    scalars = read_scalars(run_dir / "tb")
    assert [s for s, _ in scalars["test/acc"]] == [TINY_ITERATIONS + 1]  # replaced, not added
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, TINY_ITERATIONS + 1))
