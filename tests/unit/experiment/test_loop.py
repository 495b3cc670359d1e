"""The training loop, its callbacks and the checkpoint store, driven in-process with a tiny
fake learner: checkpoint cadence, stop signals, exact resume and top-k retention, without a
dataset or a subprocess."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mamlpp.config import Config
from mamlpp.experiment.callbacks import CheckpointCadence, StopOnSignal, Validation
from mamlpp.experiment.checkpoint_store import CheckpointStore
from mamlpp.experiment.learner_port import LearnerPort
from mamlpp.experiment.loop import Callback, TrainLoop
from mamlpp.experiment.run_state import TrainingProgress
from mamlpp.experiment.signals import SignalFlag, StopRequested
from mamlpp.layout import RunLayout
from mamlpp.trackers.base import FanOut

ITERS_PER_EPOCH = 4


@dataclass
class Step:
    loss: float
    accuracy: float
    meta_lr: float = 0.1
    second_order: bool = False
    multi_step_loss: bool = False
    finite: bool = True


class FakeLearner(nn.Module):
    """One weight pulled towards a target that depends on the iteration; SGD with momentum,
    so the optimizer's state matters for an exact resume."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        self.sync: Any = None

    def train_step(self, batch: int, epoch: int, iteration: int) -> Step:
        target = torch.tensor([batch % 3, epoch, 1.0], dtype=torch.float64)
        loss = ((self.w - target) ** 2).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return Step(loss=loss.item(), accuracy=1.0 / (1.0 + loss.item()))


class Recorder(Callback):
    """Which iterations were checkpointed (and whether at an epoch's end)."""

    def __init__(self) -> None:
        self.saved: list[tuple[int, bool]] = []

    def on_saved(self, progress: TrainingProgress, epoch_end: bool) -> None:
        self.saved.append((progress.next_iteration, epoch_end))


