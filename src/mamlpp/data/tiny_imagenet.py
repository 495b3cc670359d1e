"""Tiny-ImageNet as a natural-image stand-in for Mini-ImageNet, read straight from its zip.

Classes: the 200 Tiny-ImageNet wnids under a fixed 128/32/40 train/val/test split stored in
`tiny_imagenet_split.json` (never changed, so results stay comparable). Images: training images
0..99 of each class, which is exactly the content of the project's subset zip
(`tiny-imagenet-200-train-100pc.zip`); the official 500-image zip gives the same 100 per class.
"""

from __future__ import annotations

import json
import re
import zipfile
from importlib import resources
from pathlib import Path

from mamlpp.data.files import download, file_stat
from mamlpp.data.image_folder import ImageListing, dir_fingerprint
from mamlpp.errors import DataError, first_line

NAME = "tiny_imagenet"
OFFICIAL_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
OFFICIAL_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
ZIP_NAMES = ("tiny-imagenet-200-train-100pc.zip", "tiny-imagenet-200.zip")
IMAGES_PER_CLASS = 100
_MEMBER = re.compile(r"^(?:.*/)?train/(n\d{8})/images/\1_(\d+)\.JPEG$")


def class_split() -> dict[str, list[str]]:
    text = resources.files("mamlpp.data").joinpath("tiny_imagenet_split.json").read_text()
    doc = json.loads(text)
    return {s: doc[s] for s in ("train", "val", "test")}


def find_source(data_dir: str | Path, source: str | Path | None) -> Path:
    """The zip or extracted folder to read: `source`, else a zip in data_dir, else download.

    `source` may be a zip file, a folder holding one of ZIP_NAMES, or an extracted
    `tiny-imagenet-200` folder (or its parent).
    """
    if source is not None:
        src = Path(source).expanduser()
        if src.is_file():
            return src
        for name in ZIP_NAMES:
            if (src / name).is_file():
                return src / name
        for folder in (src / "tiny-imagenet-200", src):
            if (folder / "train").is_dir():
                return folder
        raise DataError(
            f"{NAME}: dataset.source={src} holds neither {' nor '.join(ZIP_NAMES)} nor an "
            "extracted tiny-imagenet-200/train folder"
        )
    data_dir = Path(data_dir).expanduser()
    for name in ZIP_NAMES:
        if (data_dir / name).is_file():
            return data_dir / name
    try:
        return download(OFFICIAL_URL, data_dir / ZIP_NAMES[1], md5=OFFICIAL_MD5)
    except DataError as e:
        raise DataError(
            f"{NAME}: no zip in {data_dir} and the download failed ({first_line(e)}); "
            f"set dataset.source to a folder with {' or '.join(ZIP_NAMES)}"
        ) from e


def list_tiny_imagenet(src: Path) -> ImageListing:
    """Images 0..99 of every class, classes ordered train, val, test as in the fixed split."""
    split = class_split()
    wanted = {w for names in split.values() for w in names}
    per_class: dict[str, dict[int, str]] = {w: {} for w in wanted}
    if src.is_file():
        try:
            with zipfile.ZipFile(src) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{NAME}: {src} is not a readable zip ({first_line(e)})") from e
        kind = "zip"
    else:
        names = [p.relative_to(src).as_posix() for p in (src / "train").glob("*/images/*.JPEG")]
        kind = "dir"
    for member in names:
        m = _MEMBER.match(member)
        if m and m.group(1) in per_class and int(m.group(2)) < IMAGES_PER_CLASS:
            per_class[m.group(1)][int(m.group(2))] = member
    classes, files = [], []
    for s in ("train", "val", "test"):
        for wnid in split[s]:
            found = per_class[wnid]
            if len(found) < IMAGES_PER_CLASS:
                raise DataError(
                    f"{NAME}: class {wnid} has {len(found)} of its images 0..99 in {src}; "
                    "use the official tiny-imagenet-200.zip or the 100-image subset zip"
                )
            classes.append(wnid)
            files.append([found[i] for i in range(IMAGES_PER_CLASS)])
    if kind == "zip":
        fingerprint = {"root": str(src.resolve()), **file_stat(src)}
    else:
        fingerprint = dir_fingerprint(src, [f for fs in files for f in fs])
    sizes = [len(split[s]) for s in split]
    return ImageListing(NAME, kind, src, classes, files, sizes, fingerprint)
