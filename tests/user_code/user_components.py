"""A researcher's own backbone, dataset and tracker, added without editing mamlpp: each
registers itself with its own config dataclass, and conf/{model,dataset,logger}/*.yaml here
choose them (hydra.searchpath=[file://<this folder>/conf]). Their YAML's `_target_` names this
module, which mamlpp imports to register them."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from torch import nn

from mamlpp.config import (
    ComponentConfig,
    Config,
    ImageDatasetConfig,
    TrackerConfig,
    register_backbone,
    register_dataset,
    register_tracker,
)
from mamlpp.config.checks import check
from mamlpp.data.image_folder import ImageListing
from mamlpp.nn.module_backbone import build_module_backbone

# ---------------------------------------------------------------------------- a backbone


class TinyMlp(nn.Module):
    def __init__(self, in_channels: int, image_size: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


@dataclass
class TinyMlpConfig(ComponentConfig):
    name: str = "tiny_mlp"
    hidden: int = 32

    def validate(self, cfg: Config) -> None:
        check(self.hidden >= 1, "model.hidden", self.hidden, ">= 1")


@register_backbone("tiny_mlp", config=TinyMlpConfig)
def tiny_mlp(cfg: TinyMlpConfig, *, in_channels: int, image_size: int, ways: int, **_: Any):
    return build_module_backbone(
        f"{__name__}.TinyMlp", {"hidden": cfg.hidden}, in_channels, image_size, ways, True
    )


# ---------------------------------------------------------------------------- a dataset


@dataclass
class ZipCharactersConfig(ImageDatasetConfig):
    """The first `classes` characters of an Omniglot zip, each a class, split by ratios."""

    name: str = "zip_characters"
    data_dir: str = "datasets/zip_characters"
    image_size: int = 28
    normalization: str = "none"
    classes: int = 30
    split_ratios: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.25])
    split_seed: int = 0

    def validate(self, cfg: Config) -> None:
        self.check_images()
        check(self.source is not None, "dataset.source", self.source, "an Omniglot zip")
        check(self.classes >= 3 * cfg.task.ways, "dataset.classes", self.classes, ">= 3 * ways")


@register_dataset("zip_characters", config=ZipCharactersConfig)
def zip_characters(cfg: ZipCharactersConfig) -> ImageListing:
    files: dict[str, list[str]] = {}
    with zipfile.ZipFile(cfg.source) as z:
        for member in sorted(z.namelist()):
            if member.endswith(".png"):
                files.setdefault(member.rsplit("/", 1)[0], []).append(member)
    classes = sorted(files)[: cfg.classes]
    return ImageListing(
        "zip_characters", "zip", Path(cfg.source), classes, [files[c] for c in classes]
    )


# ---------------------------------------------------------------------------- a tracker


@dataclass
class JsonlConfig(TrackerConfig):
    file: str = "scalars.jsonl"


class JsonlLogger:
    """One JSON line per step; a resume drops the lines at or after the resume step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: IO[str] | None = None

    def resume(self, step: int) -> None:
        kept = []
        if self.path.exists():
            kept = [
                ln for ln in self.path.read_text().splitlines() if json.loads(ln)["step"] < step
            ]
        self.path.write_text("".join(f"{ln}\n" for ln in kept))
        self.file = open(self.path, "a")  # noqa: SIM115 (open across calls)

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        assert self.file is not None
        self.file.write(json.dumps({"step": step, **scalars}) + "\n")

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@register_tracker("jsonl", config=JsonlConfig)
def open_jsonl(c: JsonlConfig, run_dir: Path, cfg: Config) -> JsonlLogger:
    return JsonlLogger(run_dir / c.file)
