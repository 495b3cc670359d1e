"""Ours against the published MAML++ code (and optionally other mamlpp checkouts), side by side.

    python benchmarks/bench_side_by_side.py [--published SRC] [--baseline NAME=SRC ...]
        [--setting mamlpp_5w1s_b8 ...] [--rounds 3] [--warmup 2] [--repeats 5] [--threads 2]
        [--device cpu|cuda] [--variant base ...] [--json FILE]

Each round runs every implementation once per setting, each in a fresh process
(bench_published.py / bench_meta_step.py), and the order of the implementations flips from one
round to the next, so load on a shared machine falls on both. The table gives the median over
rounds of each run's median s/iter and the published code's s/iter divided by each row's; the
same for the process's CPU seconds (steadier than wall time on a shared machine; with 1 thread);
and the peak memory (RSS on CPU, allocated GPU memory on CUDA). `--published` defaults to
.gpu/published (benchmarks/gpu_prepare.sh copies the published Python files there).
`--baseline main=../main/src` adds another mamlpp checkout's src/ (e.g. the commit before a
change) as extra rows, with the first `--variant` only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# our setting -> (published experiment_config file, published --set overrides)
PUBLISHED = {
    "mamlpp_5w1s_b8": ("omniglot_maml++-omniglot_1_8_0.1_64_5_0.json", []),
    "mamlpp_20w1s_b8": ("omniglot_maml++-omniglot_1_8_0.1_64_20_0.json", []),
    "mamlpp_5w1s_b16": ("omniglot_maml++-omniglot_1_8_0.1_64_5_0.json", ["batch_size=16"]),
    "maml_5w1s_b16": ("omniglot_maml-omniglot_1_8_0.1_64_5_0.json", ["batch_size=16"]),
}


def _run(cmd: list[str], env_path: str | None = None) -> dict:
    import os

    env = dict(os.environ)
    if env_path is not None:
        env["PYTHONPATH"] = env_path + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"bench_side_by_side.py: {' '.join(cmd[:3])} failed: {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--published", default=str(REPO / ".gpu" / "published"))
    p.add_argument("--baseline", nargs="*", default=[], metavar="NAME=SRC")
    p.add_argument("--setting", nargs="*", default=["mamlpp_5w1s_b8"], choices=list(PUBLISHED))
    p.add_argument("--variant", nargs="*", default=["base"], help="ours: bench_meta_step VARIANTS")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    src = Path(args.published)
    if not (src / "few_shot_learning_system.py").is_file():
        raise SystemExit(
            f"bench_side_by_side.py: --published {src} has no few_shot_learning_system.py; clone "
            "github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch or run benchmarks/gpu_prepare.sh"
        )
    baselines = []
    for spec in args.baseline:
        name, _, path = spec.partition("=")
        if not path or not (Path(path) / "mamlpp").is_dir():
            raise SystemExit(
                f"bench_side_by_side.py: --baseline {spec!r} is not NAME=<a src/ with mamlpp/>"
            )
        baselines.append((name, str(Path(path).resolve())))
    common = ["--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    impls: list[tuple[str, list[str], str | None]] = []  # (label, command, PYTHONPATH)
    rows: dict[tuple[str, str], list[dict]] = {}
    for setting in args.setting:
        config, sets = PUBLISHED[setting]
        pub = [sys.executable, str(HERE / "bench_published.py"), "--src", str(src)]
        pub += ["--config", config, "--threads", str(args.threads), *common]
        if sets:
            pub += ["--set", *sets]
        cases = [("published", pub, None)]
        for variant in args.variant:
            ours = [sys.executable, str(HERE / "bench_meta_step.py"), "--worker", setting]
            ours += ["batched", variant, "--device", args.device, "--threads", str(args.threads)]
            cases.append((f"ours ({variant})", ours + common, str(REPO / "src")))
            for name, path in baselines if variant == args.variant[0] else []:
                cases.append((f"{name} ({variant})", ours + common, path))
        impls.extend((f"{setting}|{label}", cmd, path) for label, cmd, path in cases)
    for r in range(args.rounds):
        order = impls if r % 2 == 0 else impls[::-1]
        for key, cmd, path in order:
            res = _run(cmd, path)
            setting, label = key.split("|")
            rows.setdefault((setting, label), []).append(res)
            if args.json:  # kept as it goes: a time limit may stop the rounds
                raw = [{"setting": s, "impl": lb, "runs": v} for (s, lb), v in rows.items()]
                Path(args.json).write_text(json.dumps({"partial": raw}, indent=2))
            print(
                f"round {r + 1}: {setting:16} {label:22} {res['median_s_per_iter']:.4f} s/iter "
                f"{res['peak_mem_mb']:.0f} MB",
                flush=True,
            )
    table = []
    for setting in args.setting:
        pub_med = statistics.median(x["median_s_per_iter"] for x in rows[(setting, "published")])
        pub_cpu = statistics.median(
            x["median_cpu_s_per_iter"] for x in rows[(setting, "published")]
        )
        for (s, label), runs in rows.items():
            if s != setting:
                continue
            med = statistics.median(x["median_s_per_iter"] for x in runs)
            mem = statistics.median(x["peak_mem_mb"] for x in runs)
            cpu = statistics.median(x["median_cpu_s_per_iter"] for x in runs)
            table.append(
                {
                    "setting": setting,
                    "impl": label,
                    "device": args.device,
                    "rounds_s_per_iter": [round(x["median_s_per_iter"], 4) for x in runs],
                    "median_s_per_iter": med,
                    "median_cpu_s_per_iter": cpu,
                    "peak_mem_mb": mem,
                    "speedup_vs_published": pub_med / med,
                    "cpu_speedup_vs_published": pub_cpu / cpu,
                }
            )
    print(
        "\n| setting | impl | s/iter per round | median s/iter | vs published | "
        "CPU s/iter | CPU vs published | peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for t in table:
        rounds = " / ".join(f"{x:.3f}" for x in t["rounds_s_per_iter"])
        print(
            f"| {t['setting']} | {t['impl']} | {rounds} | {t['median_s_per_iter']:.3f} | "
            f"{t['speedup_vs_published']:.2f}x | {t['median_cpu_s_per_iter']:.3f} | "
            f"{t['cpu_speedup_vs_published']:.2f}x | {t['peak_mem_mb']:.0f} |"
        )
    if args.json:
        raw = [{"setting": s, "impl": lb, "runs": v} for (s, lb), v in rows.items()]
        Path(args.json).write_text(json.dumps({"results": table, "partial": raw}, indent=2))


if __name__ == "__main__":
    main()
