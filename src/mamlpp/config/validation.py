"""Range and cross-field checks of a composed `Config`: one-line `ConfigError`s naming the key."""

from __future__ import annotations

import math
import operator
import re
from dataclasses import fields, is_dataclass
from typing import Any

from mamlpp.config.objective import OPTIMIZED_METRICS
from mamlpp.config.schema import NORM_LAYER_KINDS, Config
from mamlpp.errors import ConfigError

MODELS = ("conv4", "resnet12", "module")
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
DATASETS = ("omniglot", "miniimagenet", "image_folder", "tiny_imagenet", "custom")
NORMALIZATIONS = ("none", "imagenet", "dataset")
LAYOUTS = ("auto", "presplit", "unsplit")
RESUME_MODES = ("auto", "never", "must")
WANDB_MODES = ("offline", "online", "disabled")


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


def validate(cfg: Config) -> Config:
    """Range and cross-field checks; the schema already checked names and types."""
    d, t, m, a, tr, ev = cfg.dataset, cfg.task, cfg.model, cfg.algorithm, cfg.train, cfg.eval
    _check_finite(cfg)
    for key in SEED_KEYS:
        value = operator.attrgetter(key)(cfg)
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
        # Omniglot's facts live in its module, imported only for an Omniglot config so that
        # mamlpp.config stays light (no image decoders) for the tools that only read configs.
        from mamlpp.data import omniglot

        _check(
            d.split_sizes is None
            or (
                len(d.split_sizes) == 3
                and all(s > 0 for s in d.split_sizes)
                and sum(d.split_sizes) <= omniglot.NUM_CLASSES
            ),
            "dataset.split_sizes",
            d.split_sizes,
            f"three positive class counts [train, val, test] summing to at most "
            f"{omniglot.NUM_CLASSES}",
        )
        _check(
            t.shots + t.targets <= omniglot.IMAGES_PER_CLASS,
            "task.shots",
            t.shots,
            f"shots + targets <= {omniglot.IMAGES_PER_CLASS} images per Omniglot class "
            f"(targets={t.targets})",
        )
        counts = omniglot.split_class_counts(d.protocol, d.split_sizes)
        for split, n in zip(("train", "val", "test"), counts):
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
