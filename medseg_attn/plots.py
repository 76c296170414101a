"""Pictures a person would rather see than read: overlays, training curves (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medseg_attn.io.files import atomic_write  # noqa: E402
from medseg_attn.io.segments import label_palette  # noqa: E402

__all__ = ["label_colors", "overlay_rgb", "heat_rgb", "save_overlay_png", "save_map_overlay_png",
           "save_picture_attention_png", "save_stress_plot", "save_risk_coverage_plot", "save_training_curves",
           "foreground_centre", "to_ras", "save_thumbnail_png", "save_distributions_png"]

HEAT = "inferno"  # perceptually uniform, dark at 0: a low value does not hide the anatomy


def label_colors(count: int) -> np.ndarray:
    """(count, 3) RGB in [0, 1]; class 0 is black (the one palette: :func:`medseg_attn.io.segments.label_palette`)."""
    return label_palette(count)


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
    foreground = labels > 0
    if not foreground.any():
        return tuple(s // 2 for s in labels.shape)
    centre = []
    for axis in range(labels.ndim):  # the box from each axis' projection: no list of every voxel
        present = np.flatnonzero(foreground.any(axis=tuple(a for a in range(labels.ndim) if a != axis)))
        centre.append(int(present[0] + present[-1]) // 2)
    return tuple(centre)


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
        blank = [np.zeros_like(s, dtype=int) for s in image_slices]
        slices = _orthogonal(volume, centre) if volume is not None else blank
        for col, (img, lab) in enumerate(zip(image_slices, slices, strict=True)):
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


def heat_rgb(image: np.ndarray, values: np.ndarray | None, labels: np.ndarray | None = None, alpha: float = 0.75,
             colors: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) float RGB: an image slice ((H, W) grey or (H, W, 3) colour) with a [0, 1] map blended in as heat
    (more opaque where higher), and the outline of each predicted class (white, or ``colors[k]`` for class k)."""
    grey = _normalise(image)
    rgb = 0.8 * (grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=-1))  # darker: heat stands out
    if values is not None:
        v = np.clip(np.nan_to_num(values.astype(np.float32)), 0, 1)[..., None]
        rgb = (1 - alpha * v) * rgb + alpha * v * plt.get_cmap(HEAT)(v[..., 0])[..., :3]
    if labels is not None:
        for k in np.unique(labels[labels > 0]):
            rgb[_boundary(labels == k)] = 1.0 if colors is None else colors[int(k) % len(colors)]
    return rgb


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask that touch (4-neighbourhood) a pixel outside it."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


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
    return list(zip(_orthogonal(volume, centre), (sz / sy, sz / sx, sy / sx), strict=True))


def _font(size: int):
    """DejaVu Sans (shipped with matplotlib) at ``size`` pixels, for pictures drawn with Pillow."""
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def _panel(rgb: np.ndarray, aspect: float, side: int):
    """A float RGB slice as a Pillow image of at most ``side`` pixels, rows stretched by ``aspect`` (row / column
    spacing) so that millimetres are square."""
    from PIL import Image

    rows, columns = rgb.shape[:2]
    height, width = rows * aspect, columns
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).resize(size, Image.NEAREST)


def _draw_rows(path: str | Path, rows: list[tuple[str, list[tuple[np.ndarray, float]], bool]], title: str,
               side: int) -> Path:
    """PNG of rows of float RGB panels (with their row / column spacing), each row titled and, when its flag is
    set, with a colour bar of :data:`HEAT` from 0 (bottom) to 1 (top); written atomically."""
    from PIL import Image, ImageDraw

    gap, heading, bar = 6, 20, 16
    font, small = _font(13), _font(11)
    pictures = [[_panel(rgb, aspect, side) for rgb, aspect in panels] for _, panels, _ in rows]
    width = max(sum(p.size[0] for p in row) + gap * (len(row) + 1) for row in pictures) + bar + 40
    heights = [heading + max(p.size[1] for p in row) + gap for row in pictures]
    canvas = Image.new("RGB", (width, heading + 8 + sum(heights)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 4), title, fill="black", font=font)
    gradient = (plt.get_cmap(HEAT)(np.linspace(1, 0, 256))[:, None, :3] * np.ones((1, bar, 1)) * 255).astype(np.uint8)
    top = heading + 8
    for (name, _, with_bar), row, height in zip(rows, pictures, heights, strict=True):
        draw.text((gap, top), name, fill="black", font=font)
        left = gap
        for picture in row:
            canvas.paste(picture, (left, top + heading))
            left += picture.size[0] + gap
        if with_bar:
            inner = height - heading - gap
            canvas.paste(Image.fromarray(gradient).resize((bar, inner)), (left, top + heading))
            for value in (0.0, 0.5, 1.0):
                y = top + heading + round((1 - value) * (inner - 1))
                draw.line([(left + bar, y), (left + bar + 3, y)], fill="black")
                draw.text((left + bar + 5, y - 6), f"{value:g}", fill="black", font=small)
        top += height
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="png", compress_level=3))


