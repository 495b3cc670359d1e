"""benchmarks/bench_meta_step.py keeps the interface and JSON format that issue 5 specifies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT, SHARED

FIELDS = {
    "setting",
    "impl",
    "device",
    "median_s_per_iter",
    "tasks_per_s",
    "images_per_s",
    "peak_mem_mb",
}


@pytest.mark.slow
def test_bench_meta_step_prints_and_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "bench_meta_step.py"),
        "--setting",
        "fomaml_5w1s_b16",
        "--impl",
        "batched",
        "loop",
        "--variant",
        "base",
        "ckpt",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--json",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["results"]
    # loop runs plain only: it is the reference every variant is compared with.
    assert [(r["impl"], r["variant"]) for r in rows] == [
        ("batched", "base"),
        ("batched", "ckpt"),
        ("loop", "base"),
    ]
    for r in rows:
        assert set(r) >= FIELDS, r
        assert r["setting"] == "fomaml_5w1s_b16" and r["device"] == "cpu"
        assert r["median_s_per_iter"] > 0 and r["peak_mem_mb"] > 100
        assert r["tasks_per_s"] == pytest.approx(16 / r["median_s_per_iter"])
        assert r["images_per_s"] == pytest.approx(16 * 10 / r["median_s_per_iter"])
        ratio = rows[2]["median_s_per_iter"] / r["median_s_per_iter"]
        assert r["speedup_vs_loop"] == pytest.approx(ratio)
    assert rows[1]["options"] == {"checkpoint_inner_steps": True, "precision": "fp32"}
    printed = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [(p[1], p[2]) for p in printed] == [
        ("batched", "base"),
        ("batched", "ckpt"),
        ("loop", "base"),
    ]


def _published_src() -> Path | None:
    """A checkout of the published MAML++ code: $MAMLPP_PUBLISHED_SRC, or one beside the repo."""
    import os

    for cand in (
        os.environ.get("MAMLPP_PUBLISHED_SRC"),
        REPO_ROOT.parent / "HowToTrainYourMAMLPytorch",
    ):
        if cand and (Path(cand) / "few_shot_learning_system.py").is_file():
            return Path(cand)
    return None


@pytest.mark.slow
def test_gpu_suite_dry_run_on_cpu(tmp_path: Path) -> None:
    """gpu_prepare.sh stages what a GPU machine without internet lacks, and gpu_suite.sh runs
    every step from that stage on CPU (tiny budgets), packing the results into one archive."""
    import os
    import tarfile

    src = _published_src()
    if src is None:
        pytest.skip("no published HowToTrainYourMAMLPytorch checkout (set MAMLPP_PUBLISHED_SRC)")
    stage = tmp_path / "stage"
    env = {**os.environ, "STAGE": str(stage), "PUBLISHED_SRC": str(src), "PYTHON": sys.executable}
    omniglot = SHARED / "datasets" / "omniglot"
    env["OMNIGLOT_SOURCE"] = str(omniglot)
    prep = subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks" / "gpu_prepare.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert prep.returncode == 0, prep.stderr
    staged = sum(f.stat().st_size for f in stage.rglob("*") if f.is_file())
    assert staged < 64 * 2**20  # what the device tool carries
    assert (stage / "published" / "few_shot_learning_system.py").is_file()
    out = tmp_path / "out"
    # STAGE must be relative to the repo for the suite's PYTHONPATH: link it in a temp name.
    link = REPO_ROOT / f".gpu-test-{os.getpid()}"
    link.symlink_to(stage)
    try:
        env.update(STAGE=link.name, DEVICE="cpu", OUT=str(out))
        done = subprocess.run(
            ["bash", str(REPO_ROOT / "benchmarks" / "gpu_suite.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=3000,
        )
    finally:
        link.unlink()
    assert done.returncode == 0, done.stdout[-3000:]
    with tarfile.open(out / "gpu_suite.tar.gz") as tar:
        names = set(tar.getnames())
    for name in ("summary.txt", "tests.txt", "bench.json", "train.metrics.csv", "nccl.txt"):
        assert f"gpu_suite/{name}" in names
    bench = json.loads((out / "gpu_suite" / "bench.json").read_text())["results"]
    assert {r["impl"] for r in bench} == {"published", "ours (base)"}
    assert "CUDA" in (out / "gpu_suite" / "tests.txt").read_text()  # the skip reasons
