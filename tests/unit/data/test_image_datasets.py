"""Natural-image datasets: every layout on generated fixtures, the real Tiny-ImageNet zip, the
memory-mapped cache (reuse, invalidation, nothing half-written), normalisation, augmentation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.paths import REPO_ROOT, USER_CODE
from mamlpp.config import Config, ImageDatasetConfig, dataset_config, validate
from mamlpp.data import image_cache
from mamlpp.data import image_folder as imf
from mamlpp.data.dataset import ClassImages, split_by_ratios
from mamlpp.data.decode import decode_image
from mamlpp.data.episodes import Augmentation, EpisodeSampler
from mamlpp.data.registry import load_dataset
from mamlpp.data.splits import SplitClasses
from mamlpp.data.tiny_imagenet import class_split
from mamlpp.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 12
TINY_ZIP = (
    REPO_ROOT.parent
    / "shared"
    / "datasets"
    / "tiny-imagenet-subset"
    / "tiny-imagenet-200-train-100pc.zip"
)


def write_image(path: Path, seed: int, size: tuple[int, int] = (15, 13), mode: str = "RGB") -> None:
    """A random image (sizes differ from SIZE so the loader has to resize)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def expected_pixels(path: Path) -> np.ndarray:
    """Independent decode: PIL RGB, LANCZOS to SIZE x SIZE, CHW."""
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return np.asarray(rgb).transpose(2, 0, 1)


def make_presplit(root: Path, classes=(3, 2, 2), per_class: int = 6) -> Path:
    seed = 0
    for split, n in zip(("train", "val", "test"), classes):
        for c in range(n):
            for i in range(per_class):
                ext = "png" if i % 2 else "jpg"
                write_image(root / split / f"{split}_class{c}" / f"img{i:02d}.{ext}", seed)
                seed += 1
    return root


def make_unsplit(root: Path, classes: int = 10, per_class: int = 4) -> Path:
    for c in range(classes):
        for i in range(per_class):
            write_image(root / f"class{c:02d}" / f"{i}.png", 1000 + c * per_class + i)
    (root / "class00" / "notes.txt").write_text("not an image")  # ignored
    return root


def make_miniimagenet(root: Path) -> Path:
    """Ravi & Larochelle layout: images/ + train/val/test.csv (filename,label)."""
    wnids = {"train": ["n01532829", "n01558993", "n01704323"], "val": ["n01855672", "n02091244"]}
    wnids["test"] = ["n01930112", "n01981276"]
    seed = 0
    for split, labels in wnids.items():
        rows = ["filename,label"]
        for label in labels:
            for i in range(5):
                name = f"{label}{i + 1:08d}.jpg"
                write_image(root / "images" / name, seed, size=(20, 16))
                rows.append(f"{name},{label}")
                seed += 1
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def cfg(name: str, source: Path | str | None, data_dir: Path, **kw) -> ImageDatasetConfig:
    return dataset_config(
        name=name, source=None if source is None else str(source), data_dir=str(data_dir),
        image_size=kw.pop("image_size", SIZE), **kw,
    )  # fmt: skip


# --------------------------------------------------------------------------- layouts


def test_presplit_folder(tmp_path: Path) -> None:
    root = make_presplit(tmp_path / "src")
    data = load_dataset(cfg("image_folder", root, tmp_path / "data"))
    assert data.images.pixels.shape == (7 * 6, 3, SIZE, SIZE)
    assert isinstance(data.images.pixels, np.memmap)  # read from the cache, not copied
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 3, "val": 2, "test": 2}
    names = [data.class_names[c] for c in data.splits["val"].chars]
    assert names == ["val/val_class0", "val/val_class1"]
    c = data.class_names.index("test/test_class1")
    row = int(data.images.starts[c]) + 3
    want = expected_pixels(root / "test" / "test_class1" / "img03.png")
    np.testing.assert_array_equal(data.images.pixels[row], want)


