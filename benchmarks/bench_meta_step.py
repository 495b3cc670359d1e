"""Seconds per meta-iteration, throughput and peak memory of each meta-step implementation.

    python benchmarks/bench_meta_step.py [--setting NAME ...] [--device cpu|cuda] [--impl NAME ...]
                                         [--variant NAME ...] [--repeats N] [--warmup N]
                                         [--json FILE]

Each (setting, impl, variant) runs in its own subprocess so peak RSS belongs to it alone.
Inputs have Omniglot's shapes (1x28x28, binary pixels); 5 inner steps throughout. The ratio
column is each row's speed-up over `loop` (plain fp32) measured in the same invocation.
Variants switch on `speed.*` options / `train.precision` for the batched implementation (see
VARIANTS); `loop` always runs plain, as the reference.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time

SETTINGS = {
    # name: (algorithm, ways, meta batch)
    "mamlpp_5w1s_b8": ("mamlpp", 5, 8),
    "mamlpp_5w1s_b16": ("mamlpp", 5, 16),
    "mamlpp_20w1s_b8": ("mamlpp", 20, 8),
    "maml_5w1s_b16": ("maml", 5, 16),
    "fomaml_5w1s_b16": ("fomaml", 5, 16),
}
SETTING_RE = re.compile(r"(mamlpp|maml|fomaml)_(\d+)w1s_b(\d+)(?:_s(\d+))?(_resnet12)?")
IMPLS = ("batched", "loop")
# name: (SpeedConfig fields, train.precision)
VARIANTS = {
    "base": ({}, "fp32"),
    "ckpt": ({"checkpoint_inner_steps": True}, "fp32"),
    "nhwc": ({"channels_last": True}, "fp32"),
    "bf16": ({}, "bf16"),
    "fast": ({"fast_kernels": True}, "fp32"),
    "tf32": ({"tf32": True}, "fp32"),
    "cudnn": ({"cudnn_benchmark": True}, "fp32"),
    "graphs": ({"cuda_graphs": True}, "fp32"),
    "graphs_tf32": ({"cuda_graphs": True, "tf32": True, "cudnn_benchmark": True}, "fp32"),
}


def parse_setting(name: str) -> tuple[str, int, int, int, bool]:
    """(algorithm, ways, meta batch, inner steps, ResNet-12) of a SETTINGS name or of any name
    ALGO_{W}w1s_b{B}[_s{S}][_resnet12] (S inner steps, 5 by default; _resnet12: ResNet-12 on
    3x32x32 images, Tiny-ImageNet's shape, instead of Conv4 on 1x28x28)."""
    m = SETTING_RE.fullmatch(name)
    if m is None:
        raise SystemExit(
            f"bench_meta_step.py: setting {name!r} is not ALGO_<ways>w1s_b<batch>[_s<steps>] "
            "[_resnet12] with ALGO one of mamlpp, maml, fomaml"
        )
    algo, ways, batch, steps, resnet = m.groups()
    return algo, int(ways), int(batch), int(steps or 5), resnet is not None


def _algorithm(name: str, steps: int = 5):
    from mamlpp.config import AlgorithmConfig

    if name == "mamlpp":
        return AlgorithmConfig(
            name="mamlpp",
            inner_steps=steps,
            inner_steps_eval=steps,
            inner_lr=0.1,
            multi_step_loss=True,
            learn_inner_lr=True,
            per_step_bn_stats=True,
            per_step_bn_weights=True,
            cosine_meta_lr=True,
        )
    return AlgorithmConfig(
        name=name,
        inner_steps=steps,
        inner_steps_eval=steps,
        inner_lr=0.4,
        second_order=name == "maml",
    )


def measure(setting: str, impl: str, variant: str, device: str, warmup: int, repeats: int) -> dict:
    import torch

    from mamlpp.algorithms.meta_learner import EpisodeBatch, MetaLearner
    from mamlpp.config import SpeedConfig

    try:
        from mamlpp.config import model_config
    except ImportError:  # a checkout from before the component registries (a --baseline)
        from mamlpp.config import ModelConfig as model_config

    try:
        from mamlpp.experiment.device import configure_backends
    except ImportError:  # a checkout from before experiment.device (a --baseline)
        from mamlpp.experiment.builder import configure_backends

    try:
        from mamlpp.nn.cpu_allocator import keep_freed_memory
    except ImportError:  # a checkout from before it (a --baseline of bench_side_by_side.py)

        def keep_freed_memory() -> bool:
            return False

    algo, ways, batch, steps, resnet = parse_setting(setting)
    channels, size = (3, 32) if resnet else (1, 28)
    options, precision = VARIANTS[variant]
    speed = SpeedConfig(**options)
    dev = torch.device(device)
    if dev.type == "cpu":  # as experiment.device.configure_device
        torch.set_flush_denormal(True)
        keep_freed_memory()
    configure_backends(speed, dev)
    torch.manual_seed(0)
    learner = MetaLearner(
        _algorithm(algo, steps),
        model_config(name="resnet12" if resnet else "conv4"),
        channels,
        size,
        ways,
        10_000,
        impl,
        precision,
        speed,
    ).to(dev)
    if speed.cuda_graphs:
        learner.use_cuda_graphs()
    g = torch.Generator().manual_seed(0)

    def images() -> torch.Tensor:
        x = torch.rand(batch, ways, channels, size, size, generator=g)
        return (x if resnet else (x > 0.2).float()).to(dev)

    labels = torch.arange(ways, device=dev).expand(batch, -1).contiguous()
    data = EpisodeBatch(images(), labels, images(), labels)
    times, cpu_times = [], []
    for i in range(warmup + repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
            if i == warmup:
                torch.cuda.reset_peak_memory_stats()
        t0, c0 = time.perf_counter(), time.process_time()
        learner.train_step(data, epoch=0, iteration=i)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    med = statistics.median(times)
    images_per_task = ways * 2  # 1 support + 1 target per class
    return {
        "setting": setting,
        "ways": ways,
        "batch": batch,
        "inner_steps": steps,
        "threads": torch.get_num_threads(),
        "impl": impl,
        "variant": variant,
        "options": {**options, "precision": precision},
        "device": device,
        "median_s_per_iter": med,
        # CPU seconds of this process: on a machine shared with other jobs, a steadier measure of
        # the work than wall time (with 1 thread; more threads add their spin-waits).
        "median_cpu_s_per_iter": statistics.median(cpu_times),
        "tasks_per_s": batch / med,
        "images_per_s": batch * images_per_task / med,
        "peak_mem_mb": peak_mb,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--setting",
        nargs="*",
        default=list(SETTINGS),
        help=f"{', '.join(SETTINGS)} or any ALGO_<ways>w1s_b<batch>[_s<inner steps>]",
    )
    p.add_argument("--impl", nargs="*", default=list(IMPLS), choices=list(IMPLS))
    p.add_argument("--variant", nargs="*", default=["base"], choices=list(VARIANTS))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="write {'results': [...]} here")
    p.add_argument(
        "--worker", nargs=3, metavar=("SETTING", "IMPL", "VARIANT"), help=argparse.SUPPRESS
    )
    args = p.parse_args()
    for name in args.setting:
        parse_setting(name)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(*args.worker, args.device, args.warmup, args.repeats)))
        return
    results = []
    print(
        f"{'setting':18} {'impl':8} {'variant':12} {'s/iter':>8} {'tasks/s':>8} {'images/s':>9} "
        f"{'peak MB':>8} {'vs loop':>7}"
    )
    runs = [
        (impl, variant)
        for impl in args.impl
        for variant in (["base"] if impl == "loop" else args.variant)
    ]
    for setting in args.setting:
        rows = []
        for impl, variant in runs:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                setting,
                impl,
                variant,
                "--device",
                args.device,
                "--warmup",
                str(args.warmup),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        loop = next((r for r in rows if r["impl"] == "loop"), None)
        for r in rows:
            if loop is not None:
                r["speedup_vs_loop"] = loop["median_s_per_iter"] / r["median_s_per_iter"]
            ratio = f"{r['speedup_vs_loop']:.2f}x" if "speedup_vs_loop" in r else "-"
            print(
                f"{setting:18} {r['impl']:8} {r['variant']:12} {r['median_s_per_iter']:8.4f} "
                f"{r['tasks_per_s']:8.1f} {r['images_per_s']:9.0f} {r['peak_mem_mb']:8.0f} "
                f"{ratio:>7}",
                flush=True,
            )
            results.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results}, f, indent=2)


if __name__ == "__main__":
    main()
