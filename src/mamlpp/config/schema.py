"""The structured-config schema: one dataclass per section of `conf/config.yaml`.

Hydra's ConfigStore holds `Config` as the schema of `conf/config.yaml` (mamlpp.config.compose), so
a misspelt key or a wrongly typed value fails while the config is composed; ranges and
cross-field constraints are mamlpp.config.validation's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# model.norm_layers' kinds of torch.nn normalisation layers (mamlpp.nn.norm_rule).
NORM_LAYER_KINDS = ("batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm")


@dataclass
class DatasetConfig:
    """One dataset; keys marked (omniglot) or (image_folder) only apply to that loader."""

    # omniglot | miniimagenet | image_folder | tiny_imagenet
    name: str = "omniglot"
    # omniglot: folder with the zips or a URL base; miniimagenet: the root with images/ and CSVs;
    # image_folder: the folder; tiny_imagenet: a zip or a folder holding it.
    # None: look in data_dir, then download where a download exists (omniglot, tiny_imagenet).
    source: str | None = None
    # Where downloads and the decoded uint8 cache go.
    data_dir: str = "datasets/omniglot"
    image_size: int = 28
    # Pixels are scaled to [0, 1]; then none | imagenet (ImageNet mean/std) | dataset (train split).
    normalization: str = "none"
    # (image_folder) auto: presplit if <root> has train/val/test folders, else unsplit.
    layout: str = "auto"
    # (image_folder, unsplit) train/val/test class ratios; split_seed shuffles the classes first.
    split_ratios: list[float] = field(default_factory=lambda: [0.64, 0.16, 0.2])
    # Training-task augmentation, off in the paper presets: random crop after zero padding by
    # this many pixels, and random horizontal flips; drawn per image from the task's seed.
    augment_crop_padding: int = 0
    augment_flip: bool = False
    # (custom) a function returning the dataset's mamlpp.data.image_folder.ImageListing
    # (package.module.function), and its keyword arguments (+dataset.kwargs.<name>=<value>).
    _target_: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Omniglot's class protocol, mamlpp (a random k*90 rotation per class per training task)
    # or maml (Finn et al.: each rotation its own class); see mamlpp.data.omniglot.
    protocol: str = "mamlpp"
    # [train, val, test] classes; None: the protocol's standard split
    # (mamlpp.data.omniglot.PROTOCOL_SPLITS).
    split_sizes: list[int] | None = None
    split_seed: int = 0
    train_rotation: bool = True


@dataclass
class TaskConfig:
    ways: int = 5
    shots: int = 1
    targets: int = 1


@dataclass
class ModelConfig:
    """conv4 reads filters/stages/norm/pooling/activation; resnet12 reads channels and the
    DropBlock keys; module reads _target_/kwargs/vectorize/head/norm_layers (see MODEL_READS)."""

    # conv4 | resnet12 | module (any torch.nn.Module class, model._target_)
    name: str = "conv4"
    filters: int = 64
    stages: int = 4
    norm: str = "batch_norm"
    pooling: str = "max"
    activation: str = "leaky_relu"
    bn_momentum: float = 0.1
    # (resnet12) widths of the four residual blocks.
    channels: list[int] = field(default_factory=lambda: [64, 160, 320, 640])
    # (resnet12) MetaOptNet's regularisation, off by default: dropout of rate drop_rate after
    # the first two blocks, DropBlock (dropblock_size x dropblock_size) after the last two,
    # its rate ramped linearly from 0 over the first dropblock_ramp training forward passes.
    drop_rate: float = 0.0
    dropblock_size: int = 5
    dropblock_ramp: int = 40000
    # (module) the torch.nn.Module class (package.module.Class), the constructor's keyword
    # arguments beyond in_channels/image_size/num_classes, and whether tasks run under
    # torch.func.vmap (true) or one after another (false: for modules vmap cannot batch).
    _target_: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    vectorize: bool = True
    # (module) the submodule that is the head (ANIL/BOIL); null: found by a forward pass.
    head: str | None = None
    # (module) the normalisation layers whose affine weights are shared by the tasks and not
    # adapted in the inner loop unless algorithm.inner_adapt_bn: kinds of NORM_LAYER_KINDS or
    # class names of one's own norm layers.
    norm_layers: list[str] = field(default_factory=lambda: list(NORM_LAYER_KINDS))


@dataclass
class OptimizerConfig:
    """The meta-optimizer: a torch.optim.Optimizer class taking (params, lr, **kwargs). Its
    learning rate is algorithm.meta_lr, set every iteration by the (cosine) schedule."""

    _target_: str = "torch.optim.Adam"
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
    meta_lr: float = 0.001
    cosine_meta_lr: bool = False
    # true: the cosine rate changes once per epoch (a staircase), as in the published MAML++
    # code; false: every iteration.
    cosine_per_epoch: bool = False
    min_meta_lr: float = 0.00001
    # Clamp every meta-gradient element to [-grad_clip, grad_clip] before the Adam step.
    grad_clip: float | None = None
    # true: clamp only the network's meta-gradients, not those of the learned inner learning
    # rates (LSLR, Meta-SGD), as the published MAML++ code does; false: clamp all of them.
    grad_clip_network_only: bool = False


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
class TensorboardLoggerConfig:
    """TensorBoard event files (the default tracker)."""

    # Set by choosing the tracker in the `logger` group.
    enabled: bool = False
    # Relative to the run directory.
    dir: str = "tb"


@dataclass
class CsvLoggerConfig:
    """Every scalar as a (step, name, value) row; metrics.csv (one row per epoch) is written
    whichever trackers are chosen."""

    # Set by choosing the tracker in the `logger` group.
    enabled: bool = False
    # Relative to the run directory.
    file: str = "scalars.csv"


@dataclass
class MlflowLoggerConfig:
    """An MLflow run (pip install 'mamlpp[mlflow]')."""

    # Set by choosing the tracker in the `logger` group.
    enabled: bool = False
    # None: $MLFLOW_TRACKING_URI, else <runs root>/mlflow/mlflow.db (mamlpp.trackers.mlflow_store).
    tracking_uri: str | None = None
    # The MLflow experiment; None: experiment_name.
    experiment: str | None = None


@dataclass
class WandbLoggerConfig:
    """A Weights & Biases run (pip install 'mamlpp[wandb]'); offline unless told otherwise."""

    # Set by choosing the tracker in the `logger` group.
    enabled: bool = False
    project: str = "mamlpp"
    entity: str | None = None
    # offline (files only; `wandb sync` uploads them later) | online | disabled
    mode: str = "offline"
    # Where wandb/ is made; None: the run directory. conf/logger/wandb.yaml takes the defaults
    # of project, entity, mode and dir from WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE, WANDB_DIR.
    dir: str | None = None


@dataclass
class LoggerConfig:
    """The experiment trackers, chosen with the `logger` group (logger=[tensorboard,mlflow]):
    each file of the group switches its tracker on."""

    tensorboard: TensorboardLoggerConfig = field(default_factory=TensorboardLoggerConfig)
    csv: CsvLoggerConfig = field(default_factory=CsvLoggerConfig)
    mlflow: MlflowLoggerConfig = field(default_factory=MlflowLoggerConfig)
    wandb: WandbLoggerConfig = field(default_factory=WandbLoggerConfig)

    def chosen(self) -> list[str]:
        """The names of the trackers switched on, in the schema's order."""
        return [f.name for f in fields(self) if getattr(self, f.name).enabled]


@dataclass
class Config:
    experiment_name: str = "default"
    # The value mamlpp-train returns (the objective of a sweeper such as Optuna).
    optimized_metric: str = "val/best_acc"
    seed: int = 0
    device: str = "auto"
    debug: bool = False
    progress_bar: bool = True
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    run: RunConfig = field(default_factory=RunConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
