"""A trained meta-learner in Python: load it, adapt it to a support set, predict.

    model = mamlpp.load("runs/smoke/base")              # or one checkpoints/epoch_NNNN.pt
    xs = model.load_images(support_paths)                # decoded and normalised as in training
    adapted = model.adapt(xs, support_labels)            # inner loop on the support set
    labels = adapted.predict(model.load_images(query_paths))   # class indices
    probs = adapted.predict_proba(model.load_images(query_paths))

`predict`, `predict_proba` and `predict_logits` follow scikit-learn's names: class indices,
probabilities and the raw scores (`decision_function` is the same as `predict_logits`).
With several members (a run's top-k) the logits are averaged, as the run's test phase does.
Batch norm normalises with the batch's statistics (transductive, as MAML evaluates) unless the
run used `algorithm.use_running_stats_eval`, so predict a task's queries together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor

from mamlpp.algorithms.factory import build_learner
from mamlpp.algorithms.learner import Learner
from mamlpp.config import Config, schema_node, to_config
from mamlpp.data.preprocessing import Preprocessing
from mamlpp.data.registry import load_dataset
from mamlpp.errors import DataError, MamlppError, first_line
from mamlpp.experiment.device import resolve_device
from mamlpp.experiment.members import load_learner_state
from mamlpp.experiment.trained import TrainedRun, open_trained
from mamlpp.experiment.trust import CODE_KEYS, named_targets
from mamlpp.image_inputs import ImageInput, image_sources


def config_of(trained: TrainedRun) -> Config:
    """The validated training config of a trained run (its checkpoint's or config.yaml)."""
    try:
        merged = OmegaConf.merge(schema_node(), trained.config)
    except OmegaConfBaseException as exc:
        raise MamlppError(f"the config in {trained.policy.source}: {first_line(exc)}") from exc
    assert isinstance(merged, DictConfig)  # merged onto the Config schema
    return to_config(merged, trained.policy.allow)


def preprocessing_of(trained: TrainedRun, cfg: Config) -> Preprocessing:
    """The members' preprocessing; members older than that record get it from their dataset."""
    prep = trained.members[0].preprocessing
    if prep is not None:
        return prep
    trained.policy.dataset_config(cfg)
    return Preprocessing.of(load_dataset(cfg.dataset))


def iter_members(
    trained: TrainedRun, cfg: Config, channels: int, device: torch.device
) -> Iterator[Learner]:
    """The members as learners, built one at a time (an evaluation holds one in memory)."""
    cfg = trained.policy.model_config(cfg)
    for member in trained.members:
        learner = build_learner(cfg, channels, device)
        load_learner_state(learner, member.learner, member.path)
        yield learner


def build_members(
    trained: TrainedRun, cfg: Config, channels: int, device: torch.device
) -> list[Learner]:
    return list(iter_members(trained, cfg, channels, device))


def check_support_classes(
    classes: Sequence[object], ways: int, where: str, noun: str = "class(es)"
) -> None:
    """The one rule of a support set, for `adapt` and for `mamlpp-eval --support`: exactly the
    `ways` classes the head was trained for (a class without images leaves its logit untrained,
    so the model would still predict it)."""
    if len(classes) != ways:
        shown = ", ".join(str(c) for c in list(classes)[:8]) + (", ..." if len(classes) > 8 else "")
        raise DataError(
            f"{where} has {len(classes)} {noun} ({shown}) but the model's head was trained for "
            f"{ways} ways: give exactly {ways} classes, each with at least one image"
        )


@dataclass
class AdaptedModel:
    """Members adapted to one support set (fast weights), ready to predict its queries.

    Queries are images [M, C, S, S] (uint8 pixels or normalised floats), or anything
    `TrainedModel.load_images` takes (paths, a folder, PIL images, arrays)."""

    model: TrainedModel
    fast: list[dict[str, Tensor]]
    steps: int

    def predict_logits(self, xq: Tensor | Any) -> Tensor:
        """Logits [M, N] of the queries (the members' average)."""
        x = self.model.as_input(xq)
        logits = [
            learner.predict_adapted(fast, x, self.steps)
            for learner, fast in zip(self.model.learners, self.fast)
        ]
        return torch.stack(logits).mean(0)[0]

    decision_function = predict_logits  # scikit-learn's name for the raw scores

    def predict_proba(self, xq: Tensor | Any) -> Tensor:
        """Class probabilities [M, N] (softmax of the averaged logits)."""
        return self.predict_logits(xq).softmax(-1)

    def predict(self, xq: Tensor | Any) -> Tensor:
        """Predicted class indices [M] (int64), the support labels' numbering."""
        return self.predict_logits(xq).argmax(-1)


@dataclass
class TrainedModel:
    """A trained model (one member or a top-k ensemble) with its config and preprocessing."""

    config: Config
    preprocessing: Preprocessing
    learners: list[Learner]
    device: torch.device

    @property
    def ways(self) -> int:
        return self.config.task.ways

    def load_images(self, images: ImageInput | Sequence[ImageInput]) -> Tensor:
        """Images -> float [M, C, S, S] on the model's device, decoded exactly as in training.

        `images`: a path (str or Path), a folder (its images, sorted by name), a PIL image, a
        numpy array (HxW or HxWxC, uint8 or float in [0, 1]), or a list of these."""
        sources = image_sources(images)
        pixels = np.stack([self.preprocessing.decode_file(p) for p in sources])
        return self.preprocessing.normalise(torch.from_numpy(pixels)).to(self.device)

    def as_input(self, x: Tensor | Any) -> Tensor:
        """[M, C, S, S] images (uint8 pixels are normalised here; anything else goes through
        load_images) as one task [1, M, C, S, S]."""
        if not isinstance(x, Tensor):
            x = self.load_images(x)
        p = self.preprocessing
        if x.dim() != 4 or tuple(x.shape[1:]) != (p.channels, p.image_size, p.image_size):
            raise MamlppError(
                f"images of shape {tuple(x.shape)}: the model takes [M, {p.channels}, "
                f"{p.image_size}, {p.image_size}] (load_images decodes files into that)"
            )
        if x.dtype == torch.uint8:
            x = p.normalise(x)
        return x.to(self.device, torch.float32).unsqueeze(0)

    def adapt(
        self, xs: Tensor | Any, ys: Tensor | Sequence[int], steps: int | None = None
    ) -> AdaptedModel:
        """Run the inner loop on one support set: images [M, C, S, S] (or what load_images
        takes), labels [M] covering every class 0..ways-1.

        `steps` defaults to the run's algorithm.inner_steps_eval."""
        x = self.as_input(xs)
        labels = torch.as_tensor(ys, dtype=torch.long)
        if labels.dim() != 1 or labels.numel() != x.shape[1]:
            raise MamlppError(f"{labels.numel()} labels for {x.shape[1]} support images")
        if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < self.ways):
            raise MamlppError(
                f"support labels must lie in 0..{self.ways - 1} (a {self.ways}-way model)"
            )
        check_support_classes(sorted(set(labels.tolist())), self.ways, "the support set")
        steps = steps or self.config.algorithm.inner_steps_eval
        y = labels.to(self.device).unsqueeze(0)
        fast = [learner.adapt(x, y, steps) for learner in self.learners]
        return AdaptedModel(self, fast, steps)