def save_map_overlay_png(
    path: str | Path,
    image: np.ndarray,
    prediction: np.ndarray,
    maps: dict[str, np.ndarray],
    affine: np.ndarray,
    title: str = "",
    side: int = 240,
) -> Path:
    """PNG: three orthogonal mid-slices through the predicted foreground; one row per map (heat overlay on the
    image, the outline of each predicted class, a colour bar), below a row with the image and the outlines.

    Drawn with Pillow (a fraction of matplotlib's time: it is written for every case of a batch).

    Args:
        image, prediction: (*S) arrays on the input grid (2D, or 3D in any orientation: drawn in RAS,
            superior up).
        maps: name -> (*S) map with values in [0, 1].
        affine: the grid's voxel-to-world (RAS) affine (orientation and voxel size of the drawing).
        side: the longest side of a slice in pixels.
    """
    if image.ndim == 2:  # one slice: drawn as the axial view of a one-slice volume
        image, prediction = image[..., None], prediction[..., None]
        maps = {name: m[..., None] for name, m in maps.items()}
        from medseg_attn.io.volumes import affine_4x4

        affine = affine_4x4(affine, 2)
    image, spacing = to_ras(image, affine)
    prediction, _ = to_ras(prediction, affine)
    centre = foreground_centre(prediction)
    views = [2] if image.shape[2] == 1 else [0, 1, 2]
    images = [_slices_with_aspect(image, centre, spacing)[v] for v in views]
    labels = [_orthogonal(prediction, centre)[v] for v in views]
    colors = label_colors(max(int(prediction.max()) + 1, 2))
    rows = []
    for name, volume in [("image + prediction", None)] + [(name, to_ras(m, affine)[0]) for name, m in maps.items()]:
        values = [_orthogonal(volume, centre)[v] for v in views] if volume is not None else [None] * len(views)
        panels = [(heat_rgb(img, value, lab, colors=colors), aspect)
                  for (img, aspect), lab, value in zip(images, labels, values, strict=True)]
        rows.append((name, panels, volume is not None))
    return _draw_rows(path, rows, title, side)


def save_thumbnail_png(path: str | Path, image: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                       classes: int | None = None, side: int = 110) -> Path:
    """Small PNG for review tables: three orthogonal slices (sagittal, coronal, axial; superior up) through the
    centre of the labelled voxels, each class filled in its colour over the grey image, millimetres square.

    Args:
        image, labels: (*S) arrays on one grid (2D, or 3D in any orientation: drawn in RAS).
        affine: the grid's voxel-to-world (RAS) affine.
        classes: number of classes for the colours (default: from the labels).
        side: the longest side of a slice in pixels.
    """
    from PIL import Image

    if image.ndim == 2:
        image, labels = image[..., None], labels[..., None]
        from medseg_attn.io.volumes import affine_4x4

        affine = affine_4x4(affine, 2)
    image, spacing = to_ras(image, affine)
    labels, _ = to_ras(labels, affine)
    centre = foreground_centre(labels)
    views = [2] if image.shape[2] == 1 else [0, 1, 2]
    count = classes or max(int(labels.max()) + 1, 2)
    views_and_labels = zip(_slices_with_aspect(image, centre, spacing), _orthogonal(labels, centre), strict=True)
    panels = [_panel(overlay_rgb(img, lab, classes=count), aspect, side)
              for v, ((img, aspect), lab) in enumerate(views_and_labels) if v in views]
    gap = 2
    canvas = Image.new("RGB", (sum(p.size[0] for p in panels) + gap * (len(panels) - 1),
                               max(p.size[1] for p in panels)), "black")
    left = 0
    for panel in panels:  # vertically centred: a thin slab's side views are short strips
        canvas.paste(panel, (left, (canvas.size[1] - panel.size[1]) // 2))
        left += panel.size[0] + gap
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="png", compress_level=6))


