"""Free-GPU claims: parallel runs on one box take different GPUs; a dead run frees its GPU."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mamlpp.experiment.gpu_claim import claim_free_gpu

IDS = ["GPU-aaaa", "GPU-bbbb", "GPU-cccc"]


def test_claims_take_distinct_gpus_and_release(tmp_path: Path) -> None:
    a = claim_free_gpu(IDS, tmp_path)
    b = claim_free_gpu(IDS, tmp_path)
    c = claim_free_gpu(IDS, tmp_path)
    assert [a.index, b.index, c.index] == [0, 1, 2]
    assert claim_free_gpu(IDS, tmp_path) is None  # all held
    b.release()
    again = claim_free_gpu(IDS, tmp_path)
    assert again.index == 1
    for claim in (a, c, again):
        claim.release()


def test_a_killed_process_frees_its_gpu(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path;"
            "from mamlpp.experiment.gpu_claim import claim_free_gpu;"
            f"c = claim_free_gpu({IDS!r}, Path({str(tmp_path)!r})); print(c.index, flush=True);"
            "time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "0"
        mine = claim_free_gpu(IDS, tmp_path)
        assert mine.index == 1  # another process holds GPU 0
        mine.release()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    after = claim_free_gpu(IDS, tmp_path)
    assert after.index == 0
    after.release()
