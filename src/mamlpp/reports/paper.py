"""Published test accuracies (%) from ../shared/docs/reference.md, keyed by what they measure."""

from __future__ import annotations

# (dataset, ways, shots, algorithm variant) -> the published number, as the paper prints it.
PAPER = {
    ("omniglot", 5, 1, "maml"): "98.7 +- 0.4",
    ("omniglot", 5, 5, "maml"): "99.9 +- 0.1",
    ("omniglot", 20, 1, "maml"): "95.8 +- 0.3",
    ("omniglot", 20, 5, "maml"): "98.9 +- 0.2",
    ("omniglot", 5, 1, "mamlpp"): "99.47",
    ("omniglot", 5, 5, "mamlpp"): "99.93",
    ("omniglot", 20, 1, "mamlpp"): "97.65",
    ("omniglot", 20, 5, "mamlpp"): "99.33",
    ("miniimagenet", 5, 1, "maml"): "48.70 +- 1.84",
    ("miniimagenet", 5, 5, "maml"): "63.11 +- 0.92",
    ("miniimagenet", 5, 1, "mamlpp"): "52.15 +- 0.26",
    ("miniimagenet", 5, 5, "mamlpp"): "68.32 +- 0.44",
}


def paper_number(dataset: str, ways: int, shots: int, variant: str) -> str:
    """The published number for this setting, or '' where reference.md has none."""
    return PAPER.get((dataset, ways, shots, variant), "")