def test_unsplit_folder_splits_by_seeded_ratios(tmp_path: Path) -> None:
    root = make_unsplit(tmp_path / "src")
    a = load_dataset(cfg("image_folder", root, tmp_path / "data", split_ratios=[0.6, 0.2, 0.2]))
    assert len(a.class_names) == 10 and list(a.images.counts) == [4] * 10
    sizes = {s: len(v) for s, v in a.splits.items()}
    assert sizes == {"train": 6, "val": 2, "test": 2}
    chars = [set(v.chars.tolist()) for v in a.splits.values()]
    assert set.union(*chars) == set(range(10)) and sum(len(c) for c in chars) == 10
    again = load_dataset(cfg("image_folder", root, tmp_path / "data", split_ratios=[0.6, 0.2, 0.2]))
    assert all(np.array_equal(a.splits[s].chars, again.splits[s].chars) for s in a.splits)
    other = load_dataset(
        cfg("image_folder", root, tmp_path / "data", split_ratios=[0.6, 0.2, 0.2], split_seed=5)
    )
    assert any(not np.array_equal(a.splits[s].chars, other.splits[s].chars) for s in a.splits)
    with pytest.raises(DataError, match="split_ratios"):
        split_by_ratios(3, (0.9, 0.05, 0.05), 0)


def test_miniimagenet_csv_layout(tmp_path: Path) -> None:
    root = make_miniimagenet(tmp_path / "mini")
    data = load_dataset(cfg("miniimagenet", root, tmp_path / "data", normalization="imagenet"))
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 3, "val": 2, "test": 2}
    assert [data.class_names[c] for c in data.splits["test"].chars] == ["n01930112", "n01981276"]
    assert data.mean == pytest.approx((0.485, 0.456, 0.406))
    c = data.class_names.index("n01855672")
    np.testing.assert_array_equal(
        data.images.pixels[data.images.starts[c] + 4],
        expected_pixels(root / "images" / "n0185567200000005.jpg"),
    )


def test_layout_auto_detection_and_partial_split_error(tmp_path: Path) -> None:
    assert imf.detect_folder_layout(make_presplit(tmp_path / "a")) == "presplit"
    assert imf.detect_folder_layout(make_unsplit(tmp_path / "b")) == "unsplit"
    (tmp_path / "c" / "train" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="has train but not all of train/val/test"):
        imf.detect_folder_layout(tmp_path / "c")


# --------------------------------------------------------------------------- bad input


def _cache_files(data_dir: Path) -> list[str]:
    """The decoded cache's files (digests/ holds the file CRCs, each written whole)."""
    cache = data_dir / "cache"
    return sorted(p.name for p in cache.iterdir() if p.name != "digests") if cache.exists() else []


def test_undecodable_image_names_the_file_and_caches_nothing(tmp_path: Path) -> None:
    root = make_presplit(tmp_path / "src")
    bad = root / "val" / "val_class1" / "img02.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(DataError) as info:
        load_dataset(cfg("image_folder", root, tmp_path / "data"))
    msg = str(info.value)
    assert "cannot decode image" in msg and str(bad) in msg and "\n" not in msg
    assert _cache_files(tmp_path / "data") == []  # no .npy, manifest or temp file left


def test_csv_naming_a_missing_file(tmp_path: Path) -> None:
    root = make_miniimagenet(tmp_path / "mini")
    (root / "images" / "n0155899300000003.jpg").unlink()
    with pytest.raises(DataError) as info:
        load_dataset(cfg("miniimagenet", root, tmp_path / "data"))
    assert "train.csv line 9 names n0155899300000003.jpg" in str(info.value)
    (root / "val.csv").unlink()
    with pytest.raises(DataError, match="val.csv not found"):
        imf.list_miniimagenet(root)


def test_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty has no class folders"):
        load_dataset(cfg("image_folder", tmp_path / "empty", tmp_path / "data"))
    root = make_unsplit(tmp_path / "src", classes=3)
    (root / "class99").mkdir()
    with pytest.raises(DataError, match=r"class99 holds no images"):
        load_dataset(cfg("image_folder", root, tmp_path / "data"))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(cfg("image_folder", tmp_path / "nope", tmp_path / "data"))


