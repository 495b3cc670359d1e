"""benchmarks/bench_meta_step.py keeps the interface and JSON format that issue 5 specifies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
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
