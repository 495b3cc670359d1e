"""A checkpoint, a run directory or a config.yaml never makes mamlpp run code.

Each test plants files as a stranger could ship them: mamlpp's own formats, written by mamlpp's
own writers, whose saved config names code (`dataset._target_=os.system` with a shell command,
a module in tests/user_code/planted.py that leaves a marker file when imported or called). The
marker must stay absent, the refusal is one line with a non-zero exit, and the same files work
once the user names the code (or opts in with --trust-code / trust_code=True).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import mamlpp
from helpers.errors import eval_error
from helpers.paths import USER_CODE
from mamlpp.algorithms.factory import build_learner
from mamlpp.config import Config
from mamlpp.data.preprocessing import Preprocessing
from mamlpp.errors import ConfigError, MamlppError
from mamlpp.evaluate import main as eval_main
from mamlpp.experiment.checkpoints import save_checkpoint
from mamlpp.experiment.members import member_state

SMOKE = ("experiment=smoke", "device=cpu", "progress_bar=false")
MODULE = ("algorithm=maml", "model=module", "model._target_=user_nets.SmallCNN", "+model.width=8")
FEW_TASKS = "eval.test_tasks=4"


@pytest.fixture(autouse=True)
def user_code_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/user_code is importable, as a user's own package would be: without the guard,
    mamlpp could import planted.py."""
    monkeypatch.syspath_prepend(str(USER_CODE))


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file planted code writes (os.system's `touch`, planted.py's functions)."""
    path = tmp_path / "MARKER"
    monkeypatch.setenv("MAMLPP_TEST_MARKER", str(path))
    return path


@pytest.fixture
def omniglot(omniglot_source_dir: Path, omniglot_data_dir: Path) -> tuple[str, str]:
    return f"dataset.source={omniglot_source_dir}", f"dataset.data_dir={omniglot_data_dir}"


def plant(path: Path, cfg: Config, edit: dict[str, Any], prep: Preprocessing | None) -> Path:
    """A member checkpoint of `cfg` (fresh weights) whose saved config then gets `edit`
    (dotted key -> value); prep=None writes the older format (learner only, config.yaml)."""
    torch.manual_seed(0)
    learner = build_learner(cfg, 1 if prep is None else prep.channels)
    state = member_state(learner.state_dict(), cfg, prep or Preprocessing(28, 1), 1, 0.5)
    for key, value in edit.items():
        *sections, name = key.split(".")
        node = state["config"]
        for section in sections:
            node = node[section]
        node[name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, state if prep is not None else {"learner": state["learner"]})
    return path


def plant_run(root: Path, cfg: Config, edit: dict[str, Any]) -> Path:
    """A run directory of the older format: a member holding only weights, the config in
    config.yaml (as mamlpp-train writes it) with `edit` applied, and results.json."""
    plant(root / "checkpoints" / "epoch_0001.pt", cfg, {}, None)
    config = OmegaConf.to_container(OmegaConf.structured(cfg))
    for key, value in edit.items():
        section, name = key.split(".")
        config[section][name] = value
    (root / "config.yaml").write_text(OmegaConf.to_yaml(config))
    per_model = [{"epoch": 1, "val_accuracy": 0.5}]
    (root / "results.json").write_text(json.dumps({"per_model": per_model}))
    return root


def evaluated(capsys: pytest.CaptureFixture, *argv: str) -> tuple[dict[str, Any], str]:
    """mamlpp-eval in-process, successfully: its results.json and its stderr."""
    capsys.readouterr()
    eval_main(list(argv))
    err = capsys.readouterr().err
    wrote = [line for line in err.splitlines() if "] wrote " in line][-1]
    return json.loads((Path(wrote.split("] wrote ")[1]) / "results.json").read_text()), err


def omniglot_pngs(source: Path, folder: Path, classes: int, per_class: int) -> Path:
    """<folder>/<class>__<n>.png from real Omniglot drawings, a flat layout that only the
    user's lister (tests/user_code/user_data.list_flat) reads."""
    import zipfile

    folder.mkdir(parents=True)
    with zipfile.ZipFile(source / "images_evaluation.zip") as z:
        chars: dict[str, list[str]] = {}
        for name in sorted(n for n in z.namelist() if n.endswith(".png")):
            chars.setdefault(os.path.dirname(name), []).append(name)
        for c, names in enumerate(list(chars.values())[:classes]):
            for i, name in enumerate(names[:per_class]):
                (folder / f"char{c:02d}__{i}.png").write_bytes(z.read(name))
    return folder


