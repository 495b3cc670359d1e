"""dataset.name -> a FewShotDataset.

The built-in datasets attach their loaders to their registered configs here; a dataset of one's
own registers itself the same way (mamlpp.config.registry.register_dataset): its loader returns
an ImageListing (decoded and cached like an image folder) or a FewShotDataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from mamlpp.config import (
    CustomConfig,
    ImageDatasetConfig,
    ImageFolderConfig,
    MiniImageNetConfig,
    OmniglotConfig,
    TinyImageNetConfig,
    builder,
    register_dataset,
)
from mamlpp.data import omniglot
from mamlpp.data.call_args import check_kwargs
from mamlpp.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassImages,
    FewShotDataset,
    split_by_ratios,
)
from mamlpp.data.episodes import Augmentation
from mamlpp.data.image_cache import channel_stats, load_cached
from mamlpp.data.image_folder import (
    ImageListing,
    detect_folder_layout,
    list_miniimagenet,
    list_presplit_folder,
    list_unsplit_folder,
)
from mamlpp.data.splits import fixed_splits
from mamlpp.data.tiny_imagenet import find_source, list_tiny_imagenet
from mamlpp.errors import ConfigError, locate


def load_dataset(cfg: ImageDatasetConfig) -> FewShotDataset:
    """Load (decode or read from the cache) the configured dataset and its class split."""
    data = builder("dataset", cfg.name)(cfg)
    if isinstance(data, ImageListing):
        data = _from_listing(cfg, data)
    if cfg.normalization == "imagenet":
        if data.images.channels != 3:
            raise ConfigError(
                "config key 'dataset.normalization' = 'imagenet' needs RGB images: use none|dataset"
            )
        data.mean, data.std = IMAGENET_MEAN, IMAGENET_STD
    elif cfg.normalization == "dataset":
        # Loaders return NumPy pixels (in memory or mapped); they move to the device later.
        rows = data.images.rows(data.splits["train"].chars)
        mean, std = channel_stats(cast(np.ndarray, data.images.pixels), rows)
        data.mean, data.std = tuple(mean), tuple(max(s, 1e-6) for s in std)
    return data


def _from_listing(cfg: ImageDatasetConfig, listing: ImageListing) -> FewShotDataset:
    cached = load_cached(listing, cfg.data_dir, cfg.image_size)
    images = ClassImages.from_counts(cached.pixels, cached.counts)
    num_classes = len(images.counts)
    if listing.split_sizes is not None:
        splits = fixed_splits(np.arange(num_classes), listing.split_sizes)
    else:
        ratios = getattr(cfg, "split_ratios", None)
        if ratios is None:
            raise ConfigError(
                f"dataset={cfg.name}: its listing fixes no split (split_sizes) and its config "
                "has no split_ratios"
            )
        splits = split_by_ratios(num_classes, tuple(ratios), getattr(cfg, "split_seed", 0))
    return FewShotDataset(cfg.name, images, listing.classes, splits, identity=cached.identity)


def augmentation(cfg: ImageDatasetConfig) -> Augmentation:
    return Augmentation(cfg.augment_crop_padding, cfg.augment_flip)


def custom_listing(target: str, kwargs: dict) -> ImageListing:
    """dataset=custom: `target(**kwargs)` lists the images; dataset.source, when set, arrives
    as `source=`. The contract: it returns an ImageListing, with classes in train, val, test
    order when it sets split_sizes (else dataset.split_ratios splits them). Decoding, caching
    and the content identity are the image folders'."""
    make = locate(target, "dataset._target_")
    if not callable(make):
        raise ConfigError(f"config key 'dataset._target_' = {target!r} is not a function")
    check_kwargs(make, kwargs, "dataset.kwargs", target)
    listing = make(**kwargs)
    if not isinstance(listing, ImageListing):
        raise ConfigError(
            f"config key 'dataset._target_' = {target!r} returned {type(listing).__name__}, "
            "not a mamlpp.data.image_folder.ImageListing"
        )
    return listing


@register_dataset("omniglot", config=OmniglotConfig)
def _omniglot(cfg: OmniglotConfig) -> FewShotDataset:
    images, identity = omniglot.load_omniglot_identified(cfg.data_dir, cfg.source, cfg.image_size)
    splits = omniglot.class_splits(
        images.shape[0], cfg.splits(), cfg.split_seed, cfg.protocol, cfg.train_rotation
    )
    names = [f"character {i}" for i in range(images.shape[0])]
    return FewShotDataset(
        "omniglot", ClassImages.from_class_major(images), names, splits, identity=identity
    )


@register_dataset("custom", config=CustomConfig)
def _custom(cfg: CustomConfig) -> ImageListing:
    assert cfg._target_ is not None  # CustomConfig.validate requires it
    source = {} if cfg.source is None else {"source": cfg.source}
    assert cfg._target_ is not None  # validate() requires it for dataset=custom
    return custom_listing(cfg._target_, {**source, **cfg.kwargs})


@register_dataset("tiny_imagenet", config=TinyImageNetConfig)
def _tiny_imagenet(cfg: TinyImageNetConfig) -> ImageListing:
    return list_tiny_imagenet(find_source(cfg.data_dir, cfg.source))


@register_dataset("miniimagenet", config=MiniImageNetConfig)
def _miniimagenet(cfg: MiniImageNetConfig) -> ImageListing:
    return list_miniimagenet(Path(cfg.source or cfg.data_dir))


@register_dataset("image_folder", config=ImageFolderConfig)
def _image_folder(cfg: ImageFolderConfig) -> ImageListing:
    if cfg.source is None:
        raise ConfigError(
            "config key 'dataset.source' is null: name the image folder "
            "(<root>/{train,val,test}/<class>/<image> or <root>/<class>/<image>)"
        )
    layout = detect_folder_layout(cfg.source) if cfg.layout == "auto" else cfg.layout
    if layout == "presplit":
        return list_presplit_folder(cfg.source)
    return list_unsplit_folder(cfg.source)
