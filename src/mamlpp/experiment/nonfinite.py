"""A run whose numbers go non-finite (nan or inf) stops instead of training on garbage.

The meta-learner skips an update whose loss or meta-gradient is not finite (StepResult.finite);
the training loop, validation and the test phase then raise `NonFiniteError` before anything
of that state is saved, so `latest.pt` stays the last good checkpoint and a fixed config can
resume from it (with run.allow_config_change=true) or start again. `mamlpp-train` prints the
one line and exits with EXIT_NONFINITE.
"""

from __future__ import annotations

import math

from torch import Tensor

from mamlpp.config import Config
from mamlpp.errors import ConfigError, MamlppError

# Distinct from 2 (a config or input error found before training) and 75 (resumable stop).
EXIT_NONFINITE = 3


class NonFiniteError(MamlppError):
    """The run diverged: a loss or meta-gradient became nan or inf."""

    exit_code = EXIT_NONFINITE


def likely_cause(cfg: Config, phase: str) -> str:
    """The keys most likely behind a divergence in `phase` (train | validation | test), the
    likeliest first: learning rates far above the usual ones, else the inner rate."""
    a = cfg.algorithm
    keys = [f"algorithm.inner_lr = {a.inner_lr:g}"]
    if phase == "train":
        meta = f"algorithm.meta_lr = {a.meta_lr:g}"
        keys = [meta, *keys] if a.meta_lr > 0.1 and a.inner_lr <= 1 else [*keys, meta]
    elif a.inner_steps_eval > a.inner_steps:
        keys.append(f"algorithm.inner_steps_eval = {a.inner_steps_eval}")
    if cfg.train.precision == "bf16":
        keys.append("train.precision = bf16")
    others = f" (else {', '.join(keys[1:])})" if len(keys) > 1 else ""
    clip = "; algorithm.grad_clip may help" if phase == "train" and a.grad_clip is None else ""
    return f"{keys[0]}{others}{clip}"


def _stop(what: str, where: str, cfg: Config | None, phase: str) -> NonFiniteError:
    if cfg is None:  # mamlpp-eval: a trained model with evaluation overrides
        return NonFiniteError(
            f"{what} {where}: the inner loop diverged (see algorithm.inner_steps_eval); "
            "nothing was written"
        )
    return NonFiniteError(
        f"{what} {where}: the run diverged, most likely through {likely_cause(cfg, phase)}; "
        "nothing of this state was saved (checkpoints written before it are kept)"
    )


def check_step(finite: bool, loss: float, iteration: int, cfg: Config) -> None:
    """After training iteration `iteration` (1-based): stop if its loss or gradient was not
    finite (the learner has skipped that update)."""
    if not finite:
        what = (
            f"the training loss is {loss}"
            if not math.isfinite(loss)
            else "the meta-gradient is not finite"
        )
        raise _stop(what, f"at iteration {iteration}", cfg, "train")


def check_eval(losses: Tensor, phase: str, where: str, cfg: Config | None = None) -> None:
    """Stop if any task's target loss in validation or test is not finite (a nan logit would
    otherwise score exactly 1/ways, looking like an honest chance-level model)."""
    bad = ~losses.isfinite()
    if bool(bad.any()):
        what = f"the {phase} loss is {losses[bad][0].item()} on {int(bad.sum())} tasks"
        raise _stop(what, where, cfg, phase)


def refuse_running_stats_training(cfg: Config) -> None:
    """Training with algorithm.use_running_stats_eval=true would validate (and pick the top-k
    members) under the running statistics, where the inner loop of a model meta-trained with
    each task's batch statistics diverges: the scores are chance (README, Configuration)."""
    if cfg.algorithm.use_running_stats_eval:
        raise ConfigError(
            "config key 'algorithm.use_running_stats_eval' = True cannot train: the model is "
            "meta-trained with each task's batch statistics, and under the running statistics "
            "its inner loop diverges (validation would score chance and choose the top-k "
            "members on it); train with false, and evaluate that way with mamlpp-eval if wanted"
        )
