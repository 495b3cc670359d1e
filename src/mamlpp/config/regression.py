"""The regression task family's components (the `dataset` and `model` sections): the MAML
paper's sinusoid tasks (mamlpp.data.sinusoid) and the MLP that regresses them (mamlpp.nn.mlp).
They go together: a sinusoid task's inputs are vectors, which only model=mlp takes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mamlpp.config.backbones import PER_STEP_BN_KEYS
from mamlpp.config.checks import check
from mamlpp.config.registry import ComponentConfig, register

if TYPE_CHECKING:
    from mamlpp.config.schema import Config

MLP_ACTIVATIONS = ("relu", "leaky_relu", "tanh")


def _check_range(key: str, values: list[float]) -> None:
    check(
        len(values) == 2 and values[0] <= values[1],
        key,
        list(values),
        "[low, high] with low <= high",
    )


@dataclass
class SinusoidConfig(ComponentConfig):
    """y = A sin(x - phase): [low, high] of the amplitude, the phase and the inputs; task.shots
    support and task.targets target points per task (task.ways is not read)."""

    name: str = "sinusoid"
    amplitude: list[float] = field(default_factory=lambda: [0.1, 5.0])
    phase: list[float] = field(default_factory=lambda: [0.0, math.pi])
    input_range: list[float] = field(default_factory=lambda: [-5.0, 5.0])

    def validate(self, cfg: Config) -> None:
        check(
            self._target_ is None, "dataset._target_", self._target_, "null with dataset=sinusoid"
        )
        check(
            cfg.model.name == "mlp",
            "model.name",
            cfg.model.name,
            "mlp with dataset=sinusoid (vector inputs)",
        )
        for key in ("amplitude", "phase", "input_range"):
            _check_range(f"dataset.{key}", getattr(self, key))


@dataclass
class MlpConfig(ComponentConfig):
    """Fully connected layers for vector inputs: the widths of the hidden layers and their
    activation (the MAML paper's sinusoid regressor: [40, 40], relu)."""

    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [40, 40])
    activation: str = "relu"

    def validate(self, cfg: Config) -> None:
        check(self._target_ is None, "model._target_", self._target_, "null with model=mlp")
        check(
            cfg.dataset.name == "sinusoid",
            "model.name",
            "mlp",
            f"conv4, resnet12 or module with dataset={cfg.dataset.name} (model=mlp takes "
            "vectors: dataset=sinusoid)",
        )
        check(
            len(self.hidden) >= 1 and all(w >= 1 for w in self.hidden),
            "model.hidden",
            list(self.hidden),
            "a list of positive layer widths",
        )
        check(
            self.activation in MLP_ACTIVATIONS,
            "model.activation",
            self.activation,
            "|".join(MLP_ACTIVATIONS),
        )
        for key in PER_STEP_BN_KEYS:
            check(
                not getattr(cfg.algorithm, key),
                f"algorithm.{key}",
                True,
                "false with model=mlp (it has no batch norm)",
            )
        check(not cfg.speed.cuda_graphs, "speed.cuda_graphs", True, "false with model=mlp")
        check(
            cfg.algorithm.name != "protomaml",
            "algorithm.name",
            cfg.algorithm.name,
            "not protomaml with model=mlp (regression tasks have no classes to make prototypes of)",
        )


register("dataset", "sinusoid", SinusoidConfig)
register("model", "mlp", MlpConfig)
