"""Explanation maps: writing them on the input's grid, and drawing them for TensorBoard.

The maps themselves are computed where the prediction is (:meth:`Predictor.predict` with ``attention_maps`` /
``uncertainty``; :meth:`AttentionSkipUNet.forward_with_attention`); this module holds what surrounds them:

* :func:`save_map_nifti` writes a map, or one map per head on a 4th axis, as NIfTI on exactly the input's grid
  (a NIfTI input's header is copied, other inputs get the reader's RAS affine, as label maps do);
* :func:`validation_attention_images` draws, for the training loop's TensorBoard, one picture per attention
  level of a validation case: an axial slice through the foreground with the attention as heat overlay.

What the maps measure, and what they do not, is in ``docs/explainability.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg_attn.data.io import atomic_write

__all__ = ["save_map_nifti", "validation_attention_images"]


def save_map_nifti(values: np.ndarray, path: str | Path, affine: np.ndarray, reference: str | Path | None = None,
                   description: str = "", channels_first: bool = False) -> Path:
    """Write a map with values in [0, 1] as NIfTI on the input's grid; atomically.

    Stored in 8 bits with the scale factor ``scl_slope`` ~ 1/255: readers (nibabel, 3D Slicer, ITK-SNAP) get
    floats in [0, 1] in steps of 1/255, as display tools show them anyway. Smooth maps then compress 5x better
    than with 16 bits and write 4x faster (a batch writes several per case). The slope is set here, a hair below
    1/255, so the largest value reads back as 0.99999994 rather than a hair above 1.

    Args:
        values: (*S) or, with ``channels_first``, (C, *S) (written as (*S, C), a 4D NIfTI).
        path: the output file.
        affine: the input's voxel-to-world (RAS) affine, used when there is no ``reference``.
        reference: a NIfTI input whose header (qform/sform, units) the output copies.
        description: stored in the header's ``descrip`` field (80 characters at most).
    """
    import nibabel as nib

    data = np.moveaxis(values, 0, -1) if channels_first else values  # (*S[, C])
    data = np.clip(data, 0.0, 1.0, dtype=np.float32)  # one float copy, scaled in place (bounded memory)
    data = np.rint(np.multiply(np.nan_to_num(data, copy=False), 255.0, out=data), out=data).astype(np.uint8)
    if reference is not None:
        ref = nib.load(str(reference))
        header, out_affine = ref.header.copy(), ref.affine
    else:
        header, out_affine = None, np.asarray(affine, dtype=np.float64)
    if out_affine.shape != (4, 4):  # a 2D grid's 3x3 affine
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = out_affine[:2, :2], out_affine[:2, 2]
        out_affine = full
    image = nib.Nifti1Image(data, out_affine, header)
    image.header.set_data_dtype(np.uint8)
    image.header.set_slope_inter(float(np.nextafter(np.float32(1 / 255), np.float32(0))), 0.0)  # 255 * slope < 1
    image.header["cal_min"], image.header["cal_max"] = 0.0, 1.0
    image.header["descrip"] = description[:79].encode()
    if channels_first:
        image.header.set_intent("vector", name="per head")
    if header is None:
        image.header.set_qform(out_affine, code=1)
        image.header.set_sform(out_affine, code=1)
        image.header.set_xyzt_units("mm")
    return atomic_write(path, lambda tmp: nib.save(image, str(tmp)))


@torch.no_grad()
def validation_attention_images(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor | np.ndarray | None = None,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.25,
) -> dict[str, np.ndarray]:
    """One picture per attention level of a validation case, for TensorBoard (``add_image(..., "HWC")``).

    The attention each voxel receives (summed over queries, averaged over heads, see
    :meth:`AttentionSkipUNet.forward_with_attention`) is drawn as heat over the axial slice through the centre of
    the foreground, with the predicted class boundaries in white; each map is scaled so its maximum over the case
    is 1, as the predicted maps are.

    Args:
        network: the segmentation network (DDP and torch.compile wrappers are unwrapped); put in eval mode for
            the call and restored after.
        image: (C, *S) or (1, C, *S) preprocessed image on the network grid (2D or 3D).
        label: (*S) or (1, *S) reference labels: the slice goes through their foreground (default: the
            prediction's).
        patch_size: run a Gaussian-blended sliding window of this size (as validation does); None = one forward
            pass over the whole image.
        overlap: sliding-window overlap.

    Returns:
        {level name ('level0' finest, ...): (H, W, 3) uint8}; empty for a network without attention (attention
        off, or a MONAI architecture), so the caller need not check.
    """
    from medseg_attn.engine.sliding import sliding_window_probabilities
    from medseg_attn.engine.visualize import foreground_centre, heat_rgb

    model = network
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):  # DistributedDataParallel, torch.compile
        model = getattr(model, "module", None) or model._orig_mod
    if not getattr(model, "attention_levels", None):
        return {}
    image = torch.as_tensor(image)
    image = image[0] if image.ndim == model.spatial_dims + 2 else image  # (C, *S)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if patch_size is None:
            logits, maps = model.forward_with_attention(image[None].to(device))
            probabilities, maps = logits[0].float(), {name: m[0] for name, m in maps.items()}
        else:
            probabilities, maps = sliding_window_probabilities(
                model.forward_with_attention, image, patch_size, overlap=overlap, device=device, with_maps=True)
    finally:
        model.train(was_training)
    prediction = probabilities.argmax(0).cpu().numpy()  # (*S)
    reference = prediction if label is None else np.asarray(torch.as_tensor(label).cpu()).reshape(prediction.shape)
    picture = image[0].float().cpu().numpy()
    tops = {name: float(m.max()) for name, m in maps.items()}
    if prediction.ndim == 3:
        z = foreground_centre(reference)[2]
        picture, prediction = picture[:, :, z], prediction[:, :, z]
        maps = {name: m[..., z] for name, m in maps.items()}
    out = {}
    for name, values in maps.items():
        values = values[0].float().cpu().numpy()  # (H, W) on the slice; scaled by the whole case's maximum
        values = values / tops[name] if tops[name] > 0 else values
        rgb = heat_rgb(np.rot90(picture), np.rot90(values), np.rot90(prediction))
        out[name] = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    return out
