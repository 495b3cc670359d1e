"""hydra-optuna-sweeper, made resumable: re-running a killed search continues its study.

The stock sweeper (1.3.0) asks `n_trials` new trials on every invocation, and a trial that was
running when the process died stays RUNNING in the storage forever. Here `n_trials` is the
study's total: an invocation runs only the trials still missing. A trial left RUNNING is marked
FAIL (user attribute `interrupted`) and its parameters are queued again, so the same overrides
name the same run directory (mamlpp.naming) and the run resumes from its checkpoint instead of
the sampler drawing something else. One sweeper process per study at a time.

The Hydra plugin itself is hydra_plugins.mamlpp_optuna_sweeper (Hydra loads sweepers only from
that package); it calls `prepare` before the stock sweep.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from optuna.trial import Trial, TrialState

INTERRUPTED = "interrupted"  # user attribute of a trial failed by a kill, re-queued


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


def prepare(sweeper: OptunaSweeperImpl) -> None:
    """Load the sweeper's study, re-queue its interrupted trials and cut `n_trials` to what is
    missing. Without a storage or a study name there is nothing to continue."""
    if sweeper.storage is None or sweeper.study_name is None:
        return
    Path(str(sweeper.sweep_dir)).mkdir(parents=True, exist_ok=True)  # the SQLite file's
    study = optuna.create_study(
        study_name=sweeper.study_name,
        storage=sweeper.storage,
        directions=sweeper._get_directions(),
        load_if_exists=True,
    )
    requeued = requeue_interrupted(study)
    trials = study.get_trials(deepcopy=False)
    done = sum(counted(t) for t in trials)
    if trials and isinstance(sweeper.sampler, optuna.samplers.BaseSampler):
        sweeper.sampler.reseed_rng()  # a seeded sampler would replay the first run's draws
    sweeper.n_trials = max(0, sweeper.n_trials - done)
    again = f"; interrupted trial(s) {requeued} run again" if requeued else ""
    print(
        f"[mamlpp] optuna study {sweeper.study_name!r}: {done} trial(s) done, "
        f"{sweeper.n_trials} to run{again}",
        file=sys.stderr,
        flush=True,
    )
