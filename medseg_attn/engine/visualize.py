"""Pictures a person would rather see than read: overlays, training curves (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medseg_attn.data.io import atomic_write  # noqa: E402

__all__ = ["label_colors", "overlay_rgb", "heat_rgb", "save_overlay_png", "save_map_overlay_png",
           "save_picture_attention_png", "save_training_curves", "foreground_centre", "to_ras"]

HEAT = "inferno"  # perceptually uniform, dark at 0: a low value does not hide the anatomy


def label_colors(count: int) -> np.ndarray:
    """(count, 3) RGB in [0, 1]; class 0 is black."""
    cmap = plt.get_cmap("tab10" if count <= 11 else "tab20")
    colors = np.array([cmap(i % cmap.N)[:3] for i in range(max(count - 1, 1))])
    return np.vstack([np.zeros(3), colors])[:count]


def _normalise(image: np.ndarray) -> np.ndarray:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros_like(image, dtype=np.float32)
    low, high = np.percentile(finite, [0.5, 99.5])
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)


def overlay_rgb(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45, classes: int | None = None) -> np.ndarray:
    """(H, W, 3) float RGB: a grey image slice with a label slice blended in colour."""
    grey = _normalise(image)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    count = int(classes if classes is not None else max(int(labels.max()) + 1, 2))
    colors = label_colors(count)
    mask = labels > 0
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colors[np.clip(labels[mask], 0, count - 1).astype(int)]
    return rgb


def foreground_centre(labels: np.ndarray) -> tuple[int, ...]:
    """Voxel index at the centre of the foreground's bounding box (the volume's centre when empty)."""
    points = np.argwhere(labels > 0)
    if points.size == 0:
        return tuple(s // 2 for s in labels.shape)
    return tuple(int(v) for v in (points.min(0) + points.max(0)) // 2)


def _orthogonal(volume: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """Three mid-slices (sagittal, coronal, axial for RAS arrays), rotated for display (superior up)."""
    x, y, z = centre
    return [np.rot90(volume[x, :, :]), np.rot90(volume[:, y, :]), np.rot90(volume[:, :, z])]


def save_overlay_png(
    path: str | Path,
    image: np.ndarray,
    prediction: np.ndarray,
    label: np.ndarray | None = None,
    names: dict[int, str] | None = None,
    title: str = "",
) -> Path:
    """PNG with three orthogonal slices through the foreground: image, prediction (and reference) overlays.

    Arrays are 3D on the same grid, ideally in RAS orientation (superior is drawn up).
    """
    classes = max(int(prediction.max()), int(label.max()) if label is not None else 0, len(names or {}) - 1) + 1
    centre = foreground_centre(label if label is not None else prediction)
    rows = [("image", None), ("prediction", prediction)] + ([("reference", label)] if label is not None else [])
    fig, axes = plt.subplots(len(rows), 3, figsize=(10, 3.3 * len(rows)), squeeze=False)
    image_slices = _orthogonal(image, centre)
    for row, (name, volume) in enumerate(rows):
        slices = _orthogonal(volume, centre) if volume is not None else [np.zeros_like(s, dtype=int) for s in image_slices]
        for col, (img, lab) in enumerate(zip(image_slices, slices)):
            axes[row, col].imshow(overlay_rgb(img, lab, classes=classes), interpolation="nearest")
            axes[row, col].set_axis_off()
        axes[row, 0].set_title(name, loc="left", fontsize=10)
    if names:
        colors = label_colors(classes)
        handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i]) for i in sorted(names) if i > 0 and i < classes]
        fig.legend(handles, [names[i] for i in sorted(names) if 0 < i < classes], loc="lower center",
                   ncol=min(6, max(1, len(handles))), fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.05 if names else 0, 1, 0.97))
    return _save(fig, path)


def heat_rgb(image: np.ndarray, values: np.ndarray, labels: np.ndarray | None = None, alpha: float = 0.75
             ) -> np.ndarray:
    """(H, W, 3) float RGB: a grey image slice with a [0, 1] map blended in as heat (more opaque where higher),
    and the prediction's class boundaries in white."""
    grey = 0.8 * np.repeat(_normalise(image)[..., None], 3, axis=-1)  # a little darker: bright heat stands out
    v = np.clip(np.nan_to_num(values.astype(np.float32)), 0, 1)[..., None]
    heat = plt.get_cmap(HEAT)(v[..., 0])[..., :3]
    rgb = (1 - alpha * v) * grey + alpha * v * heat
    if labels is not None:
        rgb[_boundary(labels)] = 1.0
    return rgb


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels of a 2D label slice whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge


def to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 3D array in the closest RAS voxel order (axes permuted/flipped, never interpolated) and its spacing."""
    import nibabel as nib

    orientation = nib.orientations.io_orientation(affine)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    return nib.orientations.apply_orientation(volume, orientation), spacing[orientation[:, 0].astype(int)]


def _slices_with_aspect(volume: np.ndarray, centre: Sequence[int], spacing: Sequence[float]
                        ) -> list[tuple[np.ndarray, float]]:
    """The three orthogonal slices of :func:`_orthogonal` with their display aspect (row / column spacing)."""
    sx, sy, sz = spacing
    return list(zip(_orthogonal(volume, centre), (sz / sy, sz / sx, sy / sx)))


def save_map_overlay_png(
    path: str | Path,
    image: np.ndarray,
    prediction: np.ndarray,
    maps: dict[str, np.ndarray],
    affine: np.ndarray,
    title: str = "",
) -> Path:
    """PNG: three orthogonal mid-slices through the predicted foreground; one row per map (heat overlay on the
    image, prediction contours, a colour bar), below a row with the image and the prediction contours.

    Args:
        image, prediction: (*S) arrays on the input grid (2D, or 3D in any orientation: drawn in RAS,
            superior up).
        maps: name -> (*S) map with values in [0, 1].
        affine: the grid's voxel-to-world (RAS) affine (orientation and voxel size of the drawing).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if image.ndim == 2:  # one slice: drawn as the axial view of a one-slice volume
        image, prediction = image[..., None], prediction[..., None]
        maps = {name: m[..., None] for name, m in maps.items()}
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = np.asarray(affine)[:2, :2], np.asarray(affine)[:2, 2]
        affine = full
    image, spacing = to_ras(image, affine)
    prediction, _ = to_ras(prediction, affine)
    centre = foreground_centre(prediction)
    views = [2] if image.shape[2] == 1 else [0, 1, 2]
    rows = [("image + prediction", None)] + [(name, to_ras(m, affine)[0]) for name, m in maps.items()]
    fig, axes = plt.subplots(len(rows), len(views), figsize=(3.0 * len(views) + 0.9, 2.8 * len(rows)), squeeze=False,
                             layout="constrained")
    images = [_slices_with_aspect(image, centre, spacing)[v] for v in views]
    labels = [_slices_with_aspect(prediction, centre, spacing)[v][0] for v in views]
    classes = max(int(prediction.max()) + 1, 2)
    colors = label_colors(classes)
    for row, (name, volume) in enumerate(rows):
        values = [_orthogonal(volume, centre)[v] for v in views] if volume is not None else [None] * len(views)
        for col, ((img, aspect), lab, value) in enumerate(zip(images, labels, values)):
            ax = axes[row, col]
            rgb = heat_rgb(img, value) if value is not None else np.repeat(_normalise(img)[..., None], 3, axis=-1)
            ax.imshow(rgb, aspect=aspect, interpolation="nearest")
            for k in range(1, classes):
                if (lab == k).any() and (lab != k).any():
                    ax.contour(lab == k, levels=[0.5], colors=[colors[k]], linewidths=0.6)
            ax.set_axis_off()
        axes[row, 0].set_title(name, loc="left", fontsize=10)
        if volume is not None:
            fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=HEAT), ax=axes[row, -1], fraction=0.08, pad=0.02)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path, dpi=80)


def save_picture_attention_png(path: str | Path, image: np.ndarray, values: np.ndarray, title: str = "") -> Path:
    """PNG of a 2D picture beside the same picture with an attention map as heat overlay and a colour bar.

    Args:
        image: (C, H, W) or (H, W) as read (rows first); colour pictures are shown in colour.
        values: (H, W) map in [0, 1].
    """
    picture = image[0] if image.ndim == 3 and image.shape[0] == 1 else image
    picture = np.moveaxis(picture, 0, -1) if picture.ndim == 3 else picture
    shown = _normalise(picture)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.0))
    for ax in axes:
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, interpolation="nearest")
        ax.set_axis_off()
    heat = axes[1].imshow(values, cmap=HEAT, vmin=0, vmax=1, alpha=0.55, interpolation="nearest")
    axes[0].set_title("image", loc="left", fontsize=10)
    axes[1].set_title("attention of the classification head", loc="left", fontsize=10)
    fig.colorbar(heat, ax=list(axes), fraction=0.03, pad=0.02)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def save_training_curves(history: list[dict], path: str | Path) -> Path:
    """Loss per epoch and validation Dice (mean and per class) against epochs, as one PNG."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [row["epoch"] for row in history]
    left.plot(epochs, [row["train_loss"] for row in history], label="training loss")
    left.set_xlabel("epoch")
    left.set_ylabel("DiceCE loss")
    left.grid(alpha=0.3)
    validated = [row for row in history if row.get("val_dice") is not None]
    if validated:
        right.plot([r["epoch"] for r in validated], [r["val_dice"] for r in validated], "k-o", label="mean")
        keys = [k for k in validated[-1] if k.startswith("val_dice_")]
        for key in keys:
            right.plot([r["epoch"] for r in validated], [r.get(key) for r in validated], "--", label=key[9:])
        right.legend(fontsize=8)
    right.set_xlabel("epoch")
    right.set_ylabel("validation Dice")
    lowest = min((r["val_dice"] for r in validated), default=0.0)
    right.set_ylim(max(0.0, lowest - 0.05), 1.0)
    right.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path, dpi: int = 100) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
