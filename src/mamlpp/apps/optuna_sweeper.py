"""hydra-optuna-sweeper, made resumable, keyed by the experiment, locked, and quiet.

- **Resumable.** The stock sweeper (1.3.0) asks `n_trials` new trials on every invocation, and a
  trial that was running when the process died stays RUNNING in the storage forever. Here
  `n_trials` is the study's total: an invocation runs only the trials still missing. A trial
  left RUNNING is marked FAIL (user attribute `interrupted`) and its parameters are queued
  again, so the same overrides name the same run directory (mamlpp.naming) and the run resumes
  from its checkpoint instead of the sampler drawing something else.
- **One study per experiment.** The study is named `<study_name>-<hash>`, the hash of what the
  trials optimise: the experiment keys of the composed config without the searched ones (so
  `task=5w5s` is another study, not a continuation), the objective and its direction. The
  study holds them as the user attribute `mamlpp.identity`.
- **One search per study at a time.** A second search of the same study is refused in one
  line (a lock file beside the storage): it would take the first one's running trials for
  killed ones.
- **Quiet.** Optuna's, alembic's and the launcher's set-up lines and ExperimentalWarnings are
  not shown; each trial is one line with its parameters, then one with its objective.

The Hydra plugin itself is hydra_plugins.mamlpp_optuna_sweeper (Hydra loads sweepers only from
that package); it calls `prepare` before the stock sweep.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig, open_dict
from optuna.trial import Trial, TrialState

from mamlpp.config import Config, comparable, experiment_keys, to_config
from mamlpp.errors import MamlppError
from mamlpp.experiment.lock import HolderLock

INTERRUPTED = "interrupted"  # user attribute of a trial failed by a kill, re-queued
IDENTITY = "mamlpp.identity"  # user attribute of a study: what its trials optimise
# Loggers whose INFO lines are set-up noise in a search (the launchers list every override).
NOISY_LOGGERS = (
    "optuna",
    "alembic",
    "hydra_plugins.hydra_optuna_sweeper._impl",
    "hydra._internal.core_plugins.basic_launcher",
    "hydra_plugins.hydra_joblib_launcher._core",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
)


class StudyLockedError(MamlppError):
    """Another live search is running this study."""


def say(line: str) -> None:
    print(f"[mamlpp] {line}", file=sys.stderr, flush=True)


def quiet() -> None:
    """Only warnings from optuna, alembic, the stock sweeper and the launchers."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial uses up one of `n_trials`: it ended, and not by being killed."""
    if trial.state == TrialState.FAIL:
        return not trial.user_attrs.get(INTERRUPTED, False)
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Fail the trials left RUNNING by a dead sweeper and enqueue their parameters again."""
    numbers = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        Trial(study, frozen._trial_id).set_user_attr(INTERRUPTED, True)
        study.tell(frozen.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(frozen.params))
        numbers.append(frozen.number)
    return numbers


def searched_keys(sweeper: OptunaSweeperImpl, arguments: Sequence[str]) -> set[str]:
    """The keys the search varies: the preset's `params` and the command line's sweep
    expressions (a plain value on the command line fixes a key instead)."""
    sweeper._process_searchspace_config()
    space, _ = create_params_from_overrides([*sweeper._parse_sweeper_params_config(), *arguments])
    return set(space) | set(sweeper.search_space_distributions or {})


def study_identity(sweeper: OptunaSweeperImpl, arguments: Sequence[str]) -> dict[str, Any]:
    """What the study's trials optimise: the experiment keys every trial shares (the composed
    config with the fixed overrides, without the searched keys), the objective, its direction."""
    assert sweeper.config is not None  # set by the sweeper's setup, before any sweep
    config: DictConfig = copy.deepcopy(sweeper.config)
    with open_dict(config):
        del config["hydra"]
    cfg = to_config(config)
    searched = searched_keys(sweeper, arguments)
    keys = {k: v for k, v in experiment_keys(cfg).items() if k not in searched}
    keys["optimized_metric"] = cfg.optimized_metric
    keys["directions"] = sweeper._get_directions()
    return keys


def digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _plain(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The identity as the study stores it (JSON values)."""
    return json.loads(json.dumps(dict(identity), default=str))


def same_experiment(stored: Mapping[str, Any], identity: Mapping[str, Any]) -> bool:
    """Whether a study's stored identity is this experiment, as written by this or an earlier
    mamlpp: keys of components other than the chosen ones are left out (earlier identities
    held every backbone's, dataset's and algorithm's keys), and a key one side lacks takes its
    default (a key added since)."""
    defaults = _plain(experiment_keys(Config()))
    old, new = comparable(_plain(stored)), comparable(_plain(identity))
    return all(old.get(k, defaults.get(k)) == new.get(k, defaults.get(k)) for k in {*old, *new})


