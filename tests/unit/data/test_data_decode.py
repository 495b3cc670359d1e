"""The one image decoder (mamlpp.data.decode) against PIL's own conversions: every mode PIL
opens, 16-bit images scaled (not saturated), EXIF orientation applied, and the same pixels
through every path that decodes (image folders, Omniglot, load_images / --support/--query)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from mamlpp.config import dataset_config
from mamlpp.data import image_cache
from mamlpp.data import image_folder as imf
from mamlpp.data.decode import decode_image
from mamlpp.data.preprocessing import Preprocessing
from mamlpp.data.registry import load_dataset
from mamlpp.errors import DataError
from mamlpp.image_inputs import image_sources

pytestmark = pytest.mark.usefixtures("single_thread")

S = 10
LANCZOS = Image.Resampling.LANCZOS


def _rgb(seed: int = 0, size: int = S) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _bytes(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _sixteen_bit(seed: int = 0, size: int = S) -> np.ndarray:
    """A 16-bit ramp over the whole range plus noise: most values are above 255."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 65536, (size, size), dtype=np.uint16)


def _chw(im: Image.Image) -> np.ndarray:
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("1", "PNG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("PA", "TIFF"),
        ("RGB", "PNG"),
        ("RGBA", "PNG"),
        ("CMYK", "TIFF"),
        ("YCbCr", "TIFF"),
        ("I", "TIFF"),
        ("F", "TIFF"),
        ("RGB", "JPEG"),
        ("L", "BMP"),
        ("P", "GIF"),
        ("RGB", "WEBP"),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_eight_bit_modes_decode_as_pils_conversion(mode: str, fmt: str, channels: int) -> None:
    data = _bytes(_rgb().convert(mode), fmt)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == mode or fmt in ("JPEG", "WEBP", "GIF")
        expected = _chw(im.convert("L" if channels == 1 else "RGB"))
    got = decode_image(data, S, channels, "x")
    assert got.dtype == np.uint8 and got.shape == (channels, S, S)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16B", "TIFF"), ("I;16", "TIFF")])
@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_images_are_scaled_not_saturated(mode: str, fmt: str, channels: int) -> None:
    wide = _sixteen_bit()
    order = ">u2" if mode == "I;16B" else "<u2"
    data = _bytes(Image.frombytes(mode, (S, S), wide.astype(order).tobytes()), fmt)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == mode
        opened = np.asarray(im).astype(np.int64)  # PIL's reading of the 16-bit values
        saturated = np.asarray(im.convert("L"))
    np.testing.assert_array_equal(opened, wide)
    scaled = np.round(opened * 255 / 65535).astype(np.uint8)  # v -> round(v * 255 / 65535)
    got = decode_image(data, S, channels, "x")
    assert got.shape == (channels, S, S)
    for c in range(channels):
        np.testing.assert_array_equal(got[c], scaled)
    assert (saturated == 255).mean() > 0.9 and (got == 255).mean() < 0.01  # the old bug


def test_sixteen_bit_resized_like_its_eight_bit_image() -> None:
    wide = _sixteen_bit(size=S + 7)
    data = _bytes(Image.fromarray(wide), "PNG")
    eight = Image.fromarray(np.round(wide.astype(np.int64) * 255 / 65535).astype(np.uint8))
    np.testing.assert_array_equal(decode_image(data, S, 1, "x")[0], eight.resize((S, S), LANCZOS))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(orientation: int, fmt: str) -> None:
    # Not square, so a rotation also changes the shape before the resize.
    wide = Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _bytes(wide, fmt, exif=exif)
    with Image.open(io.BytesIO(data)) as im:
        upright = ImageOps.exif_transpose(im).convert("RGB")
        as_stored = im.convert("RGB")
    expected = _chw(upright.resize((S, S), LANCZOS))
    np.testing.assert_array_equal(decode_image(data, S, 3, "x"), expected)
    if orientation != 1:
        assert not np.array_equal(expected, _chw(as_stored.resize((S, S), LANCZOS)))


def test_lab_decodes_close_to_its_rgb() -> None:
    rgb = _rgb(3)
    lab = decode_image(_bytes(rgb.convert("LAB"), "TIFF"), S, 3, "x").astype(int)
    assert np.abs(lab - _chw(rgb)).mean() < 3  # LAB in 8 bits is lossy


def test_undecodable_bytes_are_one_line() -> None:
    with pytest.raises(DataError, match=r"cannot decode image where\.png \(") as err:
        decode_image(b"\x89PNG not really", S, 3, "where.png")
    assert "\n" not in str(err.value)


def test_omniglot_pngs_decode_as_before() -> None:
    """Omniglot's 1-bit PNGs: L, then LANCZOS (the decoder main had), bit for bit."""
    strokes = np.random.default_rng(2).random((105, 105)) < 0.8
    data = _bytes(Image.fromarray(strokes), "PNG")
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "1"
        before = np.asarray(im.convert("L").resize((28, 28), LANCZOS), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(data, 28, 1, "x")[0], before)


def test_every_path_decodes_alike(tmp_path: Path) -> None:
    """A 16-bit PNG and an EXIF-rotated JPEG, through an image folder (RGB, and greyscale as
    Omniglot's listing decodes), load_images' Preprocessing of the file and of the open PIL
    image: the same pixels as the decoder's."""
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {
        "deep.png": _bytes(Image.fromarray(_sixteen_bit(4, 16)), "PNG"),
        "turned.jpg": _bytes(_rgb(5, 16).resize((24, 16)), "JPEG", exif=exif),
    }
    for c in range(3):
        for i, (name, data) in enumerate(files.items()):
            path = tmp_path / "src" / f"class{c}" / f"{i}{name}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    cfg = dataset_config(
        name="image_folder",
        source=str(tmp_path / "src"),
        data_dir=str(tmp_path / "data"),
        image_size=S,
        split_ratios=[1, 1, 1],
    )
    data = load_dataset(cfg)
    listing = imf.list_unsplit_folder(tmp_path / "src")
    listing.channels = 1
    grey_cache = image_cache.load_cached(listing, tmp_path / "data", S)
    for c in range(3):
        for i, (name, raw) in enumerate(files.items()):
            row = data.images.starts[c] + i
            expected = decode_image(raw, S, 3, name)
            np.testing.assert_array_equal(data.images.pixels[row], expected)
            path = tmp_path / "src" / f"class{c}" / f"{i}{name}"
            np.testing.assert_array_equal(Preprocessing(S, 3).decode_file(path), expected)
            grey = decode_image(raw, S, 1, name)
            np.testing.assert_array_equal(grey_cache.pixels[row], grey)
            np.testing.assert_array_equal(Preprocessing(S, 1).decode_file(path), grey)
            with Image.open(path) as im:
                np.testing.assert_array_equal(Preprocessing(S, 3).decode_file(im), expected)
                np.testing.assert_array_equal(Preprocessing(S, 1).decode_file(im), grey)


