"""Published test accuracies (%) from ../shared/docs/reference.md, keyed by what they measure,
and the protocol they were measured under: a run is compared with them only on that protocol.

A 20-iteration smoke run or a ResNet-12 beside "99.47" reads as a comparison that it is not, so
the number is attached only where every protocol key of the run equals the paper's.
"""

from __future__ import annotations

from typing import Any

from mamlpp.experiment.results import Results

# (dataset, ways, shots, algorithm variant) -> the published number, as the paper prints it.
PAPER = {
    ("omniglot", 5, 1, "maml"): "98.7 +- 0.4",
    ("omniglot", 5, 5, "maml"): "99.9 +- 0.1",
    ("omniglot", 20, 1, "maml"): "95.8 +- 0.3",
    ("omniglot", 20, 5, "maml"): "98.9 +- 0.2",
    ("omniglot", 5, 1, "mamlpp"): "99.47",
    ("omniglot", 5, 5, "mamlpp"): "99.93",
    ("omniglot", 20, 1, "mamlpp"): "97.65",
    ("omniglot", 20, 5, "mamlpp"): "99.33",
    ("miniimagenet", 5, 1, "maml"): "48.70 +- 1.84",
    ("miniimagenet", 5, 5, "maml"): "63.11 +- 0.92",
    ("miniimagenet", 5, 1, "mamlpp"): "52.15 +- 0.26",
    ("miniimagenet", 5, 5, "mamlpp"): "68.32 +- 0.44",
}

# The MAML++ paper's protocol (reference.md; the omniglot_*/miniimagenet_* presets): its
# schedule, its top-5 ensemble on 600 test tasks and its Conv4, per dataset its data setting.
PROTOCOL = {
    "train.epochs": 100,
    "train.iters_per_epoch": 500,
    "eval.test_tasks": 600,
    "eval.top_k": 5,
    "model.name": "conv4",
    "model.stages": 4,
}
DATASET_PROTOCOL: dict[str, dict[str, object]] = {
    "omniglot": {
        "dataset.protocol": "mamlpp",
        "dataset.split_sizes": None,
        "dataset.image_size": 28,
        "task.targets": 1,
        "model.filters": 64,
    },
    "miniimagenet": {"dataset.image_size": 84, "task.targets": 15, "model.filters": 48},
}


def paper_number(dataset: str, ways: int, shots: int, variant: str) -> str:
    """The published number for this setting, or '' where reference.md has none."""
    return PAPER.get((dataset, ways, shots, variant), "")


def _known(result: Results) -> dict[str, Any]:
    """The protocol keys a results.json states: its identity, or (older files) its summary
    and the counts it recorded."""
    if result.identity is not None:
        return result.identity
    c = result.config
    known: dict[str, Any] = {
        "dataset.protocol": c.get("protocol"),
        "task.targets": c.get("targets"),
    }
    epochs, iterations = result.epochs, result.iterations
    if isinstance(epochs, int) and isinstance(iterations, int) and epochs > 0:
        known.update({"train.epochs": epochs, "train.iters_per_epoch": iterations // epochs})
    known["eval.test_tasks"] = result.num_test_tasks
    return {k: v for k, v in known.items() if v is not None}


def off_protocol(result: Results) -> list[str]:
    """The protocol keys on which a run differs from the paper's ([]: the paper's protocol).
    A key an older results.json does not record is not held against it."""
    c = result.config
    wanted = {**PROTOCOL, **DATASET_PROTOCOL.get(c["dataset"], {})}
    known = _known(result)
    return sorted(k for k, v in wanted.items() if k in known and known[k] != v)


def paper_number_of(result: Results, variant: str) -> str:
    """The published number beside this run, or '' where there is none or the run's protocol
    is not the paper's."""
    c = result.config
    number = paper_number(c["dataset"], c["ways"], c["shots"], variant)
    return number if number and not off_protocol(result) else ""
