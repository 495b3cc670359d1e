"""Shared fixtures: tiny meta-learners and synthetic episode batches (CPU, a few ms each), the
session's Omniglot and CLI runner, and the rule that puts every test that starts mamlpp
processes in the slow tier. Plain helpers live in tests/helpers/."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from helpers.cli import (
    METRIC_COLUMNS,
    OMNIGLOT_ZIPS,
    TINY_ARGS,
    TINY_ITERATIONS,
    Cli,
    CliRun,
    read_metric_rows,
    read_scalars,
    result_accuracies,
)
from helpers.errors import eval_error, one_line
from helpers.paths import REPO_ROOT, SHARED
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
# Real `python -m mamlpp.train` subprocesses on real Omniglot with a tiny config (helpers/cli.py).

# Names tests imported from conftest before tests/helpers/ existed; new tests import helpers.
__all__ = [
    "IMAGE_SIZE",
    "MAMLPP_ALL",
    "METRIC_COLUMNS",
    "REPO_ROOT",
    "TINY_ARGS",
    "TINY_ITERATIONS",
    "WAYS",
    "Cli",
    "CliRun",
    "eval_error",
    "one_line",
    "read_metric_rows",
    "read_scalars",
    "result_accuracies",
]


@pytest.fixture(scope="session")
def omniglot_source_dir() -> Path:
    """The Omniglot zips: $MAMLPP_OMNIGLOT_SOURCE or <repo>/../shared/datasets/omniglot."""
    env = os.environ.get("MAMLPP_OMNIGLOT_SOURCE")
    path = Path(env) if env else SHARED / "datasets" / "omniglot"
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


# Fixtures that start mamlpp processes or train through the CLI, or decode all of real Omniglot
# (32,460 PNGs): a test that uses one belongs to the slow tier (`make test` runs everything;
# `make test-fast` runs `-m "not slow"`, in-process on synthetic data and small real samples).
SLOW_FIXTURES = frozenset(
    {"cli", "reference_run", "sweep", "submitit_reference", "omniglot_data_dir", "real_omniglot"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
