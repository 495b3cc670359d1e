"""Structured-config schema and validation.

The dataclasses below are registered with Hydra's ConfigStore as the schema of `conf/config.yaml`,
so a misspelt key or a wrongly typed value fails while the config is composed. `validate` then
checks ranges and cross-field constraints and raises a one-line `ConfigError` naming the key.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from mamlpp.errors import ConfigError

MODELS = ("conv4", "resnet12", "module")
# model.norm_layers' kinds of torch.nn normalisation layers (mamlpp.nn.norm_rule).
NORM_LAYER_KINDS = ("batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm")
ALGORITHMS = ("maml", "fomaml", "mamlpp", "anil", "boil", "metasgd")
# Algorithm switches that need per-step batch norm in the backbone (MAML++'s BNRS/BNWB and
# running statistics at evaluation).
PER_STEP_BN_KEYS = ("per_step_bn_stats", "per_step_bn_weights", "use_running_stats_eval")
# mamlpp.algorithms.adaptation reads them; any other value is a glob over parameter names.
ADAPT_MODES = ("all", "head", "body")
PROTOCOLS = ("mamlpp", "maml")
DEVICES = ("auto", "cpu", "cuda")
IMPLS = ("auto", "batched", "loop")
PRECISIONS = ("fp32", "bf16")
PROTOCOL_SPLITS = {"mamlpp": (1150, 50, 423), "maml": (1100, 100, 423)}
DATASETS = ("omniglot", "miniimagenet", "image_folder", "tiny_imagenet", "custom")
NORMALIZATIONS = ("none", "imagenet", "dataset")
LAYOUTS = ("auto", "presplit", "unsplit")
OMNIGLOT_IMAGES_PER_CLASS = 20


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
    # mamlpp: all 1623 characters pooled, split 1150/50/423, random k*90 rotation per class
    # per task.
    # maml: Finn et al. 1100/100/423 characters, each rotation its own class.
    protocol: str = "mamlpp"
    # [train, val, test] classes; None: the protocol's standard split (see PROTOCOL_SPLITS).
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


RESUME_MODES = ("auto", "never", "must")


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


WANDB_MODES = ("offline", "online", "disabled")


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


# Keys that may differ between a checkpoint and the resuming run, and that never name a run
# directory (mamlpp.naming). The one list of them.
NEUTRAL_KEYS = (
    "run.",
    "paths.",
    "debug",
    "progress_bar",
    "device",
    "experiment_name",
    "optimized_metric",
    "dataset.source",
    "dataset.data_dir",
    "train.impl",
    "eval.batch_size",
    "speed.",
    "model.vectorize",
    "logger",
    "logger.",
)


def is_neutral(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in NEUTRAL_KEYS)


# What the entry point returns to a Hydra sweeper: a name -> the results.json field. The test
# accuracy is there only for a sweep that asks for it by name.
OPTIMIZED_METRICS = {"val/best_acc": "best_val_accuracy", "test/acc": "test_accuracy_mean"}


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


# Config's sections, read off its (postponed, so string) annotations.
_SECTIONS: dict[str, type] = {
    name: hint for name, hint in get_type_hints(Config).items() if is_dataclass(hint)
}
_TOP_KEYS = tuple(f.name for f in fields(Config))


def conf_dir() -> str:
    """conf/ of a source checkout, or the copy packaged inside a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "conf", here / "conf"):
        if (candidate / "config.yaml").exists():
            return str(candidate)
    raise RuntimeError(f"mamlpp: no conf/config.yaml next to {here}")


