"""Stress test: a trained model on held-out cases under acquisition variation, Dice per variant.

Brain (the demo's MNI152 T1, :func:`brain_variants`): each held-out case is a new random deformation of the
template (never a training seed); its noise-free image gets a controlled appearance, and one factor at a time
is changed:

- ``as_is``: bias field +-20 %, gamma 1, Rician noise 2 % of the brain mean (background = noise);
- ``zero_background``: the same, background exactly 0 (as after conversion or masking);
- ``skull_stripped``: zero outside the brain mask (grey | white matter dilated by 2 voxels);
- ``no_bias`` / ``strong_bias``: bias field 0 / +-45 %;
- ``gamma_0.6`` / ``gamma_1.6``: contrast;
- ``no_noise`` / ``noise_5pct``: noise 0 (background exactly 0 too) / 5 %;
- ``low_resolution``: resampled to 1 x 1 x 3 mm (thick slices), scored on that grid;
- ``rigid_move``: the head rotated 12 degrees and shifted 8 mm inside the field of view;
- ``oblique_lps``: the volume resampled onto a 1.2 mm grid rotated 20 degrees and stored LPS;
- ``demo_appearance``: the demo's own random bias / gamma / scale / noise (the held-out distribution).

Failure modes (:data:`FAILURE_VARIANTS`, kept apart from the acquisition variants so those numbers stay
comparable; the demo and ``scripts/stress_eval.py --failure-modes`` run both:
``brain_variants(j, BRAIN_VARIANTS + FAILURE_VARIANTS)``), each from as-is:

- ``flipped_header``: the data flipped superior-inferior (axis 2), the affine left as it was (a wrong orientation
  header: the brain stored upside down), scored against the original label on the stored grid;
- ``heavy_noise``: Rician noise 15 % of the brain mean;
- ``ghosting``: motion-like ghosts, the image plus two copies shifted by +-1/4 of the field of view along the
  phase-encode axis (axis 1, A-P, wrapped around) at 25 % intensity each;
- ``truncated_fov``: the superior third of the volume (axis 2) cropped away, image and label alike (affine kept:
  voxel 0 is where it was);
- ``very_low_resolution``: resampled to 1 x 1 x 6 mm (thick slices), scored on that grid;
- ``ct_into_mr``: the same head as a CT would show it (Hounsfield units: air -1000, grey matter 40, white matter
  28, CSF 8, everything else of the head 700 as skull and scalp together, noise 6 HU): a CT given to an MR model.

Any labelled volume (CT, :func:`volume_variants`): ``as_is``, ``moved`` (rotated 10 degrees, shifted 6 mm),
``resampled`` (1.2 x 1.2 x 2.5 mm, RAS), ``noised`` (Gaussian, 25 HU), ``hu_offset`` (+40 HU) and ``combined``
(moved, resampled and noised). Every variant is scored on its own grid against its own resampled label.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medseg_attn.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["BRAIN_VARIANTS", "FAILURE_VARIANTS", "SIGNAL_COLUMNS", "brain_variants", "case_signals", "dice_scores",
           "failure_records", "read_stress_csv", "run_stress", "volume_variants"]

BRAIN_VARIANTS = ("as_is", "zero_background", "skull_stripped", "no_bias", "strong_bias", "gamma_0.6", "gamma_1.6",
                  "no_noise", "noise_5pct", "low_resolution", "rigid_move", "oblique_lps", "demo_appearance")
FAILURE_VARIANTS = ("flipped_header", "heavy_noise", "ghosting", "truncated_fov", "very_low_resolution", "ct_into_mr")
STRESS_SEED = 50_000  # held-out stress case j uses seed 50_000 + j (training uses 0.., the demo's test 10_000..)
Variant = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # name, image (*S), label (*S), affine 4x4


def _rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    rx, ry, rz = (math.radians(d) for d in degrees)
    x = np.array([[1, 0, 0], [0, math.cos(rx), -math.sin(rx)], [0, math.sin(rx), math.cos(rx)]])
    y = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
    z = np.array([[math.cos(rz), -math.sin(rz), 0], [math.sin(rz), math.cos(rz), 0], [0, 0, 1]])
    return z @ y @ x


def resample_to(image: np.ndarray, label: np.ndarray, affine: np.ndarray, target_affine: np.ndarray,
                target_shape: tuple[int, ...], world_motion: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``image`` (linear) and ``label`` at the voxels of a target grid.

    The label is resampled as each class's indicator, linearly, then the argmax (first class on ties; outside the
    source: background), as nnU-Net resamples segmentations. Nearest-neighbour sampling would move every boundary
    by up to half a source voxel wherever the grids do not line up, and a thin structure scored against such a
    reference loses Dice that no model could win back: on the brain stress cases, 0.011-0.019 on a 1.2 mm grid,
    a rotated one or a 0.8 mm one, while the same model on the same anatomy generated natively on those grids
    lost at most 0.005 (docs/trust.md).

    ``world_motion`` (4x4) moves the anatomy: the target voxel at world ``w`` shows the source at
    ``inv(motion) @ w``.
    """
    to_source = np.linalg.inv(affine) @ (np.linalg.inv(world_motion) if world_motion is not None else np.eye(4))
    matrix = to_source @ target_affine
    low = float(image.min())
    moved = ndimage.affine_transform(image.astype(np.float32), matrix[:3, :3], matrix[:3, 3], target_shape, order=1,
                                     mode="constant", cval=low)
    labels = np.zeros(target_shape, dtype=label.dtype)
    best = np.zeros(target_shape, dtype=np.float32)
    for value in np.unique(label):  # (X', Y', Z') per class: the fraction of it each target voxel sees
        share = ndimage.affine_transform((label == value).astype(np.float32), matrix[:3, :3], matrix[:3, 3],
                                         target_shape, order=1, mode="constant", cval=float(value == 0))
        wins = share > best if value != 0 else share >= best
        labels[wins], best[wins] = value, share[wins]
    return moved, labels


