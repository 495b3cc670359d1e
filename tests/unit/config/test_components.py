"""Components own their configs: one source of defaults (`Config()` is what conf/ composes to),
each group option is its component's dataclass, a key the chosen component lacks is one line
with a close match, configs saved by earlier versions (flat model/dataset sections) still load
and compare, (a researcher's own components: tests/integration/cli/test_user_components.py)."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

import mamlpp
from helpers.paths import REPO_ROOT
from mamlpp.config import (
    Config,
    ConfigError,
    algorithm_label,
    component,
    experiment_keys,
    is_neutral,
    saved_config,
)
from mamlpp.experiment.run_state import config_diffs

ENV = ("MAMLPP_ROOT", "MAMLPP_DATA_DIR", "MAMLPP_RUNS_DIR", "WANDB_PROJECT", "WANDB_ENTITY")


@pytest.fixture
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """conf/config.yaml reads these; unset, it composes to its own defaults."""
    for name in (*ENV, "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("plain_env")
def test_config_is_what_conf_composes_to() -> None:
    composed = mamlpp.compose()
    assert composed.run.dir is not None  # compose adds where the run goes; Config() cannot
    composed.run.dir = None
    bare = Config()
    for f in dataclasses.fields(Config):
        assert getattr(composed, f.name) == getattr(bare, f.name), f.name
    assert composed == bare and algorithm_label(bare.algorithm) == "mamlpp"


# group option -> (the keys it needs from the command line, other overrides it needs)
OPTIONS = {
    "model": {
        "conv4": ({}, ()),
        "resnet12": ({}, ()),
        "module": ({"_target_": "user_nets.SmallCNN"}, ("algorithm=maml",)),
    },
    "dataset": {
        "omniglot": ({}, ()),
        "miniimagenet": ({}, ()),
        "tiny_imagenet": ({}, ()),
        "image_folder": ({"source": "/data/x"}, ()),
        "custom": ({"_target_": "user_data.list_flat"}, ()),
    },
}


@pytest.mark.usefixtures("plain_env")
@pytest.mark.parametrize(
    ("section", "name"), [(s, n) for s, options in OPTIONS.items() for n in options]
)
def test_each_group_option_is_its_components_defaults(section: str, name: str) -> None:
    """conf/<section>/<name>.yaml sets what the component's dataclass defaults to (the keys the
    command line gives here aside): the YAML documents the keys, the dataclass is the source."""
    given, other = OPTIONS[section][name]
    keys = [f"{section}.{k}={v}" for k, v in given.items()]
    cfg = mamlpp.compose(f"{section}={name}", *keys, *other)
    expected = component(section, name).config(**given)
    assert getattr(cfg, section) == expected
    in_yaml = set(OmegaConf.load(REPO_ROOT / "conf" / section / f"{name}.yaml"))
    assert in_yaml <= {f.name for f in dataclasses.fields(expected)}


@pytest.mark.usefixtures("plain_env")
@pytest.mark.parametrize("tracker", ["tensorboard", "csv", "mlflow", "wandb"])
def test_each_logger_option_is_its_trackers_defaults(tracker: str) -> None:
    cfg = mamlpp.compose(f"logger=[{tracker}]")
    assert cfg.logger.chosen() == [tracker]
    assert getattr(cfg.logger, tracker) == component("logger", tracker).config(enabled=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model=resnet12", "model.channel=[8,8]"), "did you mean model.channels?"),
        (("model.filter=32",), "did you mean model.filters?"),
        (("dataset.protocl=maml",), "did you mean dataset.protocol?"),
        (("model=resnet18",), "model=resnet18 is not a config option (did you mean"),
        (("model.name=resnet18",), "is not a registered backbone (did you mean resnet12?)"),
    ],
)
def test_a_key_the_component_lacks_names_the_close_match(overrides: tuple, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        mamlpp.compose(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


# A conv4 run's model and dataset sections as main 3438f29 wrote them into config.yaml and
# checkpoints: every backbone's and dataset's keys.
OLD_MODEL = {
    "name": "conv4", "filters": 64, "stages": 4, "norm": "batch_norm", "pooling": "max",
    "activation": "leaky_relu", "bn_momentum": 0.1, "channels": [64, 160, 320, 640],
    "drop_rate": 0.0, "dropblock_size": 5, "dropblock_ramp": 40000, "_target_": None,
    "kwargs": {}, "vectorize": True, "head": None,
    "norm_layers": ["batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"],
}  # fmt: skip
OLD_DATASET = {
    "name": "omniglot", "source": None, "data_dir": "datasets/omniglot", "image_size": 28,
    "normalization": "none", "layout": "auto", "split_ratios": [0.64, 0.16, 0.2],
    "augment_crop_padding": 0, "augment_flip": False, "_target_": None, "kwargs": {},
    "protocol": "mamlpp", "split_sizes": None, "split_seed": 0, "train_rotation": True,
}  # fmt: skip
OLD_LOGGER = {
    "tensorboard": {"enabled": True, "dir": "tb"},
    "csv": {"enabled": False, "file": "scalars.csv"},
    "mlflow": {"enabled": False, "tracking_uri": None, "experiment": None},
    "wandb": {
        "enabled": False,
        "project": "mamlpp",
        "entity": None,
        "mode": "offline",
        "dir": None,
    },
}


def _old_saved(cfg: Config) -> dict:
    saved = OmegaConf.to_container(OmegaConf.structured(cfg))
    return {**saved, "model": OLD_MODEL, "dataset": OLD_DATASET, "logger": OLD_LOGGER}


def _flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.usefixtures("plain_env")
def test_a_config_saved_by_3438f29_loads_and_is_the_same_experiment() -> None:
    cfg = mamlpp.compose("experiment=smoke")
    old = _old_saved(cfg)
    loaded = saved_config(old)
    assert loaded.model == cfg.model and loaded.dataset == cfg.dataset
    assert loaded.logger == cfg.logger
    # The identity 3438f29 recorded (every backbone's keys) is the same experiment now.
    old_identity = {k: v for k, v in _flat(old).items() if not is_neutral(k)}
    assert "model.channels" in old_identity and "model.channels" not in experiment_keys(cfg)
    assert config_diffs(old_identity, cfg) == ""
    changed = {**old_identity, "model.filters": 32}
    assert config_diffs(changed, cfg) == "model.filters: 32 -> 64"


def test_a_saved_config_with_an_unused_tracker_of_another_process_loads() -> None:
    """A run saved by a process that had registered a tracker of its own lists it with
    enabled: false; evaluating that run elsewhere must not need it. A tracker the run did use
    and this process does not know stays an error."""
    from omegaconf import OmegaConf

    from mamlpp.config import Config
    from mamlpp.config.compose import saved_config
    from mamlpp.errors import ConfigError

    saved = OmegaConf.to_container(OmegaConf.structured(Config()), resolve=True)
    assert isinstance(saved, dict)
    saved["logger"]["not_here"] = {"enabled": False, "path": "x.jsonl"}
    assert saved_config(saved).logger.chosen() == Config().logger.chosen()
    saved["logger"]["not_here"]["enabled"] = True
    with pytest.raises(ConfigError, match="not_here"):
        saved_config(saved)
