"""Natural-image datasets: list a layout; mamlpp.data.image_cache then decodes every image once
and memory-maps the cached array.

Layouts (each a `list_*` function returning an `ImageListing`):
- Mini-ImageNet (Ravi & Larochelle): `<root>/images/<file>` plus `<root>/{train,val,test}.csv`
  with rows `filename,label`; the CSVs fix the class split.
- pre-split folder: `<root>/{train,val,test}/<class>/<image>`.
- unsplit folder: `<root>/<class>/<image>`, split later by seeded ratios.
- Tiny-ImageNet: `tiny-imagenet-200/train/<wnid>/images/<wnid>_<i>.JPEG` inside the official zip,
  the project's 100-image subset zip, or an extracted folder (see tiny_imagenet.py).

Why a cache: decoding and resizing 60k JPEGs takes minutes, the result (uint8 [N, 3, S, S], about
1.3 GB for Mini-ImageNet at 84x84) is written once to `<data_dir>/cache/` with a manifest naming
the source files, and later runs memory-map it, so RAM holds one copy at most and only the pages
that episodes touch. The .npy is written atomically (mamlpp.files), then the manifest: a crash or
a bad image never leaves a half-written cache that looks valid. Omniglot is one more listing
(greyscale, its images in two zips or folders: see omniglot.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamlpp.data import content
from mamlpp.data.files import (
    file_stat,
)
from mamlpp.errors import DataError, first_line

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_DIRS = ("train", "val", "test")


@dataclass(frozen=True)
class Part:
    """Images that lie in one zip ("zip": member names) or folder ("dir": relative paths).

    `crcs`: the members' (CRC-32, size) where the lister read the zip's directory anyway."""

    kind: str
    root: Path
    members: list[str]
    crcs: list[tuple[int, int]] | None = None


@dataclass
class ImageListing:
    """Every image of a dataset, class by class, before decoding.

    `kind` is "dir" (paths relative to `root`) or "zip" (member names of the zip at `root`).
    `split_sizes` is set when the layout fixes the split: classes are then ordered train, val,
    test. `fingerprint` changes whenever a listed file (or the zip) changes. `channels`: decode
    to greyscale (1) or RGB (3). A listing whose images lie in several zips or folders (Omniglot)
    overrides `parts`.
    """

    name: str
    kind: str
    root: Path
    classes: list[str]
    files: list[list[str]]
    split_sizes: list[int] | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    channels: int = 3

    @property
    def num_images(self) -> int:
        return sum(len(f) for f in self.files)

    def parts(self) -> list[Part]:
        """Where the images lie, in listing order."""
        return [Part(self.kind, self.root, [f for fs in self.files for f in fs])]

    def digest_header(self) -> Any:
        """What the content digest covers besides the images' bytes."""
        return [self.name, self.classes, self.files, self.split_sizes]

    def names_identity(self) -> str | None:
        """The identity before contents were hashed: class names, file names and sizes (of each
        file, or of the zip), and the split. Kept to compare with run directories of that time."""
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(json.dumps([self.name, self.classes, self.files, self.split_sizes]).encode())
        if self.kind == "zip":
            digest.update(str(self.root.stat().st_size).encode())
        else:
            for rel in (f for fs in self.files for f in fs):
                digest.update(f"{rel}\0{(self.root / rel).stat().st_size}\n".encode())
        return digest.hexdigest()[:16]

    def content_digest(self, cache_dir: Path | None = None) -> str:
        """The digest header and the CRC-32 and size of every image's bytes (see
        mamlpp.data.content; `cache_dir` keeps file CRCs, and a lone zip's digest, between runs)."""
        header = self.digest_header()
        parts = self.parts()
        if len(parts) == 1 and parts[0].kind == "zip":
            part = parts[0]
            return content.cached_zip_digest(
                part.root,
                self._digest_cache(cache_dir, part.root),
                header,
                lambda: self._zip_digest(header, part.members),
            )
        entries: list[tuple[int, int]] = []
        for part in parts:
            if part.kind == "zip":
                entries += part.crcs or self._zip_crcs(part.root, part.members)
                continue
            cache = content.DigestCache(part.root, self._digest_cache(cache_dir, part.root))
            try:
                entries += [cache.crc(m) for m in part.members]
            except DataError as e:
                raise DataError(f"{self.name}: {e}") from e
            finally:
                cache.save()
        return content.digest(header, entries)

    def _digest_cache(self, cache_dir: Path | None, root: Path) -> Path | None:
        if cache_dir is None:
            return None
        stem = f"{self.name}_{content.source_key(self.name, root.resolve())}"
        return content.digest_cache_path(cache_dir, stem)

    def _zip_digest(self, header: Any, members: list[str]) -> str:
        return content.digest(header, self._zip_crcs(self.root, members))

    def _zip_crcs(self, root: Path, members: list[str]) -> list[tuple[int, int]]:
        with open_zip(self.name, str(root)) as zf:
            infos = {i.filename: i for i in zf.infolist()}
        missing = next((m for m in members if m not in infos), None)
        if missing is not None:
            raise DataError(f"{self.name}: {missing} is not in {root}")
        return content.member_crcs(infos, members)

    def identity(self, cache_dir: Path | None = None) -> str:
        """What the data is, independent of where it lies or when it was copied: the content
        digest, then the older names-and-sizes identity. Part of a run's experiment keys, so a
        run never resumes (or reports) on other data."""
        return content.identity(self.content_digest(cache_dir), self.names_identity())


