"""mamlpp-report on synthetic results.json: grouping by identity, old files, the ablation table,
duplicates and foreign files, the paper column, and an output folder that is its own."""

from __future__ import annotations

import copy
import csv
import functools
import json
import shutil
import statistics
from pathlib import Path

import pytest

import mamlpp
from mamlpp.config import Config
from mamlpp.experiment.results import RunResults, config_summary
from mamlpp.experiment.run_state import run_identity
from mamlpp.reports.report import main


@functools.cache
def _composed(overrides: tuple[str, ...]) -> tuple[Config, dict, dict]:
    """The config of `overrides` with its summary and identity; composed once per session,
    since many runs here share a config (Hydra composes it in about a second on a busy CPU)."""
    cfg = mamlpp.compose(*overrides)
    return cfg, config_summary(cfg), run_identity(cfg)


def write_run(root: Path, name: str, accuracy: float, *overrides: str) -> dict:
    """A results.json as training writes it for the config of `overrides`."""
    cfg, summary, identity = _composed(overrides)
    results = RunResults(
        test_accuracy_mean=accuracy,
        test_accuracy_ci95=0.01,
        num_test_tasks=600,
        ensemble_size=1,
        per_model=[],
        best_val_accuracy=accuracy,
        train_seconds=3600.0,
        test_seconds=1.0,
        wall_time_s=3601.0,
        epochs=cfg.train.epochs,
        iterations=cfg.train.epochs * cfg.train.iters_per_epoch,
        device="cpu",
        config=copy.deepcopy(summary),
        identity=copy.deepcopy(identity),
    ).to_dict()
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(results))
    return results


