"""Time the published MAML++ code's `run_train_iter` on the same step as bench_meta_step.py.

Side-by-side reference for benchmarks/RESULTS.md. The published code is not part of this repo:
clone github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch and pass its folder as --src. This
mirrors `bench_meta_step.py --setting mamlpp_5w1s_b8`: a fresh process, epoch 0 (second order and
MSL on, as in its Omniglot MAML++ config), 2 warm-up + 5 timed iterations, median s/iter, peak
RSS of the process, flushed denormals, 2 threads, binary Omniglot-shaped random images.

    python benchmarks/bench_published.py --src ../HowToTrainYourMAMLPytorch [--config NAME]
                                         [--set key=json ...]

On a machine with CUDA the published code runs on the GPU (its own choice); the timing then
synchronises and peak memory is the GPU's. bench_side_by_side.py alternates it with ours.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--src", required=True, help="a checkout of HowToTrainYourMAMLPytorch")
p.add_argument(
    "--config",
    default="omniglot_maml++-omniglot_1_8_0.1_64_5_0.json",
    help="a file in the published experiment_config/ (default: Omniglot MAML++ 5-way 1-shot)",
)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--threads", type=int, default=2)
p.add_argument(
    "--profile", default=None, help="write torch.profiler table (self CPU) of 1 iteration here"
)
p.add_argument("--no-flush-denormal", action="store_true")
p.add_argument(
    "--set",
    nargs="*",
    default=[],
    help="override config keys, e.g. first_order_to_second_order_epoch=1000 (JSON values)",
)
p.add_argument("--epoch", type=int, default=0)
cli = p.parse_args()
SRC = os.path.abspath(cli.src)
sys.path.insert(0, SRC)

import torch  # noqa: E402

torch.set_num_threads(cli.threads)
if not cli.no_flush_denormal:
    torch.set_flush_denormal(True)

# Their own argument parser + the Omniglot MAML++ 5-way 1-shot config from the repo.
os.environ.setdefault("DATASET_DIR", os.path.join(SRC, "datasets"))
sys.argv = [
    sys.argv[0],
    "--name_of_args_json_file",
    os.path.join(SRC, "experiment_config", cli.config),
]
import contextlib  # noqa: E402
import io  # noqa: E402

from few_shot_learning_system import MAMLFewShotClassifier  # noqa: E402
from utils.parser_utils import get_args  # noqa: E402

with contextlib.redirect_stdout(io.StringIO()):  # their code prints every arg / layer shape
    args, device = get_args()
    for kv in cli.set:
        k, v = kv.split("=", 1)
        setattr(args, k, json.loads(v))
    model = MAMLFewShotClassifier(
        args=args,
        device=device,
        im_shape=(2, args.image_channels, args.image_height, args.image_width),
    )

b, ways, shots, tgt = (
    args.batch_size,
    args.num_classes_per_set,
    args.num_samples_per_class,
    args.num_target_samples,
)
g = torch.Generator().manual_seed(0)


def images(n):
    return (
        torch.rand(
            b, ways, n, args.image_channels, args.image_height, args.image_width, generator=g
        )
        > 0.2
    ).float()


xs, xt = images(shots), images(tgt)
ys = torch.arange(ways).view(1, ways, 1).expand(b, ways, shots).contiguous()
yt = torch.arange(ways).view(1, ways, 1).expand(b, ways, tgt).contiguous()
data = (xs, xt, ys, yt)  # their order: x_support, x_target, y_support, y_target

epoch = cli.epoch
cond = {
    "epoch": epoch,
    "second_order_used": bool(args.second_order and epoch > args.first_order_to_second_order_epoch),
    "msl_used": bool(
        args.use_multi_step_loss_optimization and epoch < args.multi_step_loss_num_epochs
    ),
    "per_step_bn_statistics": args.per_step_bn_statistics,
    "learnable_lslr": args.learnable_per_layer_per_step_inner_loop_learning_rate,
    "inner_steps": args.number_of_training_steps_per_iter,
    "batch": b,
    "ways": ways,
    "shots": shots,
    "targets_per_class": tgt,
    "threads": torch.get_num_threads(),
    "n_outer_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
}

cuda = torch.cuda.is_available()
times, cpu_times = [], []
for i in range(cli.warmup + cli.repeats):
    if cuda:
        torch.cuda.synchronize()
        if i == cli.warmup:
            torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    # experiment_builder passes epoch_idx = current_iter / total_iter_per_epoch; int() -> 0 here
    losses, _ = model.run_train_iter(data_batch=data, epoch=epoch + i / args.total_iter_per_epoch)
    if cuda:
        torch.cuda.synchronize()
    if i >= cli.warmup:
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)

if cli.profile:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        model.run_train_iter(data_batch=data, epoch=epoch)
    with open(cli.profile, "w") as f:
        f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))

print(
    json.dumps(
        {
            "impl": "published",
            "median_s_per_iter": statistics.median(times),
            "median_cpu_s_per_iter": statistics.median(cpu_times),
            "times": [round(t, 4) for t in times],
            "config": cli.config,
            "device": "cuda" if cuda else "cpu",
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20
            if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "loss": float(losses["loss"]),
            **cond,
        }
    )
)