@pytest.mark.parametrize("mode", ["RGB", "CMYK", "RGBX", "YCbCr", "HSV", "I", "F"])
def test_a_turned_pil_image_decodes_like_its_upright_copy(mode: str) -> None:
    """load_images gives a PIL image straight to the decoder (main re-encoded it, as TIFF for
    these modes but RGB, and lost the EXIF orientation): every mode is turned alike."""
    im = _rgb(7, 12).resize((12, 8)).convert("L" if mode in ("I", "F") else "RGB").convert(mode)
    turned = im.copy()
    turned.getexif()[0x0112] = 6
    for channels in (1, 3):
        prep = Preprocessing(S, channels)
        upright = prep.decode_file(im.transpose(Image.Transpose.ROTATE_270))
        np.testing.assert_array_equal(prep.decode_file(image_sources(turned)[0]), upright)
        assert turned.getexif()[0x0112] == 6  # read, not changed


def test_a_premultiplied_pil_image_decodes_like_its_file() -> None:
    """An La image (main refused it in load_images) decodes as its un-premultiplied LA."""
    la = Image.fromarray(np.random.default_rng(3).integers(0, 256, (8, 8, 2), np.uint8), "LA")
    premultiplied = la.convert("La")
    expected = decode_image(premultiplied.convert("LA"), S, 1, "la")
    source = image_sources([premultiplied])[0]
    np.testing.assert_array_equal(Preprocessing(S, 1).decode_file(source), expected)