def study_name(storage: str, base: str, identity: dict[str, Any]) -> str:
    """`<base>-<hash of the identity>`; or, when no study has that name, the study of the same
    experiment that an earlier mamlpp named with another hash (its identity held other keys),
    so that the same search command continues it."""
    name = f"{base}-{digest(identity)[:8]}"
    summaries = optuna.get_all_study_summaries(storage=storage)
    if any(s.study_name == name for s in summaries):
        return name
    for summary in summaries:
        stored = summary.user_attrs.get(IDENTITY)
        if (
            summary.study_name.startswith(f"{base}-")
            and isinstance(stored, dict)
            and same_experiment(stored, identity)
        ):
            earlier = summary.study_name
            say(f"optuna study {earlier!r} is this experiment (an earlier mamlpp named it)")
            return earlier
    return name


class StudyLock(HolderLock):
    """`.optuna-<study>.lock` beside a SQLite storage (else in the sweep folder): one search of a
    study at a time."""

    open_flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC

    def __init__(self, storage: str, study_name: str, sweep_dir: Path) -> None:
        folder = sweep_dir
        if storage.startswith("sqlite:///"):
            folder = Path(storage[len("sqlite:///") :].split("?", 1)[0]).parent
        super().__init__(folder / f".optuna-{study_name}.lock")
        self.study_name = study_name

    def busy_error(self, holder: str) -> MamlppError:
        return StudyLockedError(
            f"optuna study '{self.study_name}' is being searched by {holder or 'another process'}; "
            "a second search at the same time would corrupt its trials: wait for it or stop it"
        )


def prepare(sweeper: OptunaSweeperImpl, arguments: Sequence[str] = ()) -> StudyLock | None:
    """Name the study by its identity, lock it, re-queue its interrupted trials and cut
    `n_trials` to what is missing. Without a storage or a study name there is nothing to
    continue. The returned lock is the caller's to release when the search is over."""
    quiet()
    if sweeper.storage is None or sweeper.study_name is None:
        return None
    identity = study_identity(sweeper, arguments)
    sweeper.study_name = study_name(str(sweeper.storage), sweeper.study_name, identity)
    Path(str(sweeper.sweep_dir)).mkdir(parents=True, exist_ok=True)  # the SQLite file's
    lock = StudyLock(str(sweeper.storage), sweeper.study_name, Path(str(sweeper.sweep_dir)))
    lock.acquire()
    study = optuna.create_study(
        study_name=sweeper.study_name,
        storage=sweeper.storage,
        directions=sweeper._get_directions(),
        load_if_exists=True,
    )
    stored = study.user_attrs.get(IDENTITY)
    if stored is None:
        study.set_user_attr(IDENTITY, json.loads(json.dumps(identity, default=str)))
    requeued = requeue_interrupted(study)
    trials = study.get_trials(deepcopy=False)
    done = sum(counted(t) for t in trials)
    if trials and isinstance(sweeper.sampler, optuna.samplers.BaseSampler):
        sweeper.sampler.reseed_rng()  # a seeded sampler would replay the first run's draws
    sweeper.n_trials = max(0, sweeper.n_trials - done)
    again = f"; interrupted trial(s) {requeued} run again" if requeued else ""
    say(
        f"optuna study {sweeper.study_name!r} in {sweeper.storage}: {done} trial(s) done, "
        f"{sweeper.n_trials} to run{again}"
    )
    # Hydra's launcher, wrapped: the sweeper only calls launch()
    sweeper.launcher = TrialReporter(sweeper.launcher, study, identity["optimized_metric"])  # type: ignore[assignment]
    return lock


def _value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class TrialReporter:
    """The sweeper's launcher, saying each trial's number and parameters before it runs and
    its objective after (what the silenced set-up lines and launcher listings stood for)."""

    def __init__(self, launcher: Any, study: optuna.Study, metric: str) -> None:
        self.launcher = launcher
        self.study = study
        self.metric = metric
        self.maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        batch = sorted(running, key=lambda t: t.number)[-len(job_overrides) :]
        for trial in batch:
            params = " ".join(f"{k}={_value(v)}" for k, v in trial.params.items())
            say(f"trial {trial.number}: {params}")
        returns = self.launcher.launch(job_overrides, initial_job_idx)
        for trial, ret in zip(batch, returns):
            value = getattr(ret, "_return_value", None)
            ok = getattr(ret.status, "name", "") == "COMPLETED"
            if ok and isinstance(value, float) and math.isfinite(value):
                say(f"trial {trial.number}: {self.metric} = {value:.6g}{self._best(value)}")
            else:
                say(f"trial {trial.number}: failed (no {self.metric})")
        return returns

    def _best(self, value: float) -> str:
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        values = [t.value for t in done if t.value is not None]
        best = (max if self.maximize else min)([value, *values])
        return " (best so far)" if best == value else f" (best so far: {best:.6g})"


def report_best(sweeper: OptunaSweeperImpl) -> None:
    """One line: the study's best trial, its objective and parameters."""
    if sweeper.storage is None or sweeper.study_name is None:
        return
    study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return
    best = study.best_trial
    params = " ".join(f"{k}={_value(v)}" for k, v in best.params.items())
    metric = study.user_attrs.get(IDENTITY, {}).get("optimized_metric", "objective")
    say(f"best: trial {best.number}, {metric} = {best.value:.6g}: {params}")
