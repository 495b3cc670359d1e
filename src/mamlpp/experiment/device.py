"""Where a run computes: the device named in config, a free GPU among several, and the
numerics every run on it uses. Training, mamlpp-eval, mamlpp.load and the benchmarks share it."""

from __future__ import annotations

import torch

from mamlpp.config import SpeedConfig
from mamlpp.errors import ConfigError
from mamlpp.experiment.console import log
from mamlpp.experiment.gpu_claim import GpuClaim, claim_free_gpu, cuda_ids
from mamlpp.nn.cpu_allocator import keep_freed_memory
from mamlpp.nn.fast_kernels import set_fast_kernels


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"config key 'device' = '{name}' but no CUDA device is available: use auto|cpu"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"config key 'device' = '{name}' but only {torch.cuda.device_count()} GPUs are visible"
        )
    return device


def place_on_free_gpu(device: torch.device) -> tuple[torch.device, GpuClaim | None]:
    """With several visible GPUs, the first one no other mamlpp run holds (else cuda:0)."""
    if device.type != "cuda" or device.index is not None or torch.cuda.device_count() < 2:
        return device, None
    claim = claim_free_gpu(cuda_ids())
    if claim is None:
        log("every visible GPU is held by another mamlpp run; sharing cuda:0")
        return torch.device("cuda", 0), None
    log(f"using cuda:{claim.index}, the first visible GPU no other mamlpp run holds")
    return torch.device("cuda", claim.index), claim


def configure_backends(speed: SpeedConfig, device: torch.device) -> None:
    """Apply the CUDA backend switches of `speed`; on CPU say that they have no effect. The
    kernel choice of speed.fast_kernels is process-wide too (mamlpp.nn.fast_kernels)."""
    set_fast_kernels(speed.fast_kernels)
    if device.type != "cuda":
        if speed.cuda_graphs:
            raise ConfigError(
                f"config key 'speed.cuda_graphs' = True needs a CUDA device, but the run is on "
                f"{device}: set speed.cuda_graphs=false or device=cuda"
            )
        on = [k for k in ("tf32", "cudnn_benchmark") if getattr(speed, k)]
        if on:
            log(f"speed.{', speed.'.join(on)}: CUDA-only, no effect on {device}")
        return
    torch.backends.cuda.matmul.allow_tf32 = speed.tf32
    torch.backends.cudnn.allow_tf32 = speed.tf32
    torch.backends.cudnn.benchmark = speed.cudnn_benchmark


def configure_device(device: torch.device, speed: SpeedConfig) -> None:
    """Make `device` current and set the numerics every run on it uses (training and eval)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal gradients slow CPU kernels by 10x+
        keep_freed_memory()  # no page faults for each new temporary (same numbers)
    configure_backends(speed, device)
