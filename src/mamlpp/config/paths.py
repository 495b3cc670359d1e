"""Where the packaged Hydra config (`conf/`) lives."""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> str:
    """conf/ of a source checkout, or the copy packaged inside a wheel."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here.parents[1] / "conf", here / "conf"):
        if (candidate / "config.yaml").exists():
            return str(candidate)
    raise RuntimeError(f"mamlpp: no conf/config.yaml next to {here}")
