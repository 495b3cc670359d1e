"""mamlpp: MAML and MAML++ few-shot learning experiments (Hydra + PyTorch).

The Python API, in the order a notebook uses it:

    cfg = mamlpp.compose("experiment=smoke", "seed=3")  # the config `mamlpp-train ...` runs
    results = mamlpp.train(cfg)                          # or mamlpp.train("experiment=smoke")
    model = mamlpp.load(cfg.run.dir)                     # a run's top-k ensemble, or one .pt
    adapted = model.adapt(model.load_images(support), labels)
    adapted.predict(model.load_images(query))            # labels; predict_proba, predict_logits

compose(*overrides) -> Config
    The validated config of `mamlpp-train <overrides>`, with run.dir set.
train(cfg_or_overrides, *overrides, run_dir=None) -> dict
    Train, resume or report a run in this process, as mamlpp-train does; its results.json.
load(path, members="top-k", device="auto") -> TrainedModel
    A trained model from a run directory or a checkpoint file.
MamlppError, ConfigError, DataError
    The one-line errors of bad input (ConfigError and DataError are MamlppErrors).

These names are imported lazily, so that `import mamlpp` and the command-line entry points stay
quick; `mamlpp.train` is also the module of the `mamlpp-train` entry point, callable as above.
"""

from __future__ import annotations


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mamlpp")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


__version__ = _version()

# name -> the module that defines it (imported on first use)
_LAZY = {
    "compose": "mamlpp.apps.api",
    "load": "mamlpp.inference",
    "train": "mamlpp.apps.train",
    "MamlppError": "mamlpp.errors",
    "ConfigError": "mamlpp.errors",
    "DataError": "mamlpp.errors",
}
__all__ = ["ConfigError", "DataError", "MamlppError", "compose", "load", "train"]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'mamlpp' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_LAZY[name])
    # mamlpp.train is the CLI module itself, callable as the API function (see mamlpp.train)
    return module if name == "train" else getattr(module, name)


def __dir__() -> list[str]:
    """The public names and the module's dunders (submodules are in help's PACKAGE CONTENTS)."""
    return sorted({n for n in globals() if n.startswith("__")} | set(__all__))
