"""The Python API as a notebook uses it: public names, compose/train, load_images, adapt,
predict (scikit-learn's names), the one support-set rule, `_target_` typos, and the README's
Notebook cells executed as printed. In-process, on real Omniglot, except one CLI check."""

from __future__ import annotations

import logging
import os
import pydoc
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mamlpp
from helpers.cli import TINY_ARGS, Cli
from helpers.errors import one_line
from helpers.paths import REPO_ROOT, USER_CODE
from mamlpp.errors import ConfigError, DataError, MamlppError
from mamlpp.inference import TrainedModel

WAYS = 5


@pytest.fixture
def no_flush_denormal() -> Iterator[None]:
    yield
    torch.set_flush_denormal(False)  # the builder sets it for its CPU run


# --------------------------------------------------------------------------- public names


def test_public_names_are_listed_and_documented() -> None:
    assert {"compose", "load", "train"} <= set(mamlpp.__all__)
    assert set(mamlpp.__all__) <= set(dir(mamlpp))
    for name in mamlpp.__all__:
        assert callable(getattr(mamlpp, name)), name
    assert issubclass(mamlpp.ConfigError, mamlpp.MamlppError)
    text = pydoc.render_doc(mamlpp, renderer=pydoc.plaintext)
    for name in ("compose(", "load(", "train(", "predict_proba", "predict_logits"):
        assert name in text, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mamlpp.nope  # noqa: B018


@pytest.mark.slow
def test_import_stays_lazy() -> None:
    code = "import mamlpp, sys; print(sorted({'torch', 'hydra'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


# --------------------------------------------------------------------------- compose / train


def test_compose_typos_say_what_was_meant() -> None:
    with pytest.raises(ConfigError) as err:
        mamlpp.compose("algorithm.inner_lrr=0.1")
    assert "'algorithm.inner_lrr'" in one_line(err) and "did you mean algorithm.inner_lr?" in (
        str(err.value)
    )
    with pytest.raises(ConfigError) as err:
        mamlpp.compose("experiment=smoke", "algorithm=mamll")
    assert "did you mean algorithm=maml?" in one_line(err) and "metasgd" in str(err.value)
    with pytest.raises(ConfigError) as err:
        mamlpp.compose("algoritm=maml")
    assert "did you mean algorithm?" in one_line(err)
    with pytest.raises(ConfigError) as err:
        mamlpp.compose("algorithm.inner_lr=abc")
    assert "'abc'" in one_line(err)  # Hydra's cause, not only "Error merging override"
    assert mamlpp.compose(["experiment=smoke", "seed=3"]) == mamlpp.compose(
        "experiment=smoke", "seed=3"
    )


