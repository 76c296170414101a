"""Pictures a person would rather see than read: overlays, training curves (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medseg_attn.data.io import atomic_write  # noqa: E402

__all__ = ["label_colors", "overlay_rgb", "save_overlay_png", "save_training_curves", "foreground_centre"]


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


def _save(fig: plt.Figure, path: str | Path) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
