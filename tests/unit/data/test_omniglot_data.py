"""Tests for mamlpp.data.omniglot: real-data decode + cache, and fast synthetic error cases."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.paths import REPO_ROOT
from mamlpp.data import image_cache
from mamlpp.data import omniglot as og
from mamlpp.errors import ConfigError, DataError

REPO = REPO_ROOT
SETS = ("images_background", "images_evaluation")


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="session")
def real_omniglot(omniglot_source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Decode the real data once per session (the slow part), into a fresh data_dir."""
    data_dir = tmp_path_factory.mktemp("omniglot_data")
    start = time.perf_counter()
    arr = og.load_omniglot(data_dir, source=omniglot_source_dir)
    seconds = time.perf_counter() - start
    print(f"\nomniglot uncached decode: {seconds:.2f}s")
    return {"arr": arr, "data_dir": data_dir, "source": omniglot_source_dir, "seconds": seconds}


def _decode_member(zip_path: Path, member: str, size: int = 28) -> np.ndarray:
    with zipfile.ZipFile(zip_path) as zf, Image.open(io.BytesIO(zf.read(member))) as im:
        return np.asarray(im.convert("L").resize((size, size), Image.LANCZOS))


def test_real_shape_dtype_and_content(real_omniglot: dict) -> None:
    arr = real_omniglot["arr"]
    assert arr.shape == (1623, 20, 28, 28)
    assert arr.dtype == np.uint8
    assert arr.mean() > 200, "background should be white (255)"
    per_image_min = arr.reshape(-1, 28 * 28).min(axis=1)
    assert (per_image_min == 0).mean() > 0.9, "most images should contain black strokes"
    assert not np.array_equal(arr[0], arr[1])
    # every image is a different drawing: no two of a class's 20 images are identical
    assert len({a.tobytes() for a in arr[0]}) == 20


def test_real_class_order(real_omniglot: dict) -> None:
    """Background first, sorted by (alphabet, character); images sorted by file name."""
    arr, src = real_omniglot["arr"], real_omniglot["source"]
    bg, ev = src / "images_background.zip", src / "images_evaluation.zip"
    expected = {
        (0, 0): (bg, "images_background/Alphabet_of_the_Magi/character01/0709_01.png"),
        (0, 19): (bg, "images_background/Alphabet_of_the_Magi/character01/0709_20.png"),
        (963, 19): (bg, "images_background/Tifinagh/character55/0964_20.png"),
        (964, 0): (ev, "images_evaluation/Angelic/character01/0965_01.png"),
        (1622, 19): (ev, "images_evaluation/ULOG/character26/1623_20.png"),
    }
    for (c, i), (zip_path, member) in expected.items():
        np.testing.assert_array_equal(arr[c, i], _decode_member(zip_path, member), err_msg=member)


