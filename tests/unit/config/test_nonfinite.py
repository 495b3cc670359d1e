"""Non-finite numbers: refused in the config, and a run that diverges stops before saving.

- every float of the config (keys, list items, kwargs values) refuses inf and nan, found by
  walking the schema, so a new float key is covered without a test of its own;
- seed keys outside numpy's [0, 2**32) are one line naming the key;
- a real run whose meta learning rate makes it diverge stops at the first nan with exit 3 and
  one line naming the iteration and the key, and its latest.pt is the last finite state;
- a learner whose inner loop diverges at evaluation raises instead of scoring exactly chance;
- training with algorithm.use_running_stats_eval=true is refused (its inner loop diverges).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from helpers.errors import error_lines
from mamlpp.config import Config, ConfigError, dataset_config, validate
from mamlpp.experiment.nonfinite import EXIT_NONFINITE, NonFiniteError

pytestmark = pytest.mark.usefixtures("single_thread")


def _float_keys(node: object, prefix: str = "") -> list[str]:
    """Every dotted key of the schema whose value is a float or a list of floats."""
    keys = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            keys += _float_keys(value, key + ".")
        elif isinstance(value, float) or "float" in str(f.type):
            keys.append(key)
    return keys


def _config() -> Config:
    """Config() with the dataset that has float keys of its own (split_ratios)."""
    return Config(dataset=dataset_config("image_folder", source="/data/x"))


FLOAT_KEYS = _float_keys(_config())


def _set(cfg: Config, key: str, value: object) -> None:
    *path, name = key.split(".")
    node = cfg
    for part in path:
        node = getattr(node, part)
    current = getattr(node, name)
    setattr(node, name, [value, *current[1:]] if isinstance(current, list) else value)


def test_the_schema_walk_finds_the_float_keys() -> None:
    assert {"algorithm.inner_lr", "algorithm.meta_lr", "algorithm.grad_clip"} <= set(FLOAT_KEYS)
    assert {"dataset.split_ratios", "model.bn_momentum", "run.collective_timeout_s"} <= set(
        FLOAT_KEYS
    )


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_refuses_inf_and_nan(key: str, value: float) -> None:
    cfg = _config()
    _set(cfg, key, value)
    with pytest.raises(ConfigError, match=rf"^config key '{key}' = .*finite number"):
        validate(cfg)


def test_kwargs_values_refuse_nan() -> None:
    cfg = _config()
    cfg.optimizer.kwargs = {"weight_decay": math.nan}
    with pytest.raises(ConfigError, match=r"'optimizer.kwargs.weight_decay' = nan"):
        validate(cfg)


@pytest.mark.parametrize("key", ["seed", "eval.task_seed", "dataset.split_seed"])
def test_seed_keys_must_fit_numpy(key: str) -> None:
    for bad in (-1, 2**32):
        cfg = _config()
        _set(cfg, key, bad)
        with pytest.raises(ConfigError, match=rf"^config key '{key}' = {bad} .*2\*\*32"):
            validate(cfg)
    cfg = _config()
    _set(cfg, key, 2**32 - 1)
    validate(cfg)


def test_a_diverging_step_is_skipped_and_reported(make_learner, make_batch) -> None:
    learner = make_learner(inner_lr=1e30)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    step = learner.train_step(make_batch(), 0, 0)
    assert not step.finite and not math.isfinite(step.loss)
    for k, v in learner.state_dict().items():  # no update: weights, stats, optimizer state
        assert torch.equal(v, before[k]), k
    assert not learner.optimizer.state
    fine = make_learner().train_step(make_batch(), 0, 0)
    assert fine.finite and math.isfinite(fine.loss)


def test_evaluation_of_a_diverging_inner_loop_raises(make_learner, make_batch) -> None:
    from mamlpp.experiment.evaluation import evaluate_ensemble

    class Sampler:  # the evaluation's one call: batch(split, seed, start, count)
        def batch(self, split: str, seed: int, start: int, count: int):
            return make_batch(tasks=count, seed=start)

    members = [({"epoch": 4}, make_learner(inner_lr=1e30))]
    with pytest.raises(NonFiniteError, match=r"test split's loss is nan on 4 tasks.*epoch 4"):
        evaluate_ensemble(members, Sampler(), "test", 0, 4, 2)
    ok = evaluate_ensemble([({"epoch": 4}, make_learner())], Sampler(), "test", 0, 4, 2)
    assert 0 <= ok["test_accuracy_mean"] <= 1


def test_training_with_running_stats_eval_is_refused(tmp_path: Path) -> None:
    from mamlpp.experiment.builder import ExperimentBuilder

    cfg = _config()
    cfg.algorithm.per_step_bn_stats = cfg.algorithm.use_running_stats_eval = True
    with pytest.raises(ConfigError, match=r"use_running_stats_eval' = True cannot train.*diverges"):
        ExperimentBuilder(validate(cfg), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_diverging_run_stops_with_exit_3_and_keeps_the_last_finite_checkpoint(
    cli, tmp_path: Path
) -> None:
    """meta_lr=1e30: the first Adam step is finite but huge, the second loss is nan."""
    run_dir = tmp_path / "run"
    done = cli.run(
        "algorithm.meta_lr=1e30",
        "algorithm.min_meta_lr=0",
        "run.checkpoint_every_iters=1",
        f"hydra.run.dir={run_dir}",
    )
    assert done.returncode == EXIT_NONFINITE, done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert "training loss is nan at iteration 2" in errors[0]
    assert "algorithm.meta_lr = 1e+30" in errors[0]
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert state["progress"]["next_iteration"] == 1
    learner = state["learner"]
    assert all(v.isfinite().all() for v in learner.values() if v.is_floating_point())
    assert not (run_dir / "results.json").exists()
