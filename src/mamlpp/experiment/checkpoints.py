"""Checkpoint files: atomic writes, tensors and plain Python only (loadable with weights_only),
sealed with a digest of their content (mamlpp.experiment.checksum)."""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mamlpp.errors import MamlppError, first_line
from mamlpp.experiment import checksum
from mamlpp.files import atomic_write


class CheckpointError(MamlppError):
    """A checkpoint file is unreadable (truncated, not a PyTorch file) or its content does
    not match its checksum: in one line that names the file."""


class WriteError(MamlppError):
    """A file of the run could not be written (disk full, read-only, a folder in the way);
    the file it was to replace is untouched."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """mamlpp.files.atomic_write (readers never see a partial file), creating the folder.

    Any failure (disk full, read-only, a folder in the way) raises a one-line WriteError;
    `path` keeps its old content."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or first_line(exc)}") from exc


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` (tensors and plain Python only), sealed with the digest of its
    content, atomically to `path`."""
    buf = io.BytesIO()
    torch.save(checksum.seal(state), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU; weights_only, so a file can never run code.

    A file that does not load, or whose content does not match its checksum, raises a
    one-line CheckpointError; a file that cannot be read at all (missing, no permission)
    raises OSError. Checkpoints written before they carried a checksum load unchecked."""
    try:
        with warnings.catch_warnings():  # a junk pickle's protocol warning: the error says it
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # truncated, garbage, or a pickle weights_only refuses
        detail = first_line(exc)[:100]
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated, or not a PyTorch file: {detail})"
        ) from exc
    if checksum.matches(state) is False:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its content does not match the checksum stored "
            "in it (a changed byte)"
        )
    return state


def rng_state() -> dict[str, Any]:
    """All global RNG states as tensors and plain types."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the legacy form: (name, keys, pos, has_gauss, gauss)
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