def save_distributions_png(path: str | Path, values: dict[str, list[tuple[str, float, bool]]], unit: str = "ml",
                           title: str = "") -> Path:
    """One strip plot per structure: each case's value as a dot (flagged cases red and named), with the batch's
    median and quartiles as a box behind them.

    Args:
        values: structure -> [(case, value, flagged), ...]; structures without values are left out.
        unit: axis label unit.
    """
    shown = {name: items for name, items in values.items() if items}
    count = max(len(shown), 1)
    columns = min(4, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows + 0.4), squeeze=False)
    rng = np.random.default_rng(0)
    for axis, (name, items) in zip(axes.ravel(), shown.items(), strict=False):
        data = np.array([v for _, v, _ in items], dtype=float)
        axis.boxplot(data, vert=False, widths=0.5, showfliers=False)
        jitter = 1 + rng.uniform(-0.15, 0.15, len(items))
        flagged = np.array([f for _, _, f in items], dtype=bool)
        axis.scatter(data[~flagged], jitter[~flagged], s=12, color="tab:blue", zorder=3)
        axis.scatter(data[flagged], jitter[flagged], s=22, color="tab:red", zorder=4)
        for (case, value, flag), y in zip(items, jitter, strict=True):
            if flag:
                axis.annotate(case, (value, y), fontsize=7, color="tab:red", xytext=(3, 3), textcoords="offset points")
        axis.set_yticks([])
        axis.set_title(f"{name} (n={len(items)})", fontsize=9)
        axis.set_xlabel(unit, fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in axes.ravel()[len(shown):]:
        axis.set_axis_off()
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no values", ha="center", va="center")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def save_picture_attention_png(path: str | Path, image: np.ndarray, values: np.ndarray, title: str = "",
                               side: int = 320) -> Path:
    """PNG of a 2D picture beside the same picture with an attention map as heat overlay and a colour bar.

    Args:
        image: (C, H, W) or (H, W) as read (rows first); colour pictures are shown in colour.
        values: (H, W) map in [0, 1].
    """
    picture = image[0] if image.ndim == 3 and image.shape[0] == 1 else image
    picture = np.moveaxis(picture, 0, -1) if picture.ndim == 3 else picture  # (H, W[, 3])
    plain = heat_rgb(picture, None)
    rows = [("image | attention of the classification head", [(plain, 1.0), (heat_rgb(picture, values), 1.0)],
             True)]
    return _draw_rows(path, rows, title, side)


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


def save_stress_plot(rows: list[dict], classes: Sequence[str], path: str | Path, title: str = "stress test") -> Path:
    """Mean Dice per stress variant (one bar per class, cases as dots), the as-is mean as a dashed line."""
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    fig, axis = plt.subplots(figsize=(max(6.0, 0.75 * len(variants) * max(1, len(classes)) ** 0.5 + 2), 4.2))
    width = 0.8 / max(1, len(classes))
    colors = label_colors(len(classes) + 1)[1:]
    for k, name in enumerate(classes):
        for v, variant in enumerate(variants):
            values = [row[name] for row in rows if row["variant"] == variant and row.get(name) == row.get(name)]
            if not values:
                continue
            x = v - 0.4 + width * (k + 0.5)
            axis.bar(x, float(np.mean(values)), width, color=colors[k], label=name if v == 0 else None)
            axis.plot([x] * len(values), values, "k.", markersize=3)
        as_is = [row[name] for row in rows if row["variant"] == "as_is" and row.get(name) == row.get(name)]
        if as_is:
            axis.axhline(float(np.mean(as_is)), color=colors[k], linestyle="--", linewidth=0.8)
    axis.set_xticks(range(len(variants)), variants, rotation=35, ha="right", fontsize=8)
    axis.set_ylabel("Dice")
    lowest = min((row[name] for row in rows for name in classes if row.get(name) == row.get(name)), default=0.0)
    axis.set_ylim(max(0.0, min(lowest, 0.8) - 0.05), 1.0)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, loc="lower left")
    axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def save_risk_coverage_plot(curves: Sequence[tuple[str, Sequence[float], Sequence[float], float]], optimal: float,
                            path: str | Path, title: str = "failure detection") -> Path:
    """Risk-coverage curves, one per signal ``(name, coverage, selective risk, AURC)``; the oracle's AURC noted."""
    fig, axis = plt.subplots(figsize=(6.0, 4.2))
    for name, coverage, risk, area in curves:
        axis.plot(coverage, risk, marker=".", markersize=3, linewidth=1.2, label=f"{name} (AURC {area:.3f})")
    axis.set_xlabel("coverage (cases accepted, least suspicious first)")
    axis.set_ylabel("selective risk (mean 1 - Dice)")
    axis.set_xlim(0.0, 1.0)
    axis.set_ylim(bottom=0.0)
    axis.set_title(f"{title} (optimal AURC {optimal:.3f})", fontsize=10)
    if curves:
        axis.legend(fontsize=8, loc="upper left")
    axis.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
