"""A run killed while its decode workers run leaves no worker behind holding the run lock: the
workers die with their parent and leave the stop signals to it (real processes, real signals)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mamlpp.data.files import decode_workers
from mamlpp.experiment.lock import RunLock, RunLockedError

CLASSES, PER_CLASS = 40, 110  # 4400 images: above the size that decodes on a process pool


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4400 copies of one 320x320 JPEG: a few seconds of decoding on two cores."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)).save(buf, "JPEG")
    for c in range(CLASSES):
        folder = root / f"class{c:02d}"
        folder.mkdir()
        for i in range(PER_CLASS):
            (folder / f"{i:03d}.jpg").write_bytes(buf.getvalue())
    return root


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_kill_during_decoding_leaves_no_worker_and_a_free_lock(
    big_folder: Path, tmp_path: Path, signum: int
) -> None:
    assert decode_workers() > 1, "needs two usable cores for a decode pool"
    run_dir = tmp_path / "run"
    args = [
        sys.executable, "-m", "mamlpp.train", "experiment=smoke", "dataset=image_folder",
        f"dataset.source={big_folder}", f"dataset.data_dir={tmp_path / 'data'}",
        "dataset.image_size=84", "device=cpu", "progress_bar=false", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    # Output to files: an orphaned worker would hold pipes open (and a reader waiting on them).
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err_file:
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=err_file, stderr=err_file)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            workers |= _children(proc.pid)
            time.sleep(0.02)
        assert len(workers) >= 2, f"no decode pool seen: {log.read_text()}"
        proc.send_signal(signum)
        proc.wait(timeout=300)
        stderr = log.read_text()
        if signum == signal.SIGTERM:  # the run stops cleanly once the data is loaded
            assert proc.returncode == 75, stderr
            assert "Traceback" not in stderr
        else:
            assert proc.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)], "a decode worker outlived its run"
        # Free within seconds: a pool started after the last look (the listing's, then the
        # decode's) has workers the loop above never saw; the kernel kills them with the run.
        deadline = time.monotonic() + 10
        while True:
            try:
                with RunLock(run_dir) as lock:
                    assert lock is not None
                break
            except RunLockedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        for pid in [proc.pid, *workers]:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.wait()
