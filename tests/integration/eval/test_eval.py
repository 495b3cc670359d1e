"""`mamlpp-eval`, self-describing checkpoints and the Python API (compose / train / load).

The evaluations run on real Omniglot: the tiny reference run of conftest.py (a copy of it, since
eval/ is written inside the run directory) and, where a prediction has to be right, a model
trained for 80 iterations in `trained_run`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.cli import TINY_ARGS, Cli, read_metric_rows, result_accuracies
from helpers.errors import error_lines, eval_error
from helpers.paths import REPO_ROOT
from mamlpp.data.preprocessing import Preprocessing, convert_channels
from mamlpp.evaluate import main as eval_main
from mamlpp.experiment.checkpoints import save_checkpoint
from mamlpp.experiment.members import MEMBER_FORMAT
from mamlpp.experiment.results_table import format_results
from mamlpp.reports.report import find_runs, summarize

pytestmark = pytest.mark.slow


def hashes(root: Path) -> dict[str, str]:
    """md5 of every file under `root` (Hydra's log aside, which each process appends to)."""
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "train.log"
    }


def run_eval(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mamlpp.evaluate", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def run_copy(reference_run: dict, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run["dir"], run_dir)
    return run_dir


@pytest.fixture(scope="session")
def trained_run(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """smoke with 2 x 40 iterations (about 12 s here): a model whose predictions mean something
    (top-2 test accuracy 68% on 40 tasks, against 52% for the 8-iteration smoke run)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    args = ["experiment=smoke", "device=cpu", "progress_bar=false", "train.iters_per_epoch=40"]
    done = cli.run(*args, *cli.data_args, f"hydra.run.dir={run_dir}", tiny=False)
    assert done.returncode == 0, done.stderr
    return run_dir


@pytest.fixture(scope="session")
def own_images(omniglot_source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Support and query folders of real Omniglot PNGs: the first character of five alphabets
    of the evaluation set, 3 support and 5 query drawings each (query/<class>/ so they score)."""
    root = tmp_path_factory.mktemp("own_images")
    by_char: dict[str, list[str]] = defaultdict(list)
    with zipfile.ZipFile(omniglot_source_dir / "images_evaluation.zip") as z:
        for name in z.namelist():
            if name.endswith(".png"):
                by_char[os.path.dirname(name)].append(name)
        alphabets: dict[str, str] = {}
        for char in sorted(by_char):
            alphabets.setdefault(char.split("/")[1], char)
        for char in list(alphabets.values())[:5]:
            label = char.split("/")[1]
            for i, member in enumerate(sorted(by_char[char])[:8]):
                folder = root / ("support" if i < 3 else "query") / label
                folder.mkdir(parents=True, exist_ok=True)
                (folder / os.path.basename(member)).write_bytes(z.read(member))
    return root


# --------------------------------------------------------------------------- the run's own test


def test_eval_reproduces_the_runs_test_exactly(run_copy: Path) -> None:
    before = hashes(run_copy)
    results = json.loads((run_copy / "results.json").read_text())

    done = run_eval(str(run_copy))
    assert done.returncode == 0, done.stderr
    evaluated = json.loads((run_copy / "eval" / "default" / "results.json").read_text())
    assert result_accuracies(evaluated) == {
        **result_accuracies(results),
        "per_model": [
            {**m, "checkpoint": str(run_copy / "checkpoints" / f"epoch_{m['epoch']:04d}.pt")}
            for m in results["per_model"]
        ],
    }
    assert format_results(results) in done.stdout  # the same table as training printed
    after = hashes(run_copy)
    assert {k: v for k, v in after.items() if not k.startswith("eval/")} == before
    # mamlpp-report counts the run once: its eval/ results are not runs of their own.
    [row] = summarize(find_runs([run_copy.parent]))
    assert row["seeds"] == 1 and row["experiment"] == "smoke"


def test_eval_overrides(run_copy: Path) -> None:
    results = json.loads((run_copy / "results.json").read_text())
    done = run_eval(str(run_copy), "eval.test_tasks=2000")
    assert done.returncode == 0, done.stderr
    wide = json.loads((run_copy / "eval" / "eval.test_tasks=2000" / "results.json").read_text())
    assert wide["num_test_tasks"] == 2000
    assert wide["test_accuracy_ci95"] < results["test_accuracy_ci95"] / 3  # sqrt(50) narrower

    best_epoch = results["per_model"][0]["epoch"]
    worst_epoch = results["per_model"][-1]["epoch"]
    done = run_eval(  # overrides before and after --name
        str(run_copy),
        "members=best",
        "eval.task_seed=7",
        "--name",
        "variant",
        "algorithm.inner_steps_eval=3",
        "algorithm.use_running_stats_eval=true",
    )
    assert done.returncode == 0, done.stderr
    variant = json.loads((run_copy / "eval" / "variant" / "results.json").read_text())
    assert variant["ensemble_size"] == 1 and variant["per_model"][0]["epoch"] == best_epoch
    assert variant["config"]["inner_steps_eval"] == 3
    assert variant["config"]["use_running_stats_eval"] is True

    done = run_eval(str(run_copy), f"members=epoch={worst_epoch}")
    assert done.returncode == 0, done.stderr
    single = json.loads(next((run_copy / "eval").glob("members=epoch*/results.json")).read_text())
    assert single["test_accuracy_mean"] == results["per_model"][-1]["test_accuracy_mean"]


def test_eval_other_splits_and_training_state(
    run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    """split=val evaluates on the validation tasks as training validated (eval.val_tasks), so
    each member scores its recorded validation accuracy; latest.pt says what it is."""
    results = json.loads((run_copy / "results.json").read_text())
    capsys.readouterr()
    eval_main([str(run_copy), "split=val"])
    out = capsys.readouterr()
    val = json.loads((run_copy / "eval" / "split=val" / "results.json").read_text())
    assert val["split"] == "val" and val["num_test_tasks"] == 20  # smoke's eval.val_tasks
    for member in val["per_model"]:  # training's mean is float32, evaluation's float64
        assert member["test_accuracy_mean"] == pytest.approx(member["val_accuracy"], abs=1e-6)
    assert "on 20 val tasks" in out.err and ": 20 val tasks" in out.out
    assert "test" not in out.out and "acc on val tasks (%)" in out.out

    eval_main([str(run_copy), "split=train", "eval.test_tasks=6"])
    assert "on 6 train tasks" in capsys.readouterr().err

    latest = run_copy / "checkpoints" / "latest.pt"
    eval_main([str(latest), "eval.test_tasks=6"])
    out = capsys.readouterr().out
    assert "epoch None" not in out and "| latest.pt after iteration 8 |" in out
    [member] = json.loads((run_copy / "eval" / "eval.test_tasks=6" / "results.json").read_text())[
        "per_model"
    ]
    assert member["epoch"] is None and member["iteration"] == 8
    assert results["num_test_tasks"] == 40  # the run's own results are untouched


def test_member_checkpoints_describe_themselves(run_copy: Path, tmp_path: Path) -> None:
    """One copied .pt in an empty folder evaluates to its row of the run's results."""
    results = json.loads((run_copy / "results.json").read_text())
    member = results["per_model"][0]
    source = run_copy / "checkpoints" / f"epoch_{member['epoch']:04d}.pt"
    state = torch.load(source, map_location="cpu", weights_only=True)
    assert state["format"] == MEMBER_FORMAT
    assert state["config"]["task"]["ways"] == 5 and state["config"]["experiment_name"] == "smoke"
    assert state["preprocessing"] == {"image_size": 28, "channels": 1, "mean": None, "std": None}
    assert state["mamlpp_version"] and state["epoch"] == member["epoch"]

    lone = tmp_path / "elsewhere" / "model.pt"
    lone.parent.mkdir()
    shutil.copy(source, lone)
    done = run_eval(str(lone), cwd=run_copy.parent.parent)  # the run's cwd: dataset.source paths
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in lone.parent.iterdir()) == ["eval", "model.pt"]
    out = json.loads((lone.parent / "eval" / "default" / "results.json").read_text())
    assert out["test_accuracy_mean"] == member["test_accuracy_mean"]
    assert out["test_accuracy_ci95"] == member["test_accuracy_ci95"]
    assert out["best_val_accuracy"] == member["val_accuracy"]


def test_cross_domain_image_folder_converts_channels(
    trained_run: Path, own_images: Path, tmp_path: Path
) -> None:
    """An Omniglot (grey) model on an RGB image folder: 3 -> 1 channels, same ways. The
    README's command as printed, from an empty directory (no dataset.data_dir: the decoded
    cache goes to ./datasets/image_folder, as mamlpp-train would put it)."""
    root = tmp_path / "rgb"
    for split in ("train", "val", "test"):  # the eval alphabets, one split each, tinted RGB
        for cls in sorted((own_images / "query").iterdir()):
            out = root / split / cls.name
            out.mkdir(parents=True)
            for i, png in enumerate(sorted(cls.iterdir())):
                grey = np.asarray(Image.open(png).convert("L"))
                tinted = np.stack([grey, grey, np.minimum(grey, 200)], -1).astype(np.uint8)
                Image.fromarray(tinted).save(out / f"{i}.png")
    readme = (REPO_ROOT / "README.md").read_text()
    [printed] = [
        line
        for line in readme.splitlines()
        if line.startswith(".venv/bin/mamlpp-eval") and "dataset=image_folder" in line
    ]
    command = printed.split("#")[0].split()
    assert command[:2] == [".venv/bin/mamlpp-eval", "runs/smoke/base"]
    args = [a.replace("/data/my_images", str(root)) for a in command[2:]]
    assert args == ["dataset=image_folder", f"dataset.source={root}"]
    run = tmp_path / "runs" / "smoke" / "base"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    cwd = tmp_path / "here"
    cwd.mkdir()
    done = run_eval(str(run), *args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert "converting the dataset's 3->1 channel images" in done.stderr
    assert (cwd / "datasets" / "image_folder" / "cache").is_dir()
    out = json.loads(next((run / "eval").glob("*/results.json")).read_text())
    assert out["channels_converted"] == "3->1" and out["config"]["dataset"] == "image_folder"
    assert out["num_test_tasks"] == 40  # the run's own eval.test_tasks
    print(f"\ncross-domain (tinted RGB folder, 5-way 1-shot): {out['test_accuracy_mean']:.3f}")
    assert out["test_accuracy_mean"] > 0.4  # chance is 0.2


def test_convert_channels_matches_pil() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (6, 3, 9, 9), dtype=np.uint8)
    grey = convert_channels(rgb, 1)
    ref = [np.asarray(Image.fromarray(x.transpose(1, 2, 0)).convert("L")) for x in rgb]
    assert np.array_equal(grey[:, 0], np.stack(ref))
    assert np.array_equal(convert_channels(grey, 3), np.repeat(grey, 3, axis=1))
    assert np.array_equal(convert_channels(convert_channels(grey, 3), 1), grey)  # lossless back


# --------------------------------------------------------------------------- your own images


def test_support_query_predicts_own_images(trained_run: Path, own_images: Path) -> None:
    before = hashes(trained_run)
    done = run_eval(
        str(trained_run),
        "--support",
        str(own_images / "support"),
        "--query",
        str(own_images / "query"),
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if re.search(r"\.png\s", line)]
    assert len(lines) == 25  # one line per query image: path, class, probability
    summary = json.loads((trained_run / "eval" / "predict" / "predictions.json").read_text())
    csv_rows = (trained_run / "eval" / "predict" / "predictions.csv").read_text().splitlines()
    assert len(csv_rows) == 26 and csv_rows[0] == "image,predicted,probability,true"
    assert summary["labelled_queries"] == 25 and summary["support_images"] == 15
    print(f"\nown images: {summary['correct']}/25 right ({100 * summary['accuracy']:.0f}%)")
    assert summary["accuracy"] >= 0.6  # chance is 0.2
    assert f"{summary['correct']}/25 labelled queries right" in done.stdout
    assert {k: v for k, v in hashes(trained_run).items() if not k.startswith("eval/")} == before


def test_python_api_adapt_predict(trained_run: Path, own_images: Path) -> None:
    import mamlpp

    model = mamlpp.load(trained_run, device="cpu")
    assert model.ways == 5 and len(model.learners) == 2
    classes = sorted(p.name for p in (own_images / "support").iterdir())
    support = sorted((own_images / "support").glob("*/*.png"))
    labels = [classes.index(p.parent.name) for p in support]
    query = sorted((own_images / "query").glob("*/*.png"))
    adapted = model.adapt(model.load_images(support), labels)
    probs = adapted.predict_proba(model.load_images(query))
    assert probs.shape == (25, 5) and torch.allclose(probs.sum(1), torch.ones(25))
    truth = torch.tensor([classes.index(p.parent.name) for p in query])
    assert (probs.argmax(1) == truth).float().mean() >= 0.6
    # uint8 pixels are normalised on the way in: the same logits as the decoded floats.
    pixels = torch.from_numpy(np.stack([model.preprocessing.decode_file(p) for p in query]))
    logits = adapted.predict_logits(model.load_images(query))
    assert torch.equal(adapted.predict_logits(pixels), logits)
    assert torch.equal(adapted.predict(query), logits.argmax(1))  # labels, as scikit-learn's


def test_adapt_then_predict_equals_predict(make_learner, make_batch) -> None:
    from conftest import MAMLPP_ALL

    for options in ({}, MAMLPP_ALL):
        learner, batch = make_learner(**options), make_batch()
        fast = learner.adapt(batch.xs, batch.ys, 3)
        assert torch.equal(learner.predict(batch, 3), learner.predict_adapted(fast, batch.xt, 3))


def test_preprocessing_decodes_like_the_omniglot_loader(
    omniglot_source_dir: Path, omniglot_data_dir: Path, tmp_path: Path
) -> None:
    from mamlpp.data.omniglot import load_omniglot

    images = load_omniglot(omniglot_data_dir, source=omniglot_source_dir)
    prep = Preprocessing(28, 1)
    with zipfile.ZipFile(omniglot_source_dir / "images_background.zip") as z:
        first = sorted(n for n in z.namelist() if n.endswith(".png"))[0]
        (tmp_path / "drawing.png").write_bytes(z.read(first))
    decoded = prep.decode_file(tmp_path / "drawing.png")
    assert np.array_equal(decoded[0], images[0, 0])


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_fail_in_one_line(
    run_copy: Path, own_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    before = hashes(run_copy)
    ckpt = run_copy / "checkpoints" / "epoch_0001.pt"

    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert "no checkpoints/ folder" in eval_error(capsys, str(empty))
    assert "does not exist" in eval_error(capsys, str(tmp_path / "nowhere"))

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert "is not a mamlpp model" in eval_error(capsys, str(foreign))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert "is unreadable" in eval_error(capsys, str(truncated))
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    assert "is unreadable" in eval_error(capsys, str(text))

    line = eval_error(capsys, str(run_copy), "task.ways=20")
    assert "task.ways=20" in line and "5 ways" in line
    assert "did you mean eval.test_tasks" in eval_error(capsys, str(run_copy), "eval.test_taks=9")
    assert "defines the trained model" in eval_error(capsys, str(run_copy), "model.filters=8")
    assert "members=" in eval_error(capsys, str(run_copy), "members=worst")
    # --name is one plain folder under eval/: no way out of it, nothing overwritten.
    outside = run_copy.parent / "outside"
    for name in ("..", ".", "../results", "a/b", str(outside), "", ".hidden", "-x", "x" * 151):
        line = eval_error(capsys, str(run_copy), f"--name={name}")
        assert "is not a plain folder name" in line
    assert not outside.exists()
    assert "keeps epochs" in eval_error(capsys, str(run_copy), "members=epoch=99")

    support, query = own_images / "support", own_images / "query"
    one = tmp_path / "one_class"
    shutil.copytree(next(support.iterdir()), one / "only")
    line = eval_error(capsys, str(run_copy), "--support", str(one), "--query", str(query))
    assert "has 1 class folder(s)" in line and "5 ways" in line
    hollow = tmp_path / "hollow"
    shutil.copytree(support, hollow)
    for png in next(p for p in sorted(hollow.iterdir())).iterdir():
        png.unlink()
    line = eval_error(capsys, str(run_copy), "--support", str(hollow), "--query", str(query))
    assert "holds no images" in line
    broken = tmp_path / "broken_query"
    broken.mkdir()
    (broken / "drawing.png").write_bytes(b"\x89PNG not really")
    line = eval_error(capsys, str(run_copy), "--support", str(support), "--query", str(broken))
    assert "cannot decode image" in line and "drawing.png" in line

    assert hashes(run_copy) == before  # nothing written, not even eval/


# --------------------------------------------------------------------------- where the data is


def _moved_member(run_copy: Path, tmp_path: Path) -> Path:
    """The run's best member as if trained on another machine under MAMLPP_ROOT=<there>: its
    saved paths and dataset.data_dir (derived from paths.data_dir) name a folder absent here."""
    source = run_copy / "checkpoints" / "epoch_0000.pt"
    state = torch.load(source, map_location="cpu", weights_only=True)
    there = tmp_path / "other_machine"
    state["config"]["paths"] = {
        "root": str(there),
        "data_dir": str(there / "datasets"),
        "runs_dir": str(there / "runs"),
    }
    state["config"]["dataset"]["data_dir"] = str(there / "datasets" / "omniglot")
    model = tmp_path / "model" / "model.pt"
    model.parent.mkdir()
    save_checkpoint(model, state)
    return model


@pytest.mark.parametrize("variable", ["MAMLPP_DATA_DIR", "MAMLPP_ROOT"])
def test_eval_honours_mamlpp_root_and_data_dir(
    run_copy: Path,
    omniglot_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    variable: str,
) -> None:
    """As mamlpp-train: the data (here the decoded Omniglot cache) is found where the variable
    says, for the run's own dataset and for dataset=<name>, not fetched again elsewhere."""
    for name in ("MAMLPP_ROOT", "MAMLPP_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    model = _moved_member(run_copy, tmp_path)
    here = tmp_path / "data_here"
    data_dir = here if variable == "MAMLPP_DATA_DIR" else here / "datasets"
    data_dir.mkdir(parents=True)
    (data_dir / "omniglot").symlink_to(omniglot_data_dir)
    monkeypatch.setenv(variable, str(here))
    monkeypatch.chdir(tmp_path / "model")
    results = json.loads((run_copy / "results.json").read_text())
    source = torch.load(model, weights_only=True)["config"]["dataset"]["source"]

    capsys.readouterr()
    eval_main([str(model)])
    err = capsys.readouterr().err
    assert f"loaded cached {data_dir / 'omniglot' / 'cache'}" in err, err
    out = json.loads((model.parent / "eval" / "default" / "results.json").read_text())
    epoch0 = next(m for m in results["per_model"] if m["epoch"] == 0)
    assert out["test_accuracy_mean"] == epoch0["test_accuracy_mean"]

    eval_main([str(model), "dataset=omniglot", f"dataset.source={source}", "eval.test_tasks=6"])
    assert f"loaded cached {data_dir / 'omniglot' / 'cache'}" in capsys.readouterr().err
    assert not (tmp_path / "other_machine").exists()
    assert not (tmp_path / "model" / "datasets").exists()


def test_eval_dataset_groups_resolve_their_data_dir(
    run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dataset=<name> without dataset.data_dir: the group's default under paths.data_dir."""
    from mamlpp.evaluate import eval_config

    saved = torch.load(run_copy / "checkpoints" / "epoch_0000.pt", weights_only=True)["config"]
    monkeypatch.delenv("MAMLPP_ROOT", raising=False)
    monkeypatch.setenv("MAMLPP_DATA_DIR", str(tmp_path / "d"))
    for name in ("omniglot", "tiny_imagenet", "image_folder", "miniimagenet"):
        cfg, _ = eval_config(saved, [f"dataset={name}", f"dataset.source={tmp_path}"])
        assert cfg.dataset.data_dir == str(tmp_path / "d" / name)
    monkeypatch.delenv("MAMLPP_DATA_DIR")
    cfg, _ = eval_config(saved, ["dataset=tiny_imagenet"])
    assert cfg.dataset.data_dir == os.path.join("datasets", "tiny_imagenet")
    cfg, _ = eval_config(saved, [])  # the run's own, as training wrote it without a variable
    assert cfg.dataset.data_dir == saved["dataset"]["data_dir"]


# --------------------------------------------------------------------------- finished runs


def _outputs(run_dir: Path) -> dict[str, str]:
    """Hashes of a run's own outputs (Hydra's .hydra/ and the lock file are the CLI's)."""
    return {k: v for k, v in hashes(run_dir).items() if not k.startswith((".hydra", ".lock"))}


def test_retest_with_other_settings_is_refused(cli: Cli, run_copy: Path) -> None:
    before = _outputs(run_copy)
    arg = f"hydra.run.dir={run_copy}"
    done = cli.run(arg, "run.retest=true", "run.allow_config_change=true", "eval.task_seed=7")
    assert done.returncode == 2, done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1 and "eval.task_seed: 0 -> 7" in errors[0] and "mamlpp-eval" in errors[0]
    assert _outputs(run_copy) == before
    done = cli.run(arg)  # the original command still finds its finished run
    assert done.returncode == 0 and "run already finished" in done.stderr, done.stderr


# --------------------------------------------------------------------------- compose / train


def test_compose_and_train_in_process(
    cli: Cli, reference_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mamlpp

    monkeypatch.chdir(tmp_path)
    cfg = mamlpp.compose(*TINY_ARGS, *cli.data_args, "seed=0")
    # As mamlpp-train names it; seed=0 is smoke's own value, so it names nothing.
    assert cfg.run.dir == "runs/smoke/algorithm.inner_steps=1,eval.top_k=3,train.meta_batch_size=2"
    try:
        results = mamlpp.train(cfg)
    finally:
        torch.set_flush_denormal(False)  # the builder sets it for its CPU run
    run_dir = tmp_path / cfg.run.dir
    assert result_accuracies(results) == result_accuracies(reference_run["results"])
    assert read_metric_rows(run_dir / "metrics.csv") == read_metric_rows(
        reference_run["dir"] / "metrics.csv"
    )
    with pytest.raises(Exception, match="inner_lrr"):
        mamlpp.compose("algorithm.inner_lrr=0.5")