def report(runs: Path, out: Path) -> list[dict[str, str]]:
    main([str(runs), "--out", str(out)])
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_different_experiments_never_share_a_row(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, acc in ((0, 0.90), (1, 0.92)):
        write_run(runs, f"quick{seed}", acc, "experiment=quick", f"seed={seed}")
        write_run(
            runs, f"paper{seed}", acc - 0.1, "experiment=omniglot_5w1s_mamlpp", f"seed={seed}"
        )
    rows = report(runs, tmp_path / "out")
    assert sorted(r["experiment"] for r in rows) == ["omniglot_5w1s_mamlpp", "quick"]
    assert {r["seeds"] for r in rows} == {"2"}
    quick = next(r for r in rows if r["experiment"] == "quick")
    assert float(quick["test_acc_mean"]) == pytest.approx(91.0)
    assert float(quick["test_acc_std"]) == pytest.approx(statistics.stdev([90.0, 92.0]))
    # What tells them apart is a column; what they share is not.
    assert (quick["train.epochs"], quick["algorithm.inner_steps"]) == ("20", "3")
    assert "task.ways" not in quick and "algorithm.inner_lr" not in quick


@pytest.mark.parametrize(
    "other,column",
    [
        ("algorithm.inner_lr=0.3", "algorithm.inner_lr"),
        ("algorithm.multi_step_loss=false", "algorithm.multi_step_loss"),
    ],
)
def test_one_key_apart_is_two_rows(tmp_path: Path, other: str, column: str) -> None:
    """Same experiment name, same seeds: a changed inner LR or MSL switched off is a new row."""
    runs = tmp_path / "runs"
    write_run(runs, "a", 0.5, "experiment=smoke")
    write_run(runs, "b", 0.7, "experiment=smoke", other)
    rows = report(runs, tmp_path / "out")
    assert len(rows) == 2 and {r["seeds"] for r in rows} == {"1"}
    assert len({r[column] for r in rows}) == 2
    assert column in (tmp_path / "out" / "results.md").read_text()


def test_old_results_without_identity_are_still_read_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    for seed in (0, 1):
        old = write_run(runs, f"old{seed}", 0.6 + seed / 10, "experiment=smoke", f"seed={seed}")
        del old["identity"], old["code"], old["schema_version"], old["config"]["algorithm_variant"]
        (runs / f"old{seed}" / "results.json").write_text(json.dumps(old))
    write_run(runs, "new", 0.9, "experiment=smoke", "algorithm.inner_lr=0.3")
    rows = report(runs, tmp_path / "out")
    assert "2 results.json without an identity" in capsys.readouterr().err
    assert len(rows) == 2  # a summary is never merged with a full identity
    (old_row,) = [r for r in rows if r["seeds"] == "2"]
    assert float(old_row["test_acc_mean"]) == pytest.approx(65.0)
    assert old_row["algorithm"] == "mamlpp"  # no variant in old files: the algorithm's name


def test_ablation_table_and_chart_from_the_presets_variants(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    variants = ("maml", "msl", "da", "bn", "lslr", "ca", "mamlpp")
    accs = {}
    for i, variant in enumerate(reversed(variants)):  # written out of order on purpose
        for seed in (0, 1):
            acc = 0.8 + i / 100 + seed / 1000
            accs.setdefault(variant, []).append(100 * acc)
            overrides = ("experiment=omniglot_5w1s_ablation", f"ablation={variant}", f"seed={seed}")
            write_run(runs, f"{variant}{seed}", acc, *overrides)
    write_run(runs, "quick", 0.95, "experiment=quick")  # another experiment: not in the table
    out = tmp_path / "out"
    report(runs, out)
    with open(out / "ablation.csv") as f:
        table = list(csv.DictReader(f))
    expected = ["maml", "maml+MSL", "maml+DA", "maml+BNRS+BNWB", "maml+LSLR", "maml+CA", "mamlpp"]
    assert [r["variant"] for r in table] == expected
    for row, variant in zip(table, variants):
        assert float(row["test_acc_mean"]) == pytest.approx(statistics.fmean(accs[variant]))
        assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(accs[variant]))
        assert row["seeds"] == "2"
    papers = {r["variant"]: r["paper"] for r in table}
    assert (papers["maml"], papers["mamlpp"], papers["maml+MSL"]) == ("98.7 +- 0.4", "99.47", "")
    assert "| maml+LSLR |" in (out / "ablation.md").read_text()
    pytest.importorskip("matplotlib")
    png = out / "ablation_omniglot_5w1s_ablation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_ablation_table_without_an_ablation(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "a", 0.5, "experiment=smoke")
    write_run(runs, "b", 0.6, "experiment=smoke", "algorithm.inner_lr=0.3")
    report(runs, tmp_path / "out")
    assert not (tmp_path / "out" / "ablation.md").exists()


# --------------------------------------------------------------------------- where it writes
def report_exit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """mamlpp-report's exit code and stderr, for a refusal."""
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    return int(stop.value.code or 0), capsys.readouterr().err


def test_default_out_is_a_folder_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run(tmp_path / "runs", "a", 0.5, "experiment=smoke")
    mine = tmp_path / "results.csv"
    mine.write_text("a user's own table\n")
    monkeypatch.chdir(tmp_path)
    main(["runs"])
    assert mine.read_text() == "a user's own table\n"
    assert (tmp_path / "report" / "results.csv").exists()
    assert (tmp_path / "report" / "results.md").exists()


def test_files_it_did_not_write_are_never_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_run(runs, "a", 0.5, "experiment=smoke")
    out.mkdir()
    (out / "results.md").write_text("my notes\n")
    code, err = report_exit(capsys, str(runs), "--out", str(out))
    assert code == 2
    assert err.splitlines()[-1] == (
        f"mamlpp-report: error: {out / 'results.md'} exists and was not written by "
        "mamlpp-report; give another --out (or move it)"
    )
    assert sorted(p.name for p in out.iterdir()) == ["results.md"]  # nothing written
    assert (out / "results.md").read_text() == "my notes\n"


def test_its_own_files_are_replaced_and_stale_ones_removed(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    for variant in ("maml", "mamlpp"):
        overrides = ("experiment=omniglot_5w1s_ablation", f"ablation={variant}")
        write_run(runs, variant, 0.8, *overrides)
    main([str(runs), "--out", str(out)])
    assert (out / "ablation.md").exists()
    (out / "ablation.md").write_text("edited by hand\n")  # no longer mamlpp-report's
    with pytest.raises(SystemExit):
        main([str(runs), "--out", str(out)])
    (out / "ablation.md").unlink()
    main([str(runs), "--out", str(out)])  # its own results.md/.csv are replaced
    (out / "user.txt").write_text("kept\n")
    shutil.rmtree(runs / "maml")  # no ablation any more: the old ablation files go
    main([str(runs), "--out", str(out)])
    assert not (out / "ablation.md").exists() and not (out / "ablation.csv").exists()
    assert (out / "user.txt").read_text() == "kept\n"
    with open(out / "results.csv") as f:
        assert [r["seeds"] for r in csv.DictReader(f)] == ["1"]


def test_out_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path / "runs", "a", 0.5, "experiment=smoke")
    (tmp_path / "out").write_text("x")
    code, err = report_exit(capsys, str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert code == 2
    assert err == f"mamlpp-report: error: --out {tmp_path / 'out'} is a file, not a folder\n"


def test_an_experiment_name_never_leaves_the_out_folder(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs, out = tmp_path / "runs", tmp_path / "deep" / "out"
    for variant in ("maml", "mamlpp"):
        run = write_run(
            runs, variant, 0.8, "experiment=omniglot_5w1s_ablation", f"ablation={variant}"
        )
        run["config"]["experiment"] = "../../escaped"
        (runs / variant / "results.json").write_text(json.dumps(run))
    main([str(runs), "--out", str(out)])
    assert [p for p in tmp_path.rglob("*.png") if p.parent != out] == []
    assert len(list(out.glob("ablation_*escaped.png"))) == 1


# --------------------------------------------------------------------------- what it counts
def test_the_same_run_reached_twice_is_one_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "a", 0.5, "experiment=smoke")
    write_run(runs, "b", 0.7, "experiment=smoke", "seed=1")
    shutil.copytree(runs / "a", tmp_path / "copy" / "a")  # a copied run directory
    rows = report(runs, tmp_path / "out")  # each path once: two seeds
    assert [r["seeds"] for r in rows] == ["2"]
    capsys.readouterr()
    main([str(runs), str(runs), str(tmp_path / "copy"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.splitlines()
    with open(tmp_path / "out" / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["seeds"] == "2"
    assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev([50.0, 70.0]))
    assert f"mamlpp-report: note: {runs} is given twice; its runs are counted once" in err
    assert (
        f"mamlpp-report: note: {tmp_path / 'copy' / 'a'} is the same run as {runs / 'a'} "
        "(experiment smoke, seed 0); counted once"
    ) in err


@pytest.mark.parametrize(
    "content,why",
    [
        ("{}", "not a mamlpp run's results.json (no 'config' object)"),
        ("[]", "not a mamlpp run's results.json (a JSON list, not an object)"),
        ('{"config": {"dataset": "x"}}', "not a mamlpp run's results.json ('config' lacks"),
        ("not json", "not JSON (Expecting value: line 1 column 1 (char 0))"),
        (None, "not JSON (Unterminated string starting at"),  # a truncated real one
    ],
)
def test_a_foreign_results_json_is_skipped_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, why: str
) -> None:
    runs = tmp_path / "runs"
    real = write_run(runs, "a", 0.5, "experiment=smoke")
    (runs / "foreign").mkdir()
    foreign = runs / "foreign" / "results.json"
    foreign.write_text(json.dumps(real)[:200] if content is None else content)
    rows = report(runs, tmp_path / "out")
    assert [r["seeds"] for r in rows] == ["1"]
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "skipping" in x]
    assert line.startswith(f"mamlpp-report: skipping {foreign}: {why}"), line


def test_only_foreign_files_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "results.json").write_text("{}")
    code, err = report_exit(capsys, str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert code == 2
    assert err.splitlines()[-1] == (
        f"mamlpp-report: error: no results.json of a mamlpp run under {tmp_path / 'runs'}"
    )
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- what it shows
def test_paper_column_only_on_the_papers_protocol(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_run(runs, "paper", 0.99, "experiment=omniglot_5w1s_mamlpp")
    write_run(runs, "short", 0.9, "experiment=omniglot_5w1s_mamlpp", "train.epochs=3")
    write_run(runs, "split", 0.9, "experiment=omniglot_5w1s_mamlpp", "dataset.protocol=maml")
    write_run(runs, "smoke", 0.5, "experiment=smoke")
    rows = report(runs, out)
    papers = sorted((r["train.epochs"], r["dataset.protocol"], r["paper"]) for r in rows)
    assert papers == [
        ("100", "maml", ""),
        ("100", "mamlpp", "99.47"),
        ("2", "mamlpp", ""),  # smoke
        ("3", "mamlpp", ""),
    ]
    assert "| paper % |" in (out / "results.md").read_text()
    smoke_only = tmp_path / "smoke_only"
    write_run(smoke_only, "smoke", 0.5, "experiment=smoke")
    main([str(smoke_only), "--out", str(tmp_path / "out2")])
    assert "paper" not in (tmp_path / "out2" / "results.md").read_text()


def test_printed_table_shows_only_keys_that_tell_rows_of_an_experiment_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_run(runs, "quick", 0.9, "experiment=quick")
    write_run(runs, "paper", 0.9, "experiment=omniglot_5w1s_mamlpp")
    write_run(runs, "paper_lr", 0.9, "experiment=omniglot_5w1s_mamlpp", "algorithm.inner_lr=0.3")
    capsys.readouterr()
    main([str(runs), "--out", str(out)])
    printed = capsys.readouterr().out
    with open(out / "results.csv") as f:
        csv_columns = next(csv.reader(f))
    assert {"train.epochs", "algorithm.inner_steps", "algorithm.inner_lr"} <= set(csv_columns)
    header = next(line for line in printed.splitlines() if line.startswith("| experiment"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert "algorithm.inner_lr" in columns  # tells the two omniglot_5w1s_mamlpp rows apart
    assert "train.epochs" not in columns and "algorithm.inner_steps" not in columns
    hidden = len([c for c in csv_columns if "." in c]) - 1
    assert f"{hidden} more keys differ between experiments: see results.csv." in printed
    assert len(columns) <= 13