# --------------------------------------------------------------------------- refused


def test_a_checkpoint_naming_a_shell_command_runs_nothing(
    tmp_path: Path, marker: Path, omniglot: tuple[str, str], capsys: pytest.CaptureFixture
) -> None:
    """dataset=custom with dataset._target_=os.system: evaluating the model would call it."""
    cfg = mamlpp.compose(*SMOKE, *omniglot)
    command = f"touch {marker}"
    edit = {"dataset.name": "custom", "dataset._target_": "os.system", "dataset.source": None}
    edit["dataset.kwargs"] = {"command": command}
    model = plant(tmp_path / "model.pt", cfg, edit, Preprocessing(28, 1))

    line = eval_error(capsys, str(model), FEW_TASKS)
    assert "'dataset._target_' = 'os.system'" in line and str(model) in line
    assert "--trust-code" in line
    assert not marker.exists()
    assert not (tmp_path / "eval").exists()  # nothing written either
    # Naming another lister on the command line replaces the planted one; naming nothing
    # but the dataset's other keys does not.
    line = eval_error(capsys, str(model), FEW_TASKS, "dataset.kwargs.command=true")
    assert "os.system" in line and not marker.exists()
    # The Python API needs no dataset for a self-describing member: it loads and imports nothing.
    loaded = mamlpp.load(model, device="cpu")
    assert loaded.ways == 5 and not marker.exists()


def test_a_run_directory_naming_code_runs_nothing(
    tmp_path: Path, marker: Path, omniglot: tuple[str, str], capsys: pytest.CaptureFixture
) -> None:
    """An older run directory: weights-only members, the config in config.yaml. Re-creating its
    data (evaluation, mamlpp.load, --support/--query) would call the planted lister."""
    cfg = mamlpp.compose(*SMOKE, *omniglot)
    edit = {"dataset.name": "custom", "dataset._target_": "planted.lister"}
    run = plant_run(tmp_path / "run", cfg, edit)
    config_yaml = str(run / "config.yaml")

    line = eval_error(capsys, str(run), FEW_TASKS)
    assert "'dataset._target_' = 'planted.lister'" in line and config_yaml in line
    with pytest.raises(ConfigError, match="dataset._target_.*trust_code=True") as err:
        mamlpp.load(run, device="cpu")
    assert "\n" not in str(err.value)
    support = tmp_path / "support"
    for c in range(5):
        (support / f"c{c}").mkdir(parents=True)
        Image.new("L", (28, 28), 40 * c).save(support / f"c{c}" / "a.png")
    line = eval_error(capsys, str(run), "--support", str(support), "--query", str(support))
    assert "planted.lister" in line
    assert not marker.exists()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "results.json"]


