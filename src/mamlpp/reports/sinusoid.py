"""mamlpp-sinusoid: a trained sinusoid run against the pretrained baseline, as in the MAML
paper's Figure 2.

From a run directory of dataset=sinusoid it takes the best member, trains the pretrained
baseline (the same network trained on all training tasks jointly, for as many steps and tasks
as the run's meta-training, from the run's seed), then fine-tunes both on the support points of
the run's fixed test tasks (eval.task_seed) with the run's inner learning rate and writes, under
<run>/eval/sinusoid/: mse.json and mse.md (test MSE after 0, 1 and 10 steps, mean and 95% CI)
and adaptation.png (one test task: the true curve, its K points, and each model's prediction
before and after 1 and 10 steps).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mamlpp.algorithms.factory import build_learner
from mamlpp.algorithms.learner import Learner
from mamlpp.algorithms.pretrained import pretrain_jointly
from mamlpp.config import Config, saved_config
from mamlpp.data.sinusoid import SinusoidSampler, sinusoid_sampler
from mamlpp.errors import MamlppError
from mamlpp.experiment.checkpoints import atomic_write_text
from mamlpp.experiment.evaluation import mean_ci95
from mamlpp.experiment.members import load_learner_state
from mamlpp.experiment.trained import open_trained
from mamlpp.tasks import EpisodeBatch

STEPS = (0, 1, 10)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="mamlpp-sinusoid",
        description="Test MSE of a trained dataset=sinusoid run and of the pretrained baseline "
        "after 0, 1 and 10 fine-tuning steps, and the MAML paper's Figure 2 (adaptation.png).",
    )
    p.add_argument("run_dir", type=Path, help="a finished or validated run of dataset=sinusoid")
    p.add_argument("--out", type=Path, help="output folder (default: <run>/eval/sinusoid)")
    p.add_argument("--task", type=int, default=0, help="test task drawn in the figure")
    p.add_argument(
        "--baseline-lr",
        type=float,
        help="fine-tuning step size of the baseline (default: the run's algorithm.inner_lr)",
    )
    return p.parse_args(argv)


def fine_tune_mse(learner: Learner, sampler: SinusoidSampler, cfg: Config) -> dict[str, Any]:
    """Mean and 95% CI of the test MSE after each of STEPS fine-tuning steps."""
    out = {}
    for steps in STEPS:
        mse = []
        for start in range(0, cfg.eval.test_tasks, cfg.eval.batch_size):
            n = min(cfg.eval.batch_size, cfg.eval.test_tasks - start)
            batch = sampler.batch("test", cfg.eval.task_seed, start, n)
            pred = _adapted_predictions(learner, batch, steps, batch.xt)
            mse.append((pred - batch.yt).pow(2).flatten(1).mean(1).cpu())
        mean, ci = mean_ci95(torch.cat(mse))
        out[f"steps_{steps}"] = {"mse_mean": mean, "mse_ci95": ci}
    return out


def _adapted_predictions(
    learner: Learner, batch: EpisodeBatch, steps: int, x: torch.Tensor
) -> torch.Tensor:
    fast = learner.adapt(batch.xs, batch.ys, steps)
    return learner.predict_adapted(fast, x, max(steps, 1))


def build_baseline(cfg: Config, sampler: SinusoidSampler, device: torch.device) -> Learner:
    """The run's network trained jointly on its training tasks, wrapped to fine-tune with plain
    SGD at the run's inner learning rate (no learned rates, all weights adapted)."""
    torch.manual_seed(cfg.seed)
    plain = replace(
        cfg.algorithm, name="maml", learn_inner_lr=False, per_element_lr=False, adapt="all"
    )
    learner = build_learner(replace(cfg, algorithm=plain), sampler.in_features, device)
    iters = cfg.train.epochs * cfg.train.iters_per_epoch
    b = cfg.train.meta_batch_size
    pretrain_jointly(
        learner.net,
        lambda i: sampler.batch("train", cfg.seed, i * b, b),
        sampler.objective,
        iters,
        cfg.algorithm.meta_lr,
    )
    return learner


