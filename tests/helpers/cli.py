"""The CLI as a user runs it: `python -m mamlpp.train` subprocesses on real Omniglot with a tiny
config, and readers for what a run writes (metrics.csv, results.json, TensorBoard scalars)."""

from __future__ import annotations

import csv
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

OMNIGLOT_ZIPS = ("images_background.zip", "images_evaluation.zip")

# eval.top_k=3 > train.epochs=2: the test phase must cope with fewer epochs than k. Smoke's
# 20 validation / 40 test tasks are kept so that a kill aimed at those phases lands in them.
TINY_ARGS = (
    "experiment=smoke",
    "device=cpu",
    "progress_bar=false",
    "algorithm.inner_steps=1",
    "train.meta_batch_size=2",
    "eval.top_k=3",
)
TINY_ITERATIONS = 8  # smoke: 2 epochs x 4 iterations
# metrics.csv columns that must match between runs (the rest are wall-clock times).
METRIC_COLUMNS = (
    "epoch",
    "iteration",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "meta_lr",
    "second_order",
    "multi_step_loss",
)


@dataclass
class CliRun:
    """A running `python -m mamlpp.train`; reader threads collect its stdout and stderr."""

    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    out_lines: list[str] = field(default_factory=list)
    _queue: queue.Queue = field(default_factory=queue.Queue)
    _seen: int = 0

    def __post_init__(self) -> None:
        self._threads = [
            threading.Thread(target=self._read_err, daemon=True),
            threading.Thread(target=self._read_out, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out_lines.append(line)

    def _drain(self, timeout: float) -> bool:
        """Move one line (waiting up to `timeout`) into `lines`; False at end of stream."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            return True
        if line is None:
            self._queue.put(None)
            return False
        self.lines.append(line)
        return True

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        """Block until a new stderr line matches `pattern` (regex); fail if the run ends first."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            while self._seen < len(self.lines):
                match = regex.search(self.lines[self._seen])
                self._seen += 1
                if match:
                    return match
            if not self._drain(0.02) and self._seen == len(self.lines):
                self.proc.wait()
                pytest.fail(
                    f"run ended (rc {self.proc.returncode}) before a line matching {pattern!r}:\n"
                    + self.stderr
                )
        self.proc.kill()
        pytest.fail(f"no line matching {pattern!r} within {timeout}s:\n{self.stderr}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess:
        """Wait for the exit; return it with all of stdout and stderr."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._threads:
            t.join(timeout=10)
        while self._drain(0):
            pass
        stdout = "".join(self.out_lines)
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, stdout, self.stderr
        )

    def kill(self) -> subprocess.CompletedProcess:
        """SIGKILL (no chance to clean up) and reap."""
        self.proc.send_signal(signal.SIGKILL)
        return self.finish()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


class Cli:
    """Starts the CLI as a subprocess with the session's Omniglot source and cache.

    Runs start in `cwd` (a scratch directory, never the checkout) unless told otherwise.
    """

    def __init__(self, source: Path, data_dir: Path, cwd: Path) -> None:
        self.data_args = [f"dataset.source={source}", f"dataset.data_dir={data_dir}"]
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env.pop("HYDRA_FULL_ERROR", None)

    def command(self, *args: str, tiny: bool = True) -> list[str]:
        base = [*TINY_ARGS, *self.data_args] if tiny else []
        return [sys.executable, "-m", "mamlpp.train", *base, *args]

    def start(
        self,
        *args: str,
        cwd: Path | None = None,
        tiny: bool = True,
        env: dict[str, str] | None = None,
    ) -> CliRun:
        """`env`: the whole environment of the run (default: this runner's)."""
        proc = subprocess.Popen(
            self.command(*args, tiny=tiny),
            cwd=cwd or self.cwd,
            env=self.env if env is None else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return CliRun(proc)

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        tiny: bool = True,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        return self.start(*args, cwd=cwd, tiny=tiny, env=env).finish(timeout)

    def start_script(
        self, script: Path, run_dir: Path, *overrides: str, cwd: Path, timeout: float
    ) -> subprocess.Popen:
        """A generated experiment script (in its own session) training into `run_dir` with the
        installed mamlpp-train, returned once its first checkpoint exists."""
        train = Path(sys.executable).with_name("mamlpp-train")
        assert train.exists(), "the package's console script must be installed next to python"
        args = (*overrides, *self.data_args, f"hydra.run.dir={run_dir}")
        proc = subprocess.Popen(
            ["bash", str(script), "--", *args],
            cwd=cwd,
            env={**self.env, "MAMLPP_TRAIN": str(train)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not (run_dir / "checkpoints" / "latest.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        return proc


def read_metric_rows(path: Path) -> list[dict[str, str]]:
    """metrics.csv rows restricted to METRIC_COLUMNS (exact strings, no float parsing)."""
    with open(path, newline="") as f:
        return [{k: row[k] for k in METRIC_COLUMNS} for row in csv.DictReader(f)]


def result_accuracies(results: dict) -> dict:
    """The numbers of results.json that must be reproduced exactly."""
    return {
        "test_accuracy_mean": results["test_accuracy_mean"],
        "test_accuracy_ci95": results["test_accuracy_ci95"],
        "best_val_accuracy": results["best_val_accuracy"],
        "num_test_tasks": results["num_test_tasks"],
        "per_model": results["per_model"],
    }


def read_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar events under `tb_dir`, as TensorBoard shows them (purged steps dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
