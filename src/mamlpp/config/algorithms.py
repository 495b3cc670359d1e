"""The built-in algorithms' configs (the `algorithm` section): each one's keys and checks.

An algorithm is a component like a backbone: a config dataclass registered under its name
(here, so that checking a config never imports torch) and the learner class that runs it,
attached where it lives (mamlpp.algorithms). A learner of one's own registers both at once:

    @register_algorithm("my_maml", config=MyMamlConfig)   # MyMamlConfig(AlgorithmConfig)
    class MyMaml(Learner): ...

with `algorithm._target_: my_package.my_maml` in its YAML. `AlgorithmConfig` holds what every
MAML-style learner and the runtime's outer step read; an algorithm with keys of its own (the
fine-tuning baselines' `finetune_steps`) or checks of its own derives from it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from mamlpp.config.backbones import PER_STEP_BN_KEYS
from mamlpp.config.checks import check
from mamlpp.config.paths import conf_dir
from mamlpp.config.registry import ComponentConfig, component, register

if TYPE_CHECKING:
    from mamlpp.config.schema import Config

# conf/config.yaml's default algorithm group option.
DEFAULT_ALGORITHM = "mamlpp"
# mamlpp.algorithms.adaptation reads them; any other value is a glob over parameter names.
ADAPT_MODES = ("all", "head", "body")
# Switches of a learned or per-step inner loop, which algorithms without one refuse.
INNER_LOOP_SWITCHES = ("learn_inner_lr", "per_element_lr", "multi_step_loss")


@dataclass
class InnerRuleConfig:
    """The inner update rule (mamlpp.algorithms.inner_lr.InnerRule), built as
    `_target_(shapes, num_steps, init_lr=algorithm.inner_lr, **kwargs)`; empty: the built-in
    rule of learn_inner_lr / per_element_lr (fixed, LSLR, Meta-SGD)."""

    _target_: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlgorithmConfig(ComponentConfig):
    """What every MAML-style learner (mamlpp.algorithms.learner) and the outer step read. The
    defaults have every MAML++ switch off; conf/algorithm/<name>.yaml sets an algorithm's."""

    name: str = "mamlpp"
    inner_steps: int = 5
    inner_steps_eval: int = 5
    inner_lr: float = 0.1
    second_order: bool = True
    # Derivative-order annealing: first order while epoch < first_order_epochs (0: never).
    first_order_epochs: int = 0
    # Multi-step loss: weighted target loss after every step while epoch < msl_epochs.
    multi_step_loss: bool = False
    msl_epochs: int = 10
    # Learned per-layer per-step inner learning rates, initialised to inner_lr.
    learn_inner_lr: bool = False
    per_step_bn_stats: bool = False
    per_step_bn_weights: bool = False
    # Normalise with the (per-step) running statistics at evaluation instead of batch statistics.
    use_running_stats_eval: bool = False
    # Adapt batch-norm affine parameters in the inner loop as well (off in MAML++'s code).
    inner_adapt_bn: bool = False
    # Which weights the inner loop adapts: all | head (ANIL) | body (BOIL).
    adapt: str = "all"
    # Meta-SGD: a learned inner learning rate per parameter element (shared by the steps),
    # initialised to inner_lr; replaces LSLR's per-layer per-step rates.
    per_element_lr: bool = False
    inner_rule: InnerRuleConfig = field(default_factory=InnerRuleConfig)
    meta_lr: float = 0.001
    cosine_meta_lr: bool = False
    # Anneal meta_lr linearly to min_meta_lr over training (Reptile's outer step size).
    linear_meta_lr: bool = False
    # true: the cosine rate changes once per epoch (a staircase), as in the published MAML++
    # code; false: every iteration.
    cosine_per_epoch: bool = False
    min_meta_lr: float = 0.00001
    # Clamp every meta-gradient element to [-grad_clip, grad_clip] before the Adam step.
    grad_clip: float | None = None
    # true: clamp only the network's meta-gradients, not those of the learned inner learning
    # rates (LSLR, Meta-SGD), as the published MAML++ code does; false: clamp all of them.
    grad_clip_network_only: bool = False

    def validate(self, cfg: Config) -> None:
        a = self
        check(
            a.adapt in ADAPT_MODES or any(c in a.adapt for c in "*?["),
            "algorithm.adapt",
            a.adapt,
            f"one of {ADAPT_MODES} or a glob over parameter names such as 'convs.3.*'",
        )
        check(
            not (a.per_element_lr and a.learn_inner_lr),
            "algorithm.per_element_lr",
            True,
            "false with algorithm.learn_inner_lr=true (Meta-SGD's per-element rates replace "
            "LSLR's per-layer ones: choose one)",
        )
        check(
            not (a.adapt == "head" and a.inner_adapt_bn),
            "algorithm.inner_adapt_bn",
            True,
            "false with algorithm.adapt=head (batch norm is part of the body, which ANIL keeps "
            "fixed in the inner loop)",
        )
        check(a.inner_steps >= 1, "algorithm.inner_steps", a.inner_steps, ">= 1")
        check(a.inner_steps_eval >= 1, "algorithm.inner_steps_eval", a.inner_steps_eval, ">= 1")
        check(a.inner_lr > 0, "algorithm.inner_lr", a.inner_lr, "> 0")
        check(a.meta_lr > 0, "algorithm.meta_lr", a.meta_lr, "> 0")
        check(
            0 <= a.min_meta_lr <= a.meta_lr,
            "algorithm.min_meta_lr",
            a.min_meta_lr,
            f"0 <= min_meta_lr <= meta_lr ({a.meta_lr})",
        )
        check(
            a.first_order_epochs >= 0,
            "algorithm.first_order_epochs",
            a.first_order_epochs,
            ">= 0",
        )
        check(a.msl_epochs >= 0, "algorithm.msl_epochs", a.msl_epochs, ">= 0")
        check(
            a.grad_clip is None or a.grad_clip > 0,
            "algorithm.grad_clip",
            a.grad_clip,
            "null or > 0",
        )
        check(
            not a.cosine_per_epoch or a.cosine_meta_lr,
            "algorithm.cosine_per_epoch",
            True,
            "false unless algorithm.cosine_meta_lr=true (it shapes the cosine schedule)",
        )
        check(
            not (a.linear_meta_lr and a.cosine_meta_lr),
            "algorithm.linear_meta_lr",
            True,
            "false with algorithm.cosine_meta_lr=true (one meta_lr schedule: choose one)",
        )
        check(
            not a.grad_clip_network_only or a.grad_clip is not None,
            "algorithm.grad_clip_network_only",
            True,
            "false unless algorithm.grad_clip is set (it chooses what the clip applies to)",
        )


