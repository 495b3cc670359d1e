"""One experiment over several processes started by torchrun (or Slurm through submitit).

Each rank takes `meta_batch_size / world_size` consecutive tasks of the meta-batch that one
process would draw, so the union over ranks is that batch. After the local backward the
meta-gradients are averaged with one all-reduce of a flat buffer (DDP's hooks do not see the
grad-of-grad of MAML's inner loop, so no DDP wrapper); the per-step batch-norm statistics are
gathered in rank order, which is the task order of one process; evaluation batches are dealt
round-robin and gathered. Only rank 0 writes files. Every collective has a timeout
(`run.collective_timeout_s`), so a rank that dies ends the job instead of hanging it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mamlpp.errors import ConfigError
from mamlpp.nn.layers import BatchStats


@dataclass
class Distributed:
    """This process's place in the job; world_size 1 (no torchrun) makes every method trivial."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # This rank's device (set by `start`); CUDA tensors carry NCCL's collectives.
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls) -> Distributed:
        """From torchrun's RANK / WORLD_SIZE / LOCAL_RANK; in a Slurm job of several tasks
        started by submitit (hydra/launcher=slurm with tasks_per_node > 1 or several nodes),
        submitit's own description of the job is exported first."""
        if "WORLD_SIZE" not in os.environ and _submitit_tasks() > 1:
            from submitit.helpers import TorchDistributedEnvironment

            TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device, timeout_s: float) -> torch.device:
        """Join the process group (NCCL on GPU, gloo on CPU); return this rank's device."""
        if not self.enabled:
            return device
        _stop_with_agent()
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo",
                timeout=timedelta(seconds=timeout_s),
            )
        self.device = device
        return device

    def close(self) -> None:
        """Leave the group together: a rank that tore its connections down while another was
        still finishing would abort that one."""
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def local_share(self, meta_batch_size: int) -> int:
        """Tasks per rank; a meta-batch the ranks cannot share equally is a one-line error."""
        if meta_batch_size % self.world_size:
            raise ConfigError(
                f"config key 'train.meta_batch_size' = {meta_batch_size} is not divisible by "
                f"the {self.world_size} processes of this distributed run: use a multiple of "
                f"{self.world_size}"
            )
        return meta_batch_size // self.world_size

    # ------------------------------------------------------------------ training step
    def average_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Mean of the ranks' .grad, one all-reduce over a flat buffer. A parameter without a
        gradient contributes zeros (every rank issues the same collective) and keeps None."""
        if not self.enabled or not params:
            return
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        )
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            if p.grad is not None:
                p.grad.copy_(flat[offset : offset + n].view_as(p))
            offset += n

    def gather_batch_stats(self, sink: list[BatchStats]) -> list[BatchStats]:
        """Each entry's per-task statistics of all ranks, rank after rank: the batch of one
        process in its task order. One all-gather for the whole list."""
        if not self.enabled or not sink:
            return sink
        local = torch.cat([torch.cat([e.mean, e.var], 1).reshape(-1) for e in sink])
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        gathered, offset = [], 0
        for e in sink:
            b, c = e.mean.shape
            chunks = [p[offset : offset + 2 * b * c].view(b, 2 * c) for p in parts]
            both = torch.cat(chunks, 0)
            gathered.append(BatchStats(e.layer, e.slot, both[:, :c], both[:, c:]))
            offset += 2 * b * c
        return gathered

    def sum(self, *values: Tensor) -> list[Tensor]:
        """Sums over ranks of scalar tensors (losses, accuracies), in one all-reduce."""
        if not self.enabled:
            return list(values)
        stacked = torch.stack([v.detach().to(torch.float64) for v in values])
        dist.all_reduce(stacked)
        return [s.to(v.dtype) for s, v in zip(stacked, values)]

    # ------------------------------------------------------------------ control
    def any(self, flag: bool) -> bool:
        """Whether any rank's flag is set (e.g. a stop signal reached only some ranks)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _stop_with_agent() -> None:
    """Under torchrun (Linux), have the kernel send this worker SIGTERM when its agent dies,
    even by SIGKILL: it then checkpoints and exits 75 instead of training on as an orphan that
    holds the run lock. (A SIGTERM to the agent already reaches the workers through torchrun.)"""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    agent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != agent:  # the agent died just before the call
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _submitit_tasks() -> int:
    """Tasks of the submitit Slurm job this process belongs to (1 outside one)."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return 1
    return int(os.environ.get("SLURM_NTASKS", "1"))


SINGLE = Distributed()