def test_class_with_too_few_images_is_named(tmp_path: Path) -> None:
    root = make_unsplit(tmp_path / "src", classes=6, per_class=4)
    for f in sorted((root / "class03").iterdir())[:2]:
        f.unlink()  # class03 keeps 2 images (and notes.txt lives in class00)
    data = load_dataset(cfg("image_folder", root, tmp_path / "data", split_ratios=[1, 1, 1]))
    data.check_task_fits(ways=2, shots=1, targets=1)
    with pytest.raises(DataError, match=r"class 'class03' \(\w+ split\) has 2 images, fewer than"):
        data.check_task_fits(ways=2, shots=1, targets=2)
    with pytest.raises(DataError, match="task.ways=3 but the train split has only 2 classes"):
        data.check_task_fits(ways=3, shots=1, targets=1)


def test_config_errors_are_one_line() -> None:
    from mamlpp.config import Config, validate

    for key, value, allowed in (
        ("name", "cifar", "one of"),
        ("normalization", "zscore", "one of"),
        ("augment_crop_padding", 40, "0..27"),
        ("split_ratios", [0.5, 0.5], "three positive ratios"),
    ):
        c = Config(dataset=dataset_config("image_folder", source="/x", image_size=28))
        setattr(c.dataset, key, value)
        with pytest.raises(ConfigError) as info:
            validate(c)
        assert f"dataset.{key}" in str(info.value) and allowed in str(info.value)


# --------------------------------------------------------------------------- cache


def test_cache_is_reused_and_invalidated_when_the_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_presplit(tmp_path / "src")
    c = cfg("image_folder", root, tmp_path / "data")
    first = load_dataset(c)
    files = _cache_files(tmp_path / "data")
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    manifest = json.loads((tmp_path / "data" / "cache" / files[0]).read_text())
    assert manifest["counts"] == [6] * 7 and manifest["split_sizes"] == [3, 2, 2]

    real_chunks = image_cache.decode_chunks

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit must not decode")

    monkeypatch.setattr(image_cache, "decode_chunks", boom)
    again = load_dataset(c)
    np.testing.assert_array_equal(first.images.pixels, again.images.pixels)

    changed = root / "train" / "train_class2" / "img00.jpg"
    write_image(changed, 999)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return real_chunks(*args, **kwargs)

    monkeypatch.setattr(image_cache, "decode_chunks", counting)
    rebuilt = load_dataset(c)
    assert calls, "a changed source file must rebuild the cache"
    cls = rebuilt.class_names.index("train/train_class2")
    np.testing.assert_array_equal(
        rebuilt.images.pixels[rebuilt.images.starts[cls]], expected_pixels(changed)
    )
    assert len(_cache_files(tmp_path / "data")) == 2  # replaced in place, no temp files