def test_real_cached_load_reads_no_zip(
    real_omniglot: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("cache hit must not read zips or decode PNGs")

    monkeypatch.setattr(zipfile, "ZipFile", boom)
    monkeypatch.setattr(Image, "open", boom)
    monkeypatch.setattr(image_cache, "decode_chunks", boom)
    start = time.perf_counter()
    again = og.load_omniglot(real_omniglot["data_dir"], source=real_omniglot["source"])
    seconds = time.perf_counter() - start
    print(f"\nomniglot cached load: {seconds:.3f}s (uncached {real_omniglot['seconds']:.2f}s)")
    np.testing.assert_array_equal(again, real_omniglot["arr"])
    assert seconds < real_omniglot["seconds"] / 5
    cache = real_omniglot["data_dir"] / "cache"
    decoded = [p for p in cache.iterdir() if p.is_file()]
    assert sorted(p.suffix for p in decoded) == [".json", ".npy"]
    assert all(p.name.startswith("omniglot_28_") for p in decoded)


def test_real_array_and_identity_are_mains(real_omniglot: dict) -> None:
    """Every image and the data identity, computed here as main 3438f29 computed them (its
    decoder: PIL's L conversion and a LANCZOS resize; its identity: the set sizes and each PNG's
    CRC-32 and size), so run directories and checkpoints of that version still resume."""
    images, counts, entries = [], [], []
    for name in SETS:
        with zipfile.ZipFile(real_omniglot["source"] / f"{name}.zip") as zf:
            pngs = [i for i in zf.infolist() if i.filename.endswith(".png")]
            # images_background/<alphabet>/<character>/<file>: sorted by those three
            pngs.sort(key=lambda i: i.filename.split("/")[1:])
            counts.append(len(pngs))
            for info in pngs:
                with Image.open(io.BytesIO(zf.read(info))) as im:
                    images.append(np.asarray(im.convert("L").resize((28, 28), Image.LANCZOS)))
                entries.append(f"{info.CRC:08x}:{info.file_size}\n")
    np.testing.assert_array_equal(real_omniglot["arr"], np.stack(images).reshape(1623, 20, 28, 28))
    digest = hashlib.sha1(json.dumps(["omniglot", counts]).encode(), usedforsecurity=False)
    digest.update("".join(entries).encode())
    _, identity = og.load_omniglot_identified(real_omniglot["data_dir"], real_omniglot["source"])
    assert identity == f"v2-{digest.hexdigest()[:16]}"


def test_real_changed_source_rebuilds(
    real_omniglot: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Own data_dir seeded with the session cache, so test order does not matter.
    data_dir = tmp_path / "data"
    shutil.copytree(real_omniglot["data_dir"] / "cache", data_dir / "cache")  # copy2 keeps mtimes
    calls = []
    real_decode = image_cache.decode_chunks

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(image_cache, "decode_chunks", spy)
    hit = og.load_omniglot(data_dir, source=real_omniglot["source"])
    assert calls == [], "copied cache with unchanged sources should be a hit"
    np.testing.assert_array_equal(hit, real_omniglot["arr"])

    copied = tmp_path / "copied_source"
    copied.mkdir()
    for name in SETS:
        shutil.copyfile(
            real_omniglot["source"] / f"{name}.zip", copied / f"{name}.zip"
        )  # new mtime
    rebuilt = og.load_omniglot(data_dir, source=copied)
    assert calls == [1], "a different source path/mtime must invalidate the cache"
    np.testing.assert_array_equal(rebuilt, real_omniglot["arr"])
    assert sorted(p.name for p in copied.iterdir()) == [f"{n}.zip" for n in SETS]


# --------------------------------------------------------------------------- synthetic zips

SIZE = 8  # synthetic PNG side; loading at image_size=SIZE makes the resize an exact copy


def _png(class_idx: int, image_idx: int) -> bytes:
    """A mode-'1' PNG that encodes its class (row 0) and image index (row 1) as black bits."""
    im = Image.new("1", (SIZE, SIZE), 1)
    for bit in range(SIZE):
        if class_idx >> bit & 1:
            im.putpixel((bit, 0), 0)
        if image_idx >> bit & 1:
            im.putpixel((bit, 1), 0)
    im.putpixel((SIZE - 1, SIZE - 1), 0)  # always at least one stroke
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _make_zip(
    path: Path,
    set_name: str,
    classes: dict[tuple[str, str], int],
    first_class: int = 0,
    corrupt: tuple[str, str, int] | None = None,
) -> list[str]:
    """Write ``set_name/<alphabet>/<char>/NNNN_YY.png`` members in scrambled order.

    ``classes`` maps (alphabet, character) -> number of images. Class ids are assigned in the
    dict's insertion order starting at ``first_class`` (deliberately not sorted, so a test can
    tell whether the loader sorts). ``corrupt`` = (alphabet, char, image) writes garbage bytes
    for that member. Returns the PNG member names.
    """
    entries: list[tuple[str, bytes | None]] = [(f"{set_name}/", None)]
    for offset, (alphabet, char) in enumerate(classes):
        for folder in (f"{set_name}/{alphabet}/", f"{set_name}/{alphabet}/{char}/"):
            if (folder, None) not in entries:
                entries.append((folder, None))
        for img in range(classes[(alphabet, char)]):
            name = f"{set_name}/{alphabet}/{char}/{first_class + offset + 1:04d}_{img + 1:02d}.png"
            bad = corrupt == (alphabet, char, img)
            entries.append((name, b"this is not a png" if bad else _png(first_class + offset, img)))
    entries.append((f"{set_name}/README.txt", b"stray non-png file"))
    entries.append((f"__MACOSX/{set_name}/._junk.png", b"resource fork"))
    order = list(range(len(entries)))
    np.random.default_rng(0).shuffle(order)  # the loader must sort, not trust zip order
    with zipfile.ZipFile(path, "w") as zf:
        for k in order:
            name, data = entries[k]
            if data is None:
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(name, data)
    return [n for n, d in entries if d is not None and n.endswith(".png") and "MACOSX" not in n]


# Insertion order gives the ids; the loader must return Alpha/01, Alpha/02, Beta/01 (ids 2, 1, 0)
# then Delta/01, Gamma/01 (ids 4, 3).
BG = {("Beta", "character01"): 20, ("Alpha", "character02"): 20, ("Alpha", "character01"): 20}
EV = {("Gamma", "character01"): 20, ("Delta", "character01"): 20}
EXPECTED_IDS = [2, 1, 0, 4, 3]


@pytest.fixture
def synth(tmp_path: Path) -> Path:
    """A valid 5-class, 20-image source directory (3 background + 2 evaluation classes)."""
    src = tmp_path / "src"
    src.mkdir()
    _make_zip(src / "images_background.zip", "images_background", BG)
    _make_zip(src / "images_evaluation.zip", "images_evaluation", EV, first_class=len(BG))
    return src


def _load_small(data_dir: Path, source: object, image_size: int = SIZE) -> np.ndarray:
    return og._load_omniglot(
        data_dir, source, image_size, expected_classes=5, expected_images=20, workers=1
    )


def test_synthetic_order_strays_and_source_untouched(synth: Path, tmp_path: Path) -> None:
    before = sorted((p.name, p.stat().st_mtime_ns) for p in synth.iterdir())
    arr = _load_small(tmp_path / "data", synth)
    assert arr.shape == (5, 20, SIZE, SIZE)
    assert arr.dtype == np.uint8
    for c in range(5):
        for i in range(20):
            expected_class = EXPECTED_IDS[c]
            bits_c = sum(1 << b for b in range(SIZE) if arr[c, i, 0, b] == 0)
            bits_i = sum(1 << b for b in range(SIZE) if arr[c, i, 1, b] == 0)
            assert (bits_c, bits_i) == (expected_class, i)
    assert arr[0, 0, 5, 5] == 255
    assert arr[0, 0, SIZE - 1, SIZE - 1] == 0
    assert sorted((p.name, p.stat().st_mtime_ns) for p in synth.iterdir()) == before


def test_synthetic_missing_characters(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"found 5 character folders.*expected exactly 1623"):
        og.load_omniglot(tmp_path / "data", source=synth, image_size=SIZE)


def test_synthetic_class_with_19_images(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _make_zip(src / "images_background.zip", "images_background", {**BG, ("Beta", "c9"): 19})
    _make_zip(src / "images_evaluation.zip", "images_evaluation", EV)
    with pytest.raises(DataError, match=r"images_background/Beta/c9 .* has 19 PNG images"):
        og.load_omniglot(tmp_path / "data", source=src, image_size=SIZE)


def test_synthetic_empty_character_folder_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _make_zip(src / "images_background.zip", "images_background", BG)
    _make_zip(src / "images_evaluation.zip", "images_evaluation", {**EV, ("Gamma", "c0"): 0})
    with pytest.raises(DataError, match=r"images_evaluation/Gamma/c0 .* has 0 PNG images"):
        _load_small(tmp_path / "data", src)


def test_synthetic_corrupt_png_member(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _make_zip(src / "images_background.zip", "images_background", BG)
    names = _make_zip(
        src / "images_evaluation.zip", "images_evaluation", EV, 3, ("Gamma", "character01", 6)
    )
    bad = "images_evaluation/Gamma/character01/0004_07.png"
    assert bad in names
    with pytest.raises(DataError) as info:
        _load_small(tmp_path / "data", src)
    assert bad in str(info.value)
    assert "images_evaluation.zip" in str(info.value)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "data" / "cache").glob("omniglot_*"))  # no decoded cache


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_synthetic_unreadable_zip(synth: Path, tmp_path: Path, kind: str) -> None:
    target = synth / "images_evaluation.zip"
    data = target.read_bytes()
    target.write_bytes(
        b"definitely not a zip file" if kind == "garbage" else data[: len(data) // 2]
    )
    with pytest.raises(DataError, match="not a readable zip file") as info:
        _load_small(tmp_path / "data", synth)
    assert str(target.resolve()) in str(info.value)


def test_synthetic_extracted_folders_match_zips(synth: Path, tmp_path: Path) -> None:
    from_zip = _load_small(tmp_path / "data_zip", synth)
    extracted = tmp_path / "extracted"
    for name in SETS:
        with zipfile.ZipFile(synth / f"{name}.zip") as zf:
            zf.extractall(extracted)
    from_dir = _load_small(tmp_path / "data_dir", extracted)
    np.testing.assert_array_equal(from_dir, from_zip)
    # editing an extracted PNG must invalidate the folder-based cache
    victim = sorted((extracted / "images_background" / "Alpha" / "character01").glob("*.png"))[0]
    victim.write_bytes(_png(99, 0))
    st = victim.stat()  # model an edit made later (coarse fs clocks could give an equal mtime)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    changed = _load_small(tmp_path / "data_dir", extracted)
    assert not np.array_equal(changed[0, 0], from_zip[0, 0])
    np.testing.assert_array_equal(changed[1:], from_zip[1:])


def test_synthetic_process_pool_matches_serial(
    synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = _load_small(tmp_path / "serial", synth)
    monkeypatch.setattr(image_cache, "_PARALLEL_MIN_IMAGES", 0)
    monkeypatch.setattr(image_cache, "_CHUNK", 7)  # many tasks, chunks straddle class boundaries
    pooled = og._load_omniglot(
        tmp_path / "pool", synth, SIZE, expected_classes=5, expected_images=20, workers=2
    )
    np.testing.assert_array_equal(pooled, serial)
    # errors raised inside a worker come back as the same one-line DataError
    _make_zip(
        synth / "images_background.zip", "images_background", BG, 0, ("Alpha", "character02", 3)
    )
    with pytest.raises(DataError, match=r"images_background/Alpha/character02/0002_04\.png"):
        og._load_omniglot(
            tmp_path / "pool", synth, SIZE, expected_classes=5, expected_images=20, workers=2
        )


def test_synthetic_cache_roundtrip_and_repair(synth: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = _load_small(data_dir, synth)
    (npy,) = (data_dir / "cache").glob(f"omniglot_{SIZE}_*.npy")
    manifest = npy.with_suffix(".json")
    assert manifest.is_file()
    files = sorted(p.name for p in npy.parent.iterdir() if p.is_file())
    assert files == [manifest.name, npy.name]  # no temps
    np.testing.assert_array_equal(np.load(npy).reshape(first.shape), first)

    other = _load_small(data_dir, synth, image_size=4)
    assert other.shape == (5, 20, 4, 4)
    assert len(list((data_dir / "cache").glob("omniglot_4_*.npy"))) == 1

    npy.write_bytes(npy.read_bytes()[:100])  # damaged cache must be rebuilt, not trusted
    repaired = _load_small(data_dir, synth)
    np.testing.assert_array_equal(repaired, first)
    np.testing.assert_array_equal(np.load(npy).reshape(first.shape), first)


def test_a_cache_main_wrote_is_left_alone_and_rebuilt_beside_it(
    synth: Path, tmp_path: Path
) -> None:
    """main 3438f29 cached Omniglot as omniglot_<size>.npy/.json (its own manifest): that pair is
    neither trusted nor deleted; the images are decoded once into the image-folder cache."""
    data_dir = tmp_path / "data"
    expected = _load_small(tmp_path / "fresh", synth)
    old = data_dir / "cache" / f"omniglot_{SIZE}.npy"
    old.parent.mkdir(parents=True)
    np.save(old, np.zeros((5, 20, SIZE, SIZE), np.uint8))
    old.with_suffix(".json").write_text('{"format_version": 2, "image_size": 8}')
    np.testing.assert_array_equal(_load_small(data_dir, synth), expected)
    assert old.is_file() and not np.load(old).any()
    assert len(list(old.parent.glob(f"omniglot_{SIZE}_*.npy"))) == 1


def test_synthetic_url_source_downloads_into_data_dir(synth: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    arr = _load_small(data_dir, synth.as_uri() + "/")
    np.testing.assert_array_equal(arr, _load_small(tmp_path / "data2", synth))
    for name in SETS:
        assert (data_dir / f"{name}.zip").read_bytes() == (synth / f"{name}.zip").read_bytes()


def test_bad_source_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset\.source=.*is not a directory"):
        og.load_omniglot(tmp_path / "data", source=tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match=r"neither images_background\.zip"):
        og.load_omniglot(tmp_path / "data", source=tmp_path / "half")


def test_bad_image_size(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="image_size"):
        og.load_omniglot(tmp_path, image_size=0)


# --------------------------------------------------------------------------- download


def test_no_network_gives_actionable_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as info:
        og.load_omniglot(data_dir)
    msg = str(info.value)
    assert "dataset.source" in msg
    assert og.OMNIGLOT_URLS["images_background"] in msg
    assert str(data_dir) in msg
    assert "\n" not in msg
    assert list(data_dir.iterdir()) == []  # no partial downloads left behind


def test_download_md5_mismatch_deletes_file(tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"some bytes")
    dest = tmp_path / "out" / "images_background.zip"
    with pytest.raises(DataError, match=r"md5.*expected 0{32}.*got [0-9a-f]{32}") as info:
        og.download(payload.as_uri(), dest, md5="0" * 32)
    assert str(dest) in str(info.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_download_ok_and_md5_file(tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3 << 20))
    good = hashlib.md5(payload.read_bytes()).hexdigest()
    assert og.md5_file(payload) == good
    dest = og.download(payload.as_uri(), tmp_path / "out" / "x.zip", md5=good.upper())
    assert dest.read_bytes() == payload.read_bytes()
    with pytest.raises(DataError, match="could not fetch"):
        og.download((tmp_path / "missing.bin").as_uri(), tmp_path / "out" / "y.zip")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x.zip"]


def test_public_constants() -> None:
    assert og.NUM_CLASSES == 1623
    assert og.IMAGES_PER_CLASS == 20
    assert og.OMNIGLOT_MD5 == {
        "images_background": "68d2efa1b9178cc56df9314c21c6e718",
        "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
    }
    assert og.OMNIGLOT_URLS["images_evaluation"] == (
        "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip"
    )