def load(
    path: str | Path,
    members: str = "top-k",
    device: str = "auto",
    overrides: Sequence[str] = (),
    trust_code: bool = False,
) -> TrainedModel:
    """A trained model from a run directory (its top-k ensemble; members=best or epoch=N picks
    one) or from a single checkpoint file, on `device` (auto: a GPU if there is one).

    A model whose config names code (`model._target_`, `algorithm._target_`,
    `algorithm.inner_rule._target_`, `dataset._target_`: see mamlpp.experiment.trust) loads
    when `overrides` names the same value, e.g. `overrides=["model._target_=my_nets.Net"]`,
    or with `trust_code=True` (which logs what it imports); a file alone never makes mamlpp
    import anything."""
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    named = named_targets(overrides)
    unknown = [o for o in overrides if o.partition("=")[0] not in CODE_KEYS]
    if unknown:
        raise MamlppError(
            f"load: override {unknown[0]!r} is not allowed: overrides name the code the saved "
            f"config needs ({', '.join(k + '=...' for k in CODE_KEYS)}); evaluation settings "
            "are mamlpp-eval's"
        )
    trained = open_trained(path, members, named, trust_code)
    cfg = config_of(trained)
    trained.policy.model_config(cfg)  # refused before the data is read for old members
    prep = preprocessing_of(trained, cfg)
    on = resolve_device(device)
    return TrainedModel(cfg, prep, build_members(trained, cfg, prep.channels, on), on)
