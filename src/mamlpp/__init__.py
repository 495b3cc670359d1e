"""mamlpp: MAML and MAML++ few-shot learning experiments (Hydra + PyTorch).

The Python API (`mamlpp.compose`, `mamlpp.train`, `mamlpp.load`) is imported lazily, so that
`import mamlpp` and the command-line entry points stay quick.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mamlpp")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> object:
    if name == "train":  # the CLI module, callable as the API function (see mamlpp.train)
        import mamlpp.train as module

        return module
    if name == "compose":
        from mamlpp.api import compose

        return compose
    if name == "load":
        from mamlpp.inference import load

        return load
    raise AttributeError(f"module 'mamlpp' has no attribute {name!r}")