def register_configs() -> None:
    """Register the schema so `conf/config.yaml` is type-checked against it, and the resolver
    that names run directories. Safe to call more than once."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    if not OmegaConf.has_resolver("path_join"):
        OmegaConf.register_new_resolver(
            "path_join", lambda *parts: os.path.normpath(os.path.join(*map(str, parts)))
        )
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", _run_name)


def _run_name(*, _root_: DictConfig) -> str:
    from mamlpp.naming import run_name

    return run_name(_root_)


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' = {value!r} is invalid: allowed {allowed}")


# Seeds feed numpy's legacy seeding (np.random.seed), which takes 0 <= seed < 2**32.
SEED_KEYS = ("seed", "eval.task_seed", "dataset.split_seed")
SEED_LIMIT = 2**32


def _check_finite(node: Any, key: str = "") -> None:
    """Refuse inf and nan in every float of the config (keys, list items, kwargs values): no
    setting means "unbounded" with inf, and a nan would only surface as a diverged run."""
    if is_dataclass(node):
        for f in fields(node):
            _check_finite(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, f"{key}.{k}")
    elif isinstance(node, list | tuple):
        for v in node:
            _check_finite(v, key)
    elif isinstance(node, float) and not math.isfinite(node):
        _check(False, key, node, "a finite number (inf and nan are refused)")


# The keys each dataset loader and backbone reads, beyond `name`: a key given on the command
# line that the chosen one does not read would be silently ignored, so it is refused.
_DATASET_COMMON = (
    "source",
    "data_dir",
    "image_size",
    "normalization",
    "augment_crop_padding",
    "augment_flip",
)
DATASET_READS = {
    "omniglot": (*_DATASET_COMMON, "protocol", "split_sizes", "split_seed", "train_rotation"),
    "image_folder": (*_DATASET_COMMON, "layout", "split_ratios", "split_seed"),
    "miniimagenet": _DATASET_COMMON,
    "tiny_imagenet": _DATASET_COMMON,
    "custom": (*_DATASET_COMMON, "_target_", "kwargs", "split_ratios", "split_seed"),
}
MODEL_READS = {
    "conv4": ("filters", "stages", "norm", "pooling", "activation", "bn_momentum"),
    "resnet12": (
        "channels",
        "bn_momentum",
        "norm",
        "drop_rate",
        "dropblock_size",
        "dropblock_ramp",
    ),
    "module": ("_target_", "kwargs", "vectorize", "head", "norm_layers"),
}


def check_unread_overrides(cfg: Config, overrides: list[str]) -> None:
    """Refuse a dataset.* or model.* key given on the command line that the chosen loader or
    backbone does not read (it would be ignored). Presets may set keys for other components:
    a preset's `model.filters` does not stop `model=resnet12` on top of it."""
    for item in overrides:
        key = item.partition("=")[0].lstrip("+~")
        section, _, name = key.partition(".")
        tracker = name.partition(".")[0]
        if section == "logger" and tracker in cfg.logger.chosen():
            continue
        if section == "logger" and name and not name.endswith(".enabled"):
            raise ConfigError(
                f"config key '{key}' is for a tracker that is not chosen, so it would be "
                f"ignored: add it to the logger list, e.g. logger=[tensorboard,{tracker}]"
            )
        name = name.partition(".")[0]
        node = {"dataset": cfg.dataset, "model": cfg.model}.get(section)
        if node is None or not name or name == "name":
            continue
        read = (DATASET_READS if section == "dataset" else MODEL_READS).get(node.name)
        if node.name == "module" and name in node.kwargs:
            continue  # a constructor argument of the module (+model.width=32)
        if read is not None and name not in read:
            raise ConfigError(
                f"config key '{key}' is not read by {section}={node.name}, so it would be "
                f"ignored: {section}={node.name} reads {', '.join(read)}"
            )


