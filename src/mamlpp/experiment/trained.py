"""Find the trained models behind a run directory or a checkpoint file, and their config.

`mamlpp-eval` and `mamlpp.load` both start here: a run directory gives its top-k members in the
order training ensembled them (so a re-evaluation reproduces results.json to the last digit);
one `.pt` gives itself. Nothing here writes anything, and nothing a file names is imported
unless its CodePolicy allows it (mamlpp.experiment.trust).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mamlpp.errors import MamlppError, first_line
from mamlpp.experiment.checkpoints import load_checkpoint
from mamlpp.experiment.members import Member, read_member
from mamlpp.experiment.trust import CodePolicy, check_literal
from mamlpp.layout import CHECKPOINTS, LATEST, RunLayout, member_epoch

MEMBER_CHOICES = "top-k (the run's ensemble), best, or epoch=N"


@dataclass
class TrainedRun:
    """Members to evaluate (in ensemble order), each with its info for results.json, the
    training config (plain dict, read literally), where evaluation outputs go
    (`<out_root>/<name>/`) and what of the code the config names may be imported."""

    members: list[Member]
    infos: list[dict[str, Any]]
    config: dict[str, Any]
    out_root: Path
    run_dir: Path | None
    policy: CodePolicy


def open_trained(
    target: str | Path,
    members: str = "top-k",
    named: Mapping[str, str] | None = None,
    trust_code: bool = False,
) -> TrainedRun:
    """The members `members` selects from a run directory or a checkpoint file. `named` holds
    the `_target_` values the user gave (only those are imported, unless `trust_code`)."""
    target = Path(target)
    if target.is_dir():
        run_dir: Path | None = target
        paths = _run_members(target, members)
    elif target.is_file():
        if members not in ("top-k", "topk", "best"):
            raise MamlppError(f"members={members} needs a run directory, not the file {target}")
        run = RunLayout.of_checkpoint(target)
        run_dir = run.root if run is not None else None
        paths = [target]
    else:
        raise MamlppError(f"{target} does not exist: give a run directory or a checkpoint .pt")
    loaded = [read_member(p) for p in paths]
    infos = [_info(m) for m in loaded]
    if run_dir is not None:
        _fill_from_history(run_dir, infos)
    config, source = loaded[0].config, loaded[0].path
    if config is None:
        config, source = _config_beside(target, run_dir)
    if not isinstance(config, dict):
        raise MamlppError(f"the config in {source} is not a mapping of keys")
    check_literal(config, str(source))
    out_root = RunLayout(run_dir if run_dir is not None else target.parent).eval_root
    policy = CodePolicy(str(source), dict(named or {}), trust_code)
    return TrainedRun(loaded, infos, config, out_root, run_dir, policy)


def _run_members(run_dir: Path, spec: str) -> list[Path]:
    run = RunLayout(run_dir)
    if not run.checkpoints.is_dir():
        raise MamlppError(
            f"{run_dir} is not a mamlpp run directory (it has no {CHECKPOINTS}/ folder)"
        )
    epoch = re.fullmatch(r"(?:epoch[=:_]?)?(\d+)", spec)
    if epoch is not None:
        path = run.member(int(epoch.group(1)))
        if not path.is_file():
            have = run.members()
            raise MamlppError(
                f"members={spec}: {path} does not exist; this run keeps epochs {have or 'none'}"
            )
        return [path]
    if spec not in ("top-k", "topk", "best"):
        raise MamlppError(f"members={spec!r} is invalid: allowed {MEMBER_CHOICES}")
    epochs = _ensemble_epochs(run_dir)
    if spec == "best":
        epochs = epochs[:1]  # top-k tables are ranked by validation accuracy, best first
    return [run.member(e) for e in epochs]


def _ensemble_epochs(run_dir: Path) -> list[int]:
    """The top-k epochs in ensemble order: results.json's members, else latest.pt's table."""
    results = RunLayout(run_dir).results
    if results.is_file():
        try:
            return [int(m["epoch"]) for m in json.loads(results.read_text())["per_model"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise _bad_results(results, exc) from exc
    latest = RunLayout(run_dir).latest
    if latest.is_file():
        try:
            top_k = load_checkpoint(latest)["progress"]["top_k"]
        except MamlppError:  # unreadable or corrupt, said in one line
            raise
        except Exception as exc:  # foreign: no table to read
            raise MamlppError(f"{latest} is unreadable ({type(exc).__name__})") from exc
        if top_k:
            return [int(e["epoch"]) for e in top_k]
    raise MamlppError(
        f"{run_dir} holds no trained model yet: no results.json and no validated epoch in "
        f"{CHECKPOINTS}/{LATEST}"
    )


def _fill_from_history(run_dir: Path, infos: list[dict[str, Any]]) -> None:
    """Validation accuracies of members saved before they carried their own."""
    if all(i["val_accuracy"] is not None for i in infos):
        return
    results = RunLayout(run_dir).results
    if results.is_file():
        try:
            members = json.loads(results.read_text())["per_model"]
            known = {m["epoch"]: m["val_accuracy"] for m in members}
        except (ValueError, KeyError, TypeError) as exc:
            raise _bad_results(results, exc) from exc
        for info in infos:
            if info["val_accuracy"] is None:
                info["val_accuracy"] = known.get(info["epoch"])


def _bad_results(path: Path, exc: Exception) -> MamlppError:
    return MamlppError(
        f"{path} is truncated or not a mamlpp results file ({first_line(exc)[:80]}); its run "
        "writes it again with mamlpp-train <the run's overrides> run.retest=true"
    )


def _config_beside(target: Path, run_dir: Path | None) -> tuple[Any, Path]:
    path = RunLayout(run_dir).config if run_dir is not None else None
    if path is None or not path.is_file():
        raise MamlppError(
            f"checkpoint {target} carries no config (written before checkpoints described "
            "themselves) and no run directory with config.yaml holds it: evaluate the run directory"
        )
    try:  # OmegaConf's YAML loader builds plain values only (no Python tags)
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False), path
    except Exception as exc:
        raise MamlppError(f"{path} is not a readable config ({first_line(exc)})") from exc


def _info(member: Member) -> dict[str, Any]:
    """A member's entry of results.json; a training-state file (latest.pt, previous.pt) has
    no epoch of its own, so it says after which iteration it was saved."""
    info: dict[str, Any] = {"epoch": _epoch_of(member), "val_accuracy": member.val_acc}
    info["checkpoint"] = str(member.path)
    if info["epoch"] is None:
        progress = load_checkpoint(member.path).get("progress")
        if isinstance(progress, dict) and isinstance(progress.get("next_iteration"), int):
            info["iteration"] = progress["next_iteration"]
    return info


def _epoch_of(member: Member) -> int | None:
    """The member's epoch: saved in it, or (older members) read from its file name."""
    return member.epoch if member.epoch is not None else member_epoch(member.path.name)