def test_train_says_what_it_takes(tmp_path: Path) -> None:
    cfg = mamlpp.compose("experiment=smoke")
    for bad in ((42,), (["experiment=smoke", 3],), (cfg, "seed=3"), (cfg, "seed=3", "x")):
        with pytest.raises(ConfigError) as err:
            mamlpp.train(*bad)
        assert "mamlpp.train takes a Config" in one_line(err) and "run_dir=" in str(err.value)
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tiny_run(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained in this process from override strings (mamlpp.train("...", ...))."""
    run_dir = tmp_path_factory.mktemp("api") / "run"
    try:
        results = mamlpp.train(
            *TINY_ARGS, *cli.data_args, "eval.val_tasks=4", "eval.test_tasks=4", run_dir=run_dir
        )
    finally:
        torch.set_flush_denormal(False)
    assert 0 <= results["test_accuracy_mean"] <= 1 and results["num_test_tasks"] == 4
    assert (run_dir / "results.json").is_file()
    return run_dir


@pytest.fixture(scope="module")
def drawings(omniglot_source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five Omniglot evaluation characters, 20 drawings each: <dir>/<character>/<file>.png."""
    root = tmp_path_factory.mktemp("drawings")
    with zipfile.ZipFile(omniglot_source_dir / "images_evaluation.zip") as z:
        for name in z.namelist():
            parts = name.split("/")
            if name.endswith(".png") and parts[1] == "Angelic" and parts[2] <= "character05":
                (root / parts[2]).mkdir(exist_ok=True)
                (root / parts[2] / parts[3]).write_bytes(z.read(name))
    assert len(list(root.iterdir())) == WAYS
    return root


@pytest.fixture(scope="module")
def model(tiny_run: Path) -> TrainedModel:
    return mamlpp.load(tiny_run, device="cpu")


def support_of(drawings: Path, shots: int = 2) -> tuple[list[Path], list[int]]:
    classes = sorted(drawings.iterdir())
    paths = [p for c in classes for p in sorted(c.glob("*.png"))[:shots]]
    return paths, [i for i in range(len(classes)) for _ in range(shots)]


# --------------------------------------------------------------------------- predict


@pytest.mark.slow
def test_predict_gives_labels_proba_and_logits(model: TrainedModel, drawings: Path) -> None:
    paths, labels = support_of(drawings)
    adapted = model.adapt(model.load_images(paths), labels)
    query = model.load_images([sorted(c.glob("*.png"))[5] for c in sorted(drawings.iterdir())])
    logits = adapted.predict_logits(query)
    probs = adapted.predict_proba(query)
    predicted = adapted.predict(query)
    assert logits.shape == probs.shape == (WAYS, WAYS)
    assert predicted.shape == (WAYS,) and predicted.dtype == torch.int64
    assert torch.equal(predicted, logits.argmax(1))
    assert torch.allclose(probs, logits.softmax(1)) and torch.allclose(probs.sum(1), torch.ones(5))
    assert torch.equal(adapted.decision_function(query), logits)
    # adapt and predict take what load_images takes, with the same result
    direct = model.adapt(paths, labels)
    assert torch.equal(
        direct.predict_logits(drawings / "character01"),
        adapted.predict_logits(model.load_images(drawings / "character01")),
    )


# --------------------------------------------------------------------------- load_images


@pytest.mark.slow
def test_load_images_takes_paths_folders_pil_and_arrays(
    model: TrainedModel, drawings: Path
) -> None:
    folder = drawings / "character01"
    files = sorted(folder.glob("*.png"))
    first = model.load_images([files[0]])
    assert first.shape == (1, 1, 28, 28)
    assert torch.equal(model.load_images(str(files[0])), first)  # the reported failure
    assert torch.equal(model.load_images(files[0]), first)
    assert torch.equal(model.load_images(folder), model.load_images(files))  # sorted by name
    with Image.open(files[0]) as im:
        assert torch.equal(model.load_images(im), first)
        grey = np.asarray(im.convert("L"))
    assert grey.dtype == np.uint8 and grey.ndim == 2
    for array in (grey, grey[:, :, None], grey / 255.0, np.stack([grey] * 3, -1)):
        assert torch.equal(model.load_images(array), first), (array.shape, array.dtype)
    mixed = model.load_images([str(files[0]), Image.open(files[1]), grey])
    assert torch.equal(mixed, model.load_images([files[0], files[1], files[0]]))


@pytest.mark.slow
def test_pil_images_decode_like_their_files(model: TrainedModel, tmp_path: Path) -> None:
    """A PIL image gives what its file gives (16-bit, EXIF orientation, palette): one decoder."""
    rng = np.random.default_rng(0)
    deep = tmp_path / "deep.png"
    Image.fromarray(rng.integers(0, 65535, (40, 30), dtype=np.uint16)).save(deep)
    turned = tmp_path / "turned.jpg"
    rgb = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    exif = rgb.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rgb.save(turned, exif=exif.tobytes())
    palette = tmp_path / "palette.gif"
    rgb.convert("P").save(palette)
    cmyk = tmp_path / "cmyk.jpg"
    rgb.convert("CMYK").save(cmyk)
    for path in (deep, turned, palette, cmyk):
        with Image.open(path) as im:
            assert torch.equal(model.load_images(im), model.load_images(path)), path.name


@pytest.mark.slow
def test_load_images_refuses_the_rest_in_one_line(model: TrainedModel, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    cases = [
        (3, "a PIL image"),
        (None, "a PIL image"),
        ((), "empty list"),
        ("", "holds no images"),  # the current folder, holding no images
        (str(tmp_path / "missing.png"), "does not exist"),
        (str(tmp_path), "holds no images"),
        (np.zeros((2, 28, 28, 1), np.uint8), "HxW or HxWxC"),
        (np.zeros((28, 28), np.int16), "uint8"),
        (np.full((28, 28), 2.0), "[0, 1]"),
        (torch.zeros(1, 1, 28, 28), "goes to adapt/predict"),
    ]
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        for bad, message in cases:
            with pytest.raises(MamlppError) as err:
                model.load_images(bad)
            assert message in one_line(err), (bad, str(err.value))
        with pytest.raises(MamlppError) as err:
            model.load_images([[str(tmp_path / "x.png")]])
        assert "a list of these (got list)" in one_line(err)
    finally:
        os.chdir(cwd)


# --------------------------------------------------------------------------- one support rule


@pytest.mark.slow
def test_adapt_and_cli_share_the_support_rule(
    model: TrainedModel, drawings: Path, tmp_path: Path
) -> None:
    from mamlpp.evaluate import read_support

    paths, labels = support_of(drawings)
    four = [i for i, label in enumerate(labels) if label < 4]
    with pytest.raises(DataError) as err:
        model.adapt(model.load_images([paths[i] for i in four]), [labels[i] for i in four])
    api = one_line(err)
    assert "has 4 class(es)" in api and "trained for 5 ways" in api
    folders = tmp_path / "support"
    for c in sorted(drawings.iterdir())[:4]:
        shutil.copytree(c, folders / c.name)
    with pytest.raises(DataError) as err:
        read_support(folders, WAYS)
    cli = one_line(err)
    assert "has 4 class folder(s)" in cli
    rule = "but the model's head was trained for 5 ways: give exactly 5 classes"
    assert rule in api and rule in cli
    with pytest.raises(MamlppError, match=r"0\.\.4"):
        model.adapt(model.load_images(paths), [label + 1 for label in labels])


# --------------------------------------------------------------------------- _target_ typos


@pytest.fixture
def user_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tests/user_code and two broken modules on sys.path."""
    (tmp_path / "boom_nets.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "needs_dep.py").write_text("import not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(USER_CODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("target", "cause"),
    [
        ("torch.optim.Adm", "AttributeError: module 'torch.optim' has no attribute 'Adm' "
         "(did you mean torch.optim.Adam?)"),
        ("torch.optimm.Adam", "no attribute 'optimm' (did you mean torch.optim?)"),
        ("user_nets.Nope", "AttributeError: module 'user_nets' has no attribute 'Nope'"),
        ("user_nets.SmallCN", "(did you mean user_nets.SmallCNN?)"),
        ("user_netz.SmallCNN", "ModuleNotFoundError: no module named 'user_netz' "
         "(did you mean user_nets?)"),
        ("boom_nets.Net", "importing boom_nets: RuntimeError: boom at import"),
        ("needs_dep.Net", "importing needs_dep: ModuleNotFoundError: No module named "
         "'not_installed_dependency'"),
    ],
)  # fmt: skip
def test_target_typos_name_the_cause(
    user_code: Path, target: str, cause: str, caplog: pytest.LogCaptureFixture
) -> None:
    from mamlpp.algorithms.optimizer import build_optimizer
    from mamlpp.config import OptimizerConfig

    params = [torch.nn.Parameter(torch.ones(2))]
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as err:
        build_optimizer(OptimizerConfig(target), params, 0.1)
    assert f"config key 'optimizer._target_' = '{target}'" in one_line(err)
    assert cause in str(err.value), str(err.value)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # Hydra's ERROR lines


@pytest.mark.slow
def test_target_typo_in_process_train(
    cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture, no_flush_denormal: None
) -> None:
    with pytest.raises(ConfigError) as err:
        mamlpp.train(
            *TINY_ARGS, *cli.data_args, "optimizer._target_=torch.optim.Adm", run_dir=tmp_path / "r"
        )
    assert "did you mean torch.optim.Adam?" in one_line(err)
    assert "ERROR" not in capsys.readouterr().out


@pytest.mark.slow
def test_target_typo_on_the_command_line(cli: Cli, tmp_path: Path) -> None:
    env = {**cli.env, "PYTHONPATH": str(USER_CODE)}
    args = ["algorithm=maml", "model=module", "model._target_=user_nets.Nope"]
    done = cli.run(*args, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("mamlpp: error: "), done.stderr
    assert "AttributeError: module 'user_nets' has no attribute 'Nope'" in errors[0]
    assert "ERROR" not in done.stdout + done.stderr and "Error loading" not in done.stderr


# --------------------------------------------------------------------------- README notebook


def notebook_cells(readme: str) -> list[str]:
    """The python blocks of the README's Notebook section, in order."""
    section = readme.split("<!-- notebook -->", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_readme_notebook_cells_run_as_printed(
    omniglot_source_dir: Path,
    omniglot_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    no_flush_denormal: None,
) -> None:
    cells = notebook_cells((REPO_ROOT / "README.md").read_text())
    assert len(cells) >= 3
    data = tmp_path / "datasets" / "omniglot"
    (data / "cache").mkdir(parents=True)
    for zip_name in ("images_background.zip", "images_evaluation.zip"):
        (data / zip_name).symlink_to(omniglot_source_dir / zip_name)
    for cached in (omniglot_data_dir / "cache").iterdir():  # the session's decoded images
        (data / "cache" / cached.name).symlink_to(cached)
    for var in ("MAMLPP_ROOT", "MAMLPP_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    for i, cell in enumerate(cells):
        exec(compile(cell, f"README.md notebook cell {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert (tmp_path / namespace["cfg"].run.dir / "results.json").is_file()
    predicted, probs = namespace["predicted"], namespace["probs"]
    assert predicted.shape == (WAYS,) and torch.equal(predicted, probs.argmax(1))
    assert torch.allclose(probs.sum(1), torch.ones(WAYS))
    assert len([line for line in out.splitlines() if " -> character0" in line]) == WAYS
