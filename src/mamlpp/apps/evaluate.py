"""`mamlpp-eval RUN_DIR_OR_CHECKPOINT [key=value ...]`: use a trained model after training.

    mamlpp-eval runs/smoke/base                              # the run's own test, to the digit
    mamlpp-eval runs/smoke/base eval.test_tasks=2000 eval.task_seed=7 members=best
    mamlpp-eval model.pt dataset=image_folder dataset.source=DIR      # another dataset, same ways
    mamlpp-eval runs/smoke/base --support DIR --query DIR   # adapt on your images, predict
    mamlpp-eval runs/own_model/base model._target_=my_nets.Net    # the code a run names: name it

Outputs go to `<run>/eval/<name>/` (beside a lone checkpoint: `<its folder>/eval/<name>/`);
the run's own files are only read, and no code they name is imported unless the command line
names it too (or --trust-code). Exit codes: 0 done, 2 a user error in one line.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mamlpp import __version__
from mamlpp.algorithms.factory import REGRESSION_DATASETS
from mamlpp.config import (
    Config,
    SpeedConfig,
    check_unread_overrides,
    conf_dir,
    schema_node,
    to_config,
)
from mamlpp.config.compose import Allow
from mamlpp.data.image_folder import is_image
from mamlpp.data.preprocessing import with_channels
from mamlpp.data.registry import load_dataset
from mamlpp.errors import ConfigError, DataError, MamlppError, first_line
from mamlpp.experiment.checkpoints import atomic_write_text
from mamlpp.experiment.console import log, setup_console
from mamlpp.experiment.data_paths import current_paths, relocated_data_dir
from mamlpp.experiment.device import configure_device, resolve_device
from mamlpp.experiment.evaluation import evaluate_ensemble
from mamlpp.experiment.results import Results, config_summary
from mamlpp.experiment.results_table import format_results
from mamlpp.experiment.sampling import make_sampler
from mamlpp.experiment.trained import TrainedRun, open_trained
from mamlpp.experiment.trust import CODE_KEYS, MODEL_CODE_KEYS, code_value, named_targets
from mamlpp.inference import (
    TrainedModel,
    build_members,
    check_support_classes,
    config_of,
    iter_members,
    preprocessing_of,
)
from mamlpp.layout import RESULTS

# Keys an evaluation may change; everything else defines the trained model.
EVAL_KEYS = (
    "eval.test_tasks",
    "eval.val_tasks",
    "eval.task_seed",
    "eval.batch_size",
    "algorithm.inner_steps_eval",
    "algorithm.use_running_stats_eval",
    "task.ways",
    "task.shots",
    "task.targets",
    "train.precision",
    "device",
)
OWN_KEYS = ("members", "split")  # mamlpp-eval's own: which models, which split's tasks
SPLITS = ("test", "val", "train")
# An output folder's name: one plain path component (no separators, not . or ..).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=,+-]{0,149}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mamlpp-eval",
        description="Evaluate a trained mamlpp run or checkpoint, or predict your own images.",
        epilog=(
            f"overrides: {', '.join(EVAL_KEYS)}, dataset=<name> and dataset.<key> (another "
            "dataset with the same ways), members=top-k|best|epoch=N, split=test|val|train; "
            f"{', '.join(CODE_KEYS)} name the code a saved config needs"
        ),
    )
    parser.add_argument("target", help="a run directory or a checkpoint .pt")
    parser.add_argument("overrides", nargs="*", help="key=value")
    parser.add_argument("--support", type=Path, help="labelled support images: DIR/<class>/<image>")
    parser.add_argument("--query", type=Path, help="images to classify: DIR/<image> (or <class>/)")
    parser.add_argument("--name", help="the output folder under eval/ (default: from overrides)")
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help=f"import the code the saved config names ({', '.join(CODE_KEYS)}) "
        "without naming it here: only for files you trust",
    )
    args = parser.parse_intermixed_args(argv)  # overrides before or after the options
    if (args.support is None) != (args.query is None):
        parser.error("--support and --query go together")
    return args


def eval_config(
    saved: dict[str, Any], overrides: list[str], allow: Allow | None = None
) -> tuple[Config, dict[str, str]]:
    """The training config with evaluation overrides applied and checked; and the own keys.
    `allow` is asked before code the saved config names is imported (CodePolicy.allow)."""
    try:
        cfg = OmegaConf.merge(schema_node(), saved)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"the saved config: {first_line(exc)}") from exc
    now = current_paths()  # where data lives for this process (MAMLPP_ROOT, MAMLPP_DATA_DIR)
    relocated = relocated_data_dir(saved, now)
    if relocated is not None:
        cfg.dataset.data_dir = relocated
    cfg = OmegaConf.merge(cfg, {"paths": now})
    cfg.device = "auto"  # where the model trained is no concern of where it is evaluated
    cfg.speed = OmegaConf.structured(SpeedConfig)  # speed switches are for training steps
    own = {"members": "top-k", "split": "test"}
    dotlist = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not key=value")
        if key in own:
            own[key] = value
        elif key == "dataset":
            cfg.dataset = _dataset_group(value)
        elif key in EVAL_KEYS or key.startswith("dataset."):
            dotlist.append(item)
        elif key in MODEL_CODE_KEYS:
            trained_target = code_value(saved, key)
            if value != trained_target:
                raise ConfigError(
                    f"{key}={value} but the model was trained with "
                    f"{key}={trained_target} (it names the model's code)"
                )
        else:
            known = [*EVAL_KEYS, *OWN_KEYS, "dataset", *MODEL_CODE_KEYS]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"key '{key}' cannot be set at evaluation{hint}: it is not one of "
                f"{', '.join(known)} or dataset.<key>; the rest defines the trained model"
            )
    trained_size, trained_ways = saved["dataset"]["image_size"], saved["task"]["ways"]
    cfg.dataset.image_size = trained_size  # images are resized as the model saw them
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"override: {first_line(exc)}") from exc
    if cfg.dataset.image_size != trained_size:
        raise ConfigError(
            f"dataset.image_size={cfg.dataset.image_size} but the model was trained on "
            f"{trained_size}-pixel images (images are resized to that size)"
        )
    if cfg.task.ways != trained_ways:
        raise ConfigError(
            f"task.ways={cfg.task.ways} but the model's head was trained for {trained_ways} ways"
        )
    if own["split"] not in SPLITS:
        raise ConfigError(f"split={own['split']!r} is invalid: allowed one of {SPLITS}")
    assert isinstance(cfg, DictConfig)  # merged onto a mapping
    checked = to_config(cfg, allow)
    check_unread_overrides(checked, dotlist)
    return checked, own


def _dataset_group(name: str) -> Any:
    path = Path(conf_dir()) / "dataset" / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"dataset={name} is not a dataset config: allowed one of {names}")
    return OmegaConf.load(path)


def output_name(args: argparse.Namespace, default: str) -> str:
    """The folder under eval/: --name (a plain name, so it stays inside eval/), or one made
    from the overrides with every other character replaced."""
    if args.name is not None:
        if not NAME.fullmatch(args.name):
            raise ConfigError(
                f"--name {args.name!r} is not a plain folder name: letters, digits and ._=,+- "
                "only (no path separators, not starting with '.' or '-', at most 150 characters)"
            )
        return args.name
    if not args.overrides:
        return default
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(sorted(args.overrides)))[:150]


# --------------------------------------------------------------------------- tasks of a dataset


def evaluate_tasks(
    trained: TrainedRun, cfg: Config, own: dict[str, str], device: torch.device
) -> Results:
    """The members' and their ensemble's accuracy on fixed tasks of a dataset split."""
    saved_cfg = config_of(trained)
    prep = preprocessing_of(trained, saved_cfg)
    # The model's own normalisation is applied below, so the dataset computes no statistics.
    trained.policy.dataset_config(cfg)
    data = load_dataset(replace(cfg.dataset, normalization="none"))
    converted = None
    if data.images.channels != prep.channels:
        converted = f"{data.images.channels}->{prep.channels}"
        log(f"converting the dataset's {converted} channel images to the model's")
        data.images = with_channels(data.images, prep.channels)
    data.mean, data.std = prep.mean, prep.std
    t = cfg.task
    data.check_task_fits(t.ways, t.shots, t.targets)
    sampler = make_sampler(cfg, data, device)
    split = own["split"]
    tasks = cfg.eval.val_tasks if split == "val" else cfg.eval.test_tasks  # as training validates
    log(f"evaluating {len(trained.members)} model(s) on {tasks} {split} tasks")
    learners = iter_members(trained, cfg, prep.channels, device)
    started = time.perf_counter()
    tested = evaluate_ensemble(
        zip(trained.infos, learners),
        sampler,
        split,
        cfg.eval.task_seed,
        tasks,
        cfg.eval.batch_size,
    )
    vals = [i["val_accuracy"] for i in trained.infos if i["val_accuracy"] is not None]
    return Results(
        test_accuracy_mean=tested["test_accuracy_mean"],
        test_accuracy_ci95=tested["test_accuracy_ci95"],
        num_test_tasks=tasks,
        ensemble_size=tested["ensemble_size"],
        per_model=tested["per_model"],
        best_val_accuracy=max(vals) if vals else None,
        split=split,
        members=own["members"],
        channels_converted=converted,
        preprocessing=prep.to_dict(),
        test_seconds=round(time.perf_counter() - started, 2),
        device=str(device),
        config=config_summary(cfg),
        mamlpp_version=__version__,
    )


# --------------------------------------------------------------------------- your own images


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image(p.name))


def read_support(folder: Path, ways: int) -> tuple[list[str], list[Path], list[int]]:
    """Class names (sorted: label i is the i-th), image paths and their labels."""
    if not folder.is_dir():
        raise DataError(f"--support {folder} is not a folder (expected {folder}/<class>/<image>)")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    check_support_classes([c.name for c in classes], ways, f"--support {folder}", "class folder(s)")
    paths, labels = [], []
    for label, c in enumerate(classes):
        images = _images_in(c)
        if not images:
            raise DataError(f"--support class folder {c} holds no images")
        paths += images
        labels += [label] * len(images)
    return [c.name for c in classes], paths, labels


def read_query(folder: Path, classes: list[str]) -> tuple[list[Path], list[str | None]]:
    """Query images: DIR/<image> (unlabelled) and DIR/<class>/<image> (labelled, scored)."""
    if not folder.is_dir():
        raise DataError(f"--query {folder} is not a folder of images")
    paths: list[Path] = _images_in(folder)
    truth: list[str | None] = [None] * len(paths)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in classes:
            raise DataError(
                f"--query folder {sub} names a class the support set does not have ({classes})"
            )
        images = _images_in(sub)
        paths += images
        truth += [sub.name] * len(images)
    if not paths:
        raise DataError(f"--query {folder} holds no images")
    return paths, truth


def predict_folders(
    trained: TrainedRun, cfg: Config, device: torch.device, support: Path, query: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    prep = preprocessing_of(trained, config_of(trained))
    classes, s_paths, s_labels = read_support(support, cfg.task.ways)
    q_paths, truth = read_query(query, classes)
    model = TrainedModel(cfg, prep, build_members(trained, cfg, prep.channels, device), device)
    adapted = model.adapt(model.load_images(s_paths), s_labels)
    probs = adapted.predict_proba(model.load_images(q_paths)).cpu()
    rows = []
    for path, p, true in zip(q_paths, probs, truth):
        k = int(p.argmax())
        rows.append(
            {
                "image": str(path.relative_to(query)),
                "predicted": classes[k],
                "probability": round(float(p[k]), 4),
                "true": true,
            }
        )
    scored = [r for r in rows if r["true"] is not None]
    correct = sum(r["predicted"] == r["true"] for r in scored)
    summary = {
        "classes": classes,
        "support_images": len(s_paths),
        "query_images": len(rows),
        "labelled_queries": len(scored),
        "correct": correct,
        "accuracy": correct / len(scored) if scored else None,
        "inner_steps": cfg.algorithm.inner_steps_eval,
        "ensemble_size": len(trained.members),
        "preprocessing": prep.to_dict(),
    }
    return summary, rows


def _print_predictions(summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    width = max(len(r["image"]) for r in rows)
    for r in rows:
        mark = "" if r["true"] is None else ("  ok" if r["predicted"] == r["true"] else "  WRONG")
        print(f"{r['image']:<{width}}  {r['predicted']}  {r['probability']:.3f}{mark}")
    if summary["accuracy"] is not None:
        print(
            f"{summary['correct']}/{summary['labelled_queries']} labelled queries right "
            f"({100 * summary['accuracy']:.1f}%)"
        )


# --------------------------------------------------------------------------- entry point


def run(args: argparse.Namespace) -> Path:
    """Evaluate as `args` say; return the output folder."""
    output_name(args, "")  # a bad --name fails before anything is read or computed
    members = [o.partition("=")[2] for o in args.overrides if o.startswith("members=")]
    named = named_targets(args.overrides)
    trained = open_trained(args.target, members[-1] if members else "top-k", named, args.trust_code)
    dataset = (trained.config.get("dataset") or {}).get("name")
    if dataset in REGRESSION_DATASETS:
        raise MamlppError(
            f"{args.target} is a regression run (dataset={dataset}): evaluate it with "
            "mamlpp-sinusoid RUN_DIR (test MSE after 0, 1 and 10 steps, and the figure)"
        )
    cfg, own = eval_config(trained.config, args.overrides, trained.policy.allow)
    trained.policy.model_config(cfg)  # code the file names is refused before any work
    device = resolve_device(cfg.device)
    configure_device(device, cfg.speed)
    torch.manual_seed(cfg.seed)  # the members' fresh init is overwritten; keep it reproducible
    base: dict[str, Any] = {"source": str(args.target), "overrides": list(args.overrides)}
    base["mamlpp_version"] = __version__
    if args.support is not None:
        out = trained.out_root / output_name(args, "predict")
        summary, rows = predict_folders(trained, cfg, device, args.support, args.query)
        _print_predictions(summary, rows)
        summary.update(base, support=str(args.support), query=str(args.query))
        _write_csv(out / "predictions.csv", rows)
        atomic_write_text(out / "predictions.json", json.dumps(summary, indent=2))
    else:
        out = trained.out_root / output_name(args, "default")
        results = evaluate_tasks(trained, cfg, own, device)
        results.source, results.overrides = base["source"], base["overrides"]
        atomic_write_text(out / RESULTS, json.dumps(results.to_dict(), indent=2))
        print(format_results(results))
    log(f"wrote {out}")
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_console()  # the data loaders' lines (which cache was read) reach the console too
    try:
        run(args)
    except MamlppError as err:
        print(f"mamlpp-eval: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