def validate(cfg: Config) -> Config:
    """Range and cross-field checks; the schema already checked names and types."""
    d, t, m, a, tr, ev = cfg.dataset, cfg.task, cfg.model, cfg.algorithm, cfg.train, cfg.eval
    _check_finite(cfg)
    for key in SEED_KEYS:
        value = functools.reduce(getattr, key.split("."), cfg)
        _check(0 <= value < SEED_LIMIT, key, value, f"0 <= {key} < 2**32 ({SEED_LIMIT})")
    _check(
        cfg.device in DEVICES or re.fullmatch(r"cuda:\d+", cfg.device) is not None,
        "device",
        cfg.device,
        f"one of {DEVICES} or cuda:<index>",
    )
    _check(
        cfg.optimized_metric in OPTIMIZED_METRICS,
        "optimized_metric",
        cfg.optimized_metric,
        f"one of {tuple(OPTIMIZED_METRICS)}",
    )
    _check(d.name in DATASETS, "dataset.name", d.name, f"one of {DATASETS}")
    _check(
        (d._target_ is not None and "." in d._target_) == (d.name == "custom"),
        "dataset._target_",
        d._target_,
        "a function package.module.name with dataset=custom (and null with the built-in datasets)",
    )
    _check(d.protocol in PROTOCOLS, "dataset.protocol", d.protocol, f"one of {PROTOCOLS}")
    _check(d.image_size >= 8, "dataset.image_size", d.image_size, ">= 8")
    _check(
        d.normalization in NORMALIZATIONS,
        "dataset.normalization",
        d.normalization,
        f"one of {NORMALIZATIONS}",
    )
    _check(d.layout in LAYOUTS, "dataset.layout", d.layout, f"one of {LAYOUTS}")
    _check(
        d.name != "image_folder" or d.source is not None,
        "dataset.source",
        d.source,
        "the image folder (<root>/{train,val,test}/<class>/<image> or <root>/<class>/<image>)",
    )
    _check(
        len(d.split_ratios) == 3 and all(r > 0 for r in d.split_ratios),
        "dataset.split_ratios",
        d.split_ratios,
        "three positive ratios [train, val, test]",
    )
    _check(
        0 <= d.augment_crop_padding < d.image_size,
        "dataset.augment_crop_padding",
        d.augment_crop_padding,
        f"0..{d.image_size - 1} pixels",
    )
    _check(t.ways >= 2, "task.ways", t.ways, ">= 2")
    _check(t.shots >= 1, "task.shots", t.shots, ">= 1")
    _check(t.targets >= 1, "task.targets", t.targets, ">= 1")
    if d.name == "omniglot":
        _check(
            d.split_sizes is None
            or (
                len(d.split_sizes) == 3
                and all(s > 0 for s in d.split_sizes)
                and sum(d.split_sizes) <= 1623
            ),
            "dataset.split_sizes",
            d.split_sizes,
            "three positive class counts [train, val, test] summing to at most 1623",
        )
        _check(
            t.shots + t.targets <= OMNIGLOT_IMAGES_PER_CLASS,
            "task.shots",
            t.shots,
            f"shots + targets <= 20 images per Omniglot class (targets={t.targets})",
        )
        for split, n in zip(("train", "val", "test"), split_class_counts(cfg)):
            _check(
                t.ways <= n, "task.ways", t.ways, f"at most {n}, the classes in the {split} split"
            )
    _check(m.name in MODELS, "model.name", m.name, f"one of {MODELS}")
    if m.name == "module":
        _check_module_model(cfg)
    else:
        _check_builtin_model(cfg)
    _check(a.name in ALGORITHMS, "algorithm.name", a.name, f"one of {ALGORITHMS}")
    _check(
        a.adapt in ADAPT_MODES or any(c in a.adapt for c in "*?["),
        "algorithm.adapt",
        a.adapt,
        f"one of {ADAPT_MODES} or a glob over parameter names such as 'convs.3.*'",
    )
    _check(
        not (a.per_element_lr and a.learn_inner_lr),
        "algorithm.per_element_lr",
        True,
        "false with algorithm.learn_inner_lr=true (Meta-SGD's per-element rates replace LSLR's "
        "per-layer ones: choose one)",
    )
    _check(
        not (a.adapt == "head" and a.inner_adapt_bn),
        "algorithm.inner_adapt_bn",
        True,
        "false with algorithm.adapt=head (batch norm is part of the body, which ANIL keeps "
        "fixed in the inner loop)",
    )
    _check(a.inner_steps >= 1, "algorithm.inner_steps", a.inner_steps, ">= 1")
    _check(a.inner_steps_eval >= 1, "algorithm.inner_steps_eval", a.inner_steps_eval, ">= 1")
    _check(a.inner_lr > 0, "algorithm.inner_lr", a.inner_lr, "> 0")
    _check(a.meta_lr > 0, "algorithm.meta_lr", a.meta_lr, "> 0")
    _check(
        0 <= a.min_meta_lr <= a.meta_lr,
        "algorithm.min_meta_lr",
        a.min_meta_lr,
        f"0 <= min_meta_lr <= meta_lr ({a.meta_lr})",
    )
    _check(a.first_order_epochs >= 0, "algorithm.first_order_epochs", a.first_order_epochs, ">= 0")
    _check(a.msl_epochs >= 0, "algorithm.msl_epochs", a.msl_epochs, ">= 0")
    _check(
        a.grad_clip is None or a.grad_clip > 0, "algorithm.grad_clip", a.grad_clip, "null or > 0"
    )
    _check(
        not a.cosine_per_epoch or a.cosine_meta_lr,
        "algorithm.cosine_per_epoch",
        True,
        "false unless algorithm.cosine_meta_lr=true (it shapes the cosine schedule)",
    )
    _check(
        not a.grad_clip_network_only or a.grad_clip is not None,
        "algorithm.grad_clip_network_only",
        True,
        "false unless algorithm.grad_clip is set (it chooses what the clip applies to)",
    )
    _check(tr.epochs >= 1, "train.epochs", tr.epochs, ">= 1")
    _check(tr.iters_per_epoch >= 1, "train.iters_per_epoch", tr.iters_per_epoch, ">= 1")
    _check(tr.meta_batch_size >= 1, "train.meta_batch_size", tr.meta_batch_size, ">= 1")
    _check(tr.impl in IMPLS, "train.impl", tr.impl, f"one of {IMPLS}")
    _check(
        tr.precision in PRECISIONS,
        "train.precision",
        tr.precision,
        f"one of {PRECISIONS} (fp16 overflows to NaN in MAML's double backward)",
    )
    _check(
        not cfg.speed.cuda_graphs or tr.impl != "loop",
        "speed.cuda_graphs",
        True,
        "false with train.impl=loop (graphs capture the batched meta-step)",
    )
    _check(ev.val_tasks >= 1, "eval.val_tasks", ev.val_tasks, ">= 1")
    _check(ev.test_tasks >= 1, "eval.test_tasks", ev.test_tasks, ">= 1")
    _check(ev.top_k >= 1, "eval.top_k", ev.top_k, ">= 1")
    r = cfg.run
    _check(r.resume in RESUME_MODES, "run.resume", r.resume, f"one of {RESUME_MODES}")
    _check(
        r.checkpoint_every_iters >= 0,
        "run.checkpoint_every_iters",
        r.checkpoint_every_iters,
        ">= 0",
    )
    _check(
        r.checkpoint_every_seconds >= 0,
        "run.checkpoint_every_seconds",
        r.checkpoint_every_seconds,
        ">= 0",
    )
    _check(r.keep_every_epochs >= 0, "run.keep_every_epochs", r.keep_every_epochs, ">= 0")
    _check(
        r.collective_timeout_s > 0,
        "run.collective_timeout_s",
        r.collective_timeout_s,
        "> 0 seconds",
    )
    _check(
        a.name != "fomaml" or not a.second_order,
        "algorithm.second_order",
        True,
        "false with algorithm.name=fomaml (first-order MAML)",
    )
    _check(ev.batch_size >= 1, "eval.batch_size", ev.batch_size, ">= 1")
    wb = cfg.logger.wandb
    _check(wb.mode in WANDB_MODES, "logger.wandb.mode", wb.mode, f"one of {WANDB_MODES}")
    return cfg


