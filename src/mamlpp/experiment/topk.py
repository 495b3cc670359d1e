"""The table of the best validation checkpoints, kept inside the training state."""

from __future__ import annotations

from mamlpp.layout import member_name


def update_top_k(
    table: list[dict], epoch: int, val_acc: float, k: int, higher_is_better: bool = True
) -> tuple[list[dict], bool, list[dict]]:
    """Insert an epoch's validation score (accuracy; MSE for regression, where lower is better);
    return (new table, kept?, evicted entries).

    Ties go to the earlier epoch, so the table is a pure function of the validation history.
    """
    entry = {"epoch": int(epoch), "val_acc": float(val_acc)}
    sign = -1.0 if higher_is_better else 1.0
    ranked = sorted([*table, entry], key=lambda e: (sign * e["val_acc"], e["epoch"]))
    kept = ranked[:k]
    return kept, entry in kept, [e for e in ranked[k:] if e is not entry]


def member_file(epoch: int) -> str:
    """The member file name of `epoch` (mamlpp.layout.member_name)."""
    return member_name(epoch)
