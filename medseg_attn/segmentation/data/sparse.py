"""Sparse labels (nnU-Net's convention): the highest label value of dataset.json named ``ignore`` marks voxels
nobody annotated. They are left out of the loss, of foreground sampling and of validation metrics; the network
predicts the other classes only."""

from __future__ import annotations

from medseg_attn.errors import UserError

__all__ = ["IGNORE_NAME", "ignore_index", "without_ignore"]

IGNORE_NAME = "ignore"


def ignore_index(labels: dict[int, str]) -> int | None:
    """The ignore label's value: the highest label, when it is named ``ignore`` (else None).

    Raises:
        ValueError: a label named ``ignore`` that is not the highest.
    """
    named = [index for index, name in labels.items() if str(name).strip().lower() == IGNORE_NAME]
    if not named:
        return None
    if named[0] != max(labels) or named[0] == 0:
        raise UserError(f"labels: 'ignore' is label {named[0]}; it must be the highest label value "
                         f"({max(labels)}), as in nnU-Net")
    return named[0]


def without_ignore(labels: dict[int, str]) -> dict[int, str]:
    """The classes the network predicts: ``labels`` without the ignore label."""
    index = ignore_index(labels)
    return {k: v for k, v in sorted(labels.items()) if k != index}
