"""Which runs are seeds of one experiment: equal identity (experiment keys) except `seed`.

Grouping on a few summary fields merged runs that differed elsewhere (another inner LR, MSL off,
another schedule) into one row, whose mean then meant nothing. results.json files written before
the identity existed are grouped by the summary they carry, mapped onto the same key names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamlpp.config import comparable
from mamlpp.experiment.results import Results, metric_of, shown

# Summary fields of older results.json files -> the experiment key each one is.
SUMMARY_KEYS = {
    "dataset": "dataset.name",
    "protocol": "dataset.protocol",
    "ways": "task.ways",
    "shots": "task.shots",
    "targets": "task.targets",
    "algorithm": "algorithm.name",
    "second_order": "algorithm.second_order",
    "first_order_epochs": "algorithm.first_order_epochs",
    "multi_step_loss": "algorithm.multi_step_loss",
    "learn_inner_lr": "algorithm.learn_inner_lr",
    "per_step_bn_stats": "algorithm.per_step_bn_stats",
    "per_step_bn_weights": "algorithm.per_step_bn_weights",
    "use_running_stats_eval": "algorithm.use_running_stats_eval",
    "cosine_meta_lr": "algorithm.cosine_meta_lr",
    "inner_steps": "algorithm.inner_steps",
    "inner_steps_eval": "algorithm.inner_steps_eval",
    "meta_batch_size": "train.meta_batch_size",
}
# Keys the table shows in its own columns anyway.
SHOWN = ("dataset.name", "task.ways", "task.shots")


@dataclass
class Group:
    """The seeds of one experiment: its name, identity without `seed`, and their results."""

    experiment: str
    identity: dict[str, Any]
    complete: bool  # False: an older file's summary, so other keys may differ unseen
    runs: list[tuple[Path, Results]] = field(default_factory=list)

    @property
    def results(self) -> list[Results]:
        return [r for _, r in self.runs]

    @property
    def summary(self) -> dict[str, Any]:
        return self.results[0].config

    @property
    def variant(self) -> str:
        c = self.summary
        return c.get("algorithm_variant", c["algorithm"])

    @property
    def metric(self) -> str:
        """accuracy, or mse for a regression run (mamlpp.experiment.results)."""
        return metric_of(self.results[0])

    def test_accuracies(self) -> list[float]:
        """Each seed's test score of the top-k ensemble: accuracy in %, or MSE."""
        return [shown(r, r.test_accuracy_mean) for r in self.results]


def identity_of(result: Results) -> tuple[dict[str, Any], bool]:
    """(experiment keys without `seed`, whether they are the full identity)."""
    if result.identity is not None:
        identity, complete = comparable(dict(result.identity)), True
    else:
        c = result.config
        identity, complete = {SUMMARY_KEYS[k]: v for k, v in c.items() if k in SUMMARY_KEYS}, False
    identity.pop("seed", None)
    return identity, complete


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def group_runs(runs: list[tuple[Path, Results]]) -> list[Group]:
    """One Group per (experiment name, identity without seed) of (run dir, results) pairs, in
    a stable order."""
    groups: dict[tuple[str, str], Group] = {}
    for run_dir, r in runs:
        identity, complete = identity_of(r)
        experiment = r.config.get("experiment", "?")
        key = (experiment, _canonical(identity))
        if key not in groups:
            groups[key] = Group(experiment, identity, complete)
        groups[key].runs.append((run_dir, r))

    def order(g: Group) -> tuple:
        c, identity = g.summary, _canonical(g.identity)
        return (g.experiment, c["dataset"], c["ways"], c["shots"], g.variant, identity)

    return sorted(groups.values(), key=order)


def differing_keys(groups: list[Group]) -> list[str]:
    """Experiment keys with more than one value among the groups that know them: what tells
    the rows apart beyond the table's own columns."""
    values: dict[str, set[str]] = {}
    for g in groups:
        for k, v in g.identity.items():
            values.setdefault(k, set()).add(_canonical(v))
    return sorted(k for k, vs in values.items() if len(vs) > 1 and k not in SHOWN)


def shown_keys(groups: list[Group]) -> list[str]:
    """The differing keys the printed table shows: those that tell apart rows of one
    experiment. Rows of different experiments are told apart by the experiment's name, and the
    keys in which whole experiments differ (often 30 and more) are left to results.csv."""
    by_experiment: dict[str, list[Group]] = {}
    for g in groups:
        by_experiment.setdefault(g.experiment, []).append(g)
    keys: set[str] = set()
    for members in by_experiment.values():
        keys.update(differing_keys(members))
    return sorted(keys)


def format_value(value: Any) -> str:
    """A key's value for a table cell; '' where a group does not know the key."""
    if value is None:
        return "null"
    return value if isinstance(value, str) else _canonical(value)
