"""The config schema: one dataclass per section of `conf/config.yaml`.

`Config()` is what `conf/config.yaml` composes to without overrides (tests/test_presets.py checks
it field by field). The sections a group option chooses a component for (`model`, `dataset`,
`logger`) hold that component's own config dataclass (mamlpp.config.registry); Hydra composes
them loosely and mamlpp.config.compose checks them against it. Ranges and cross-field
constraints are mamlpp.config.validation's job.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mamlpp.config.backbones import Conv4Config
from mamlpp.config.datasets import OmniglotConfig
from mamlpp.config.paths import conf_dir
from mamlpp.config.trackers import default_logger

# conf/config.yaml's default algorithm group option.
DEFAULT_ALGORITHM = "mamlpp"


@dataclass
class TaskConfig:
    ways: int = 5
    shots: int = 1
    targets: int = 1


@dataclass
class OptimizerConfig:
    """The meta-optimizer: a torch.optim.Optimizer class taking (params, lr, **kwargs). Its
    learning rate is algorithm.meta_lr, set every iteration by the (cosine) schedule."""

    _target_: str = "torch.optim.Adam"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class InnerRuleConfig:
    """The inner update rule (mamlpp.algorithms.inner_lr.InnerRule), built as
    `_target_(shapes, num_steps, init_lr=algorithm.inner_lr, **kwargs)`; empty: the built-in
    rule of learn_inner_lr / per_element_lr (fixed, LSLR, Meta-SGD)."""

    _target_: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlgorithmConfig:
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
    # (baseline, baseline_pp) fine-tuning of each task's new head: SGD steps and step size.
    finetune_steps: int = 100
    finetune_lr: float = 0.01


@functools.cache
def _algorithm_yaml(name: str) -> dict[str, Any]:
    data = OmegaConf.to_container(OmegaConf.load(Path(conf_dir()) / "algorithm" / f"{name}.yaml"))
    assert isinstance(data, dict), name  # a config group option is a mapping
    return {str(k): v for k, v in data.items()}


def default_algorithm() -> AlgorithmConfig:
    """MAML++ with every feature on, read from its group option (conf/algorithm/mamlpp.yaml):
    the algorithm conf/config.yaml chooses. AlgorithmConfig() itself has every switch off."""
    return AlgorithmConfig(**_algorithm_yaml(DEFAULT_ALGORITHM))


@dataclass
class TrainConfig:
    epochs: int = 100
    iters_per_epoch: int = 500
    meta_batch_size: int = 8
    # auto: batched on every device; loop: one task at a time (reference implementation).
    impl: str = "auto"
    # fp32 | bf16 (autocast of the network's forward passes; losses and weights stay fp32).
    # fp16 is refused: its double backward overflows to NaN.
    precision: str = "fp32"


@dataclass
class EvalConfig:
    val_tasks: int = 600
    test_tasks: int = 600
    top_k: int = 5
    # Tasks evaluated together in one batched forward.
    batch_size: int = 50
    # Seed of the fixed validation/test tasks: the same for every model and training seed.
    task_seed: int = 0


@dataclass
class SpeedConfig:
    """How the meta-step is computed. None of these keys changes the experiment beyond float
    rounding, so a run may resume with different values."""

    # Recompute each inner step's graph during the meta-backward instead of keeping it: peak
    # memory grows with one inner step rather than all of them; about 1.5x the step time on CPU.
    checkpoint_inner_steps: bool = False
    # Channels-last activations (NHWC) for the convolutions.
    channels_last: bool = False
    # CPU: cheaper double backwards for batch norm (closed form) and the grouped convolution
    # (one weight-gradient kernel), and Conv4 max-pools before its activation; the same
    # mathematics with other float32 rounding, so off by default (README, performance).
    fast_kernels: bool = False
    # CUDA only (no effect on CPU): TF32 matmuls and convolutions (false: strict fp32, also for
    # cuDNN, whose PyTorch default is TF32), and cuDNN autotuning of convolution algorithms.
    tf32: bool = False
    cudnn_benchmark: bool = False
    # CUDA only: capture the batched forward+backward of a meta-step once per phase (derivative
    # order, multi-step loss on/off) as a CUDA graph and replay it every iteration.
    cuda_graphs: bool = False


@dataclass
class RunConfig:
    """How a run is kept alive; none of these keys changes the experiment's numbers."""

    # auto: continue from the newest valid checkpoint if any; never: start fresh (old checkpoints
    # are moved aside); must: fail unless a valid checkpoint exists.
    resume: str = "auto"
    # Extra checkpoints inside an epoch (0: off); epoch ends always checkpoint.
    checkpoint_every_iters: int = 0
    checkpoint_every_seconds: float = 0.0
    # Also keep a snapshot every N epochs (0: only latest + top-k are kept).
    keep_every_epochs: int = 0
    # Resume even if experiment keys differ from the checkpoint's config.
    allow_config_change: bool = False
    # Re-run the test phase of a finished run (with the run's own settings only).
    retest: bool = False
    # Distributed runs (torchrun): seconds a collective waits for the other processes before
    # the job fails (a dead process ends the job instead of hanging it).
    collective_timeout_s: float = 600.0
    # The run directory. Set by mamlpp.compose (the directory mamlpp-train would use) and by
    # mamlpp-train itself (Hydra's run dir: move a CLI run with hydra.run.dir=DIR).
    dir: str | None = None


@dataclass
class PathsConfig:
    """Where data and runs live. `conf/config.yaml` reads them from the environment:
    MAMLPP_ROOT (default: the current directory), or MAMLPP_DATA_DIR / MAMLPP_RUNS_DIR."""

    root: str = "."
    data_dir: str = "datasets"
    runs_dir: str = "runs"


@dataclass
class Config:
    experiment_name: str = "default"
    # The value mamlpp-train returns (the objective of a sweeper such as Optuna).
    optimized_metric: str = "val/best_acc"
    seed: int = 0
    device: str = "auto"
    debug: bool = False
    progress_bar: bool = True
    # The chosen dataset's config (an ImageDatasetConfig registered under dataset.name).
    dataset: Any = field(default_factory=OmniglotConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    # The chosen backbone's config (a ComponentConfig registered under model.name).
    model: Any = field(default_factory=Conv4Config)
    algorithm: AlgorithmConfig = field(default_factory=default_algorithm)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    run: RunConfig = field(default_factory=RunConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    # One entry per registered tracker (mamlpp.config.trackers.LoggerConfig).
    logger: Any = field(default_factory=default_logger)
