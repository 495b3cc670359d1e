"""Real signals to real processes: the test phase and the generated experiment scripts.

- SIGTERM in the test phase stops between task batches within seconds, a small part of the
  test phase (exit 75, checkpoints kept, no results.json), and the same command re-tests to
  the numbers of an uninterrupted run;
- SIGTERM to a generated script reaches its training, which checkpoints; the script exits 75
  without relaunching, and no process of it is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers.cli import result_accuracies
from helpers.paths import REPO_ROOT

# A test phase of 2 members x 150 batches of 4 tasks: long enough to be caught in the middle
# (a minute or more on a busy 2-core machine, where a batch takes well under a second).
LONG_TEST = ("eval.test_tasks=600", "eval.batch_size=4", "eval.top_k=2")


@pytest.mark.slow
def test_sigterm_in_the_test_phase_stops_within_seconds_and_resume_retests(
    cli, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run = cli.start(*LONG_TEST, f"hydra.run.dir={run_dir}")
    run.wait_for(r"testing the top-2 models", timeout=900)
    time.sleep(1.0)  # inside the first member's batches
    start = time.monotonic()
    run.signal(signal.SIGTERM)
    done = run.finish(timeout=300)
    seconds = time.monotonic() - start
    assert done.returncode == 75, done.stderr
    assert "interrupted by SIGTERM at iteration 8" in done.stderr
    assert not (run_dir / "results.json").exists()
    assert (run_dir / "checkpoints" / "latest.pt").exists()

    again = cli.run(*LONG_TEST, f"hydra.run.dir={run_dir}", timeout=900)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr and "testing the top-2 models" in again.stderr
    resumed = json.loads((run_dir / "results.json").read_text())

    fresh_dir = tmp_path / "fresh"
    fresh = cli.run(*LONG_TEST, f"hydra.run.dir={fresh_dir}", timeout=900)
    assert fresh.returncode == 0, fresh.stderr
    reference = json.loads((fresh_dir / "results.json").read_text())
    assert result_accuracies(resumed) == result_accuracies(reference)
    # Stopping (the batch in progress, closing the trackers, the interpreter's exit) takes a
    # small part of the test phase it interrupted, not the rest of a member's test.
    assert seconds < reference["test_seconds"] / 4, (seconds, reference["test_seconds"])


def _session_processes(sid: int) -> list[str]:
    found = subprocess.run(["ps", "-eo", "pid,sid,stat,args"], capture_output=True, text=True)
    rows = [line.split(None, 3) for line in found.stdout.splitlines()[1:]]
    return [r[3] for r in rows if len(r) == 4 and int(r[1]) == sid and not r[2].startswith("Z")]


@pytest.mark.slow
def test_sigterm_to_a_generated_script_stops_its_training_and_exits_75(cli, tmp_path: Path) -> None:
    script = REPO_ROOT / "experiment_scripts" / "omniglot_5w1s_mamlpp_seed0.sh"
    run_dir = tmp_path / "run"
    tiny = (
        "train.epochs=50",
        "train.iters_per_epoch=6",
        "train.meta_batch_size=2",
        "algorithm.inner_steps=1",
        "algorithm.inner_steps_eval=1",
        "eval.val_tasks=5",
        "progress_bar=false",
        "run.checkpoint_every_iters=1",
    )
    proc = cli.start_script(script, run_dir, *tiny, cwd=tmp_path, timeout=240)
    os.kill(proc.pid, signal.SIGTERM)  # the script, as `kill` or a scheduler would
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the script did not stop within 120 s of SIGTERM")
    assert proc.returncode == 75, err
    assert "SIGTERM received" in err and "interrupted by SIGTERM" in err
    assert "resuming" not in err  # a signal to the script stops the loop
    assert _session_processes(proc.pid) == []
    assert not (run_dir / "results.json").exists()
