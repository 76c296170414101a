"""Region-based labels (nnU-Net v2's convention): each network output is a *region*, a set of label values trained
with its own sigmoid, such as BraTS' whole tumour {1, 2, 3} ⊃ tumour core {2, 3} ⊃ enhancing tumour {3}.

A dataset.json declares them by giving a label a list of values, with ``regions_class_order`` saying which value
each region paints::

    "labels": {"background": 0, "grey_matter": 1, "white_matter": [2, 3], "lesion": 3},
    "regions_class_order": [1, 2, 3]

A label map is painted back from the region probabilities as nnU-Net does: start from background, then for each
region in the order listed, every voxel whose probability exceeds 0.5 gets that region's value (later regions
paint over earlier ones, so nested regions go from the largest to the smallest).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medseg_attn.errors import UserError

__all__ = ["Regions"]


@dataclass(frozen=True)
class Regions:
    """The regions a model predicts, one sigmoid output each.

    Attributes:
        names: region names, in the network's output order.
        values: the label values inside each region.
        order: the label value each region paints (``regions_class_order``), painted in the order listed.
    """

    names: tuple[str, ...]
    values: tuple[tuple[int, ...], ...]
    order: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.values) == len(self.order)) or not self.names:
            raise UserError(f"regions: {len(self.names)} name(s), {len(self.values)} value list(s) and "
                            f"{len(self.order)} regions_class_order entries; expected one of each per region")

    @classmethod
    def from_labels(cls, raw: Mapping[str, Any], order: Any, where: object) -> Regions | None:
        """The regions of an nnU-Net v2 ``labels`` mapping (name -> value or list of values) and its
        ``regions_class_order``; None when no label is a list (plain classes).

        Raises:
            UserError: one line naming ``where``: a region without values, values that are not positive integers,
                ``regions_class_order`` missing, of the wrong length, or painting a value no region holds.
        """
        if not any(isinstance(value, list) for value in raw.values()):
            if order is not None:
                raise UserError(f"{where}: 'regions_class_order' is given but no label is a region (a list of "
                                f"values); drop it, or write the regions as lists")
            return None
        names, values = [], []
        for name, value in raw.items():
            members = value if isinstance(value, list) else [value]
            if not members or not all(isinstance(v, int) and not isinstance(v, bool) for v in members):
                raise UserError(f"{where}: label {name!r}: {value!r}; expected a label value or a list of them")
            if members == [0]:
                continue  # background
            if any(v <= 0 for v in members):
                raise UserError(f"{where}: region {name!r} holds value(s) {[v for v in members if v <= 0]}; regions "
                                f"are made of foreground values (> 0)")
            names.append(str(name))
            values.append(tuple(sorted(set(members))))
        if not isinstance(order, list) or len(order) != len(names):
            raise UserError(f"{where}: region labels need 'regions_class_order' with one label value per region "
                            f"({len(names)}: {', '.join(names)}), got {order!r}")
        every = {v for members in values for v in members}
        unknown = [v for v in order if not isinstance(v, int) or isinstance(v, bool) or v not in every]
        if unknown:
            raise UserError(f"{where}: regions_class_order {order} paints {unknown}, which no region holds "
                            f"(regions: {dict(zip(names, values, strict=True))})")
        if len(set(order)) != len(order):
            raise UserError(f"{where}: regions_class_order {order} paints a value twice; each region paints its own")
        return cls(tuple(names), tuple(values), tuple(int(v) for v in order))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Regions | None:
        """What :meth:`to_dict` wrote (None: a model of plain classes)."""
        if not data:
            return None
        return cls(tuple(data["names"]), tuple(tuple(int(v) for v in vs) for vs in data["values"]),
                   tuple(int(v) for v in data["order"]))

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "values": [list(v) for v in self.values], "order": list(self.order)}

    @property
    def labels(self) -> dict[int, str]:
        """The classes of a painted label map: 0 background, and each region's painted value its name."""
        return {0: "background", **{value: name for value, name in sorted(zip(self.order, self.names, strict=True))}}

    @property
    def max_value(self) -> int:
        """The largest label value a reference label map may hold."""
        return max(v for members in self.values for v in members)

    def targets(self, label: torch.Tensor) -> torch.Tensor:
        """Region masks (B, R, *S) float of a label map (B, 1, *S): 1 where the label is one of the region's
        values."""
        label = torch.as_tensor(label)
        return torch.cat([torch.isin(label, torch.tensor(v, device=label.device)) for v in self.values], 1).float()

    def masks(self, label: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        """Each region's boolean mask of a label map (*S)."""
        array = np.asarray(label)
        return [np.isin(array, v) for v in self.values]

    def paint(self, probabilities: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """The label map (uint8 (*S), int32 beyond 255) painted from region probabilities (R, *S): region by region
        in the order listed, voxels above ``threshold`` take the region's value (nnU-Net's rule)."""
        dtype = torch.uint8 if max(self.order) <= 255 else torch.int32
        labels = torch.zeros(probabilities.shape[1:], dtype=dtype, device=probabilities.device)
        for region, value in enumerate(self.order):
            labels[probabilities[region] > threshold] = value
        return labels

    def check_values(self, found: Sequence[int], where: object) -> None:
        """Refuse region values that no label map holds (``found``: the values seen in the training labels).

        Raises:
            UserError: naming ``where``, the region and the missing values.
        """
        seen = set(int(v) for v in found)
        for name, members in zip(self.names, self.values, strict=True):
            missing = [v for v in members if v not in seen]
            if missing:
                raise UserError(f"{where}: region {name!r} lists value(s) {missing}, which no training label map "
                                f"holds (values found: {sorted(seen)})")
