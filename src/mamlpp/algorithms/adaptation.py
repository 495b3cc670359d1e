"""Which weights the inner loop adapts (`algorithm.adapt`).

- all: every weight the network takes per task (MAML, MAML++, Meta-SGD);
- head: the classifier only; the body is meta-learned but fixed inside the inner loop
  (ANIL, Raghu et al. 2020);
- body: everything but the classifier, whose weights stay fixed inside the inner loop and are
  still meta-learned (BOIL, Oh et al. 2021).
"""

from __future__ import annotations

from mamlpp.config import ADAPT_MODES

HEAD_PREFIX = "head."


def adapts(mode: str, name: str) -> bool:
    """Whether the inner loop changes the parameter `name` under `mode`."""
    if mode == "all":
        return True
    is_head = name.startswith(HEAD_PREFIX)
    if mode == "head":
        return is_head
    if mode == "body":
        return not is_head
    raise ValueError(f"algorithm.adapt={mode!r}: allowed {ADAPT_MODES}")
