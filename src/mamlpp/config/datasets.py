"""The built-in datasets' configs (the `dataset` section): each one's keys and checks.

mamlpp.data.registry attaches the loaders to these registrations; the configs stay here so that
checking a config loads no dataset code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mamlpp.config.checks import check
from mamlpp.config.registry import ComponentConfig, register
from mamlpp.data.omniglot_facts import (
    IMAGES_PER_CLASS,
    NUM_CLASSES,
    PROTOCOLS,
    split_class_counts,
    split_sizes,
)

if TYPE_CHECKING:
    from mamlpp.config.schema import Config

NORMALIZATIONS = ("none", "imagenet", "dataset")
LAYOUTS = ("auto", "presplit", "unsplit")


@dataclass
class ImageDatasetConfig(ComponentConfig):
    """What every dataset has: where it is and how its images are prepared."""

    name: str = ""
    # omniglot: folder with the zips or a URL base; miniimagenet: the root with images/ and CSVs;
    # image_folder: the folder; tiny_imagenet: a zip or a folder holding it.
    # None: look in data_dir, then download where a download exists (omniglot, tiny_imagenet).
    source: str | None = None
    # Where downloads and the decoded uint8 cache go.
    data_dir: str = "datasets"
    image_size: int = 84
    # Pixels are scaled to [0, 1]; then none | imagenet (ImageNet mean/std) | dataset (train split).
    normalization: str = "dataset"
    # Training-task augmentation, off in the paper presets: random crop after zero padding by
    # this many pixels, and random horizontal flips; drawn per image from the task's seed.
    augment_crop_padding: int = 0
    augment_flip: bool = False

    def validate(self, cfg: Config) -> None:
        self.check_images()

    def check_images(self) -> None:
        check(self.image_size >= 8, "dataset.image_size", self.image_size, ">= 8")
        check(
            self.normalization in NORMALIZATIONS,
            "dataset.normalization",
            self.normalization,
            f"one of {NORMALIZATIONS}",
        )
        check(
            0 <= self.augment_crop_padding < self.image_size,
            "dataset.augment_crop_padding",
            self.augment_crop_padding,
            f"0..{self.image_size - 1} pixels",
        )


def _builtin(d: ImageDatasetConfig) -> None:
    check(
        d._target_ is None,
        "dataset._target_",
        d._target_,
        "a function package.module.name with dataset=custom (and null with the built-in datasets)",
    )
    d.check_images()


def _check_ratios(ratios: list[float]) -> None:
    check(
        len(ratios) == 3 and all(r > 0 for r in ratios),
        "dataset.split_ratios",
        ratios,
        "three positive ratios [train, val, test]",
    )


@dataclass
class OmniglotConfig(ImageDatasetConfig):
    name: str = "omniglot"
    data_dir: str = "datasets/omniglot"
    image_size: int = 28
    normalization: str = "none"
    # mamlpp: all 1623 characters pooled, split 1150/50/423, random k*90 rotation per class per
    # task. maml: Finn et al. 1100/100/423 characters, each rotation its own class.
    protocol: str = "mamlpp"
    # [train, val, test] characters; None: the protocol's standard split (PROTOCOL_SPLITS).
    split_sizes: list[int] | None = None
    split_seed: int = 0
    train_rotation: bool = True

    def validate(self, cfg: Config) -> None:
        _builtin(self)
        check(self.protocol in PROTOCOLS, "dataset.protocol", self.protocol, f"one of {PROTOCOLS}")
        sizes = self.split_sizes
        check(
            sizes is None
            or (len(sizes) == 3 and all(s > 0 for s in sizes) and sum(sizes) <= NUM_CLASSES),
            "dataset.split_sizes",
            sizes,
            f"three positive class counts [train, val, test] summing to at most {NUM_CLASSES}",
        )
        t = cfg.task
        check(
            t.shots + t.targets <= IMAGES_PER_CLASS,
            "task.shots",
            t.shots,
            f"shots + targets <= {IMAGES_PER_CLASS} images per Omniglot class "
            f"(targets={t.targets})",
        )
        for split, n in zip(("train", "val", "test"), self.class_counts()):
            check(
                t.ways <= n, "task.ways", t.ways, f"at most {n}, the classes in the {split} split"
            )

    def splits(self) -> tuple[int, int, int]:
        """Characters per split: the configured sizes or the protocol's standard ones."""
        return split_sizes(self.protocol, self.split_sizes)

    def class_counts(self) -> tuple[int, ...]:
        """Classes a task can draw from in each split (rotations count under 'maml')."""
        return split_class_counts(self.protocol, self.split_sizes)


@dataclass
class ImageFolderConfig(ImageDatasetConfig):
    """<source>/{train,val,test}/<class>/<image> (presplit) or <source>/<class>/<image>."""

    name: str = "image_folder"
    data_dir: str = "datasets/image_folder"
    # auto: presplit if <source> has train/val/test folders, else unsplit.
    layout: str = "auto"
    # (unsplit) train/val/test class ratios; split_seed shuffles the classes first.
    split_ratios: list[float] = field(default_factory=lambda: [0.64, 0.16, 0.2])
    split_seed: int = 0

    def validate(self, cfg: Config) -> None:
        _builtin(self)
        check(self.layout in LAYOUTS, "dataset.layout", self.layout, f"one of {LAYOUTS}")
        check(
            self.source is not None,
            "dataset.source",
            self.source,
            "the image folder (<root>/{train,val,test}/<class>/<image> or <root>/<class>/<image>)",
        )
        _check_ratios(self.split_ratios)


@dataclass
class MiniImageNetConfig(ImageDatasetConfig):
    """Ravi & Larochelle's split: <source>/images/*.jpg + <source>/{train,val,test}.csv."""

    name: str = "miniimagenet"
    data_dir: str = "datasets/miniimagenet"
    normalization: str = "imagenet"

    def validate(self, cfg: Config) -> None:
        _builtin(self)


@dataclass
class TinyImageNetConfig(ImageDatasetConfig):
    """Tiny-ImageNet, a fixed 128/32/40 class split (mamlpp.data.tiny_imagenet)."""

    name: str = "tiny_imagenet"
    data_dir: str = "datasets/tiny_imagenet"
    image_size: int = 32

    def validate(self, cfg: Config) -> None:
        _builtin(self)


@dataclass
class CustomConfig(ImageDatasetConfig):
    """A function of the user's (`_target_`, package.module.function) returns the dataset's
    mamlpp.data.image_folder.ImageListing; it gets `kwargs` and source=<source> when set."""

    name: str = "custom"
    data_dir: str = "datasets/custom"
    kwargs: dict[str, Any] = field(default_factory=dict)
    split_ratios: list[float] = field(default_factory=lambda: [0.64, 0.16, 0.2])
    split_seed: int = 0

    def validate(self, cfg: Config) -> None:
        check(
            self._target_ is not None and "." in self._target_,
            "dataset._target_",
            self._target_,
            "a function package.module.name with dataset=custom (and null with the built-in "
            "datasets)",
        )
        self.check_images()
        _check_ratios(self.split_ratios)


register("dataset", "omniglot", OmniglotConfig)
register("dataset", "image_folder", ImageFolderConfig)
register("dataset", "miniimagenet", MiniImageNetConfig)
register("dataset", "tiny_imagenet", TinyImageNetConfig)
register("dataset", "custom", CustomConfig)