class StopAt(Callback):
    """Sends itself SIGTERM during the step that finishes iteration `at` (1-based)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, progress: TrainingProgress, step: Any, seconds: float) -> None:
        if progress.next_iteration == self.at:
            signal.raise_signal(signal.SIGTERM)


def make_run(
    tmp_path: Path, val_accs: list[float] | None = None, top_k: int = 2, **run_keys: Any
) -> tuple[CheckpointStore, Validation, LearnerPort, Config]:
    torch.manual_seed(0)
    cfg = Config()
    for key, value in run_keys.items():
        setattr(cfg.run, key, value)
    layout = RunLayout(tmp_path / "run")
    learner = LearnerPort(FakeLearner())
    store = CheckpointStore(layout, learner, cfg, say=lambda _: None)
    accs = iter(val_accs) if val_accs is not None else None

    def validate(epoch: int, progress: TrainingProgress) -> tuple[float, float]:
        acc = next(accs) if accs is not None else learner.model.w.sum().item()
        return 1.0 - acc, acc

    validation = Validation(
        validate,
        store,
        lambda epoch, acc: {"learner": learner.state_dict(), "epoch": epoch, "val_acc": acc},
        FanOut([]),
        top_k,
        layout.metrics,
        say=lambda _: None,
    )
    return store, validation, learner, cfg


def untimed(history: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k not in ("epoch_seconds", "s_per_iter")}
        for row in history
    ]


def loop_of(store: CheckpointStore, learner: LearnerPort, epochs: int, *callbacks: Callback):
    total = epochs * ITERS_PER_EPOCH
    return TrainLoop(learner, lambda it: it, total, ITERS_PER_EPOCH, store.save, callbacks)


def test_checkpoints_at_each_epoch_end_and_on_the_iteration_cadence(tmp_path: Path) -> None:
    store, validation, learner, _ = make_run(tmp_path)
    recorder = Recorder()
    progress = store.restore()
    loop_of(store, learner, 3, validation, CheckpointCadence(3, 0), recorder).run(progress)
    assert recorder.saved == [(3, False), (4, True), (6, False), (8, True), (9, False), (12, True)]
    assert [row["iteration"] for row in progress.history] == [4, 8, 12]
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 4  # header + 3 epochs


def test_a_stop_signal_checkpoints_that_iteration_and_raises(tmp_path: Path) -> None:
    store, validation, learner, _ = make_run(tmp_path)
    signals = SignalFlag().install()
    recorder = Recorder()
    try:
        with pytest.raises(StopRequested) as stop:
            loop = loop_of(
                store, learner, 3, StopAt(6), validation, recorder, StopOnSignal(signals)
            )
            loop.run(store.restore())
    finally:
        signals.restore()
    assert stop.value.iteration == 6 and stop.value.signal_name == "SIGTERM"
    assert recorder.saved == [(4, True), (6, False)]
    latest = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert latest["progress"]["next_iteration"] == 6


def test_a_run_stopped_and_resumed_ends_exactly_as_an_uninterrupted_one(tmp_path: Path) -> None:
    store, validation, learner, _ = make_run(tmp_path / "a")
    whole = store.restore()
    loop_of(store, learner, 3, validation).run(whole)
    expected = learner.state_dict()["w"].clone()

    store, validation, learner, _ = make_run(tmp_path / "b")
    signals = SignalFlag().install()
    try:
        with pytest.raises(StopRequested):
            loop_of(store, learner, 3, StopAt(7), validation, StopOnSignal(signals)).run(
                store.restore()
            )
    finally:
        signals.restore()
    assert not torch.equal(learner.state_dict()["w"], expected)
    # A new process: a fresh learner, restored from latest.pt (weights, momentum, progress).
    store, validation, learner, _ = make_run(tmp_path / "b")
    resumed = store.restore()
    assert resumed.next_iteration == 7
    loop_of(store, learner, 3, validation).run(resumed)
    assert torch.equal(learner.state_dict()["w"], expected)
    assert untimed(resumed.history) == untimed(whole.history)
    assert resumed.top_k == whole.top_k


def test_top_k_members_go_once_neither_latest_nor_previous_lists_them(tmp_path: Path) -> None:
    accs = [0.5, 0.7, 0.6, 0.9, 0.8]
    store, validation, learner, _ = make_run(tmp_path, accs, top_k=2)
    members: list[list[int]] = []

    class Members(Callback):
        def on_saved(self, progress: TrainingProgress, epoch_end: bool) -> None:
            members.append(RunLayout(tmp_path / "run").members())

    progress = store.restore()
    loop_of(store, learner, 5, validation, Members()).run(progress)
    assert [e["epoch"] for e in progress.top_k] == [3, 4]
    # Each step: the new top-k plus what the previous checkpoint listed.
    assert members == [[0], [0, 1], [0, 1, 2], [1, 2, 3], [1, 3, 4]]


def test_keep_every_epochs_snapshots_are_never_evicted(tmp_path: Path) -> None:
    accs = [0.9, 0.1, 0.2, 0.3, 0.4, 0.5]
    store, validation, learner, _ = make_run(tmp_path, accs, top_k=1, keep_every_epochs=2)
    progress = store.restore()
    loop_of(store, learner, 6, validation).run(progress)
    assert RunLayout(tmp_path / "run").members() == [0, 1, 3, 5]  # best 0; snapshots 1, 3, 5


def test_a_corrupt_latest_falls_back_to_previous(tmp_path: Path) -> None:
    store, validation, learner, _ = make_run(tmp_path)
    loop_of(store, learner, 2, validation).run(store.restore())
    layout = RunLayout(tmp_path / "run")
    layout.latest.write_bytes(layout.latest.read_bytes()[:100])
    said: list[str] = []
    store, _, _, _ = make_run(tmp_path)
    store.say = said.append
    assert store.restore().next_iteration == 4  # previous.pt: the first epoch's end
    assert "trying previous.pt" in said[0] and said[1].startswith("resumed from")
    assert any(p.name.startswith("latest.pt.corrupt-") for p in layout.checkpoints.iterdir())
