"""The config schema: one dataclass per section of `conf/config.yaml`.

`Config()` is what `conf/config.yaml` composes to without overrides (tests/test_presets.py checks
it field by field). The sections a group option chooses a component for (`model`, `dataset`,
`algorithm`, `logger`) hold that component's own config dataclass (mamlpp.config.registry);
Hydra composes them loosely and mamlpp.config.compose checks them against it. Ranges and
cross-field constraints are mamlpp.config.validation's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mamlpp.config.algorithms import AlgorithmConfig, default_algorithm
from mamlpp.config.backbones import Conv4Config
from mamlpp.config.datasets import OmniglotConfig
from mamlpp.config.trackers import default_logger


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
