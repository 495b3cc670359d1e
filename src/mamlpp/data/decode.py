"""One image decoder for every path that turns a file into model pixels.

Why one: training folders, Omniglot, `--support/--query` and `load_images` must give a trained
model the same pixels for the same file, whatever mode PIL opens it in. PIL's own
`convert("L"/"RGB")` saturates 16-bit images (every value above 255 becomes white) and ignores
the EXIF orientation a camera writes instead of rotating the pixels, so both are handled here:

- the EXIF orientation is applied (the transpose `ImageOps.exif_transpose` makes);
- 16-bit greyscale (`I;16`, `I;16L`, `I;16B`, `I;16N`, and `I` read from a 16-bit PNG) is scaled
  to 8 bits, v -> round(v * 255 / 65535); other `I` and `F` images keep PIL's reading (values
  taken as 0..255, clipped);
- premultiplied `La`/`RGBa` are un-premultiplied, `LAB` goes through PIL's colour management;
- everything else (1, L, LA, P, PA, RGB, RGBA, RGBX, CMYK, YCbCr, HSV, ...) is PIL's conversion.

Alpha is dropped, as PIL and torchvision do. Then the image is LANCZOS-resized to S x S.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from mamlpp.data.files import LANCZOS
from mamlpp.errors import DataError, first_line

_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ORIENTATION = 0x0112  # EXIF tag; 1 = upright


_T = getattr(Image, "Transpose", Image)  # Image.Transpose since Pillow 9.1
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: _T.FLIP_LEFT_RIGHT,
    3: _T.ROTATE_180,
    4: _T.FLIP_TOP_BOTTOM,
    5: _T.TRANSPOSE,
    6: _T.ROTATE_270,
    7: _T.TRANSVERSE,
    8: _T.ROTATE_90,
}


def orientation(im: Image.Image) -> int:
    """The EXIF orientation of `im` (1, upright, when it has none or an invalid one)."""
    value = im.getexif().get(_ORIENTATION, 1)
    return value if value in _TRANSPOSE else 1


def _is_sixteen_bit(im: Image.Image) -> bool:
    # PIL opens 16-bit PNGs as I;16 today and as I (32-bit) in older versions.
    return im.mode in _SIXTEEN_BIT or (im.mode == "I" and im.format == "PNG")


def eight_bit(im: Image.Image, mode: str) -> Image.Image:
    """`im` as an 8-bit `mode` ("L" or "RGB") image, by the rules in the module docstring."""
    if _is_sixteen_bit(im):
        wide = np.asarray(im).astype(np.int64)
        grey = np.clip((wide + 128) // 257, 0, 255).astype(np.uint8)
        im = Image.fromarray(grey, "L")
    elif im.mode in ("La", "RGBa"):
        im = im.convert(im.mode.upper())
    elif im.mode == "LAB":
        from PIL import ImageCms

        rgb = ImageCms.applyTransform(
            im,
            ImageCms.buildTransform(
                ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
            ),
        )
        assert rgb is not None  # None only for inPlace=True
        im = rgb
    if im.mode == mode:
        return im.copy()  # loaded, and independent of the file (closed after decoding)
    with warnings.catch_warnings():  # "palette images with transparency": alpha is dropped
        warnings.simplefilter("ignore", UserWarning)
        return im.convert(mode)


def decode_image(
    source: bytes | Path | Image.Image, image_size: int, channels: int, where: str
) -> np.ndarray:
    """Bytes, a file or an open PIL image -> uint8 [channels, S, S] (1: grey, 3: RGB).

    An undecodable image raises a one-line DataError naming `where`. An open PIL image is read,
    not changed or closed.
    """
    try:
        if isinstance(source, Image.Image):
            pixels = _pixels(source, image_size, channels)
        else:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                pixels = _pixels(im, image_size, channels)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad data
        raise DataError(f"cannot decode image {where} ({first_line(e)})") from e
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _pixels(im: Image.Image, image_size: int, channels: int) -> np.ndarray:
    turn = orientation(im)
    img = eight_bit(im, "L" if channels == 1 else "RGB")
    if turn != 1:
        img = img.transpose(_TRANSPOSE[turn])
    size = (image_size, image_size)
    if img.size != size:
        img = img.resize(size, LANCZOS)
    return np.asarray(img, dtype=np.uint8)
