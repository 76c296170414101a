"""The lesions of a predicted case, measured before any of its files is written: the per-lesion table
(``<case>_lesions.csv``, with ``--statistics``) and the instance map (``<case>_instances.nii.gz``, with
``--instances``), and the counts the QC report shows. See
:mod:`~medseg_attn.segmentation.measures.lesion_statistics` and ``docs/statistics.md``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from medseg_attn.errors import UserError
from medseg_attn.segmentation.inference.predictor import Prediction, Predictor
from medseg_attn.segmentation.measures.lesion_statistics import LesionTable, lesion_table
from medseg_attn.segmentation.measures.lesions import MAX_LESIONS

__all__ = ["LesionOutputs", "lesion_structures"]


def lesion_structures(labels: Mapping[int, str], names: Iterable[str], where: str = "--lesion-structures"
                      ) -> dict[int, str]:
    """Class value -> name of each lesion structure ``names`` gives (class names, any case; duplicates once).

    Raises:
        UserError: a name that is not a foreground class of the model (one line, with the closest class).
    """
    classes = {name.lower(): (int(index), name) for index, name in labels.items() if int(index) != 0}
    chosen: dict[int, str] = {}
    for name in names:
        found = classes.get(str(name).lower())
        if found is None:
            known = [name for _, name in classes.values()]
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"{where} {name}: the model has no class {name!r} (its classes: {', '.join(known)}){hint}")
        chosen[found[0]] = found[1]
    return dict(sorted(chosen.items()))


@dataclass(frozen=True)
class LesionOutputs:
    """What a batch measures of its lesion structures (class value -> name): always the counts (for the QC
    report), with ``table`` the per-lesion table, with ``instances`` the instance map."""

    structures: Mapping[int, str]
    table: bool = False
    instances: bool = False

    def measure(self, result: Prediction, predictor: Predictor, case: str) -> LesionTable:
        """The lesions of ``result`` (its ``channels``, ``probabilities`` and ``uncertainty`` where computed).

        Raises:
            UserError: more than 65,535 lesions in the case when its instance map is asked for.
        """
        probabilities = None
        if result.probabilities is not None:
            regions = predictor.regions
            channel = ({index: regions.names.index(name) for index, name in self.structures.items()
                        if name in regions.names} if regions is not None else {i: i for i in self.structures})
            probabilities = {index: result.probabilities[c] for index, c in channel.items()}
        images = result.channels if result.channels is not None else (
            None if result.image is None or predictor.in_channels != 1 else result.image)
        return lesion_table(result.labels, result.affine, self.structures, images if self.table else None,
                            probabilities, result.uncertainty, "hu" if predictor.prep.intensity == "ct" else None,
                            case, channels=predictor.in_channels,
                            limit=MAX_LESIONS if self.instances else None)
