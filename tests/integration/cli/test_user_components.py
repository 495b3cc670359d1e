"""A researcher's own backbone, dataset and tracker (tests/user_code/user_components.py and its
conf/) train in-process and through mamlpp-train, found with hydra.searchpath, without editing
src/; evaluating such a run imports the user's code only when asked to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import mamlpp
from helpers.paths import SHARED, USER_CODE
from mamlpp.config import ConfigError
from mamlpp.tasks import task_losses

USER_CONF = f"hydra.searchpath=[file://{USER_CODE / 'conf'}]"


def _user_overrides(tmp_path: Path) -> list[str]:
    zip_path = SHARED / "datasets" / "omniglot" / "images_background.zip"
    if not zip_path.is_file():
        pytest.skip(f"no Omniglot zip at {zip_path}")
    return [
        USER_CONF,
        "experiment=smoke",
        "algorithm=maml",
        "model=tiny_mlp",
        "model.hidden=16",
        "dataset=zip_characters",
        f"dataset.source={zip_path}",
        f"dataset.data_dir={tmp_path / 'data'}",
        "logger=[csv,jsonl]",
        "train.epochs=1",
        "train.iters_per_epoch=2",
        "eval.val_tasks=4",
        "eval.test_tasks=4",
        "eval.batch_size=4",
        "eval.top_k=1",
        "progress_bar=false",
    ]


def _check_user_run(run_dir: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["identity"]["model.name"] == "tiny_mlp"
    assert results["identity"]["model.hidden"] == 16
    assert results["identity"]["dataset.classes"] == 30
    steps = [json.loads(line)["step"] for line in (run_dir / "scalars.jsonl").open()]
    assert steps and steps == sorted(steps)
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.model._target_ == "user_components.tiny_mlp"


@pytest.fixture
def user_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USER_CODE))


@pytest.mark.usefixtures("user_code")
def test_a_users_backbone_dataset_and_tracker_train_in_process(tmp_path: Path) -> None:
    cfg = mamlpp.compose(*_user_overrides(tmp_path), f"paths.runs_dir={tmp_path / 'runs'}")
    assert type(cfg.model).__name__ == "TinyMlpConfig" and cfg.model.hidden == 16
    assert cfg.logger.chosen() == ["csv", "jsonl"]
    assert "model.hidden=16,model=tiny_mlp," in Path(cfg.run.dir).name
    mamlpp.train(cfg)
    run_dir = Path(cfg.run.dir)
    _check_user_run(run_dir)
    # The saved config names the user's code: evaluating it imports that only when asked to.
    with pytest.raises(ConfigError, match="imports no code a file names"):
        mamlpp.load(run_dir)
    model = mamlpp.load(run_dir, overrides=["model._target_=user_components.tiny_mlp"])
    assert model is not None


@pytest.mark.slow
def test_a_users_components_train_through_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(USER_CODE), "MAMLPP_RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run(
        [sys.executable, "-m", "mamlpp.train", *_user_overrides(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs" / "smoke").iterdir()
    assert "model.hidden=16,model=tiny_mlp," in run_dir.name
    _check_user_run(run_dir)


@pytest.mark.usefixtures("user_code")
def test_a_users_algorithm_with_a_key_of_its_own_trains_in_process(
    tmp_path: Path, omniglot_source_dir: Path, omniglot_data_dir: Path
) -> None:
    """algorithm=smoothed_maml (tests/user_code/user_algorithms.py) is a Learner subclass with
    its own config dataclass: its key is checked, saved in the identity, and trained with."""
    base = [
        USER_CONF,
        "experiment=smoke",
        "progress_bar=false",
        "eval.top_k=1",
        f"dataset.source={omniglot_source_dir}",
        f"dataset.data_dir={omniglot_data_dir}",
    ]
    with pytest.raises(ConfigError, match="'algorithm.label_smoothing' = 1.5 is invalid"):
        mamlpp.compose(*base, "algorithm=smoothed_maml", "algorithm.label_smoothing=1.5")
    with pytest.raises(ConfigError, match="not read by algorithm=maml"):
        mamlpp.compose(*base, "algorithm=maml", "algorithm.label_smoothing=0.2")
    cfg = mamlpp.compose(
        *base,
        "algorithm=smoothed_maml",
        "algorithm.label_smoothing=0.2",
        "train.epochs=1",
        "train.iters_per_epoch=2",
        f"paths.runs_dir={tmp_path / 'runs'}",
    )
    assert type(cfg.algorithm).__name__ == "SmoothedMamlConfig"
    results = mamlpp.train(cfg)
    assert results["identity"]["algorithm.label_smoothing"] == 0.2
    run_dir = Path(cfg.run.dir)
    assert json.loads((run_dir / "results.json").read_text())["identity"] == results["identity"]
    # The saved config names the user's code: evaluating it imports that only when asked to.
    with pytest.raises(ConfigError, match="imports no code a file names"):
        mamlpp.load(run_dir)
    model = mamlpp.load(run_dir, overrides=["algorithm._target_=user_algorithms.SmoothedMaml"])
    (learner,) = model.learners
    assert type(learner).__name__ == "SmoothedMaml"
    # Its loss is the smoothed one: on the same logits it exceeds plain cross-entropy.
    logits = torch.tensor([[[4.0, 0.0, 0.0]]])
    labels = torch.tensor([[0]])
    assert learner.loss_fn(logits, labels) > task_losses(logits, labels)