def test_dataset_normalisation_uses_training_classes(tmp_path: Path) -> None:
    root = make_presplit(tmp_path / "src")
    data = load_dataset(cfg("image_folder", root, tmp_path / "data", normalization="dataset"))
    rows = np.concatenate(
        [
            data.images.starts[c] + np.arange(data.images.counts[c])
            for c in data.splits["train"].chars
        ]
    )
    train = np.asarray(data.images.pixels[rows], dtype=np.float64) / 255
    np.testing.assert_allclose(data.mean, train.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(data.std, train.std(axis=(0, 2, 3)), rtol=1e-8)
    sampler = EpisodeSampler(data.images, data.splits, 2, 1, 2, mean=data.mean, std=data.std)
    batch = sampler.batch("train", seed=0, start=0, count=2)
    idx = sampler.task_indices("train", 0, 0, 2)
    raw = data.images.pixels[data.images.starts[idx.chars[0, 0]] + idx.images[0, 0, 0]]
    want = (raw / 255.0 - np.array(data.mean)[:, None, None]) / np.array(data.std)[:, None, None]
    np.testing.assert_allclose(batch.xs[0, 0].numpy(), want, atol=1e-5)


# --------------------------------------------------------------------------- sampler


def ragged_images() -> tuple[ClassImages, dict[str, SplitClasses]]:
    """6 classes with 3..8 images; every pixel value encodes (class, image)."""
    counts = np.array([3, 8, 5, 4, 6, 7])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pixels = np.zeros((counts.sum(), 3, 6, 6), dtype=np.uint8)
    for c, (s, n) in enumerate(zip(starts, counts)):
        for i in range(n):
            pixels[s + i] = c * 16 + i
    splits = {
        name: SplitClasses(np.array(ch), np.zeros(len(ch), dtype=np.int64))
        for name, ch in (("train", [0, 1, 2]), ("val", [3, 4]), ("test", [5, 1]))
    }
    return ClassImages(pixels, starts, counts), splits


def test_ragged_classes_sample_distinct_images_of_the_right_class() -> None:
    images, splits = ragged_images()
    sampler = EpisodeSampler(images, splits, ways=2, shots=1, targets=2)
    batch = sampler.batch("train", seed=3, start=0, count=20)
    for t in range(20):
        ids = {}
        for x, y in ((batch.xs[t], batch.ys[t]), (batch.xt[t], batch.yt[t])):
            for img, label in zip(x, y.tolist()):
                v = int(round(img[0, 0, 0].item() * 255))
                assert torch.all(img * 255 == v)
                ids.setdefault(label, []).append(v)
        for values in ids.values():
            assert len({v // 16 for v in values}) == 1  # one class per label
            assert len(set(values)) == len(values) == 3  # no image twice in a task
            assert all(v // 16 in (0, 1, 2) for v in values)


def test_memory_map_and_device_copy_give_the_same_episodes(tmp_path: Path) -> None:
    images, splits = ragged_images()
    np.save(tmp_path / "x.npy", images.pixels)
    mapped = ClassImages(np.load(tmp_path / "x.npy", mmap_mode="r"), images.starts, images.counts)
    on_device = mapped.to(torch.device("cpu"), chunk=5)
    assert isinstance(on_device.pixels, torch.Tensor)
    a = EpisodeSampler(mapped, splits, 2, 1, 2).batch("val", 1, 0, 4)
    b = EpisodeSampler(on_device, splits, 2, 1, 2).batch("val", 1, 0, 4)
    assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()))


def reference_augment(img: np.ndarray, pad: int, oy: int, ox: int, flip: bool) -> np.ndarray:
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
    h, w = img.shape[1:]
    out = padded[:, oy : oy + h, ox : ox + w]
    return out[:, :, ::-1] if flip else out


def test_augmentation_crops_and_flips_training_tasks_only() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6 * 5, 3, 8, 8), dtype=np.uint8)
    images = ClassImages(pixels, np.arange(6) * 5, np.full(6, 5))
    _, splits = ragged_images()
    aug = Augmentation(crop_padding=2, flip=True)
    plain = EpisodeSampler(images, splits, 2, 2, 1)
    sampler = EpisodeSampler(images, splits, 2, 2, 1, augmentation=aug)
    idx = sampler.task_indices("train", 5, 0, 6)
    base = plain.task_indices("train", 5, 0, 6)
    # Augmentation draws come after the task's own draws: the tasks themselves are unchanged.
    assert np.array_equal(idx.chars, base.chars) and np.array_equal(idx.images, base.images)
    assert idx.flips.any() and not idx.flips.all()
    assert len(np.unique(idx.crop_y)) > 1 and idx.crop_y.max() <= 4
    batch = sampler.batch("train", 5, 0, 6)
    x = torch.cat([batch.xs.view(6, 2, 2, 3, 8, 8), batch.xt.view(6, 2, 1, 3, 8, 8)], dim=2)
    for b in range(6):
        for n in range(2):
            for m in range(3):
                src = pixels[images.starts[idx.chars[b, n]] + idx.images[b, n, m]] / 255.0
                want = reference_augment(
                    src, 2, idx.crop_y[b, n, m], idx.crop_x[b, n, m], idx.flips[b, n, m]
                )
                np.testing.assert_allclose(x[b, n, m].numpy(), want, atol=1e-7)
    for split in ("val", "test"):
        assert sampler.task_indices(split, 5, 0, 2).flips is None
        a, p = sampler.batch(split, 5, 0, 3), plain.batch(split, 5, 0, 3)
        assert torch.equal(a.xs, p.xs) and torch.equal(a.xt, p.xt)
    assert torch.equal(batch.xs, sampler.batch("train", 5, 0, 6).xs)  # deterministic


