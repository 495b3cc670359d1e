"""Range and cross-field checks of a composed `Config`: one-line `ConfigError`s naming the key.

The sections of components (dataset, model, algorithm, logger) check themselves: their
config's `validate(cfg)` (mamlpp.config.backbones, datasets, algorithms, trackers, or the
user's own).
"""

from __future__ import annotations

import math
import re
from dataclasses import fields, is_dataclass
from typing import Any

from mamlpp.config.checks import check as _check
from mamlpp.config.objective import OPTIMIZED_METRICS
from mamlpp.config.registry import SECTIONS, component
from mamlpp.config.schema import Config

DEVICES = ("auto", "cpu", "cuda")
IMPLS = ("auto", "batched", "loop")
PRECISIONS = ("fp32", "bf16")
RESUME_MODES = ("auto", "never", "must")


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
    t, tr, ev = cfg.task, cfg.train, cfg.eval
    _check_finite(cfg)
    for key in SEED_KEYS:
        section, _, name = key.rpartition(".")
        node = getattr(cfg, section) if section else cfg
        if not hasattr(node, name):  # a dataset without a class split of its own
            continue
        value = getattr(node, name)
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
    _check(t.ways >= 2, "task.ways", t.ways, ">= 2")
    _check(t.shots >= 1, "task.shots", t.shots, ">= 1")
    _check(t.targets >= 1, "task.targets", t.targets, ">= 1")
    for section in ("dataset", "model", "algorithm"):
        _check_component(cfg, section)
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
    _check(ev.batch_size >= 1, "eval.batch_size", ev.batch_size, ">= 1")
    cfg.logger.validate(cfg)
    return cfg


def _check_component(cfg: Config, section: str) -> None:
    """The section holds the config its component registered, and that config checks itself."""
    node = getattr(cfg, section)
    known = component(section, node.name)
    _check(
        isinstance(node, known.config),
        section,
        type(node).__name__,
        f"a {known.config.__name__} with {section}.name={node.name} ({SECTIONS[section]} "
        "configs are registered with their component)",
    )
    node.validate(cfg)
