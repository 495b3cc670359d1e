"""Meta-step throughput against the number of processes of one distributed run (torchrun).

    python benchmarks/bench_distributed.py [--procs 1 2] [--batch 16] [--repeats 5] [--warmup 2]
                                           [--device cpu|cuda] [--threads N]

For each process count G it starts `torchrun --standalone --nproc_per_node=G` on this file; each
rank runs MAML++ meta-steps (Omniglot shapes, 5-way 1-shot, 5 inner steps, Conv4) on its
batch/G tasks with the gradient all-reduce and batch-norm gather of a real run, and rank 0
prints the median seconds per meta-step. On CPU the cores are split evenly between the ranks
(`--threads` per rank, default cores / G), so the table shows what the split itself costs or
gains; on GPU each rank gets its own device (NCCL).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch

    from mamlpp.algorithms.meta_learner import MetaLearner
    from mamlpp.config import AlgorithmConfig, model_config
    from mamlpp.experiment.distributed import Distributed
    from mamlpp.tasks import EpisodeBatch

    dist = Distributed.from_env()
    device = dist.start(torch.device(args.device), 600)
    torch.manual_seed(0)
    algorithm = AlgorithmConfig(
        inner_steps=5,
        multi_step_loss=True,
        learn_inner_lr=True,
        per_step_bn_stats=True,
        per_step_bn_weights=True,
        cosine_meta_lr=True,
    )
    learner = MetaLearner(algorithm, model_config(), 1, 28, 5, 10_000).to(device)
    if dist.enabled:
        learner.sync = dist
    local = dist.local_share(args.batch)
    g = torch.Generator().manual_seed(dist.rank)
    xs = (torch.rand(local, 5, 1, 28, 28, generator=g) > 0.5).float().to(device)
    xt = (torch.rand(local, 5, 1, 28, 28, generator=g) > 0.5).float().to(device)
    ys = torch.arange(5, device=device).repeat(local, 1)
    batch = EpisodeBatch(xs, ys, xt, ys.clone())
    times = []
    for i in range(args.warmup + args.repeats):
        dist.barrier()
        start = time.perf_counter()
        learner.train_step(batch, epoch=0, iteration=i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    if dist.is_main:
        print(json.dumps({"s_per_iter": statistics.median(times)}), flush=True)
    dist.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="threads per rank (0: cores / G)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cores = os.cpu_count() or 1
    print(f"{cores} cores, meta batch {args.batch}, device {args.device}")
    print("| processes | threads/rank | s/iter (median) | tasks/s | speed-up |")
    print("|---|---|---|---|---|")
    base = None
    for g in args.procs:
        threads = args.threads or max(cores // g, 1)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [torchrun, "--standalone", f"--nproc_per_node={g}", __file__, "--worker"]
        cmd += ["--batch", str(args.batch), "--repeats", str(args.repeats)]
        cmd += ["--warmup", str(args.warmup), "--device", args.device]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1]
        s = json.loads(line)["s_per_iter"]
        base = base or s
        print(f"| {g} | {threads} | {s:.3f} | {args.batch / s:.1f} | {base / s:.2f}x |")


if __name__ == "__main__":
    main()