# --------------------------------------------------------------------------- real Tiny-ImageNet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not TINY_ZIP.is_file():
        pytest.fail(f"Tiny-ImageNet subset zip not found at {TINY_ZIP}")
    data_dir = tmp_path_factory.mktemp("tiny")
    c = cfg("tiny_imagenet", TINY_ZIP.parent, data_dir, image_size=32, normalization="dataset")
    return {"cfg": c, "data": load_dataset(c), "data_dir": data_dir}


@pytest.mark.slow  # decodes the real Tiny-ImageNet subset
def test_real_tiny_imagenet_zip(tiny: dict) -> None:
    data = tiny["data"]
    assert data.images.pixels.shape == (20_000, 3, 32, 32)
    assert list(data.images.counts) == [100] * 200
    split = class_split()
    for s in ("train", "val", "test"):
        assert [data.class_names[c] for c in data.splits[s].chars] == split[s]
    assert [len(split[s]) for s in split] == [128, 32, 40]
    assert len({w for s in split.values() for w in s}) == 200
    with zipfile.ZipFile(TINY_ZIP) as zf:
        wnid = split["test"][7]
        raw = zf.read(f"tiny-imagenet-200/train/{wnid}/images/{wnid}_42.JPEG")
        grey = next(n for n in zf.namelist() if n.endswith(".JPEG") and _mode(zf.read(n)) == "L")
    c = data.class_names.index(wnid)
    np.testing.assert_array_equal(
        data.images.pixels[data.images.starts[c] + 42], decode_image(raw, 32, 3, "x")
    )
    gw, gi = grey.rsplit("/", 1)[-1].removesuffix(".JPEG").split("_")
    if int(gi) < 100:  # a greyscale JPEG: converted to RGB, so its channels are equal
        g = data.images.pixels[data.images.starts[data.class_names.index(gw)] + int(gi)]
        assert np.array_equal(g[0], g[1]) and np.array_equal(g[1], g[2])
    assert 0.3 < data.mean[0] < 0.6 and 0.2 < data.std[0] < 0.35


def _mode(data: bytes) -> str:
    import io

    with Image.open(io.BytesIO(data)) as im:
        return im.mode


@pytest.mark.slow  # decodes the real Tiny-ImageNet subset
def test_real_tiny_imagenet_cache_reused_and_deterministic(
    tiny: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_cache, "decode_chunks", lambda *a, **k: pytest.fail("cache miss"))
    again = load_dataset(tiny["cfg"])
    np.testing.assert_array_equal(again.images.pixels, tiny["data"].images.pixels)
    assert again.mean == tiny["data"].mean
    sampler = EpisodeSampler(again.images, again.splits, 5, 1, 15, again.mean, again.std)
    batch = sampler.batch("test", seed=0, start=0, count=2)
    assert batch.xs.shape == (2, 5, 3, 32, 32) and batch.xt.shape == (2, 75, 3, 32, 32)
    assert abs(batch.xt.mean().item()) < 0.5  # normalised


@pytest.mark.slow  # decodes the real Tiny-ImageNet subset
def test_real_tiny_imagenet_cache_invalidated_when_the_zip_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy of the real zip: cached once, reused, rebuilt after the zip is replaced."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(TINY_ZIP, src / TINY_ZIP.name)
    c = cfg("tiny_imagenet", src, tmp_path / "data", image_size=8)
    calls: list[int] = []
    real_chunks = image_cache.decode_chunks

    def counting(*args, **kwargs):
        calls.append(1)
        return real_chunks(*args, **kwargs)

    monkeypatch.setattr(image_cache, "decode_chunks", counting)
    first = load_dataset(c)
    load_dataset(c)
    assert len(calls) == 1  # the second load is a cache hit
    stamp = (src / TINY_ZIP.name).stat().st_mtime_ns + 10**9
    os.utime(src / TINY_ZIP.name, ns=(stamp, stamp))  # e.g. the zip re-downloaded
    again = load_dataset(c)
    assert len(calls) == 2
    np.testing.assert_array_equal(first.images.pixels, again.images.pixels)
    assert len(_cache_files(tmp_path / "data")) == 2