@dataclass
class FirstOrderConfig(AlgorithmConfig):
    """FOMAML: MAML without the second-order terms."""

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        check(
            not self.second_order,
            "algorithm.second_order",
            True,
            f"false with algorithm.name={self.name} (first-order MAML)",
        )


@dataclass
class ReptileConfig(AlgorithmConfig):
    """Reptile (mamlpp.algorithms.reptile): its meta-update has no gradient for learned inner
    rates nor per-step losses."""

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        for key in INNER_LOOP_SWITCHES:
            check(
                not getattr(self, key),
                f"algorithm.{key}",
                True,
                f"false with algorithm.name={self.name}",
            )


@dataclass
class FineTuneConfig(AlgorithmConfig):
    """Chen et al.'s baselines (mamlpp.algorithms.finetune_baseline): a classifier of the
    training split's classes (their count comes from the split: Omniglot), with a linear head
    to replace; no inner loop."""

    # Fine-tuning of each task's new head: SGD steps and step size.
    finetune_steps: int = 100
    finetune_lr: float = 0.01

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        d, m = cfg.dataset, cfg.model
        check(self.finetune_steps >= 1, "algorithm.finetune_steps", self.finetune_steps, ">= 1")
        check(self.finetune_lr > 0, "algorithm.finetune_lr", self.finetune_lr, "> 0")
        check(
            d.name == "omniglot",
            "dataset.name",
            d.name,
            f"omniglot with algorithm={self.name} (its classifier has one output per training "
            "class)",
        )
        check(
            m.name in ("conv4", "resnet12"),
            "model.name",
            m.name,
            f"conv4 or resnet12 with algorithm={self.name} (a backbone with a linear head)",
        )
        for key in (*PER_STEP_BN_KEYS, *INNER_LOOP_SWITCHES):
            check(
                not getattr(self, key),
                f"algorithm.{key}",
                True,
                f"false with algorithm={self.name} (no inner loop: it pre-trains, then "
                "fine-tunes a head)",
            )
        check(
            self.adapt == "all",
            "algorithm.adapt",
            self.adapt,
            f"all with algorithm={self.name} (fine-tuning always trains a new head on fixed "
            "features)",
        )


for _name in ("maml", "mamlpp", "anil", "boil", "metasgd", "protomaml"):
    register("algorithm", _name, AlgorithmConfig)
register("algorithm", "fomaml", FirstOrderConfig)
register("algorithm", "reptile", ReptileConfig)
register("algorithm", "baseline", FineTuneConfig)
register("algorithm", "baseline_pp", FineTuneConfig)


@functools.cache
def _algorithm_yaml(name: str) -> dict[str, Any]:
    data = OmegaConf.to_container(OmegaConf.load(Path(conf_dir()) / "algorithm" / f"{name}.yaml"))
    assert isinstance(data, dict), name  # a config group option is a mapping
    return {str(k): v for k, v in data.items() if k != "defaults"}


def default_algorithm() -> AlgorithmConfig:
    """MAML++ with every feature on, read from its group option (conf/algorithm/mamlpp.yaml):
    the algorithm conf/config.yaml chooses. AlgorithmConfig() itself has every switch off."""
    return algorithm_config(**_algorithm_yaml(DEFAULT_ALGORITHM))


def algorithm_config(name: str = "maml", **keys: Any) -> AlgorithmConfig:
    """The config of the registered algorithm `name` with `keys` set (for use in Python)."""
    config: Any = component("algorithm", name).config  # an algorithm's config has `name`
    return config(**{**keys, "name": name})
