"""Which weights the inner loop adapts (`algorithm.adapt`).

- all: every weight the network takes per task (MAML, MAML++, Meta-SGD);
- head: the classifier only; the body is meta-learned but fixed inside the inner loop
  (ANIL, Raghu et al. 2020);
- body: everything but the classifier, whose weights stay fixed inside the inner loop and are
  still meta-learned (BOIL, Oh et al. 2021);
- any other value: a glob over parameter names (fnmatch), e.g. 'convs.3.*' or '*.bias'.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from fnmatch import fnmatchcase

from mamlpp.errors import ConfigError


def adapted_names(mode: str, names: Sequence[str], head: Collection[str]) -> list[str]:
    """The names among `names` the inner loop changes under `mode`; `head` names the classifier.
    A mode that selects nothing is a one-line error listing the names it could select."""
    if mode == "all":
        chosen = list(names)
    elif mode == "head":
        chosen = [n for n in names if n in head]
    elif mode == "body":
        chosen = [n for n in names if n not in head]
    else:
        chosen = [n for n in names if fnmatchcase(n, mode)]
    if not chosen:
        raise ConfigError(
            f"config key 'algorithm.adapt' = {mode!r} selects no weight of this network; "
            f"its per-task weights are {', '.join(names)}"
        )
    return chosen