def _check_builtin_model(cfg: Config) -> None:
    d, m = cfg.dataset, cfg.model
    _check(
        m._target_ is None,
        "model._target_",
        m._target_,
        f"null with model={m.name} (a class of your own needs model=module)",
    )
    _check(not m.kwargs, "model.kwargs", m.kwargs, f"empty with model={m.name} (model=module)")
    _check(
        len(m.channels) >= 1 and all(c >= 1 for c in m.channels),
        "model.channels",
        m.channels,
        "a list of positive block widths",
    )
    _check(
        m.name != "resnet12" or d.image_size >> len(m.channels) >= 1,
        "model.channels",
        m.channels,
        f"at most log2(image_size) = {d.image_size.bit_length() - 1} blocks (each halves it)",
    )
    _check(
        m.name != "resnet12" or m.norm == "batch_norm",
        "model.norm",
        m.norm,
        "batch_norm with model=resnet12",
    )
    _check(m.filters >= 1, "model.filters", m.filters, ">= 1")
    _check(1 <= m.stages <= 8, "model.stages", m.stages, "1..8")
    _check(m.norm in ("batch_norm", "none"), "model.norm", m.norm, "'batch_norm' or 'none'")
    _check(m.pooling in ("max", "stride"), "model.pooling", m.pooling, "'max' or 'stride'")
    _check(
        m.activation in ("relu", "leaky_relu"), "model.activation", m.activation, "relu|leaky_relu"
    )
    _check(0 < m.bn_momentum <= 1, "model.bn_momentum", m.bn_momentum, "in (0, 1]")
    _check(0 <= m.drop_rate < 1, "model.drop_rate", m.drop_rate, "in [0, 1)")
    _check(m.dropblock_size >= 1, "model.dropblock_size", m.dropblock_size, ">= 1")
    _check(m.dropblock_ramp >= 0, "model.dropblock_ramp", m.dropblock_ramp, ">= 0")
    _check(
        m.drop_rate == 0 or not cfg.speed.checkpoint_inner_steps,
        "model.drop_rate",
        m.drop_rate,
        "0 with speed.checkpoint_inner_steps=true (its recomputation would draw other masks)",
    )
    _check(d.image_size >> m.stages >= 1, "model.stages", m.stages, "at most log2(image_size)")
    for key in PER_STEP_BN_KEYS:
        _check(
            not getattr(cfg.algorithm, key) or m.norm == "batch_norm",
            f"algorithm.{key}",
            True,
            "false when model.norm=none",
        )


