"""Member checkpoints (`epoch_NNNN.pt`): trained models that describe themselves.

Each member carries the resolved config, the preprocessing of the model's inputs and the mamlpp
version besides the learner's weights, so one `.pt` copied to another machine is evaluated with
no other file. Everything in it is tensors and plain Python (`torch.load(weights_only=True)`).
Members written before this format hold only `learner`; their config is read from the run
directory's `config.yaml` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import Tensor, nn

from mamlpp import __version__
from mamlpp.config import Config
from mamlpp.data.preprocessing import Preprocessing
from mamlpp.errors import MamlppError
from mamlpp.experiment.checkpoints import load_checkpoint

MEMBER_FORMAT = "mamlpp-member/1"


def member_state(
    learner_state: dict[str, Any], cfg: Config, prep: Preprocessing, epoch: int, val_acc: float
) -> dict[str, Any]:
    return {
        "format": MEMBER_FORMAT,
        "learner": learner_state,
        "config": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
        "preprocessing": prep.to_dict(),
        "epoch": int(epoch),
        "val_acc": float(val_acc),
        "mamlpp_version": __version__,
    }


@dataclass
class Member:
    """A trained model read from a checkpoint; `config`/`preprocessing` are None when the file
    predates self-describing members (or is a training-state file without preprocessing)."""

    path: Path
    learner: dict[str, Any]
    config: dict[str, Any] | None
    preprocessing: Preprocessing | None
    epoch: int | None
    val_acc: float | None


def read_member(path: Path) -> Member:
    """Read a member (or latest.pt/previous.pt); a one-line MamlppError for anything else,
    also for a file whose content does not match its checksum (never garbage numbers)."""
    path = Path(path)
    if not path.is_file():
        raise MamlppError(f"checkpoint {path} does not exist (expected a .pt file of mamlpp-train)")
    try:
        state = load_checkpoint(path)  # CheckpointError: unreadable, or not what was saved
    except OSError as exc:
        raise MamlppError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("learner"), dict):
        raise MamlppError(
            f"checkpoint {path} is not a mamlpp model: it has no 'learner' state "
            "(expected checkpoints/epoch_NNNN.pt or latest.pt of a mamlpp-train run)"
        )
    prep = state.get("preprocessing")
    epoch, val_acc = state.get("epoch"), state.get("val_acc")
    return Member(
        path,
        state["learner"],
        state.get("config"),
        None if prep is None else Preprocessing.from_dict(prep),
        None if epoch is None else int(epoch),
        None if val_acc is None else float(val_acc),
    )


def load_learner_state(learner: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """`learner.load_state_dict(state)`, or one line naming what does not fit (instead of
    PyTorch's many-line report): missing and unexpected tensors and shape mismatches."""
    own = learner.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [
        f"{k} is {tuple(state[k].shape)}, the model needs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise MamlppError(
            f"checkpoint {path} does not fit the model its config describes: "
            f"{'; '.join(problems[:3])}{more}"
        )
    learner.load_state_dict(state)
