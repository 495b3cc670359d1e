"""Data identity by content (mamlpp.data.content): swapped pixels change the identity and
rebuild the decoded cache, re-runs read no image twice, identities of older run directories
still compare as they did, and a resume on changed data is refused in one line."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.images import class_folder
from mamlpp.config import Config, ImageDatasetConfig, dataset_config
from mamlpp.data import content, image_cache
from mamlpp.data import image_folder as imf
from mamlpp.data import omniglot as og
from mamlpp.data.registry import load_dataset
from mamlpp.experiment.run_state import ConfigDriftError, check_drift, config_diffs, run_identity

pytestmark = pytest.mark.usefixtures("single_thread")

S = 8


def _bmp_folder(root: Path, classes: int = 4, per_class: int = 3) -> Path:
    """BMPs: every image has the same byte size, so only their contents tell them apart."""
    return class_folder(root, classes, per_class, size=S, suffix=".bmp")


def _swap_keeping_times(a: Path, b: Path) -> None:
    """Swap two files' bytes and restore both mtimes (as cp -p or rsync -t would)."""
    sa, sb = a.stat(), b.stat()
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    os.utime(a, ns=(sa.st_atime_ns, sa.st_mtime_ns))
    os.utime(b, ns=(sb.st_atime_ns, sb.st_mtime_ns))


def _cfg(root: Path, data_dir: Path) -> ImageDatasetConfig:
    return dataset_config(
        name="image_folder",
        source=str(root),
        data_dir=str(data_dir),
        image_size=S,
        split_ratios=[2, 1, 1],
    )