def test_a_module_backbone_named_by_a_file_is_not_imported(
    tmp_path: Path, marker: Path, omniglot: tuple[str, str], capsys: pytest.CaptureFixture
) -> None:
    """model=module: building the model imports model._target_ (planted.py marks its import)."""
    cfg = mamlpp.compose(*SMOKE, *omniglot, *MODULE)
    model = plant(
        tmp_path / "model.pt", cfg, {"model._target_": "planted.Net"}, Preprocessing(28, 1)
    )

    line = eval_error(capsys, str(model), FEW_TASKS)
    assert "'model._target_' = 'planted.Net'" in line and "model._target_=planted.Net" in line
    with pytest.raises(ConfigError, match="model._target_"):
        mamlpp.load(model, device="cpu")
    # Naming another class is not naming this one: it would be another model.
    line = eval_error(capsys, str(model), "model._target_=user_nets.SmallCNN")
    assert "trained with model._target_=planted.Net" in line
    assert not marker.exists()
    assert "planted" not in sys.modules


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ({"algorithm.inner_rule._target_": "planted.Rule"}, "algorithm.inner_rule._target_"),
        (
            {"algorithm.name": "planted_algo", "algorithm._target_": "planted.register_algorithm"},
            "algorithm._target_",
        ),
    ],
)
def test_an_algorithm_or_inner_rule_named_by_a_file_is_not_imported(
    tmp_path: Path,
    marker: Path,
    omniglot: tuple[str, str],
    capsys: pytest.CaptureFixture,
    edit: dict[str, str],
    key: str,
) -> None:
    """A user's algorithm (algorithm._target_) and inner rule (algorithm.inner_rule._target_)
    are code too: building the learner would import them."""
    cfg = mamlpp.compose(*SMOKE, *omniglot, "algorithm=maml")
    model = plant(tmp_path / "model.pt", cfg, edit, Preprocessing(28, 1))

    line = eval_error(capsys, str(model), FEW_TASKS)
    assert f"'{key}' = '{edit[key]}'" in line and "--trust-code" in line
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        mamlpp.load(model, device="cpu")
    line = eval_error(capsys, str(model), f"{key}=user_rules.MomentumSGD")
    assert f"trained with {key}={edit[key]}" in line
    assert not marker.exists()
    assert "planted" not in sys.modules


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dataset: !!python/object/apply:os.system ['touch {marker}']\n", "not a readable config"),
        ("dataset:\n  source: ${{oc.env:HOME}}\n", "interpolation"),
        ("- a list\n", "not a mapping"),
    ],
)
def test_a_config_yaml_builds_no_objects(
    tmp_path: Path,
    marker: Path,
    omniglot: tuple[str, str],
    capsys: pytest.CaptureFixture,
    text: str,
    message: str,
) -> None:
    """config.yaml is read as plain YAML: no Python tags, no interpolations resolved."""
    run = plant_run(tmp_path / "run", mamlpp.compose(*SMOKE, *omniglot), {})
    (run / "config.yaml").write_text(text.format(marker=marker))
    line = eval_error(capsys, str(run), FEW_TASKS)
    assert message in line and "config" in line
    with pytest.raises(MamlppError, match=message):
        mamlpp.load(run, device="cpu")
    assert not marker.exists()


def test_the_saved_meta_optimizer_is_never_imported(
    tmp_path: Path, marker: Path, omniglot: tuple[str, str], capsys: pytest.CaptureFixture
) -> None:
    """Evaluation takes no meta-step: optimizer._target_ is ignored, so the model evaluates."""
    cfg = mamlpp.compose(*SMOKE, *omniglot)
    model = plant(
        tmp_path / "model.pt",
        cfg,
        {"optimizer._target_": "planted.Optimizer"},
        Preprocessing(28, 1),
    )
    results, _ = evaluated(capsys, str(model), FEW_TASKS)
    assert results["num_test_tasks"] == 4 and 0 <= results["test_accuracy_mean"] <= 1
    assert mamlpp.load(model, device="cpu").config.optimizer._target_ == "planted.Optimizer"
    assert not marker.exists()


# --------------------------------------------------------------------------- named or trusted


def test_named_or_trusted_code_is_imported(
    tmp_path: Path, omniglot: tuple[str, str], capsys: pytest.CaptureFixture
) -> None:
    """The user's own module (tests/user_code/user_nets.py): named on the command line or in
    load(overrides=...) it loads; --trust-code / trust_code=True load it with a warning."""
    cfg = mamlpp.compose(*SMOKE, *omniglot, *MODULE)
    model = plant(tmp_path / "model.pt", cfg, {}, Preprocessing(28, 1))
    name = "model._target_=user_nets.SmallCNN"

    assert name in eval_error(capsys, str(model), FEW_TASKS)
    named, err = evaluated(capsys, str(model), FEW_TASKS, name)
    assert "warning" not in err
    trusted, err = evaluated(capsys, str(model), FEW_TASKS, "--trust-code", "--name", "trusted")
    [warning] = [line for line in err.splitlines() if "warning" in line]
    assert "model._target_=user_nets.SmallCNN" in warning and str(model) in warning
    assert trusted["test_accuracy_mean"] == named["test_accuracy_mean"]

    with pytest.raises(ConfigError, match="model._target_"):
        mamlpp.load(model, device="cpu")
    a = mamlpp.load(model, device="cpu", overrides=[name])
    b = mamlpp.load(model, device="cpu", trust_code=True)
    assert a.learners[0].net.module.__class__.__name__ == "SmallCNN"
    x = torch.zeros(5, 1, 28, 28)
    assert torch.equal(a.adapt(x, list(range(5))).predict(x), b.adapt(x, list(range(5))).predict(x))
    with pytest.raises(MamlppError, match="eval.test_tasks=3.*not allowed"):
        mamlpp.load(model, device="cpu", overrides=["eval.test_tasks=3"])


