"""One experiment over two CPU processes (gloo), as torchrun starts them, on real Omniglot.

- learner level, float64: two ranks holding two tasks each make the same meta-steps (weights,
  learned rates, per-step batch-norm statistics) as one process holding all four (1e-10);
- CLI level (real `torchrun` processes): results.json and the checkpoint equal a one-process
  run's; SIGKILL of one rank ends the job (no hang) and the same command resumes it to the same
  numbers as an uninterrupted distributed run; a meta-batch the ranks cannot share is one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import MAMLPP_ALL
from helpers.paths import REPO_ROOT
from mamlpp.algorithms.meta_learner import MetaLearner
from mamlpp.config import AlgorithmConfig, dataset_config, model_config
from mamlpp.data.registry import load_dataset
from mamlpp.experiment.distributed import Distributed
from mamlpp.experiment.sampling import make_sampler

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
# Every MAML++ switch, two inner steps.
MAMLPP = {**MAMLPP_ALL, "inner_steps": 2}
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _learner() -> MetaLearner:
    """SGD as the meta-optimizer: Adam would turn the rounding noise of gradients that are
    zero in theory (a conv bias before batch norm) into full steps, hiding the comparison."""
    torch.manual_seed(0)
    model = model_config(filters=16)
    algorithm = AlgorithmConfig(**{**MAMLPP, "meta_lr": 0.05})
    sgd = torch.optim.SGD
    return MetaLearner(algorithm, model, 1, 28, 5, STEPS, optimizer=sgd).double()


def _rank_worker(rank: int, world: int, port: int, batches: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    dist = Distributed.from_env()
    dist.start(torch.device("cpu"), 60)
    learner = _learner()
    learner.sync = dist
    for it, batch in enumerate(torch.load(batches, weights_only=False)):
        share = len(batch) // world
        learner.train_step(batch.select(slice(rank * share, (rank + 1) * share)), 0, it)
    if rank == 0:
        torch.save(learner.state_dict(), out)
    dist.close()


def test_two_ranks_make_the_meta_steps_of_one_process(
    omniglot_source_dir, omniglot_data_dir, tmp_path
) -> None:
    source = str(omniglot_source_dir)
    data = load_dataset(dataset_config(source=source, data_dir=str(omniglot_data_dir)))
    from mamlpp.config import Config

    sampler = make_sampler(Config(), data, torch.device("cpu"))
    batches = [sampler.batch("train", 0, 4 * it, 4) for it in range(STEPS)]
    for b in batches:
        b.xs, b.xt = b.xs.double(), b.xt.double()
    torch.save(batches, tmp_path / "batches.pt")

    one = _learner()
    for it, batch in enumerate(batches):
        one.train_step(batch, 0, it)

    ctx = mp.get_context("spawn")
    port = _free_port()
    out = str(tmp_path / "rank0.pt")
    procs = [
        ctx.Process(target=_rank_worker, args=(r, 2, port, str(tmp_path / "batches.pt"), out))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    two = torch.load(out, weights_only=True)
    reference = one.state_dict()
    assert two.keys() == reference.keys()
    assert any("running_mean" in k for k in two)
    for name, value in reference.items():
        torch.testing.assert_close(two[name], value, rtol=1e-10, atol=1e-10, msg=name)


# ---------------------------------------------------------------------------- CLI


def _torchrun(cli, *args: str, nproc: int = 2, cwd: Path) -> subprocess.Popen:
    command = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "mamlpp.train"]
    return subprocess.Popen(
        [*command, *cli.data_args, *TINY, *args],
        cwd=cwd,
        env={**cli.env, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# Four meta-steps of two tasks per rank; the tolerance below is for these few float32 steps.
TINY = (
    "experiment=smoke",
    "device=cpu",
    "progress_bar=false",
    "train.epochs=2",
    "train.iters_per_epoch=2",
    "train.meta_batch_size=4",
    "eval.val_tasks=20",
    "eval.test_tasks=40",
    "eval.batch_size=10",
)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"no exit within {timeout} s:\n{out}")
    return out


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _kill_rank_1_after_a_checkpoint(proc: subprocess.Popen, run: Path, depth: int = 0) -> None:
    """SIGKILL (no chance to clean up) to rank 1 once `run` has a checkpoint; `proc` is the
    torchrun agent, or `depth` levels of parents above it (a script that starts it)."""
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "latest.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, _finish(proc)
        time.sleep(0.05)
    agent = proc.pid
    for _ in range(depth):
        (agent,) = _children(agent)
    workers = _children(agent)
    assert len(workers) == 2, workers
    os.kill(workers[1], 9)


def _accuracies(run: Path) -> dict:
    r = json.loads((run / "results.json").read_text())
    return {
        "test": r["test_accuracy_mean"],
        "ci": r["test_accuracy_ci95"],
        "val": r["best_val_accuracy"],
        "members": [(m["epoch"], m["test_accuracy_mean"]) for m in r["per_model"]],
    }


def _weights(run: Path) -> dict[str, torch.Tensor]:
    path = run / "checkpoints" / "latest.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["learner"]


@pytest.fixture(scope="module")
def distributed_run(cli, tmp_path_factory) -> Path:
    """An uninterrupted two-process run."""
    base = tmp_path_factory.mktemp("dist")
    proc = _torchrun(cli, f"hydra.run.dir={base / 'run'}", cwd=base)
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert "distributed: 2 processes on cpu, 2 tasks of each meta-batch per process" in out
    return base / "run"


# Plain SGD at a stable step size: Adam's normalisation turns rounding noise in gradients that
# are zero in theory (a conv bias before batch norm) into full steps, and an unstable step size
# multiplies any difference every step; either would bury the comparison in noise.
SGD = ("optimizer._target_=torch.optim.SGD", "algorithm.meta_lr=0.005")


@pytest.mark.slow
def test_distributed_run_equals_one_process(cli, tmp_path) -> None:
    two = _torchrun(cli, *SGD, f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path)
    out = _finish(two)
    assert two.returncode == 0, out
    one = subprocess.run(
        [
            *cli.command(tiny=False),
            *cli.data_args,
            *TINY,
            *SGD,
            f"hydra.run.dir={tmp_path / 'one'}",
        ],
        cwd=tmp_path,
        env={**cli.env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    # The ranks sum their own tasks' gradients and the all-reduce adds the sums, where one
    # process adds all four in a row: float32 rounding differs (the float64 test above shows
    # that the arithmetic is the same), within the tolerances below after four steps.
    assert _accuracies(tmp_path / "two") == _accuracies(tmp_path / "one")
    a, b = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert any("running_var" in name for name in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    # Rank 0 alone wrote: one train.log line per message.
    log = (tmp_path / "two" / "train.log").read_text()
    assert log.count("epoch 0: validating") == 1


@pytest.mark.slow
def test_sigkill_of_one_rank_then_the_same_command_resumes(cli, distributed_run, tmp_path) -> None:
    run = tmp_path / "run"
    args = (f"hydra.run.dir={run}", "run.checkpoint_every_iters=1")
    proc = _torchrun(cli, *args, cwd=tmp_path)
    _kill_rank_1_after_a_checkpoint(proc, run)
    start = time.monotonic()
    _finish(proc, timeout=120)  # torchrun takes the other rank down: no hang
    assert proc.returncode != 0
    assert time.monotonic() - start < 120
    assert not (run / "results.json").exists()

    again = _torchrun(cli, *args, cwd=tmp_path)
    out = _finish(again)
    assert again.returncode == 0, out
    assert "resumed from" in out
    assert _accuracies(run) == _accuracies(distributed_run)
    a, b = _weights(run), _weights(distributed_run)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_meta_batch_the_ranks_cannot_share_is_one_line(cli, tmp_path) -> None:
    proc = _torchrun(
        cli, "train.meta_batch_size=3", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    out = _finish(proc)
    assert proc.returncode != 0
    assert (
        "mamlpp: error: config key 'train.meta_batch_size' = 3 is not divisible by the 2 "
        "processes of this distributed run: use a multiple of 2" in out
    )
    assert out.count("mamlpp: error:") == 1  # rank 0 says it for the job
    assert not (tmp_path / "r" / "checkpoints").exists() or not any(
        (tmp_path / "r" / "checkpoints").iterdir()
    )


@pytest.mark.slow
def test_generated_script_runs_one_distributed_run_and_restarts_it(cli, tmp_path) -> None:
    """`bash experiment_scripts/X.sh --distributed` (CPU: MAMLPP_NPROC processes): a rank killed
    mid-run ends torchrun, and the script starts it again, which resumes from the checkpoint."""
    script = REPO_ROOT / "experiment_scripts" / "omniglot_5w1s_mamlpp_seed0.sh"
    run = tmp_path / "run"
    overrides = [*cli.data_args, *TINY[2:], "run.checkpoint_every_iters=1"]
    overrides += ["algorithm.inner_steps=1", "algorithm.inner_steps_eval=1", "eval.top_k=2"]
    env = {**cli.env, "MAMLPP_TORCHRUN": TORCHRUN, "MAMLPP_NPROC": "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        ["bash", str(script), "--distributed", "--", *overrides, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _kill_rank_1_after_a_checkpoint(proc, run, depth=1)
    out = _finish(proc, timeout=200)
    assert proc.returncode == 0, out
    assert "distributed run ended with 1; resuming (2 restarts left)" in out
    assert "resumed from" in out
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["meta_batch_size"] == 4 and results["num_test_tasks"] == 40


@pytest.mark.slow
def test_two_nodes_by_rendezvous_equal_one_node(cli, distributed_run, tmp_path) -> None:
    """Two torchrun agents (as on two machines) meet through the c10d rendezvous and make the
    same run as one agent with two processes: a rank's tasks depend on its rank only."""
    port = _free_port()
    command = [TORCHRUN, "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d"]
    command += [f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=mamlpp-test", "-m", "mamlpp.train"]
    run = tmp_path / "run"
    agents = [
        subprocess.Popen(
            [*command, *cli.data_args, *TINY, f"hydra.run.dir={run}"],
            cwd=tmp_path,
            env={**cli.env, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [_finish(agent) for agent in agents]
    assert [a.returncode for a in agents] == [0, 0], outs
    assert _accuracies(run) == _accuracies(distributed_run)
    a, b = _weights(run), _weights(distributed_run)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_torchrun_agent_stops_its_workers(cli, tmp_path, signum) -> None:
    """SIGTERM: torchrun passes it on and the workers checkpoint and exit 75. SIGKILL: the
    kernel sends the workers SIGTERM (PR_SET_PDEATHSIG), so no orphan trains on."""
    run = tmp_path / "run"
    proc = _torchrun(
        cli, f"hydra.run.dir={run}", "run.checkpoint_every_iters=1", "train.epochs=50", cwd=tmp_path
    )
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "latest.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, _finish(proc)
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(proc.pid, signum)
    _finish(proc, timeout=120)
    deadline = time.monotonic() + 60
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "a worker outlived its torchrun agent"
    log = (run / "train.log").read_text()
    assert "SIGTERM received" in log and "interrupted by SIGTERM" in log
    assert not (run / "results.json").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split(")")[-1].split()[0] == "Z")