def _check_module_model(cfg: Config) -> None:
    """model=module: a class of the user's; its batch norm has no per-step or running stats."""
    m = cfg.model
    _check(
        m._target_ is not None and "." in m._target_,
        "model._target_",
        m._target_,
        "the torch.nn.Module class as package.module.Class with model=module",
    )
    for kind in m.norm_layers:
        _check(
            kind in NORM_LAYER_KINDS or kind.isidentifier(),
            "model.norm_layers",
            list(m.norm_layers),
            f"a list of {', '.join(NORM_LAYER_KINDS)} or class names of your own norm layers",
        )
    for key in PER_STEP_BN_KEYS:
        _check(
            not getattr(cfg.algorithm, key),
            f"algorithm.{key}",
            True,
            "false with model=module (a plain module's batch norm uses each task's batch "
            "statistics only; per-step batch norm needs model=conv4 or resnet12)",
        )
    _check(
        not cfg.speed.cuda_graphs,
        "speed.cuda_graphs",
        True,
        "false with model=module",
    )


# The MAML++ features as (switch is on, short name), in the paper's order.
def _features(a: AlgorithmConfig) -> list[tuple[bool, str]]:
    return [
        (a.multi_step_loss, "MSL"),
        (a.first_order_epochs > 0, "DA"),
        (a.per_step_bn_stats, "BNRS"),
        (a.per_step_bn_weights, "BNWB"),
        (a.learn_inner_lr, "LSLR"),
        (a.cosine_meta_lr, "CA"),
    ]


def _definition(name: str) -> tuple[str, bool]:
    """What the algorithm group `name` itself sets beyond MAML, (adapt, per_element_lr), read
    from its conf/algorithm YAML: the one place that defines ANIL, BOIL and Meta-SGD."""
    path = Path(conf_dir()) / "algorithm" / f"{name}.yaml"
    own = OmegaConf.load(path) if path.exists() else OmegaConf.create()
    default = AlgorithmConfig()
    return own.get("adapt", default.adapt), own.get("per_element_lr", default.per_element_lr)


def algorithm_label(a: AlgorithmConfig) -> str:
    """What actually runs, not only the group's name: 'maml+DA+MSL' is MAML whose preset or
    overrides switched MAML++ features on; 'mamlpp-DA' is MAML++ with annealing off."""
    adapt, per_element = _definition(a.name)
    extra = [f"adapt={a.adapt}"] if a.adapt != adapt else []
    extra += [f"per_element_lr={a.per_element_lr}"] if a.per_element_lr != per_element else []
    base = _feature_label(a)
    return base + "".join(f"+{e}" for e in extra)