def test_tiny_imagenet_missing_source_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(cfg("tiny_imagenet", tmp_path, tmp_path / "data"))
    assert "dataset.source" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_cli_trains_on_an_image_folder(tmp_path: Path) -> None:
    """The whole pipeline (registry, 3-channel model, normalisation, augmentation) on a folder."""
    root = make_presplit(tmp_path / "src", classes=(4, 3, 3), per_class=5)
    run_dir = tmp_path / "run"
    args = [
        sys.executable, "-m", "mamlpp.train", "experiment=smoke", "dataset=image_folder",
        f"dataset.source={root}", f"dataset.data_dir={tmp_path / 'data'}", "dataset.image_size=16",
        "dataset.augment_crop_padding=2", "dataset.augment_flip=true", "task.ways=3",
        "task.targets=2", "model.filters=8", "algorithm.inner_steps=1", "device=cpu",
        "progress_bar=false", "eval.val_tasks=4", "eval.test_tasks=6", "eval.top_k=1",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["dataset"] == "image_folder"
    assert results["num_test_tasks"] == 6
    assert 0.0 <= results["test_accuracy_mean"] <= 1.0


# --------------------------------------------------------------------------- dataset=custom


def make_flat(root: Path, classes: int = 10, per_class: int = 4) -> Path:
    """<root>/<class>__<n>.png: a layout only a user's own lister understands."""
    for c in range(classes):
        for i in range(per_class):
            write_image(root / f"glyph{c:02d}__{i}.png", 2000 + c * per_class + i)
    return root


def test_custom_dataset_from_a_users_lister(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(USER_CODE))
    root = make_flat(tmp_path / "flat")
    custom = cfg("custom", root, tmp_path / "data", _target_="user_data.list_flat")
    data = load_dataset(custom)
    assert data.images.counts.tolist() == [4] * 10
    first = data.images.rows(np.array([0]))[0]
    assert np.array_equal(data.images.pixels[first], expected_pixels(root / "glyph00__0.png"))
    sizes = [len(data.splits[s].chars) for s in ("train", "val", "test")]
    assert sum(sizes) == 10 and min(sizes) >= 1
    assert data.identity == load_dataset(custom).identity
    (root / "glyph09__3.png").unlink()
    assert load_dataset(custom).identity != data.identity  # a changed folder is other data


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("user_data.missing", "dataset._target_.*cannot import"),
        ("user_data.not_a_listing", "returned list, not a mamlpp.data.image_folder.ImageListing"),
    ],
)
def test_custom_dataset_errors_are_one_line(tmp_path: Path, target: str, message: str) -> None:
    import sys

    sys.path.insert(0, str(USER_CODE))
    with pytest.raises(ConfigError, match=message) as err:
        load_dataset(
            cfg("custom", make_flat(tmp_path / "f", 3, 2), tmp_path / "d", _target_=target)
        )
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="dataset._target_.*dataset=custom"):
        validate(Config(dataset=dataset_config(name="custom")))
    with pytest.raises(ConfigError, match="dataset._target_"):
        validate(Config(dataset=dataset_config(_target_="user_data.list_flat")))


@pytest.mark.slow
def test_custom_dataset_trains_through_the_cli(cli, tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat")
    user_code = str(USER_CODE)
    env = {**cli.env, "PYTHONPATH": os.pathsep.join([user_code, os.environ.get("PYTHONPATH", "")])}
    args = [
        "experiment=smoke",
        "algorithm=maml",
        "dataset=custom",
        "dataset._target_=user_data.list_flat",
        f"dataset.source={root}",
        f"dataset.data_dir={tmp_path / 'data'}",
        "dataset.image_size=16",
        "model.stages=3",
        "task.ways=2",
        "progress_bar=false",
    ]
    done = subprocess.run(
        cli.command(*args, tiny=False), cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    (results,) = (tmp_path / "runs" / "smoke").glob("*/results.json")
    assert "dataset._target_=user_data.list_flat" in results.parent.name
    assert "dataset.source=flat-" in results.parent.name
    assert json.loads(results.read_text())["num_test_tasks"] == 40
