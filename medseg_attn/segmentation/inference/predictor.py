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
:mod:`medseg_attn.segmentation.workflows.batch`, which reports and skips bad cases.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from torch import nn

from medseg_attn.config import InferenceConfig
from medseg_attn.errors import UserError
from medseg_attn.io.cases import LoadedCase, ReadOptions, check_content, read_case
from medseg_attn.io.dicom import DicomSeries
from medseg_attn.io.segments import resolve_colors
from medseg_attn.io.volumes import affine_4x4
from medseg_attn.runtime.device import inference_dtype, precision_name, precision_reason, resolve_device
from medseg_attn.segmentation.data.channels import InputChannels, channel_names
from medseg_attn.segmentation.data.transforms import Preprocessing, preprocessing
from medseg_attn.segmentation.inference.resample import (
    class_labels,
    normalise_maximum,
    resample_prediction,
    spatial_affine,
)
from medseg_attn.segmentation.inference.sliding import mean_of_blends, sliding_window_probabilities
from medseg_attn.segmentation.measures.lesion_statistics import LesionTable
from medseg_attn.segmentation.measures.postprocessing import ClassPostprocessing, apply_postprocessing, voxel_ml
from medseg_attn.segmentation.measures.regions import Regions
from medseg_attn.segmentation.model.loading import SegmentationModel, load_model
from medseg_attn.training.calibration import apply_temperature

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
    reference: Any = None  # the NIfTI input's header image the outputs keep (None: written from ``affine``)
    # attention received per level ('level0' finest ...): (*S_input), or (heads, *S_input) per head; maximum 1
    attention: dict[str, np.ndarray] | None = None
    uncertainty: np.ndarray | None = None  # (*S_input) normalised predictive entropy in [0, 1]
    image: np.ndarray | None = None  # (*S_input) the input's first channel, kept for overlays with the maps
    source: LoadedCase | None = None  # the input as read, its voxels dropped (files, DICOM series, NIfTI header)
    channels: np.ndarray | None = None  # (C, *S_input) every input channel as read, with keep_channels
    lesions: LesionTable | None = None  # the lesions of the lesion structures, when a batch measured them

    def uncertainty_means(self) -> tuple[float, float]:
        """Mean uncertainty over the whole volume and inside the predicted foreground (NaN when empty)."""
        if self.uncertainty is None:
            raise UserError(f"{self.case}: predicted without uncertainty=True")
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
        channels: which of them the inputs hold (``predict --channels``; the others are filled as missing
            sequences, :mod:`medseg_attn.segmentation.data.channels`); None: all. ``self.in_channels`` is then the
            number the inputs hold.
        sources: where each network came from (checkpoint paths), for error messages.
        regions: a region model's regions (one sigmoid output each, painted back into a label map); None: the
            networks give one softmax output per class.
        lesion_structures: class names whose connected components are lesions (the model's dataset.json
            ``lesion_structures``).
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
        *,
        colors: Mapping[int, Sequence[int]] | None = None,
        temperatures: Sequence[float] | None = None,
        postprocessing: Mapping[int, ClassPostprocessing] | None = None,
        model_info: Mapping[str, Any] | None = None,
        regions: Regions | None = None,
        lesion_structures: Sequence[str] = (),
        channels: InputChannels | None = None,
    ) -> None:
        self.networks = list(network) if isinstance(network, (list, tuple)) else [network]
        self.network = self.networks[0]
        self.sources = list(sources) if sources else [f"network {i}" for i in range(len(self.networks))]
        self.channels = channels or InputChannels(channel_names(None, in_channels), tuple(range(in_channels)))
        if len(self.channels.names) != in_channels:
            raise UserError(f"{len(self.channels.names)} channel names for a model of {in_channels} channel(s)")
        self.in_channels = len(self.channels.given)  # what each input holds
        self.prep = prep
        self.labels = dict(labels)
        self.colors = {**resolve_colors(self.labels), **{int(k): list(v) for k, v in (colors or {}).items()}}
        self.patch_size = tuple(patch_size)
        self.inference = inference or InferenceConfig()
        self.device = torch.device(device)
        self.dtype = inference_dtype(self.inference.precision, self.device)  # autocast dtype; None = fp32
        self._pre = mt.Compose(preprocessing(prep, keys=("image",), load=False))
        # per network; > 1 softens (fitted after training); each member blended with its own, then averaged
        self.temperatures = tuple(temperatures) if temperatures else (1.0,) * len(self.networks)
        if len(self.temperatures) != len(self.networks):
            raise UserError(f"{len(self.temperatures)} temperature(s) for {len(self.networks)} network(s)")
        self.model_info = dict(model_info or {})  # the first checkpoint's card, plan, calibration ... (run.json)
        self.postprocessing = dict(postprocessing or {})  # a CV run's choice per class
        self.regions = regions
        self.lesion_structures = tuple(lesion_structures)
        if regions is not None and any(t != 1.0 for t in self.temperatures):
            raise UserError(f"{self.sources[0]}: a region model has no temperature (its sigmoids are not calibrated "
                            f"by temperature scaling)")

    @classmethod
    def from_model(cls, model: SegmentationModel, device: torch.device | str = "cpu",
                   channels: Sequence[str] | None = None) -> Predictor:
        """The predictor of a loaded :class:`~medseg_attn.segmentation.model.loading.SegmentationModel` (an ONNX
        model runs on the CPU, whatever ``device`` says); ``channels``: the names of the model's channels the
        inputs hold (``predict --channels``), None: all."""
        return cls(list(model.networks), model.prep, dict(model.labels), model.patch_size, model.inference,
                   "cpu" if model.engine == "onnxruntime" else device, model.in_channels, model.sources,
                   colors=model.colors, temperatures=model.temperatures, postprocessing=model.postprocessing,
                   model_info=model.info, regions=model.regions,
                   lesion_structures=model.lesion_structures,
                   channels=InputChannels.choose(model.channel_names, channels))

    @classmethod
    def from_checkpoint(cls, model: str | Path | Sequence[str | Path], device: str = "auto",
                        folds: Sequence[int] | None = None, **inference: Any) -> Predictor:
        """Load what ``model`` names (a run folder, checkpoint, bundle, CV run or ``.onnx`` file; several: an
        ensemble) with :func:`~medseg_attn.segmentation.model.loading.load_model`; ``inference`` overrides keys
        of the saved inference config (the first model's).

        Raises:
            FileNotFoundError: no checkpoint at a path.
            ValueError: not a segmentation model, or ensemble members that differ in preprocessing, classes or
                input channels.
        """
        resolved = resolve_device(device)
        return cls.from_model(load_model(model, folds, device=resolved, **inference), resolved)

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
        for network, source in zip(self.networks, self.sources, strict=True):
            found = list(getattr(network, "attention_levels", []) or [])
            if not found:
                what = ("was trained with attention off (model.attention: false)"
                        if getattr(network, "attention_enabled", None) is False
                        else f"is a {type(network).__name__}, not an attention_skip_unet with attention")
                raise UserError(f"{source}: has no attention maps: this model {what}")
            if levels is not None and found != levels:
                raise UserError(f"{source}: attention levels {found} differ from the other models' {levels}")
            levels = found
        return levels or []

    @torch.no_grad()
    def infer(self, image: torch.Tensor, attention: bool = False, per_head: bool = False, calibrated: bool = True
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
            calibrated: apply each network's temperature (False: the raw softmax, what calibration fits on).
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
                pad_value=self.prep.background() if self.prep.use_mask else 0.0, activation=self.activation)
            apply_temperature(out[0] if attention else out, temperature)  # in place; this blend's argmax unchanged
            return out

        temperatures = self.temperatures if calibrated else (1.0,) * len(self.networks)
        try:
            with self._weight_casts_kept():
                if len(set(temperatures)) == 1:  # one network, or members with one temperature
                    out = blended(forwards, temperatures[0])
                else:  # members calibrated apart: each blended with its own temperature, then the mean
                    members = zip(forwards, temperatures, strict=True)
                    out = mean_of_blends((blended([f], t) for f, t in members), attention)
            return out
        finally:
            for network, mode in zip(self.networks, was_training, strict=True):
                network.train(mode)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """A loaded image (C, *S_input) (``read(...).image``, :meth:`load_array`) on the network grid: (C, *S)."""
        return self._pre({"image": image})["image"]

    @torch.no_grad()
    def member_probabilities(self, image: torch.Tensor, flips: Sequence[tuple[int, ...]] | None = None
                             ) -> Iterator[torch.Tensor]:
        """Each (network, flip) member's own class probabilities (K, *S), uncalibrated, for a preprocessed image
        (C, *S): what :meth:`infer` averages (``flips`` None: no flip, then each spatial axis alone)."""
        image = torch.as_tensor(image)
        if flips is None:
            flips = [(), *((axis,) for axis in range(2, image.ndim + 1))]  # (B, C, *S): spatial axes 2..
        with self._weight_casts_kept():
            for network in self.networks:
                network.eval()
                for flip in flips:
                    yield sliding_window_probabilities(
                        [lambda x, n=network: self._forward(x, n)], image, self.patch_size,
                        overlap=self.inference.overlap, batch_size=self.inference.sw_batch_size,
                        blend=self.inference.blend, flips=[flip], device=self.device,
                        pad_value=self.prep.background() if self.prep.use_mask else 0.0, activation=self.activation)

    @property
    def activation(self) -> str:
        """'softmax' over the classes, or 'sigmoid' per region (a region model)."""
        return "softmax" if self.regions is None else "sigmoid"

    def labels_of(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The label map of (K, *S) probabilities: the argmax, or a region model's painting."""
        return class_labels(probabilities) if self.regions is None else self.regions.paint(probabilities)

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

    def read(self, path: str | Path | Sequence[str | Path], options: ReadOptions | None = None,
             series: DicomSeries | None = None) -> LoadedCase:
        """Check and read one case for this model (:func:`medseg_attn.io.cases.read_case`): the image, and what
        outputs need of the input (its DICOM series, its NIfTI header), so nothing reads it again.

        Raises:
            ValueError, FileNotFoundError: one line naming the file and the problem.
        """
        return read_case(path, options, spatial_dims=self.prep.spatial_dims, in_channels=self.in_channels,
                         target_spacing=self.prep.spacing, series=series)

    def load_array(self, array: np.ndarray | torch.Tensor, affine: np.ndarray | None = None) -> torch.Tensor:
        """Check an in-memory image and give it the form :meth:`read` gives files: (C, *S) MetaTensor.

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
            raise UserError(f"array: shape {tuple(data.shape)}; this model expects {dims}D images with "
                             f"{self.in_channels} channel(s): (*S) or (C, *S)")
        full = np.eye(4)
        if affine is not None:
            given = np.asarray(affine, dtype=np.float64)
            if given.shape not in ((dims + 1, dims + 1), (4, 4)):
                raise UserError(f"array: affine of shape {given.shape}; expected ({dims + 1}, {dims + 1}) or (4, 4)")
            full = affine_4x4(given)
        if not np.all(np.isfinite(full)) or abs(np.linalg.det(full[:3, :3])) < 1e-12:
            raise UserError("array: the affine must be finite and invertible")
        bad = int((~torch.isfinite(data)).sum())
        if bad:
            raise UserError(f"array: {bad} voxel(s) are NaN or Inf; fix or mask them before prediction")
        image = MetaTensor(data, affine=torch.as_tensor(full), meta={"space": "RAS"})
        check_content("array", image, self.prep.spacing)
        return image

    def predict(self, path: str | Path | Sequence[str | Path] | np.ndarray | torch.Tensor | LoadedCase,
                probabilities: bool = False, *, attention_maps: bool = False, attention_heads: bool = False,
                uncertainty: bool = False, affine: np.ndarray | None = None, series_uid: str | None = None,
                resample_uneven: bool = False, volume_index: int | None = None, keep_image: bool = False,
                keep_channels: bool = False) -> Prediction:
        """Predict one case; the result (and every map) is on the input's own grid.

        Args:
            path: an image file or DICOM folder, or one file per channel (nnU-Net ``_0000``, ``_0001``, ...
                files) for multi-channel models; a case already read (:meth:`read`); or an array (*S) / (C, *S)
                with its ``affine``.
            probabilities: also return the class probabilities on the input grid.
            attention_maps: also return, per attention level, the attention each voxel receives (summed over
                the queries, averaged over heads, maximum 1); see ``docs/explainability.md``.
            attention_heads: keep the heads apart in those maps ((heads, *S) per level).
            uncertainty: also return the normalised predictive entropy of the averaged probabilities.
            affine: the voxel-to-world (RAS) affine of an array input (default identity).
            series_uid, resample_uneven, volume_index: see :class:`~medseg_attn.io.cases.ReadOptions`.
            keep_image: return the input's first channel as read (original intensities, e.g. HU) in ``image``
                (always kept with explanation maps).
            keep_channels: return every input channel as read in ``channels`` (per-lesion intensities).

        Raises:
            ValueError: a bad input (one line naming it), or ``attention_maps`` for a model without attention.
        """
        start = time.perf_counter()
        if attention_maps or attention_heads:
            self.attention_levels()  # before any heavy work
        if isinstance(path, (np.ndarray, torch.Tensor)):
            case = None
            loaded = self.load_array(path, affine)
        else:
            case = path if isinstance(path, LoadedCase) else \
                self.read(path, ReadOptions(series_uid, resample_uneven, volume_index))
            loaded = case.image
        dims = self.prep.spatial_dims
        original_shape = tuple(loaded.shape[1:])
        original_affine = spatial_affine(loaded.affine, dims)
        image = self.channels.fill(self.preprocess(loaded), self.prep.background() if self.prep.use_mask else None)
        maps: dict[str, torch.Tensor] = {}
        if attention_maps or attention_heads:
            probs, maps = self.infer(image, attention=True, per_head=attention_heads)  # (K, *S_net), {level: ..}
        else:
            probs = self.infer(image)  # (K, *S_network)
        network_affine = spatial_affine(image.affine, dims)
        result = resample_prediction(probs, network_affine, original_affine, original_shape,
                                     keep_values=probabilities, uncertainty=uncertainty, maps=maps,
                                     fill_background=self.regions is None,
                                     decode=None if self.regions is None else self.regions.paint)
        del probs, maps
        attention = None
        if result.maps:  # {level: (1 or heads, *S_input)}, each map scaled to a maximum of 1
            attention = {level: normalise_maximum(values) if attention_heads else normalise_maximum(values)[0]
                         for level, values in result.maps.items()}
        explained = keep_image or attention is not None or result.uncertainty is not None
        labels = apply_postprocessing(result.labels, self.postprocessing, voxel_ml(affine_4x4(original_affine)))
        return Prediction(case.name if case else "array", labels, original_affine, result.probabilities,
                          time.perf_counter() - start, reference=case.nifti if case else None, attention=attention,
                          uncertainty=result.uncertainty, source=replace(case, image=None) if case else None,
                          image=np.asarray(loaded[0], dtype=np.float32) if explained else None,
                          channels=np.asarray(loaded, dtype=np.float32) if keep_channels else None)

