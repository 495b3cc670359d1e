"""Every experiment preset composes, validates, and carries the published hyperparameters."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import mamlpp.train  # noqa: F401  (registers the schema and the resolver)
from helpers.paths import REPO_ROOT
from mamlpp.config import Config, conf_dir, to_config
from mamlpp.errors import ConfigError

PRESETS = sorted(p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml"))


def load(preset: str | None, *overrides: str) -> tuple[Config, DictConfig]:
    chosen = [f"experiment={preset}"] if preset else []
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        dcfg = compose("config", [*chosen, *overrides])
    return to_config(dcfg), dcfg


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset: str) -> None:
    cfg, _ = load(preset)
    assert cfg.experiment_name == preset or preset in ("quick", "smoke")


@pytest.mark.parametrize("ways_shots", ["5w1s", "5w5s"])
def test_miniimagenet_presets_follow_the_papers(ways_shots: str) -> None:
    pp, _ = load(f"miniimagenet_{ways_shots}_mamlpp")
    maml, _ = load(f"miniimagenet_{ways_shots}_maml")
    for cfg in (pp, maml):
        d = cfg.dataset
        assert (d.name, d.image_size, d.normalization) == ("miniimagenet", 84, "imagenet")
        assert not d.augment_flip and d.augment_crop_padding == 0
        assert cfg.task.targets == 15 and cfg.algorithm.inner_lr == 0.01
        assert cfg.algorithm.grad_clip == 10
        assert (cfg.train.epochs, cfg.train.iters_per_epoch) == (100, 500)
    assert pp.model.filters == 48 and pp.train.meta_batch_size == 2
    assert pp.algorithm.msl_epochs == 15 and pp.algorithm.min_meta_lr < pp.algorithm.meta_lr
    assert maml.model.filters == 32 and maml.algorithm.inner_steps_eval == 10
    assert maml.train.meta_batch_size == (4 if ways_shots == "5w1s" else 2)


def test_tiny_imagenet_presets_share_one_budget() -> None:
    algorithms = ("mamlpp", "fomaml", "maml", "anil", "boil", "metasgd")
    cfgs = {a: load(f"tiny_imagenet_5w1s_{a}")[0] for a in algorithms}
    budgets = {
        (c.train.epochs, c.train.iters_per_epoch, c.train.meta_batch_size, c.task.targets)
        for c in cfgs.values()
    }
    assert len(budgets) == 1
    assert cfgs["fomaml"].algorithm.second_order is False
    assert cfgs["maml"].algorithm.second_order and not cfgs["maml"].algorithm.multi_step_loss
    assert cfgs["mamlpp"].algorithm.learn_inner_lr
    assert (cfgs["anil"].algorithm.adapt, cfgs["boil"].algorithm.adapt) == ("head", "body")
    assert cfgs["metasgd"].algorithm.per_element_lr
    assert {c.algorithm.inner_lr for a, c in cfgs.items() if a != "mamlpp"} == {0.01}


def test_image_folder_needs_a_source() -> None:
    with pytest.raises(ConfigError, match="dataset.source"):
        load(None, "dataset=image_folder")
    cfg, _ = load(None, "dataset=image_folder", "dataset.source=/data/x")
    assert (cfg.dataset.name, cfg.dataset.normalization) == ("image_folder", "dataset")


def test_conf_dir_is_the_checkout() -> None:
    assert Path(conf_dir()) == REPO_ROOT / "conf"


@pytest.mark.parametrize("device,ok", [("cuda:1", True), ("cpu", True), ("gpu", False)])
def test_device_values(device: str, ok: bool) -> None:
    from mamlpp.config import validate

    cfg = Config(device=device)
    if ok:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match="cuda:<index>"):
            validate(cfg)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("dataset=miniimagenet", "dataset.protocol=maml"), "dataset.protocol"),
        (("dataset=tiny_imagenet", "dataset.split_ratios=[0.5,0.25,0.25]"), "dataset.split_ratios"),
        (("dataset=omniglot", "dataset.layout=presplit"), "dataset.layout"),
        (("model=resnet12", "model.filters=32"), "model.filters"),
        (("model=conv4", "model.channels=[8,8]"), "model.channels"),
    ],
)
def test_a_key_the_component_does_not_read_is_an_error(overrides: tuple, key: str) -> None:
    import mamlpp

    with pytest.raises(ConfigError, match=rf"'{key}' is not read by"):
        mamlpp.compose(*overrides)


def test_a_presets_keys_for_another_component_do_not_block_a_switch() -> None:
    import mamlpp

    cfg = mamlpp.compose("experiment=tiny_imagenet_5w1s_maml", "model=resnet12")
    assert cfg.model.name == "resnet12" and not hasattr(cfg.model, "filters")  # conv4's, dropped


ABLATION = "omniglot_5w1s_ablation"
# The MAML++ paper's ablation grid: MAML, each feature added alone, all of them.
ABLATION_VARIANTS = {
    "maml": "maml",
    "msl": "maml+MSL",
    "da": "maml+DA",
    "bn": "maml+BNRS+BNWB",
    "lslr": "maml+LSLR",
    "ca": "maml+CA",
    "mamlpp": "mamlpp",
}


def test_ablation_preset_sweeps_the_papers_grid() -> None:
    """Its multirun sweeps the seven variants over three seeds, each its own run directory, and
    the variants differ in their MAML++ switches only."""
    import mamlpp
    from mamlpp.config import algorithm_label, experiment_keys
    from mamlpp.reports.ablation import FEATURE_KEYS

    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        hydra_cfg = compose("config", [f"experiment={ABLATION}"], return_hydra_config=True)
    params = hydra_cfg.hydra.sweeper.params
    assert params.ablation.split(",") == list(ABLATION_VARIANTS)
    assert params.seed.split(",") == ["0", "1", "2"]
    cfgs = {v: mamlpp.compose(f"experiment={ABLATION}", f"ablation={v}") for v in ABLATION_VARIANTS}
    assert {v: algorithm_label(c.algorithm) for v, c in cfgs.items()} == ABLATION_VARIANTS
    assert len({c.run.dir for c in cfgs.values()}) == len(ABLATION_VARIANTS)
    rests = [
        {k: v for k, v in experiment_keys(c).items() if k not in FEATURE_KEYS}
        for c in cfgs.values()
    ]
    assert all(rest == rests[0] for rest in rests)
    # The all-features variant is MAML++ itself: the mamlpp preset's algorithm and schedule.
    paper, _ = load("omniglot_5w1s_mamlpp")
    assert cfgs["mamlpp"].algorithm == paper.algorithm
    assert (cfgs["mamlpp"].train, cfgs["mamlpp"].eval) == (paper.train, paper.eval)
