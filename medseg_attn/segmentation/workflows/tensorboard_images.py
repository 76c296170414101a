"""Explanation maps: writing them on the input's grid, and drawing them for TensorBoard.

The maps themselves are computed where the prediction is (:meth:`Predictor.predict` with ``attention_maps`` /
``uncertainty``; :meth:`AttentionSkipUNet.forward_with_attention`); this module holds what surrounds them:

* the maps are written on the input's grid by :func:`medseg_attn.io.nifti.write_nifti` (``unit_interval``),
  as label maps are;
* :func:`validation_attention_images` draws, for the training loop's TensorBoard, one picture per attention
  level of a validation case: an axial slice through the foreground with the attention as heat overlay.

What the maps measure, and what they do not, is in ``docs/explainability.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["validation_attention_images"]


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
    from medseg_attn.plots import foreground_centre, heat_rgb
    from medseg_attn.segmentation.inference.sliding import sliding_window_probabilities

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