def _feature_label(a: AlgorithmConfig) -> str:
    if a.name == "mamlpp":
        off = [name for on, name in _features(a) if not on]
        label = "mamlpp" + "".join(f"-{n}" for n in off)
        return label if a.second_order else f"{label}-second_order"
    on = [name for on, name in _features(a) if on]
    label = a.name + "".join(f"+{n}" for n in on)
    return f"{label}+second_order" if a.name == "fomaml" and a.second_order else label


def split_sizes_of(dataset: DatasetConfig) -> tuple[int, int, int]:
    """Omniglot characters per split: the configured sizes or the protocol's standard ones."""
    sizes = dataset.split_sizes
    return tuple(sizes) if sizes is not None else PROTOCOL_SPLITS[dataset.protocol]


def split_class_counts(cfg: Config) -> tuple[int, int, int]:
    """Number of classes a task can draw from in each split (rotations count under 'maml')."""
    train, val, test = split_sizes_of(cfg.dataset)
    if cfg.dataset.protocol == "maml":
        return train * 4, val * 4, test * 4
    return train, val, test


def experiment_keys(cfg: Config) -> dict[str, Any]:
    """Flattened config without the keys that do not change the experiment (NEUTRAL_KEYS)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            elif not is_neutral(name):
                flat[name] = value

    walk(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True), "")
    return flat


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Keys of a composed config that the schema does not declare (added with + or ++)."""
    found = []
    for key in cfg:
        if key not in _TOP_KEYS:
            found.append(str(key))
        elif key in _SECTIONS and isinstance(cfg[key], DictConfig):
            known = {f.name for f in fields(_SECTIONS[key])}
            found += [f"{key}.{k}" for k in cfg[key] if k not in known]
    return found


def objective(results: dict[str, Any], metric: str) -> float:
    """The `optimized_metric` of a run's results (what a sweeper optimises)."""
    return float(results[OPTIMIZED_METRICS[metric]])


def all_keys() -> list[str]:
    """Every dotted key the schema declares."""
    keys = [k for k in _TOP_KEYS if k not in _SECTIONS]
    return keys + [f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in fields(cls)]


def check_known_keys(cfg: DictConfig) -> None:
    """One line naming a key the schema does not know, and the key probably meant."""
    unknown = unknown_keys(cfg)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"config key '{key}' is not a mamlpp setting{hint}; keys added with + or ++ are "
            "refused too, since nothing would read them"
        )


def is_module_argument(key: str) -> bool:
    """Whether model.<key> under model=module is a constructor argument of the module (a key
    ModelConfig does not declare, `+model.width=32`), i.e. model.kwargs.<key>."""
    return key not in {f.name for f in fields(ModelConfig)}


def _fold_module_kwargs(cfg: DictConfig) -> None:
    """model=module: keys the schema does not know (`+model.width=32`) are the module's
    constructor arguments, as if given as model.kwargs.<key>."""
    model = cfg.get("model")
    if not isinstance(model, DictConfig) or model.get("name") != "module":
        return
    extra = [str(k) for k in model if is_module_argument(str(k))]
    if extra:
        data = OmegaConf.to_container(model, resolve=False)
        data["kwargs"] = {**data.get("kwargs", {}), **{k: data.pop(k) for k in extra}}
        cfg.model = OmegaConf.merge(OmegaConf.structured(ModelConfig), data)


def to_config(cfg: DictConfig | Config) -> Config:
    """Turn a composed DictConfig into validated dataclasses."""
    if isinstance(cfg, DictConfig):
        _fold_module_kwargs(cfg)
        check_known_keys(cfg)
        try:
            obj = OmegaConf.to_object(cfg)
        except Exception as exc:  # omegaconf reports missing/mistyped values here
            raise ConfigError(f"config: {str(exc).splitlines()[0]}") from exc
    else:
        obj = cfg
    return validate(obj)
