"""Shared fixtures: tiny meta-learners and synthetic episode batches (CPU, a few ms each)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from mamlpp.algorithms.meta_learner import EpisodeBatch, MetaLearner
from mamlpp.config import AlgorithmConfig, model_config

WAYS = 3
IMAGE_SIZE = 8
# Every MAML++ switch on (AlgorithmConfig overrides), 3 inner steps.
MAMLPP_ALL = dict(
    second_order=True,
    multi_step_loss=True,
    msl_epochs=10,
    learn_inner_lr=True,
    per_step_bn_stats=True,
    per_step_bn_weights=True,
    inner_adapt_bn=True,
    use_running_stats_eval=True,
    cosine_meta_lr=True,
    inner_steps=3,
)


def _make_learner(
    *,
    seed: int = 0,
    filters: int = 4,
    stages: int = 2,
    norm: str = "batch_norm",
    image_size: int = IMAGE_SIZE,
    ways: int = WAYS,
    total_iterations: int = 100,
    impl: str = "batched",
    bn_momentum: float = 0.1,
    iters_per_epoch: int = 0,
    **algorithm: object,
) -> MetaLearner:
    """A tiny Conv4 meta-learner; `algorithm` overrides AlgorithmConfig fields."""
    algorithm.setdefault("inner_steps", 2)
    algorithm.setdefault("inner_steps_eval", algorithm["inner_steps"])
    torch.manual_seed(seed)
    model = model_config(filters=filters, stages=stages, norm=norm, bn_momentum=bn_momentum)
    return MetaLearner(
        AlgorithmConfig(**algorithm),
        model,
        1,
        image_size,
        ways,
        total_iterations,
        impl=impl,
        iters_per_epoch=iters_per_epoch,
    )


def _make_batch(
    *,
    tasks: int = 3,
    ways: int = WAYS,
    shots: int = 2,
    targets: int = 2,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> EpisodeBatch:
    """Random images; labels 0..N-1 in a different random order per task."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, image_size, image_size)
    xs = torch.randn(tasks, ways * shots, *shape, generator=g, dtype=dtype)
    xt = torch.randn(tasks, ways * targets, *shape, generator=g, dtype=dtype)
    perms = [torch.randperm(ways, generator=g) for _ in range(tasks)]
    ys = torch.stack([p.repeat_interleave(shots) for p in perms])
    yt = torch.stack([p.repeat_interleave(targets) for p in perms])
    return EpisodeBatch(xs, ys, xt, yt)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids OpenMP contention on a busy 2-core machine
    (tens of times faster there). Opt in with `pytestmark = pytest.mark.usefixtures(...)`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_learner() -> Callable[..., MetaLearner]:
    return _make_learner


@pytest.fixture
def make_batch() -> Callable[..., EpisodeBatch]:
    return _make_batch


# --------------------------------------------------------------------------- CLI end-to-end runs
# Used by test_cli.py and test_resume.py: real `python -m mamlpp.train` subprocesses on real
# Omniglot with a tiny config (2 epochs x 4 iterations, 1 inner step, 20 val / 40 test tasks).

import json  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
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


@pytest.fixture(scope="session")
def omniglot_source_dir() -> Path:
    """The Omniglot zips: $MAMLPP_OMNIGLOT_SOURCE or <repo>/../shared/datasets/omniglot."""
    env = os.environ.get("MAMLPP_OMNIGLOT_SOURCE")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "datasets" / "omniglot"
    missing = [n for n in OMNIGLOT_ZIPS if not (path / n).is_file()]
    if missing:
        pytest.fail(
            f"Omniglot zips {missing} not found in {path}; set MAMLPP_OMNIGLOT_SOURCE to a "
            "directory holding images_background.zip and images_evaluation.zip"
        )
    return path


@pytest.fixture(scope="session")
def omniglot_data_dir(omniglot_source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decoded cache for the whole session, built once here (not by racing CLI runs)."""
    from mamlpp.data.omniglot import load_omniglot

    data_dir = tmp_path_factory.mktemp("cli_omniglot")
    load_omniglot(data_dir, source=omniglot_source_dir)
    return data_dir


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

    def start(self, *args: str, cwd: Path | None = None, tiny: bool = True) -> CliRun:
        proc = subprocess.Popen(
            self.command(*args, tiny=tiny),
            cwd=cwd or self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return CliRun(proc)

    def run(
        self, *args: str, cwd: Path | None = None, tiny: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        return self.start(*args, cwd=cwd, tiny=tiny).finish(timeout)

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


@pytest.fixture(scope="session")
def cli(
    omniglot_source_dir: Path, omniglot_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Cli:
    return Cli(omniglot_source_dir, omniglot_data_dir, tmp_path_factory.mktemp("cli_cwd"))


@pytest.fixture(scope="session")
def reference_run(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted tiny run (hydra.run.dir=<tmp>/ref); do not modify its directory.

    It starts in an empty working directory, `cwd`, which must stay empty.
    """
    base = tmp_path_factory.mktemp("reference")
    run_dir, cwd = base / "ref", base / "cwd"
    cwd.mkdir()
    start = time.perf_counter()
    done = cli.run(f"hydra.run.dir={run_dir}", cwd=cwd)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    return {
        "cwd": cwd,
        "dir": run_dir,
        "stdout": done.stdout,
        "stderr": done.stderr,
        "seconds": seconds,
        "results": json.loads((run_dir / "results.json").read_text()),
    }


def read_metric_rows(path: Path) -> list[dict[str, str]]:
    """metrics.csv rows restricted to METRIC_COLUMNS (exact strings, no float parsing)."""
    import csv

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


# Fixtures that start mamlpp processes or train through the CLI: a test that uses one belongs to
# the slow tier (`make test` runs everything; `make test-fast` runs `-m "not slow"`).
PROCESS_FIXTURES = frozenset({"cli", "reference_run", "sweep", "submitit_reference"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The text of a raised mamlpp error, which must be one non-empty line."""
    text = str(exc.value)
    assert "\n" not in text and text, repr(text)
    return text


def eval_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """mamlpp-eval in-process on bad input: exit code 2 and exactly one stderr line, returned."""
    from mamlpp.evaluate import main as eval_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        eval_main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("mamlpp-eval: error: "), err
    return err[0]