def plot(
    path: Path, models: dict[str, Learner], sampler: SinusoidSampler, cfg: Config, task: int
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("mamlpp-sinusoid: matplotlib missing (pip install mamlpp[report]); no plot")
        return

    batch = sampler.batch("test", cfg.eval.task_seed, task, 1)
    truth = sampler.tasks("test", cfg.eval.task_seed, task, 1)
    lo, hi = sampler.cfg.input_range
    grid = np.linspace(lo, hi, 200)
    x = torch.tensor(grid, dtype=torch.float32, device=batch.xs.device)[None, :, None]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), sharey=True)
    for ax, (name, learner) in zip(np.atleast_1d(axes), models.items()):
        ax.plot(grid, truth.values(grid)[0], color="red", label="ground truth")
        for steps, style in zip(STEPS, (":", "--", "-")):
            y = _adapted_predictions(learner, batch, steps, x)[0, :, 0].cpu().numpy()
            label = "pre-update" if steps == 0 else f"{steps} grad step" + "s" * (steps > 1)
            ax.plot(grid, y, style, color="green" if steps else "lightgreen", label=label)
        ax.plot(
            batch.xs[0, :, 0].cpu(),
            batch.ys[0, :, 0].cpu(),
            "^",
            color="purple",
            label=f"{sampler.shots} points used for gradient",
        )
        ax.set_title(f"{name}, K={sampler.shots}")
        ax.set_xlabel("x")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(table: dict[str, dict[str, Any]], shots: int, tasks: int) -> str:
    head = " | ".join(f"{s} step{'s' * (s != 1)}" for s in STEPS)
    lines = [
        f"test MSE on {tasks} fixed tasks, K={shots} (mean +- 95% CI)",
        "",
        f"| model | {head} |",
        "|---|" + "---|" * len(STEPS),
    ]
    for name, row in table.items():
        cells = [
            f"{row[f'steps_{s}']['mse_mean']:.3f} +- {row[f'steps_{s}']['mse_ci95']:.3f}"
            for s in STEPS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> Path:
    trained = open_trained(args.run_dir, "best")
    # The run's own config, read literally (open_trained checked it names no code).
    cfg = saved_config(trained.config, trained.policy.allow)
    if cfg.dataset.name != "sinusoid":
        raise MamlppError(
            f"{args.run_dir} is a run of dataset={cfg.dataset.name}; mamlpp-sinusoid plots "
            "runs of dataset=sinusoid (images: mamlpp-eval and mamlpp-report)"
        )
    if not 0 <= args.task < cfg.eval.test_tasks:
        raise MamlppError(f"--task {args.task}: give 0..{cfg.eval.test_tasks - 1}")
    device = torch.device("cpu")
    sampler = sinusoid_sampler(cfg.dataset, cfg.task, device)
    meta = build_learner(cfg, sampler.in_features, device)
    load_learner_state(meta, trained.members[0].learner, trained.members[0].path)
    baseline = build_baseline(cfg, sampler, device)
    if args.baseline_lr is not None:
        for rates in baseline.inner_lrs.rates.values():
            rates.data.fill_(args.baseline_lr)
    name = cfg.algorithm.name.upper() if cfg.algorithm.name != "mamlpp" else "MAML++"
    models = {name: meta, "pretrained": baseline}
    table = {n: fine_tune_mse(m, sampler, cfg) for n, m in models.items()}
    out = args.out or trained.out_root / "sinusoid"
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "run": str(args.run_dir),
        "member_epoch": trained.infos[0]["epoch"],
        "shots": cfg.task.shots,
        "test_tasks": cfg.eval.test_tasks,
        "task_seed": cfg.eval.task_seed,
        "baseline_pretrain_iterations": cfg.train.epochs * cfg.train.iters_per_epoch,
        "baseline_lr": args.baseline_lr or cfg.algorithm.inner_lr,
        "mse": table,
    }
    atomic_write_text(out / "mse.json", json.dumps(summary, indent=2))
    text = markdown(table, cfg.task.shots, cfg.eval.test_tasks)
    atomic_write_text(out / "mse.md", text)
    plot(out / "adaptation.png", models, sampler, cfg, args.task)
    print(text, end="")
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except MamlppError as err:
        print(f"mamlpp-sinusoid: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
