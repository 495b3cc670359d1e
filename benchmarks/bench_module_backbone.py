"""Seconds per meta-iteration of a plain torch.nn.Module backbone (model=module): all tasks under
torch.func.vmap vs one task after another, beside the built-in Conv4 on the grouped layout.

    python benchmarks/bench_module_backbone.py [--batch 16] [--repeats 5] [--warmup 2]

The plain module is Conv4's architecture written with torch.nn layers (64 filters, batch norm,
ReLU, max-pool, linear head), so the rows compare the execution strategies, not networks.
Second-order MAML, 5-way 1-shot (1 target per class), 5 inner steps, Omniglot's 1x28x28 shapes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


class PlainConv4(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, filters: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(4):
            layers += [
                nn.Conv2d(channels, filters, 3, padding=1),
                nn.BatchNorm2d(filters),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = filters
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(filters, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.body(x), 1))


def learner(kind: str, ways: int):
    from mamlpp.algorithms.meta_learner import MetaLearner
    from mamlpp.config import AlgorithmConfig, model_config

    algorithm = AlgorithmConfig(name="maml", inner_lr=0.4, inner_steps=5)
    if kind.startswith("conv4"):
        model, impl = model_config(activation="relu"), kind.split("_")[1]
    else:
        vectorize = kind == "module_vmap"
        model = model_config(name="module", _target_=f"{__name__}.PlainConv4", vectorize=vectorize)
        impl = "batched"
    torch.manual_seed(0)
    return MetaLearner(algorithm, model, 1, 28, ways, 10_000, impl)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    from mamlpp.tasks import EpisodeBatch

    ways = 5
    g = torch.Generator().manual_seed(0)
    xs = (torch.rand(args.batch, ways, 1, 28, 28, generator=g) > 0.5).float()
    xt = (torch.rand(args.batch, ways, 1, 28, 28, generator=g) > 0.5).float()
    ys = torch.arange(ways).repeat(args.batch, 1)
    batch = EpisodeBatch(xs, ys, xt, ys.clone())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, meta batch {args.batch}")
    print("| backbone / execution | s/iter (median) | vs module per-task loop |")
    print("|---|---|---|")
    rows = {}
    for kind in ("module_loop", "module_vmap", "conv4_loop", "conv4_batched"):
        model = learner(kind, ways)
        times = []
        for i in range(args.warmup + args.repeats):
            start = time.perf_counter()
            model.train_step(batch, epoch=0, iteration=i)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        rows[kind] = statistics.median(times)
        print(f"| {kind} | {rows[kind]:.3f} | {rows['module_loop'] / rows[kind]:.2f}x |")


if __name__ == "__main__":
    main()
