"""Sliding-window prediction written back in each input's exact geometry.

The input is preprocessed exactly as in training (orientation, spacing, intensity, crop), the network runs as a
sliding window with Gaussian blending (and optional flip TTA), and the *class probabilities* are resampled onto
the input's own voxel grid before the argmax (as nnU-Net does: resampling a label map instead costs thin
structures much of their Dice). The resampling is a single affine map from the input grid to the network grid,
done slab by slab so memory stays bounded on large volumes; the label map is written with the input's header,
so affine and shape match it exactly.

On request the same pass also gives explanation maps on the input's grid (see ``docs/explainability.md``):
the attention each voxel receives at every attention level of the network (reduced window by window during
the sliding window, blended with the same Gaussian weights, resampled like the probabilities, maximum 1), and
the predictive entropy of the averaged class probabilities (over flip TTA and over an ensemble of checkpoints).

Inputs are read by :class:`medseg_attn.io.readers.VolumeReader`: NIfTI, NRRD, MetaImage and DICOM (series
folders and multi-frame files). Each input is checked before the network runs (header, dimensions, channels,
finite voxels), with one-line errors naming the file. Batches over folders are run by
:mod:`medseg_attn.segmentation.inference.batch`, which reports and skips bad cases.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from torch import nn

from medseg_attn.config import Config, InferenceConfig, from_dict
from medseg_attn.io.dicom import is_dicom_file
from medseg_attn.io.limits import check_segmentable
from medseg_attn.io.readers import LoadVolumed, is_nifti
from medseg_attn.io.segments import resolve_colors
from medseg_attn.io.volumes import affine_4x4, case_name, read_geometry
from medseg_attn.segmentation.inference.cvrun import (ClassPostprocessing, apply_postprocessing, cv_members,
                                                      is_cv_run, read_postprocessing, voxel_ml)
from medseg_attn.segmentation.inference.resample import normalise_maximum, resample_prediction, spatial_affine
from medseg_attn.segmentation.inference.sliding import mean_of_blends, sliding_window_probabilities
from medseg_attn.segmentation.data.transforms import Preprocessing, preprocessing
from medseg_attn.segmentation.task import TASK
from medseg_attn.training.checkpoint import find_checkpoint, load_checkpoint
from medseg_attn.training.calibration import apply_temperature
from medseg_attn.training.device import inference_dtype, precision_name, precision_reason, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["Predictor", "Prediction"]


@dataclass
class Prediction:
    """A prediction on the input's own grid (every array has the input's spatial shape ``S_input``)."""

    case: str
    labels: np.ndarray  # (*S_input) class indices
    affine: np.ndarray  # the input's voxel-to-world (RAS) affine
    probabilities: np.ndarray | None = None  # (C, *S_input) when asked for
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    reference: Path | None = None  # the NIfTI input whose header the output copies (None: write from ``affine``)
    # attention received per level ('level0' finest ...): (*S_input), or (heads, *S_input) per head; maximum 1
    attention: dict[str, np.ndarray] | None = None
    uncertainty: np.ndarray | None = None  # (*S_input) normalised predictive entropy in [0, 1]
    image: np.ndarray | None = None  # (*S_input) the input's first channel, kept for overlays with the maps

    def uncertainty_means(self) -> tuple[float, float]:
        """Mean uncertainty over the whole volume and inside the predicted foreground (NaN when empty)."""
        if self.uncertainty is None:
            raise ValueError(f"{self.case}: predicted without uncertainty=True")
        foreground = self.labels > 0
        inside = float(self.uncertainty[foreground].mean()) if foreground.any() else float("nan")
        return float(self.uncertainty.mean()), inside


class Predictor:
    """Runs a trained network (or an ensemble of them) over whole volumes.

    Args:
        network: the segmentation network (logits out), or several trained the same way (an ensemble: their
            probabilities are averaged).
        prep: the preprocessing the network was trained with.
        labels: class index -> name.
        patch_size: sliding-window size (voxels on the network grid).
        inference: overlap, blending, TTA, window batch.
        device: where the network runs.
        in_channels: image channels the network takes.
        sources: where each network came from (checkpoint paths), for error messages.
    """

    def __init__(
        self,
        network: nn.Module | Sequence[nn.Module],
        prep: Preprocessing,
        labels: dict[int, str],
        patch_size: Sequence[int],
        inference: InferenceConfig | None = None,
        device: torch.device | str = "cpu",
        in_channels: int = 1,
        sources: Sequence[str] | None = None,
    ) -> None:
        self.networks = list(network) if isinstance(network, (list, tuple)) else [network]
        self.network = self.networks[0]
        self.sources = list(sources) if sources else [f"network {i}" for i in range(len(self.networks))]
        self.in_channels = in_channels
        self.prep = prep
        self.labels = dict(labels)
        self.colors = resolve_colors(self.labels)  # class -> 0..255 RGB; from_checkpoint sets the model's own
        self.patch_size = tuple(patch_size)
        self.inference = inference or InferenceConfig()
        self.device = torch.device(device)
        self.dtype = inference_dtype(self.inference.precision, self.device)  # autocast dtype; None = fp32
        self._pre = mt.Compose(preprocessing(prep, keys=("image",), load=False))
        self.temperatures = [1.0] * len(self.networks)  # per network; > 1 softens (fitted after training)
        self.model_info: dict[str, Any] = {}  # the first checkpoint's card, plan, calibration ... (run manifests)
        self.postprocessing: dict[int, ClassPostprocessing] = {}  # a CV run's choice per class

    @classmethod
    def from_checkpoint(cls, model: str | Path | Sequence[str | Path], device: str = "auto",
                        folds: Sequence[int] | None = None, **inference: Any) -> Predictor:
        """Load a run folder or checkpoint (several: an ensemble); ``inference`` overrides keys of the saved
        inference config (the first model's). A cross-validation run folder is the ensemble of its folds (or of
        ``folds``), with the postprocessing its CV chose (:mod:`medseg_attn.segmentation.inference.cvrun`).

        Raises:
            FileNotFoundError: no checkpoint at a path.
            ValueError: not a segmentation checkpoint, or ensemble members that differ in preprocessing, classes
                or input channels.
        """
        models = [model] if isinstance(model, (str, Path)) else list(model)
        if not models:
            raise ValueError("no model given")
        runs = [item for item in models if is_cv_run(item)]
        if folds is not None and not runs:
            raise ValueError(f"--folds {' '.join(map(str, folds))}: choose folds of a cross-validation run folder "
                             f"(one with cv.json), got {' '.join(map(str, models))}")
        models = [member for item in models for member in (cv_members(item, folds) if is_cv_run(item) else [item])]
        resolved = resolve_device(device)
        networks, sources = [], []
        first: dict[str, Any] = {}
        temperatures: list[float] = []
        for item in models:
            path = find_checkpoint(item)
            payload = load_checkpoint(path)
            if not TASK.owns(payload):
                raise ValueError(f"{path}: is a {payload['task']} model; use `medseg-attn classify predict` for it")
            network = TASK.network(payload, path)
            try:
                config = from_dict(payload["config"])
                prep = Preprocessing.from_dict(payload["preprocessing"])
                labels = {int(k): v for k, v in payload["labels"].items()}
            except (KeyError, RuntimeError, TypeError) as error:
                raise ValueError(f"{path}: checkpoint does not match this medseg-attn version ({error})") from None
            found = {"preprocessing": prep, "classes": labels, "input channels": int(payload["in_channels"])}
            if not first:
                first = {"path": path, "config": config, "colors": payload.get("colors"), **found,
                         "info": {k: payload.get(k) for k in ("card", "plan", "epoch", "best_metric", "labels",
                                                               "calibration", "training_fingerprint")}}
            temperatures.append(float((payload.get("calibration") or {}).get("temperature", 1.0)))
            for key, value in found.items():
                if value != first[key]:
                    raise ValueError(f"{path}: ensemble member differs from {first['path']} in its {key} "
                                     f"({value} vs {first[key]}); an ensemble needs models trained the same way")
            logger.info("loaded %s (epoch %s, best validation Dice %s)", path, payload.get("epoch"),
                        payload.get("best_metric"))
            networks.append(network.to(resolved).eval())
            sources.append(str(path))
        config = first["config"]
        if inference:
            config = config.replace(inference={k: v for k, v in inference.items() if v is not None})
        patch = config.inference.patch_size or config.data.patch_size
        predictor = cls(networks, first["preprocessing"], first["classes"], patch, config.inference, resolved,
                        first["input channels"], sources)
        predictor.colors.update({int(k): list(v) for k, v in (first["colors"] or {}).items()})
        predictor.model_info = first["info"]
        predictor.temperatures = temperatures  # each member calibrated as it was fitted, then averaged
        predictor.postprocessing = read_postprocessing(runs[0], first["classes"]) if len(runs) == 1 else {}
        return predictor

    def provenance(self) -> dict[str, Any]:
        """What a run manifest records of this predictor (:meth:`medseg_attn.io.manifest.RunManifest.add_model`)."""
        return {"paths": [s for s in self.sources if Path(s).is_file()], "device": str(self.device),
                "precision": precision_name(self.dtype),
                "precision_reason": precision_reason(self.inference.precision, self.device),
                "payload": self.model_info or None}

    def attention_levels(self) -> list[str]:
        """The attention levels every network has ('level0' finest, ...), for ``attention_maps=True``.

        Raises:
            ValueError: a network without attention in its skips (trained with ``model.attention: false``, or a
                MONAI architecture), or ensemble members with different levels; one line naming the checkpoint.
        """
        levels = None
        for network, source in zip(self.networks, self.sources):
            found = list(getattr(network, "attention_levels", []) or [])
            if not found:
                what = ("was trained with attention off (model.attention: false)"
                        if getattr(network, "attention_enabled", None) is False
                        else f"is a {type(network).__name__}, not an attention_skip_unet with attention")
                raise ValueError(f"{source}: has no attention maps: this model {what}")
            if levels is not None and found != levels:
                raise ValueError(f"{source}: attention levels {found} differ from the other models' {levels}")
            levels = found
        return levels or []

    @torch.no_grad()
    def infer(self, image: torch.Tensor, attention: bool = False, per_head: bool = False
              ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Class probabilities (K, *S) for a preprocessed image (C, *S), by sliding window (+ flip TTA), averaged
        over the ensemble.

        The image and the probability buffer stay where the image is (CPU for large volumes); windows run on
        the predictor's device. See :mod:`medseg_attn.segmentation.inference.sliding`.

        Args:
            image: (C, *S) on the network grid.
            attention: also return, per attention level, the attention each voxel receives (blended like the
                probabilities, averaged over flips and networks): {level: (1 or heads, *S)}; not normalised.
            per_head: keep the heads apart in those maps.
        """
        image = torch.as_tensor(image)
        if attention:
            self.attention_levels()
        flips: list[tuple[int, ...]] = [()]
        if self.inference.tta:
            axes = tuple(range(2, image.ndim + 1))
            flips = [c for r in range(len(axes) + 1) for c in combinations(axes, r)]
        was_training = [network.training for network in self.networks]
        for network in self.networks:
            network.eval()
        forwards = [(lambda x, n=n: self._forward_attention(n, x, per_head)) if attention else
                    (lambda x, n=n: self._forward(x, n)) for n in self.networks]

        def blended(members: list, temperature: float) -> Any:  # (K, *S) [, maps], calibrated: softmax(log p / T)
            out = sliding_window_probabilities(
                members, image, self.patch_size, overlap=self.inference.overlap,
                batch_size=self.inference.sw_batch_size, blend=self.inference.blend, flips=flips,
                device=self.device, with_maps=attention,
                pad_value=self.prep.background() if self.prep.use_mask else 0.0)
            apply_temperature(out[0] if attention else out, temperature)  # in place; this blend's argmax unchanged
            return out

        try:
            with self._weight_casts_kept():
                if len(set(self.temperatures)) == 1:  # one network, or members with one temperature
                    out = blended(forwards, self.temperatures[0])
                else:  # members calibrated apart: each blended with its own temperature, then the mean
                    out = mean_of_blends((blended([f], t) for f, t in zip(forwards, self.temperatures)), attention)
            return out
        finally:
            for network, mode in zip(self.networks, was_training):
                network.train(mode)

    def _autocast(self) -> torch.autocast:
        """The forward pass's arithmetic (``inference.precision``): autocast to ``self.dtype``, or plain fp32."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def _weight_casts_kept(self) -> contextlib.AbstractContextManager:
        """Around a whole sliding window: autocast casts each weight to the low precision once, not once per window.

        Autocast caches its weight casts until its outermost context exits; a disabled context around the
        per-window ones keeps them nested, so the cache lives for the whole image (otherwise the default network's
        weights are cast again for every window batch: 418 casts instead of 198 for a 9-window image; a small
        share of a bf16 prediction's time, within the noise of the benchmark machines).
        """
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=False)

    def _forward(self, x: torch.Tensor, network: nn.Module | None = None) -> torch.Tensor:
        with self._autocast():
            out = (network or self.network)(torch.as_tensor(x))
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out.float()

    def _forward_attention(self, network: nn.Module, x: torch.Tensor, per_head: bool
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self._autocast():
            logits, maps = network.forward_with_attention(torch.as_tensor(x), per_head=per_head)
        return logits.float(), maps

    def load(self, path: str | Path | Sequence[str | Path], series_uid: str | None = None,
             resample_uneven: bool = False, volume_index: int | None = None) -> torch.Tensor:
        """Check and read one case: (C, *S) MetaTensor with its RAS affine, ready for preprocessing.

        Headers are checked first (readable, 2D/3D as the model expects, channels, spacing, affine), then the
        voxels are read and checked for NaN/Inf.

        Args:
            path: an image file or DICOM folder, or one file per channel (``_0000``, ``_0001``, ...).
            series_uid: the series of a DICOM folder holding several.
            resample_uneven: resample a DICOM series with missing slices or uneven spacing onto a regular grid.
            volume_index: the volume of a 4D image (X, Y, Z, T) to segment with a single-channel model.

        Raises:
            ValueError, FileNotFoundError: one line naming the file and the problem.
        """
        files = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
        first = files[0]
        dims = self.prep.spatial_dims
        axes = "(X, Y, Z)" if dims == 3 else "(X, Y)"
        for file in files:
            if not file.exists():
                raise FileNotFoundError(f"{file}: file not found")
            if file.is_dir() or is_dicom_file(file):
                continue  # DICOM: the reader checks the series' headers before decoding (and may resample)
            geometry = read_geometry(file, series_uid)
            if len(geometry.shape) != dims:
                raise ValueError(f"{file}: {len(geometry.shape)}D image of shape {geometry.shape}; this model expects "
                                 f"{dims}D images {axes}")
            if geometry.channels > 1 and self.in_channels == 1:
                last = geometry.channels - 1
                if volume_index is None:
                    raise ValueError(f"{file}: 4D image {(*geometry.shape, geometry.channels)} with {geometry.channels} "
                                     f"volumes along axis 4; choose one with --volume-index (0..{last})")
                if not 0 <= volume_index <= last:
                    raise ValueError(f"{file}: --volume-index {volume_index} is outside 0..{last} (axis 4 holds "
                                     f"{geometry.channels} volumes)")
        loader = LoadVolumed("image", series_uid=series_uid, resample_uneven=resample_uneven)
        loaded = loader.load(files if len(files) > 1 else files[0])
        if volume_index is not None and loaded.shape[0] > 1 and self.in_channels == 1:
            loaded = loaded[volume_index: volume_index + 1]
        if loaded.shape[0] != self.in_channels:
            raise ValueError(f"{first}: image has {loaded.shape[0]} channel(s), the model expects {self.in_channels}"
                             + (" (give one _0000, _0001, ... file per channel)" if self.in_channels > 1 else ""))
        shape = tuple(loaded.shape[1:])
        if len(shape) != dims:
            raise ValueError(f"{first}: {len(shape)}D image of shape {shape}; this model expects {dims}D images {axes}")
        bad = int((~torch.isfinite(loaded)).sum())
        if bad:
            raise ValueError(f"{first}: {bad} voxel(s) are NaN or Inf; fix or mask them before prediction")
        self._check_content(first, loaded)
        return loaded

    def _check_content(self, source: Any, image: torch.Tensor) -> None:
        """Blank, one-voxel or absurdly spaced images: one line, before any network runs."""
        affine = np.asarray(getattr(image, "affine", np.eye(4)), dtype=np.float64)
        dims = image.ndim - 1
        spacing = np.sqrt((affine[:dims, :dims] ** 2).sum(0))
        check_segmentable(source, tuple(image.shape[1:]), float(image.min()), float(image.max()), spacing,
                          self.prep.spacing)

    def load_array(self, array: np.ndarray | torch.Tensor, affine: np.ndarray | None = None) -> torch.Tensor:
        """Check an in-memory image and give it the form :meth:`load` gives files: (C, *S) MetaTensor.

        Args:
            array: (*S) for single-channel models or (C, *S), in the voxel order the affine describes.
            affine: (D+1, D+1) or 4x4 voxel-to-world RAS affine (mm); default: identity (1 mm, RAS).

        Raises:
            ValueError: wrong dimensions or channels, NaN/Inf voxels, or a singular affine.
        """
        from monai.data import MetaTensor

        dims = self.prep.spatial_dims
        data = torch.as_tensor(np.asarray(array, dtype=np.float32))
        if data.ndim == dims:
            data = data[None]
        if data.ndim != dims + 1 or data.shape[0] != self.in_channels:
            raise ValueError(f"array: shape {tuple(data.shape)}; this model expects {dims}D images with "
                             f"{self.in_channels} channel(s): (*S) or (C, *S)")
        full = np.eye(4)
        if affine is not None:
            given = np.asarray(affine, dtype=np.float64)
            if given.shape not in ((dims + 1, dims + 1), (4, 4)):
                raise ValueError(f"array: affine of shape {given.shape}; expected ({dims + 1}, {dims + 1}) or (4, 4)")
            full = affine_4x4(given)
        if not np.all(np.isfinite(full)) or abs(np.linalg.det(full[:3, :3])) < 1e-12:
            raise ValueError("array: the affine must be finite and invertible")
        bad = int((~torch.isfinite(data)).sum())
        if bad:
            raise ValueError(f"array: {bad} voxel(s) are NaN or Inf; fix or mask them before prediction")
        image = MetaTensor(data, affine=torch.as_tensor(full), meta={"space": "RAS"})
        self._check_content("array", image)
        return image

    def predict(self, path: str | Path | Sequence[str | Path] | np.ndarray | torch.Tensor, probabilities: bool = False,
                *, attention_maps: bool = False, attention_heads: bool = False, uncertainty: bool = False,
                affine: np.ndarray | None = None, series_uid: str | None = None, resample_uneven: bool = False,
                volume_index: int | None = None, keep_image: bool = False) -> Prediction:
        """Predict one case; the result (and every map) is on the input's own grid.

        Args:
            path: an image file or DICOM folder, or one file per channel (nnU-Net ``_0000``, ``_0001``, ...
                files) for multi-channel models; or an array (*S) / (C, *S) with its ``affine``.
            probabilities: also return the class probabilities on the input grid.
            attention_maps: also return, per attention level, the attention each voxel receives (summed over
                the queries, averaged over heads, maximum 1); see ``docs/explainability.md``.
            attention_heads: keep the heads apart in those maps ((heads, *S) per level).
            uncertainty: also return the normalised predictive entropy of the averaged probabilities.
            affine: the voxel-to-world (RAS) affine of an array input (default identity).
            series_uid, resample_uneven, volume_index: see :meth:`load`.
            keep_image: return the input's first channel as read (original intensities, e.g. HU) in ``image``
                (always kept with explanation maps).

        Raises:
            ValueError: a bad input (one line naming it), or ``attention_maps`` for a model without attention.
        """
        start = time.perf_counter()
        if attention_maps or attention_heads:
            self.attention_levels()  # before any heavy work
        if isinstance(path, (np.ndarray, torch.Tensor)):
            files: list[Path] = []
            loaded = self.load_array(path, affine)
        else:
            files = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
            loaded = self.load(files, series_uid, resample_uneven, volume_index)
        dims = self.prep.spatial_dims
        original_shape = tuple(loaded.shape[1:])
        original_affine = spatial_affine(loaded.affine, dims)
        image = self._pre({"image": loaded})["image"]
        maps: dict[str, torch.Tensor] = {}
        if attention_maps or attention_heads:
            probs, maps = self.infer(image, attention=True, per_head=attention_heads)  # (K, *S_net), {level: ..}
        else:
            probs = self.infer(image)  # (K, *S_network)
        network_affine = spatial_affine(image.affine, dims)
        result = resample_prediction(probs, network_affine, original_affine, original_shape,
                                     keep_values=probabilities, uncertainty=uncertainty, maps=maps)
        del probs, maps
        attention = None
        if result.maps:  # {level: (1 or heads, *S_input)}, each map scaled to a maximum of 1
            attention = {level: normalise_maximum(values) if attention_heads else normalise_maximum(values)[0]
                         for level, values in result.maps.items()}
        explained = keep_image or attention is not None or result.uncertainty is not None
        reference = files[0] if files and is_nifti(files[0]) and files[0].is_file() else None
        name = case_name(files[0], strip_channel=len(files) > 1) if files else "array"
        labels = apply_postprocessing(result.labels, self.postprocessing, voxel_ml(affine_4x4(original_affine)))
        return Prediction(name, labels, original_affine, result.probabilities, time.perf_counter() - start,
                          reference=reference, attention=attention, uncertainty=result.uncertainty,
                          image=np.asarray(loaded[0], dtype=np.float32) if explained else None)


def config_from_checkpoint(payload: dict[str, Any]) -> Config:
    """The :class:`Config` stored in a checkpoint."""
    return from_dict(payload["config"])