def _motion(centre: np.ndarray, degrees: tuple[float, float, float], shift: tuple[float, float, float]) -> np.ndarray:
    motion = np.eye(4)
    rotation = _rotation(degrees)
    motion[:3, :3] = rotation
    motion[:3, 3] = centre + np.asarray(shift) - rotation @ centre
    return motion


def _centre(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return (affine @ np.array([*((np.array(shape) - 1) / 2), 1.0]))[:3]


def _appearance(clean: np.ndarray, label: np.ndarray, rng: np.random.Generator, bias: float = 0.2,
                gamma: float = 1.0, noise: float = 0.02) -> np.ndarray:
    """Bias field (+-``bias``), gamma and Rician noise (``noise`` x brain mean) on a noise-free T1 in 0..1000."""
    shape = clean.shape
    coarse = rng.standard_normal((4, 4, 4))
    field = ndimage.zoom(coarse, [s / 4 for s in shape], order=3)[: shape[0], : shape[1], : shape[2]]
    field = field / max(float(np.abs(field).max()), 1e-6)
    image = 1000.0 * (clean / 1000.0) ** gamma * np.exp(field * math.log1p(bias))
    sigma = noise * float(image[label > 0].mean())
    if sigma > 0:
        image = np.sqrt((image + sigma * rng.standard_normal(shape)) ** 2 + (sigma * rng.standard_normal(shape)) ** 2)
    return image.astype(np.float32)


def brain_variants(index: int, names: tuple[str, ...] = BRAIN_VARIANTS) -> Iterator[Variant]:
    """The variants of held-out brain case ``index`` at 1 mm (seed ``STRESS_SEED + index``)."""
    from medseg_attn.demo_data import generate_case

    seed = STRESS_SEED + index
    clean_case = generate_case(seed, 1.0, appearance=False)  # the same deformation as the demo appearance below
    clean, label, affine = clean_case.image.astype(np.float32), clean_case.label, clean_case.affine
    support = clean > 0
    brain = ndimage.binary_dilation(label > 0, iterations=2)

    def rng() -> np.random.Generator:
        return np.random.default_rng(seed)  # every variant draws the same bias field and noise

    as_is = _appearance(clean, label, rng())
    centre = _centre(affine, clean.shape)
    for name in names:
        if name == "as_is":
            yield name, as_is, label, affine
        elif name == "zero_background":
            yield name, np.where(support, as_is, 0.0).astype(np.float32), label, affine
        elif name == "skull_stripped":
            yield name, np.where(brain, as_is, 0.0).astype(np.float32), label, affine
        elif name in ("no_bias", "strong_bias"):
            yield name, _appearance(clean, label, rng(), bias=0.0 if name == "no_bias" else 0.45), label, affine
        elif name.startswith("gamma_"):
            yield name, _appearance(clean, label, rng(), gamma=float(name.split("_")[1])), label, affine
        elif name in ("no_noise", "noise_5pct"):
            yield name, _appearance(clean, label, rng(), noise=0.0 if name == "no_noise" else 0.05), label, affine
        elif name in ("low_resolution", "very_low_resolution"):
            thickness = 3 if name == "low_resolution" else 6
            target = affine @ np.diag([1.0, 1.0, float(thickness), 1.0])
            shape = (clean.shape[0], clean.shape[1], clean.shape[2] // thickness)
            blurred = ndimage.gaussian_filter(as_is, sigma=(0, 0, 0.4 * thickness))  # a thick slice averages it
            yield (name, *resample_to(blurred, label, affine, target, shape), target)
        elif name in FAILURE_VARIANTS:
            yield (name, *_failure_mode(name, as_is, label, clean, rng()), affine)
        elif name == "rigid_move":
            motion = _motion(centre, (8.0, -6.0, 7.0), (4.0, -6.0, 3.0))
            yield (name, *resample_to(as_is, label, affine, affine, clean.shape, motion), affine)
        elif name == "oblique_lps":
            target, shape = _oblique_lps_grid(affine, clean.shape, centre)
            yield (name, *resample_to(as_is, label, affine, target, shape), target)
        elif name == "demo_appearance":
            case = generate_case(seed, 1.0)
            yield name, case.image.astype(np.float32), case.label, case.affine
        else:
            raise UserError(f"unknown brain stress variant {name!r}; expected one of "
                             f"{', '.join(BRAIN_VARIANTS + FAILURE_VARIANTS)}")


def _failure_mode(name: str, as_is: np.ndarray, label: np.ndarray, clean: np.ndarray, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Image and label (*S) of a failure mode on the stored grid (``very_low_resolution`` is resampled above)."""
    if name == "flipped_header":  # the data upside down, the header not: the label keeps the true anatomy
        return np.ascontiguousarray(as_is[:, :, ::-1]), label
    if name == "heavy_noise":
        return _appearance(clean, label, rng, noise=0.15), label
    if name == "ghosting":  # (X, Y, Z): ghosts along Y, the phase-encode axis, wrapped around the field of view
        shift = as_is.shape[1] // 4
        ghosts = 0.25 * (np.roll(as_is, shift, axis=1) + np.roll(as_is, -shift, axis=1))
        return (as_is + ghosts).astype(np.float32), label
    if name == "ct_into_mr":  # Hounsfield units from the anatomy: skull/scalp bright, brain grey, air -1000
        head = ndimage.binary_fill_holes(ndimage.binary_closing(clean > 0.05 * float(clean.max()), iterations=3))
        brain = ndimage.binary_dilation(label > 0, iterations=2)
        hu = np.full(clean.shape, -1000.0, np.float32)
        hu[head] = 700.0
        hu[brain] = 8.0
        hu[label == 1], hu[label == 2] = 40.0, 28.0
        return (hu + 6.0 * rng.standard_normal(hu.shape)).astype(np.float32), label
    if name == "truncated_fov":  # the superior third never acquired: image and label end at 2/3 of Z
        keep = as_is.shape[2] - as_is.shape[2] // 3
        return np.ascontiguousarray(as_is[:, :, :keep]), np.ascontiguousarray(label[:, :, :keep])
    raise UserError(f"unknown failure mode {name!r}; expected one of {', '.join(FAILURE_VARIANTS)}")


def _oblique_lps_grid(affine: np.ndarray, shape: tuple[int, ...], centre: np.ndarray
                      ) -> tuple[np.ndarray, tuple[int, ...]]:
    """A 1.2 mm grid rotated 20 degrees about the field of view's centre, axes stored L, P, S."""
    spacing = 1.2
    extent = np.array(shape) * np.abs(np.diag(affine)[:3])
    new_shape = tuple(int(math.ceil(e / spacing)) for e in extent)
    linear = _rotation((0.0, 0.0, 20.0)) @ np.diag([-spacing, -spacing, spacing])  # LPS: x and y reversed
    target = np.eye(4)
    target[:3, :3] = linear
    target[:3, 3] = centre - linear @ ((np.array(new_shape) - 1) / 2)
    return target, new_shape


def volume_variants(image: np.ndarray, label: np.ndarray, affine: np.ndarray, seed: int = 0,
                    noise: float = 25.0, offset: float = 40.0) -> Iterator[Variant]:
    """Moved / resampled / noised / offset copies of one labelled volume (CT: ``noise`` and ``offset`` in HU)."""
    rng = np.random.default_rng(seed)
    image = image.astype(np.float32)
    centre = _centre(affine, image.shape)
    motion = _motion(centre, (0.0, 0.0, 10.0), (6.0, -4.0, 0.0))
    spacing = np.array([1.2, 1.2, 2.5])
    extent = np.array(image.shape) * np.linalg.norm(affine[:3, :3], axis=0)
    shape = tuple(int(math.ceil(e / s)) for e, s in zip(extent, spacing, strict=True))
    ras = np.diag([*spacing, 1.0])
    ras[:3, 3] = centre - spacing * (np.array(shape) - 1) / 2
    yield "as_is", image, label, affine
    yield (("moved", *resample_to(image, label, affine, affine, image.shape, motion), affine))
    yield (("resampled", *resample_to(image, label, affine, ras, shape), ras))
    yield "noised", (image + noise * rng.standard_normal(image.shape)).astype(np.float32), label, affine
    yield "hu_offset", image + np.float32(offset), label, affine
    moved, moved_label = resample_to(image, label, affine, ras, shape, motion)
    yield "combined", (moved + noise * rng.standard_normal(moved.shape)).astype(np.float32), moved_label, ras


def dice_scores(prediction: np.ndarray, reference: np.ndarray, labels: dict[int, str]) -> dict[str, float]:
    """Dice per foreground class (NaN where both are empty)."""
    from medseg_attn.segmentation.measures.overlap import mask_dice

    scores = {}
    for index, name in sorted(labels.items()):
        if index == 0:
            continue
        predicted, truth = prediction == index, reference == index
        scores[name] = mask_dice(predicted, truth) if predicted.any() or truth.any() else float("nan")
    return scores


def run_stress(predictor: Any, variants: Iterator[tuple[int, Variant]] | list[tuple[int, Variant]],
               output: str | Path, title: str = "stress test",
               on_row: Callable[[dict[str, Any]], None] | None = None, signals: bool = False) -> list[dict[str, Any]]:
    """Predict every variant, score it, write ``OUTPUT/stress.csv`` and ``OUTPUT/stress.png``.

    Args:
        predictor: a :class:`medseg_attn.segmentation.inference.predictor.Predictor`.
        variants: ``(case index, (name, image, label, affine))`` pairs.
        output: folder for the CSV and the picture.
        title: the picture's title.
        on_row: called with each row as it is scored (progress).
        signals: also record each case's failure signals (:func:`case_signals`: the QC report's score and flags,
            mean uncertainty, member agreement) and judge them as failure detectors
            (``OUTPUT/failure_detection.csv`` and ``.png``, see
            :mod:`medseg_attn.segmentation.evaluation.failure_detection`); thumbnails go to ``OUTPUT/qc/``.

    Returns:
        One row per case and variant: case, variant, Dice per class, seconds (and the signals).
    """
    from medseg_attn.io.manifest import RunManifest
    from medseg_attn.io.tables import write_csv
    from medseg_attn.plots import save_stress_plot

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    manifest = RunManifest(output, "stress")
    if hasattr(predictor, "provenance"):
        manifest.add_model(**predictor.provenance())
    classes = [name for index, name in sorted(predictor.labels.items()) if index > 0]
    review = _review(predictor) if signals else None
    rows, reviewed = [], []
    for case, (name, image, label, affine) in variants:
        if review is None:
            prediction = predictor.predict(image, affine=affine)
        else:
            prediction = predictor.predict(image, affine=affine, uncertainty=True, keep_image=True)
        scores = dice_scores(prediction.labels, label, predictor.labels)
        row = {"case": case, "variant": name, **{k: round(v, 4) for k, v in scores.items()},
               "seconds": round(prediction.seconds, 1)}
        if review is not None:
            measured = review.measure(f"case{case}_{name}", prediction.labels, prediction.affine, prediction.image,
                                      prediction.uncertainty, Path(f"case{case}_{name}"), output)
            reviewed.append({"case": f"case{case}_{name}", "input": "", "status": "ok", **measured})
            row.update(case_signals(predictor, prediction, image, affine))
        rows.append(row)
        logger.info("stress case %s %-16s %s", case, name, "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        if on_row is not None:
            on_row(row)
    columns = ["case", "variant", *classes, "seconds"]
    if review is not None:
        _add_qc_scores(rows, reviewed, review)
        columns += [*SIGNAL_COLUMNS, "qc_flags"]
        _write_detection(rows, classes, output, title)
    write_csv(output / "stress.csv", rows, columns=columns)
    save_stress_plot(rows, classes, output / "stress.png", title)
    manifest.update(variants=sorted({row["variant"] for row in rows}), cases=sorted({str(row["case"]) for row in rows}))
    manifest.finish("ok")
    return rows


SIGNAL_COLUMNS = ("qc_score", "uncertainty_mean", "uncertainty_foreground", "disagreement")


def _review(predictor: Any) -> Any:
    from medseg_attn.segmentation.qc.qc_report import Review

    return Review.for_predictor(predictor)


def case_signals(predictor: Any, prediction: Any, image: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Mean uncertainty (whole volume, predicted foreground) and disagreement (1 - member agreement) of one case."""
    from medseg_attn.segmentation.inference.agreement import member_agreement

    whole, inside = prediction.uncertainty_means()
    agreement = member_agreement(predictor, image, affine)
    return {"uncertainty_mean": round(whole, 5), "uncertainty_foreground": round(inside, 5),
            "disagreement": round(1.0 - agreement, 5)}


def _add_qc_scores(rows: list[dict[str, Any]], reviewed: list[dict[str, Any]], review: Any) -> None:
    """The QC report's score and flag kinds per row, as one batch of every case and variant would get them."""
    from medseg_attn.segmentation.qc.review import flag_cases

    ranked = {c["case"]: c for c in flag_cases(reviewed, review.settings, fingerprinted=bool(review.fingerprint))}
    for row in rows:
        found = ranked[f"case{row['case']}_{row['variant']}"]
        row["qc_score"] = found["score"]
        row["qc_flags"] = " ".join(sorted({flag.kind for flag in found["flags"]}))


def failure_records(rows: list[dict[str, Any]], classes: list[str]) -> list[Any]:
    """One :class:`~medseg_attn.segmentation.evaluation.failure_detection.CaseRecord` per row (Dice: class mean)."""
    from medseg_attn.segmentation.evaluation.failure_detection import CaseRecord

    records = []
    for row in rows:
        values = [row[c] for c in classes if not math.isnan(row[c])]
        dice = float(np.mean(values)) if values else math.nan
        records.append(CaseRecord(str(row["case"]), row["variant"], dice,
                                  {s: float(row[s]) for s in SIGNAL_COLUMNS if s in row}))
    return records


def _write_detection(rows: list[dict[str, Any]], classes: list[str], output: Path, title: str) -> None:
    from medseg_attn.segmentation.evaluation.failure_detection import evaluate_signals, write_failure_detection

    detection = evaluate_signals(failure_records(rows, classes))
    write_failure_detection(detection, output, f"{title}: failure detection")
    for row in detection:
        logger.info("failure detection %-24s %-22s AUROC %.3f AURC %.3f (oracle %.3f) n=%d failed=%d %s",
                    row.signal, row.target, row.auroc, row.aurc, row.optimal_aurc, row.n_cases, row.n_failed,
                    row.note)


def read_stress_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``stress.csv`` with numbers as floats (empty cells NaN), ``case``/``variant``/``qc_flags`` text."""
    from medseg_attn.io.tables import read_csv_rows

    rows = []
    for raw in read_csv_rows(path):
        row: dict[str, Any] = {}
        for key, value in raw.items():
            if key in ("case", "variant", "qc_flags"):
                row[key] = value
            else:
                row[key] = float(value) if value not in ("", None) else math.nan
        rows.append(row)
    return rows
