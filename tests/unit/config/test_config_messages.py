"""Config mistakes as the command line makes them, checked in-process: `mamlpp.compose` runs the
composition, schema and validation that `mamlpp-train` runs, and raises the ConfigError whose
one line the CLI prints (integration/cli/test_cli.py checks that line and the exit code once,
in a subprocess)."""

from __future__ import annotations

import pytest

import mamlpp
from helpers.errors import one_line
from mamlpp.errors import ConfigError

BASE = ("experiment=smoke", "device=cpu")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("task.ways=500",), ("task.ways", "500")),
        (("task.shots=15", "task.targets=6"), ("task.shots", "shots + targets <= 20")),
        (("algorithm.meta_lr=-1",), ("algorithm.meta_lr", "> 0")),
        (("algorithm=foo",), ("algorithm=foo", "maml", "fomaml", "mamlpp")),
        (("algorithm.inner_stepz=3",), ("algorithm.inner_stepz", "did you mean")),
        (("train.precision=fp16",), ("train.precision", "fp16", "NaN")),
        (("+algorithm.inner_lrr=0.5",), ("algorithm.inner_lrr", "did you mean algorithm.inner_lr")),
        (("++train.epochz=3",), ("train.epochz", "did you mean train.epochs")),
        (("+shots=5",), ("'shots'",)),
    ],
    ids=[
        "ways",
        "shots_targets",
        "negative_lr",
        "unknown_algorithm",
        "typo_key",
        "fp16",
        "added_key",
        "force_added_key",
        "added_top_level_key",
    ],
)
def test_config_mistakes_are_one_line_naming_the_key(
    args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    """speed.cuda_graphs on a CPU is refused where the device is known, not by compose (see
    unit/algorithms/test_speed_options.py::test_cuda_only_switches_on_cpu)."""
    with pytest.raises(ConfigError) as err:
        mamlpp.compose(*BASE, *args)
    line = one_line(err)
    for needle in needles:
        assert needle in line, (needle, line)


def test_the_same_overrides_without_the_mistake_compose() -> None:
    """The base of the cases above is itself valid: each case fails for its own override."""
    cfg = mamlpp.compose(*BASE)
    assert cfg.task.ways == 5 and cfg.algorithm.meta_lr > 0