def test_a_named_dataset_lister_is_called(
    tmp_path: Path,
    marker: Path,
    omniglot_source_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """dataset=custom with the user's lister (tests/user_code/user_data.list_flat): evaluated
    when the command line names it, refused when only the file does."""
    flat = omniglot_pngs(omniglot_source_dir, tmp_path / "flat", classes=20, per_class=3)
    overrides = ["dataset=custom", "dataset._target_=user_data.list_flat"]
    overrides += [f"dataset.source={flat}", f"dataset.data_dir={tmp_path / 'data'}"]
    overrides += ["dataset.image_size=28", "task.ways=2", "dataset.normalization=none"]
    cfg = mamlpp.compose(*SMOKE, *overrides)
    model = plant(tmp_path / "model.pt", cfg, {}, Preprocessing(28, 1))
    monkeypatch.chdir(tmp_path)

    line = eval_error(capsys, str(model), FEW_TASKS)
    assert "'dataset._target_' = 'user_data.list_flat'" in line
    results, _ = evaluated(capsys, str(model), FEW_TASKS, "dataset._target_=user_data.list_flat")
    assert results["config"]["dataset"] == "custom" and results["num_test_tasks"] == 4
    assert not marker.exists()


@pytest.mark.slow
def test_the_cli_refuses_and_accepts_in_a_subprocess(
    tmp_path: Path, omniglot: tuple[str, str]
) -> None:
    """The real command: a run directory whose config.yaml names `os.system` with a shell
    command exits 2 with one line, and runs nothing; the user's own module named on the
    command line evaluates (overrides after --name, too)."""
    marker = tmp_path / "MARKER"
    cfg = mamlpp.compose(*SMOKE, *omniglot)
    edit = {"dataset.name": "custom", "dataset._target_": "os.system", "dataset.source": None}
    edit["dataset.kwargs"] = {"command": f"touch {marker}"}
    run = plant_run(tmp_path / "run", cfg, edit)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(USER_CODE), *sys.path])}
    eval_cmd: Callable[..., list[str]] = lambda *a: [sys.executable, "-m", "mamlpp.evaluate", *a]  # noqa: E731

    done = subprocess.run(
        eval_cmd(str(run)), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and "'dataset._target_' = 'os.system'" in errors[0], errors
    assert not marker.exists()

    model = plant(
        tmp_path / "m" / "model.pt",
        mamlpp.compose(*SMOKE, *omniglot, *MODULE),
        {},
        Preprocessing(28, 1),
    )
    args = [str(model), "--name", "mine", "model._target_=user_nets.SmallCNN", FEW_TASKS]
    done = subprocess.run(
        eval_cmd(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((model.parent / "eval" / "mine" / "results.json").read_text())
    assert results["num_test_tasks"] == 4
    assert np.isfinite(results["test_accuracy_mean"])


class _Pickled:
    """What a malicious pickle does on loading: call a function (here, leave the marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "unpickled"))


def test_mamlpp_train_unpickles_nothing(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Hydra's --experimental-rerun unpickles a config.pickle: mamlpp-train refuses it."""
    import pickle

    import mamlpp.train

    planted = tmp_path / ".hydra" / "config.pickle"
    planted.parent.mkdir()
    planted.write_bytes(pickle.dumps(_Pickled(marker)))
    for argv in (["--experimental-rerun", str(planted)], [f"--experimental-rerun={planted}"]):
        monkeypatch.setattr(sys, "argv", ["mamlpp-train", *argv])
        with pytest.raises(SystemExit) as exc:
            mamlpp.train.main()
        assert exc.value.code == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("mamlpp: error: --experimental-rerun is not supported")
    assert not marker.exists()
