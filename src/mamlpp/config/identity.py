"""What makes two runs the same experiment: the neutral keys, the experiment keys a checkpoint
is compared on, and the algorithm's label (the MAML++ feature list)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mamlpp.config.algorithms import AlgorithmConfig, FineTuneConfig
from mamlpp.config.paths import conf_dir
from mamlpp.config.registry import NAMED_SECTIONS, component, known_keys, names
from mamlpp.config.schema import Config

# Keys that may differ between a checkpoint and the resuming run, and that never name a run
# directory (mamlpp.config.naming). The one list of them.
NEUTRAL_KEYS = (
    "run.",
    "paths.",
    "debug",
    "progress_bar",
    "device",
    "experiment_name",
    "optimized_metric",
    "dataset.source",
    "dataset.data_dir",
    "train.impl",
    "eval.batch_size",
    "speed.",
    "model.vectorize",
    "logger",
    "logger.",
)


def is_neutral(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in NEUTRAL_KEYS)


# The MAML++ features as (switch is on, short name), in the paper's order.
def _features(a: AlgorithmConfig) -> list[tuple[bool, str]]:
    return [
        (a.multi_step_loss, "MSL"),
        (a.first_order_epochs > 0, "DA"),
        (a.per_step_bn_stats, "BNRS"),
        (a.per_step_bn_weights, "BNWB"),
        (a.learn_inner_lr, "LSLR"),
        (a.cosine_meta_lr, "CA"),
    ]


def _definition(name: str) -> tuple[str, bool]:
    """What the algorithm group `name` itself sets beyond MAML, (adapt, per_element_lr), read
    from its conf/algorithm YAML: the one place that defines ANIL, BOIL and Meta-SGD."""
    path = Path(conf_dir()) / "algorithm" / f"{name}.yaml"
    own = OmegaConf.load(path) if path.exists() else OmegaConf.create()
    assert isinstance(own, DictConfig), path  # a config group option is a mapping
    default = AlgorithmConfig()
    return own.get("adapt", default.adapt), own.get("per_element_lr", default.per_element_lr)


def algorithm_label(a: AlgorithmConfig) -> str:
    """What actually runs, not only the group's name: 'maml+DA+MSL' is MAML whose preset or
    overrides switched MAML++ features on; 'mamlpp-DA' is MAML++ with annealing off."""
    adapt, per_element = _definition(a.name)
    extra = [f"adapt={a.adapt}"] if a.adapt != adapt else []
    extra += [f"per_element_lr={a.per_element_lr}"] if a.per_element_lr != per_element else []
    base = _feature_label(a)
    return base + "".join(f"+{e}" for e in extra)


def _feature_label(a: AlgorithmConfig) -> str:
    if isinstance(a, FineTuneConfig):  # no inner loop: the MAML++ switches do nothing
        return a.name
    if a.name == "mamlpp":
        off = [name for on, name in _features(a) if not on]
        label = "mamlpp" + "".join(f"-{n}" for n in off)
        return label if a.second_order else f"{label}-second_order"
    on = [name for on, name in _features(a) if on]
    label = a.name + "".join(f"+{n}" for n in on)
    return f"{label}+second_order" if a.name == "fomaml" and a.second_order else label


def experiment_keys(cfg: Config) -> dict[str, Any]:
    """Flattened config without the keys that do not change the experiment (NEUTRAL_KEYS)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            elif not is_neutral(name):
                flat[name] = value

    walk(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True), "")
    return flat


def is_module_argument(key: str) -> bool:
    """Whether model.<key> under model=module is a constructor argument of the module (a key
    no registered backbone has, `+model.width=32`), i.e. model.kwargs.<key>."""
    return key not in known_keys("model")


def comparable(keys: dict[str, Any]) -> dict[str, Any]:
    """Experiment keys without the model.* / dataset.* / algorithm.* keys of other components
    than theirs: identities written before components owned their configs held every
    backbone's, dataset's and algorithm's keys (a conv4 run's model.channels, a MAML run's
    algorithm.finetune_steps), which no run reads."""
    kept = dict(keys)
    for section in NAMED_SECTIONS:
        name = keys.get(f"{section}.name")
        if name not in names(section):
            continue
        foreign = known_keys(section) - set(component(section, name).own_keys())
        for key in keys:
            head, _, rest = key.partition(".")
            if head == section and rest.partition(".")[0] in foreign:
                del kept[key]
    return kept
