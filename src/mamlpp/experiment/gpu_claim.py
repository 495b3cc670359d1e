"""Pick a free GPU when several are visible, so parallel local jobs do not pile onto cuda:0.

Why a lock file per GPU: joblib (or the user) may start several runs on one box at once, and
the order in which jobs finish is arbitrary, so "job number modulo GPU count" would collide.
Each run holds a non-blocking flock on `<lock_dir>/<gpu uuid>.lock` for its lifetime; the OS
drops it when the process dies, so a killed run frees its GPU.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class GpuClaim:
    index: int
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def default_lock_dir() -> Path:
    env = os.environ.get("MAMLPP_GPU_LOCK_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"mamlpp-gpu-locks-{os.getuid()}"


def claim_free_gpu(gpu_ids: Sequence[str], lock_dir: Path | None = None) -> GpuClaim | None:
    """The first GPU (index into `gpu_ids`) no other live process has claimed, or None."""
    lock_dir = lock_dir or default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index, gpu_id in enumerate(gpu_ids):
        fd = os.open(lock_dir / f"{gpu_id}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return GpuClaim(index, fd)
    return None


def cuda_ids() -> list[str]:
    """Stable ids of the visible CUDA devices (UUIDs where torch exposes them)."""
    import torch

    ids = []
    for i in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        ids.append(str(uuid) if uuid is not None else f"cuda{i}")
    return ids
