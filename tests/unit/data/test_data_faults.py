"""Data faults end in one line, exit != 0 and nothing half-written: a disk that fills up while
the decoded cache is written, an image size that cannot fit, a custom lister's unknown keyword."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.images import class_folder
from helpers.paths import USER_CODE
from mamlpp.config import ImageDatasetConfig, dataset_config
from mamlpp.data import capacity, image_cache
from mamlpp.data import omniglot as og
from mamlpp.data.registry import load_dataset
from mamlpp.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("single_thread")

S = 64


def _folder(root: Path, classes: int = 6, per_class: int = 10) -> Path:
    return class_folder(root, classes, per_class, size=20)


def _cfg(root: Path, data_dir: Path, **kw: object) -> ImageDatasetConfig:
    kw.setdefault("image_size", S)
    return dataset_config(name="image_folder", source=str(root), data_dir=str(data_dir), **kw)


def _decoded_cache(data_dir: Path) -> list[str]:
    """Files of the decoded cache (digests/ holds file CRCs, each written whole)."""
    cache = data_dir / "cache"
    return sorted(p.name for p in cache.iterdir() if p.name != "digests") if cache.exists() else []


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 1 MiB filesystem (tmpfs), where this process may mount one (root on Linux)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield mount
    finally:
        # Lazy: a memory map of the cache may outlive the test until garbage collection.
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_filling_up_while_caching_is_one_line_and_leaves_nothing(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache (720 KiB) fits when decoding starts; another writer then fills the disk."""
    root = _folder(tmp_path / "src")
    cfg = _cfg(root, small_disk / "data")
    filler = small_disk / "someone-elses-file"
    real_chunks = image_cache.decode_chunks

    def others_write_meanwhile(*args: object, **kwargs: object):
        for i, chunk in enumerate(real_chunks(*args, **kwargs)):
            if i == 0:
                with open(filler, "wb") as f:  # takes what is left, until the disk is full
                    try:
                        while True:
                            f.write(b"\0" * 65536)
                    except OSError:
                        pass
            yield chunk

    monkeypatch.setattr(image_cache, "decode_chunks", others_write_meanwhile)
    monkeypatch.setattr(image_cache, "_CHUNK", 10)
    with pytest.raises(DataError) as err:
        load_dataset(cfg)
    line = str(err.value)
    assert "cannot write the decoded cache" in line and "No space left on device" in line
    assert "\n" not in line and "dataset.data_dir" in line
    assert _decoded_cache(small_disk / "data") == []  # no .npy, manifest or temp file

    filler.unlink()  # space again: the cache is built and right
    monkeypatch.setattr(image_cache, "decode_chunks", real_chunks)
    data = load_dataset(cfg)
    with Image.open(root / "class0" / "img0.png") as im:
        first = np.asarray(im.convert("RGB").resize((S, S), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(data.images.pixels[0], first.transpose(2, 0, 1))


def test_a_cache_larger_than_the_free_space_is_refused_up_front(
    tmp_path: Path, small_disk: Path
) -> None:
    root = _folder(tmp_path / "src")
    with pytest.raises(DataError) as err:
        load_dataset(_cfg(root, small_disk / "data", image_size=128))
    line = str(err.value)
    assert "dataset.image_size=128 needs 2.8 MiB" in line and "(60 x 3 x 128 x 128 bytes)" in line
    assert "more than the free space in" in line and "\n" not in line
    assert _decoded_cache(small_disk / "data") == []


@pytest.mark.slow
def test_a_write_the_os_refuses_midway_is_one_line(tmp_path: Path) -> None:
    """Without a small disk to mount: a file-size limit (RLIMIT_FSIZE) makes the kernel refuse
    the cache's writes midway, in a real process."""
    root = _folder(tmp_path / "src")
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from mamlpp.config import dataset_config
        from mamlpp.data.registry import load_dataset
        from mamlpp.errors import MamlppError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
        cfg = dataset_config(name="image_folder", source={str(root)!r},
                            data_dir={str(tmp_path / "data")!r}, image_size={S})
        try:
            load_dataset(cfg)
        except MamlppError as e:
            print(e, file=sys.stderr)
            sys.exit(2)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "cannot write the decoded cache" in line and "File too large" in line
    assert _decoded_cache(tmp_path / "data") == []
    assert load_dataset(_cfg(root, tmp_path / "data")).images.pixels.shape == (60, 3, S, S)


def test_an_image_size_that_cannot_fit_is_refused_up_front(
    tmp_path: Path, omniglot_source_dir: Path
) -> None:
    ram = capacity.physical_memory()
    assert ram is not None
    root = _folder(tmp_path / "src", 3, 2)
    with pytest.raises(DataError) as err:
        load_dataset(_cfg(root, tmp_path / "data", image_size=1_000_000))
    line = str(err.value)
    assert "dataset.image_size=1000000 needs 10.9 TiB" in line and "memory" in line
    assert "\n" not in line
    with pytest.raises(DataError) as err:
        og.load_omniglot(tmp_path / "og", omniglot_source_dir, image_size=100_000)
    line = str(err.value)
    assert "(32460 x 1 x 100000 x 100000 bytes)" in line and "this machine's memory" in line
    assert not (tmp_path / "og" / "cache").exists()
    # What does fit is not refused.
    capacity.check_memory("x", 32460, 1, 28)
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    count = free // (3 * 256 * 256) + 1
    with pytest.raises(DataError, match="more than the free space in"):
        capacity.check_disk("x", count, 3, 256, tmp_path / "no" / "such" / "cache")
    capacity.check_disk("x", count // 2, 3, 256, tmp_path)


def test_a_custom_listers_unknown_keyword_is_one_line(tmp_path: Path) -> None:
    sys.path.insert(0, str(USER_CODE))
    for c in range(3):
        for i in range(2):
            Image.new("RGB", (4, 4), (c, i, 0)).save(tmp_path / f"g{c}__{i}.png")
    custom = dataset_config(
        name="custom",
        _target_="user_data.list_flat",
        source=str(tmp_path),
        data_dir=str(tmp_path / "data"),
        image_size=8,
        kwargs={"seperator": "__"},
        split_ratios=[1, 1, 1],
    )
    with pytest.raises(ConfigError) as err:
        load_dataset(custom)
    line = str(err.value)
    assert "dataset.kwargs.seperator" in line and "user_data.list_flat" in line
    assert "its parameters: source, separator" in line and "\n" not in line
    custom.kwargs = {"separator": "__"}
    assert load_dataset(custom).images.counts.tolist() == [2, 2, 2]
    custom.source = None
    with pytest.raises(ConfigError, match="'dataset.source' is not set.*needs the argument"):
        load_dataset(custom)