def _counting(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(module, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_swapped_pixels_change_the_identity_and_rebuild_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _bmp_folder(tmp_path / "src")
    cfg = _cfg(root, tmp_path / "data")
    listing = imf.list_unsplit_folder(root)
    first = load_dataset(cfg)
    assert first.identity == listing.identity(tmp_path / "data" / "cache")
    assert first.identity.startswith("v2-") and first.identity.endswith(listing.names_identity())

    a, b = root / "class0" / "img1.bmp", root / "class3" / "img2.bmp"
    assert a.stat().st_size == b.stat().st_size
    old_fingerprint = listing.fingerprint
    _swap_keeping_times(a, b)
    swapped = imf.list_unsplit_folder(root)
    # What main's identity and cache key saw did not change...
    assert swapped.fingerprint == old_fingerprint
    assert swapped.names_identity() == listing.names_identity()
    # ...the content identity and the decoded cache do.
    decodes = _counting(monkeypatch, image_cache, "decode_chunks")
    again = load_dataset(cfg)
    assert again.identity != first.identity and decodes == [1]
    ra, rb = first.images.starts[0] + 1, first.images.starts[3] + 2
    np.testing.assert_array_equal(again.images.pixels[ra], first.images.pixels[rb])
    np.testing.assert_array_equal(again.images.pixels[rb], first.images.pixels[ra])

    _swap_keeping_times(a, b)  # swapped back: the first identity again
    assert load_dataset(cfg).identity == first.identity


def test_a_rerun_reads_no_image_file_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _bmp_folder(tmp_path / "src")
    cfg = _cfg(root, tmp_path / "data")
    reads = _counting(monkeypatch, content, "file_crc")
    first = load_dataset(cfg).identity
    assert len(reads) == 12
    assert load_dataset(cfg).identity == first and len(reads) == 12  # all from the digest cache
    (root / "class2" / "img0.bmp").touch()  # a new status: read again, same content
    assert load_dataset(cfg).identity == first and len(reads) == 13
    # A digest cache that cannot be read only costs time.
    for f in (tmp_path / "data" / "cache" / "digests").iterdir():
        f.write_text("{not json")
    assert load_dataset(cfg).identity == first and len(reads) == 25


def test_zip_identity_from_member_crcs_equals_the_folders(tmp_path: Path) -> None:
    """A zip's members are identified by the CRC-32 its directory holds (checked on every read):
    the same images zipped or extracted have the same content digest."""
    root = _bmp_folder(tmp_path / "src")
    listing = imf.list_unsplit_folder(root)
    zip_path = tmp_path / "data.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in (f for fs in listing.files for f in fs):
            zf.write(root / rel, rel)
    zipped = imf.ImageListing(
        listing.name, "zip", zip_path, listing.classes, listing.files, listing.split_sizes
    )
    assert zipped.content_digest() == listing.content_digest()


def test_a_zips_digest_is_cached_by_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _bmp_folder(tmp_path / "src")
    listing = imf.list_unsplit_folder(root)
    zip_path = tmp_path / "data.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for rel in (f for fs in listing.files for f in fs):
            zf.write(root / rel, rel)
    zipped = imf.ImageListing("z", "zip", zip_path, listing.classes, listing.files)
    reads = _counting(monkeypatch, imf.ImageListing, "_zip_digest")
    cache = tmp_path / "cache"
    first = zipped.identity(cache)
    assert zipped.identity(cache) == first and len(reads) == 1  # the directory read once
    fewer = imf.ImageListing("z", "zip", zip_path, listing.classes[:3], listing.files[:3])
    assert fewer.identity(cache) != first and len(reads) == 2  # other members: computed
    with zipfile.ZipFile(zip_path, "a") as zf:  # the zip rewritten: computed again
        zf.writestr("extra.txt", b"x")
    again = zipped.identity(cache)
    assert len(reads) == 3 and again.split("-")[1] == first.split("-")[1]  # same images


def test_older_identities_compare_as_before_and_changed_data_is_refused(tmp_path: Path) -> None:
    root = _bmp_folder(tmp_path / "src")
    cfg = Config(dataset=_cfg(root, tmp_path / "data"))
    before = load_dataset(cfg.dataset).identity
    old_style = imf.list_unsplit_folder(root).names_identity()  # what main stored
    assert len(old_style) == 16 and content.comparable(old_style, before) == old_style

    # A checkpoint of main's time resumes on the same data (checked as main did)...
    check_drift(run_identity(cfg, old_style), cfg, before)
    check_drift(run_identity(cfg, before), cfg, before)
    _swap_keeping_times(root / "class1" / "img0.bmp", root / "class2" / "img0.bmp")
    after = load_dataset(cfg.dataset).identity
    # ...but one of this version refuses the swapped pixels, in one line.
    with pytest.raises(ConfigDriftError) as err:
        check_drift(run_identity(cfg, before), cfg, after)
    line = str(err.value)
    assert "dataset.identity" in line and "their contents" in line and "\n" not in line
    # A removed file still shows through an old identity (main's check, unchanged).
    (root / "class2" / "img2.bmp").unlink()
    removed = load_dataset(cfg.dataset).identity
    assert "dataset.identity" in config_diffs(run_identity(cfg, old_style), cfg, removed)


# --------------------------------------------------------------------------- Omniglot

SETS = {"images_background": 3, "images_evaluation": 2}


def _omniglot_folders(root: Path) -> Path:
    """An extracted Omniglot of 5 characters x 20 drawings (1-bit PNGs of random strokes)."""
    rng = np.random.default_rng(1)
    for set_name, chars in SETS.items():
        for c in range(chars):
            for i in range(20):
                path = root / set_name / "Alphabet" / f"character{c:02d}" / f"{c:02d}_{i:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.random((12, 12)) < 0.7).save(path)
    return root


def _load(data_dir: Path, source: Path) -> tuple[np.ndarray, str]:
    return og._load(data_dir, source, S, expected_classes=5, expected_images=20, workers=1)


def test_omniglot_identity_follows_the_pixels(tmp_path: Path) -> None:
    src = _omniglot_folders(tmp_path / "src")
    images, digest = _load(tmp_path / "data", src)
    assert _load(tmp_path / "data", src)[1] == digest  # from the cache's manifest

    zipped = tmp_path / "zipped"
    zipped.mkdir()
    for set_name in SETS:
        shutil.make_archive(str(zipped / set_name), "zip", src, set_name)
    assert _load(tmp_path / "zdata", zipped)[1] == digest  # the same images, zipped

    a = src / "images_background" / "Alphabet" / "character00" / "00_03.png"
    b = src / "images_evaluation" / "Alphabet" / "character01" / "01_07.png"
    _swap_keeping_times(a, b)
    swapped, new_digest = _load(tmp_path / "data", src)  # main trusted its cache here
    assert new_digest != digest
    np.testing.assert_array_equal(swapped[0, 3], images[4, 7])
    np.testing.assert_array_equal(swapped[4, 7], images[0, 3])


def test_omniglot_real_identity(omniglot_data_dir: Path, omniglot_source_dir: Path) -> None:
    """The real Omniglot has one: a run on a modified copy never resumes silently."""
    images, identity = og.load_omniglot_identified(omniglot_data_dir, omniglot_source_dir)
    assert images.shape == (1623, 20, 28, 28)
    assert identity.startswith("v2-") and len(identity) == 19
