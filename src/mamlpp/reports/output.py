"""mamlpp-report's output folder: files it wrote are replaced, nobody else's.

A report is first written to a staging folder inside the output folder. Before anything is moved
in, each name is checked: a file there that the manifest (.mamlpp-report.json: name -> sha256 of
what mamlpp-report wrote) does not list with its current content belongs to someone else, and
the report is refused in one line, writing nothing. Files of an earlier report that this one no
longer writes (an ablation that has gone) are removed, since mamlpp-report wrote them.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mamlpp.errors import MamlppError
from mamlpp.files import atomic_write

MANIFEST = ".mamlpp-report.json"
STAGING_PREFIX = ".mamlpp-report-staging-"


class ReportError(MamlppError):
    """The report cannot be written where asked; nothing was written."""


def safe_name(text: str) -> str:
    """`text` as one plain file-name part: an experiment name from a results.json never adds a
    folder or leaves the output folder."""
    return re.sub(r"[^A-Za-z0-9_.+=,-]", "_", text).lstrip(".") or "_"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(out: Path) -> dict[str, str]:
    try:
        found = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _ours(path: Path, manifest: dict[str, str]) -> bool:
    return path.is_file() and not path.is_symlink() and manifest.get(path.name) == _sha256(path)


def write_report(out: Path, write: Callable[[Path], list[Path]]) -> list[Path]:
    """Call `write(folder)`, which writes the report's files into `folder` and returns them,
    then move them into `out`; the paths in `out`. ReportError where `out` is not a folder
    that can be written or holds a file of that name that mamlpp-report did not write."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as exc:
        raise ReportError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
    try:
        names = [p.name for p in write(staging)]
        manifest = _manifest(out)
        foreign = [n for n in names if (out / n).exists() and not _ours(out / n, manifest)]
        if foreign:
            raise ReportError(
                f"{out / foreign[0]} exists and was not written by mamlpp-report; "
                "give another --out (or move it)"
            )
        for stale in set(manifest) - set(names):
            if _ours(out / stale, manifest):
                (out / stale).unlink()
        written = {}
        for name in names:
            (staging / name).replace(out / name)
            written[name] = _sha256(out / name)
        atomic_write(out / MANIFEST, json.dumps(written, indent=1, sort_keys=True).encode())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / n for n in names]
