"""How a Conv4 MAML++ meta-step's cost grows with the meta-batch, the ways and the inner steps.

    python benchmarks/bench_scaling.py [--full] [--warmup 1] [--repeats 2] [--threads 2]
                                       [--json FILE] [--plot FILE.png]

By default a factorial slice around MAML++ 5-way 1-shot, batch 8, 5 inner steps: the batch
over 4, 8, 16, 32, the ways over 5, 20 and the inner steps over 1, 3, 5, one factor at a time.
`--full` runs the whole 4 x 2 x 3 grid. Each point is bench_meta_step.py in its own process
(second order, MSL, per-step BN, LSLR; peak RSS is that process's). Prints a table and
least-squares fits: s/iter and peak MB linear in the batch, s/iter linear in the ways and in
the inner steps; over the whole grid also a power law c * B^a * N^b * K^g and a line in the
work B * N * K. `--json` is rewritten after every point, and `--resume` keeps the points it
already holds (a long grid on a shared machine can be continued).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCHES, WAYS, STEPS = (4, 8, 16, 32), (5, 20), (1, 3, 5)
CENTER = (8, 5, 5)  # batch, ways, steps
TIME = "median_s_per_iter"  # or median_cpu_s_per_iter (--cpu-time)


def grid(full: bool, batches=BATCHES, ways=WAYS, steps=STEPS) -> list[tuple[int, int, int]]:
    if full:
        return [(b, w, s) for w in ways for s in steps for b in batches]
    b0, w0, s0 = CENTER
    points = [(b, w0, s0) for b in BATCHES]
    points += [(b0, w, s0) for w in WAYS if w != w0]
    points += [(b0, w0, s) for s in STEPS if s != s0]
    return points


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="write a PNG of s/iter and peak MB here")
    p.add_argument("--resume", action="store_true", help="keep the points already in --json")
    p.add_argument("--batches", type=int, nargs="*", default=list(BATCHES), help="with --full")
    p.add_argument("--ways", type=int, nargs="*", default=list(WAYS), help="with --full")
    p.add_argument("--steps", type=int, nargs="*", default=list(STEPS), help="with --full")
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="fit and plot CPU seconds per iteration instead of wall seconds (a busy machine)",
    )
    args = p.parse_args()
    global TIME
    TIME = "median_cpu_s_per_iter" if args.cpu_time else "median_s_per_iter"
    done: dict[tuple[int, int, int], dict] = {}
    if args.resume and args.json and Path(args.json).is_file():
        for r in json.loads(Path(args.json).read_text())["results"]:
            done[(r["batch"], r["ways"], r["inner_steps"])] = r
    rows = []
    print(f"{'batch':>5} {'ways':>4} {'steps':>5} {'s/iter':>8} {'CPU s':>8} {'peak MB':>8}")
    points = grid(args.full, args.batches, args.ways, args.steps)
    kept = [r for key, r in done.items() if key not in points]  # outside this selection
    for b, w, s in points:
        r = done.get((b, w, s))
        if r is None:
            cmd = [sys.executable, str(HERE / "bench_meta_step.py"), "--worker"]
            cmd += [f"mamlpp_{w}w1s_b{b}_s{s}", "batched", "base", "--threads", str(args.threads)]
            cmd += ["--warmup", str(args.warmup), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        if args.json:
            Path(args.json).write_text(json.dumps({"results": kept + rows, "fits": {}}, indent=2))
        print(
            f"{b:5d} {w:4d} {s:5d} {r['median_s_per_iter']:8.3f} "
            f"{r['median_cpu_s_per_iter']:8.3f} {r['peak_mem_mb']:8.0f}",
            flush=True,
        )
    rows = kept + rows
    b0, w0, s0 = CENTER
    fits = {}
    for factor, key, other in (
        ("batch", "batch", lambda r: r["ways"] == w0 and r["inner_steps"] == s0),
        ("ways", "ways", lambda r: r["batch"] == b0 and r["inner_steps"] == s0),
        ("inner_steps", "inner_steps", lambda r: r["batch"] == b0 and r["ways"] == w0),
    ):
        sel = [r for r in rows if other(r)]
        if len(sel) < 2:
            continue
        xs = [r[key] for r in sel]
        a, b = fit(xs, [r[TIME] for r in sel])
        am, bm = fit(xs, [r["peak_mem_mb"] for r in sel])
        fits[factor] = {"s_per_iter": [a, b], "peak_mb": [am, bm]}
        print(
            f"fit vs {factor}: {TIME} = {a:.3f} + {b:.4f} * {factor}; "
            f"peak MB = {am:.0f} + {bm:.1f} * {factor}"
        )
    varied = [{r[k] for r in rows} for k in ("batch", "ways", "inner_steps")]
    if all(len(v) > 1 for v in varied):
        c, a, bw, g = power_fit(rows, TIME)
        fits["power_law"] = {"s_per_iter": [c, a, bw, g]}
        print(f"fit over the grid: {TIME} = {c:.4f} * B^{a:.2f} * N^{bw:.2f} * K^{g:.2f}")
        work = [r["batch"] * r["ways"] * r["inner_steps"] for r in rows]
        a0, b0w = fit(work, [r[TIME] for r in rows])
        am, bm = fit(work, [r["peak_mem_mb"] for r in rows])
        fits["work"] = {"s_per_iter": [a0, b0w], "peak_mb": [am, bm]}
        print(
            f"fit over the grid, work W = B*N*K: {TIME} = {a0:.3f} + {b0w:.5f} * W; "
            f"peak MB = {am:.0f} + {bm:.2f} * W"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"results": rows, "fits": fits}, indent=2))
    if args.plot:
        plot(rows, fits, args.plot)


def power_fit(rows: list[dict], field: str) -> tuple[float, float, float, float]:
    """Least squares of log t = log c + a log B + b log N + g log K; returns (c, a, b, g)."""
    import numpy as np

    x = np.array(
        [[1.0, math.log(r["batch"]), math.log(r["ways"]), math.log(r["inner_steps"])] for r in rows]
    )
    y = np.log(np.array([r[field] for r in rows]))
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    return math.exp(coef[0]), float(coef[1]), float(coef[2]), float(coef[3])


def plot(rows: list[dict], fits: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b0, w0, s0 = CENTER
    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    panels = (
        ("batch", "meta-batch", lambda r: r["ways"] == w0 and r["inner_steps"] == s0),
        ("ways", "ways", lambda r: r["batch"] == b0 and r["inner_steps"] == s0),
        ("inner_steps", "inner steps", lambda r: r["batch"] == b0 and r["ways"] == w0),
    )
    series = sorted({(r["ways"], r["inner_steps"]) for r in rows})
    for w, k in series if len(series) > 2 else []:  # the full grid: every series against B
        sel = sorted(
            (r for r in rows if (r["ways"], r["inner_steps"]) == (w, k)), key=lambda r: r["batch"]
        )
        for row, field in enumerate((TIME, "peak_mem_mb")):
            axes[row][0].plot(
                [r["batch"] for r in sel],
                [r[field] for r in sel],
                ".:",
                alpha=0.6,
                label=f"N={w} K={k}",
            )
    for col, (key, label, keep) in enumerate(panels):
        sel = sorted((r for r in rows if keep(r)), key=lambda r: r[key])
        xs = [r[key] for r in sel]
        for row, (field, ylabel) in enumerate(
            ((TIME, "CPU s/iter" if "cpu" in TIME else "s/iter"), ("peak_mem_mb", "peak RSS (MB)"))
        ):
            ax = axes[row][col]
            ax.plot(xs, [r[field] for r in sel], "o", label="measured")
            if key in fits:
                a, b = fits[key]["s_per_iter" if row == 0 else "peak_mb"]
                ax.plot(xs, [a + b * x for x in xs], "-", label=f"{a:.2f} + {b:.3f}x")
                ax.legend(fontsize=8)
            ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            if col == 0 and len(series) > 2:
                ax.set_yscale("log")
                ax.legend(fontsize=6)
    fig.suptitle("Conv4 MAML++ meta-step on CPU (second order, MSL, per-step BN, LSLR)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