def is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_dir(name: str, path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{name}: {what} {path} does not exist or is not a folder")


def dir_fingerprint(root: Path, rel_paths: Sequence[str]) -> dict[str, Any]:
    """Hash of (path, size, mtime) of every listed file: any edit, addition or removal shows."""
    digest = hashlib.sha1(usedforsecurity=False)
    for rel in rel_paths:
        st = (root / rel).stat()
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"root": str(root.resolve()), "files": len(rel_paths), "sha1": digest.hexdigest()}


def part_fingerprint(part: Part) -> dict[str, Any]:
    """`dir_fingerprint` of a folder's listed files, or the path, size and mtime of a zip."""
    if part.kind == "zip":
        return {"root": str(part.root.resolve()), **file_stat(part.root)}
    return dir_fingerprint(part.root, part.members)


def _class_folder(name: str, root: Path, class_dir: Path) -> list[str]:
    files = sorted(p.name for p in class_dir.iterdir() if p.is_file() and is_image(p.name))
    if not files:
        raise DataError(f"{name}: class folder {class_dir} holds no images ({_ext_hint()})")
    rel = class_dir.relative_to(root).as_posix()
    return [f"{rel}/{f}" for f in files]


def _ext_hint() -> str:
    return "allowed extensions: " + " ".join(sorted(IMAGE_EXTENSIONS))


def list_presplit_folder(root: str | Path, name: str = "image_folder") -> ImageListing:
    """`<root>/{train,val,test}/<class>/<image>`; the folders fix the split."""
    root = Path(root).expanduser()
    _require_dir(name, root, "dataset.source")
    classes, files, sizes = [], [], []
    for split in SPLIT_DIRS:
        split_dir = root / split
        _require_dir(name, split_dir, f"pre-split layout needs {'/'.join(SPLIT_DIRS)};")
        class_dirs = _subdirs(split_dir)
        if not class_dirs:
            raise DataError(f"{name}: split folder {split_dir} has no class folders")
        for class_dir in class_dirs:
            classes.append(f"{split}/{class_dir.name}")
            files.append(_class_folder(name, root, class_dir))
        sizes.append(len(class_dirs))
    listing = ImageListing(name, "dir", root, classes, files, sizes)
    listing.fingerprint = dir_fingerprint(root, [f for fs in files for f in fs])
    return listing


def list_unsplit_folder(root: str | Path, name: str = "image_folder") -> ImageListing:
    """`<root>/<class>/<image>`; the caller splits the classes by seeded ratios."""
    root = Path(root).expanduser()
    _require_dir(name, root, "dataset.source")
    class_dirs = _subdirs(root)
    if not class_dirs:
        raise DataError(f"{name}: {root} has no class folders (expected <root>/<class>/<image>)")
    files = [_class_folder(name, root, d) for d in class_dirs]
    listing = ImageListing(name, "dir", root, [d.name for d in class_dirs], files)
    listing.fingerprint = dir_fingerprint(root, [f for fs in files for f in fs])
    return listing


def detect_folder_layout(root: str | Path) -> str:
    """'presplit' when <root> has train/val/test folders, 'unsplit' when it has none of them."""
    root = Path(root).expanduser()
    present = [s for s in SPLIT_DIRS if (root / s).is_dir()]
    if len(present) == len(SPLIT_DIRS):
        return "presplit"
    if not present:
        return "unsplit"
    raise DataError(
        f"image_folder: {root} has {'/'.join(present)} but not all of {'/'.join(SPLIT_DIRS)}; "
        "use <root>/{train,val,test}/<class>/<image> or <root>/<class>/<image>"
    )


def list_miniimagenet(root: str | Path) -> ImageListing:
    """Ravi & Larochelle layout: `<root>/images/` and `<root>/{train,val,test}.csv`."""
    name = "miniimagenet"
    root = Path(root).expanduser()
    images = root / "images"
    _require_dir(name, images, "image folder")
    present = {e.name for e in os.scandir(images) if e.is_file()}
    classes: list[str] = []
    files: list[list[str]] = []
    sizes: list[int] = []
    csv_stats = {}
    for split in SPLIT_DIRS:
        path = root / f"{split}.csv"
        if not path.is_file():
            raise DataError(
                f"{name}: {path} not found; copy the Ravi & Larochelle {split}.csv next to images/"
            )
    for split in SPLIT_DIRS:
        path = root / f"{split}.csv"
        csv_stats[path.name] = file_stat(path)
        per_class: dict[str, list[str]] = {}
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["filename", "label"]:
                raise DataError(f"{name}: {path} must start with the header 'filename,label'")
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) < 2:
                    raise DataError(f"{name}: {path} line {line_no} is not 'filename,label'")
                file_name, label = row[0].strip(), row[1].strip()
                if file_name not in present:
                    raise DataError(
                        f"{name}: {path.name} line {line_no} names {file_name}, which is not in "
                        f"{images}"
                    )
                per_class.setdefault(label, []).append(f"images/{file_name}")
        if not per_class:
            raise DataError(f"{name}: {path} lists no images")
        taken = set(per_class) & set(classes)
        if taken:
            raise DataError(f"{name}: {path.name} reuses class {sorted(taken)[0]} of another split")
        for label in sorted(per_class):
            classes.append(label)
            files.append(sorted(per_class[label]))
        sizes.append(len(per_class))
    listing = ImageListing(name, "dir", root, classes, files, sizes)
    listing.fingerprint = {
        **dir_fingerprint(root, [f for fs in files for f in fs]),
        "csv": csv_stats,
    }
    return listing


def open_zip(name: str, root: str) -> zipfile.ZipFile:
    """The zip at `root`; one line naming it (and dataset `name`) when it cannot be read."""
    try:
        return zipfile.ZipFile(root)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise DataError(f"{name}: {root} is not a readable zip file ({first_line(e)})") from e
