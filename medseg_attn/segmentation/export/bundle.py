"""A MONAI bundle of a segmentation model (the model zoo's layout), runnable without medseg-attn.

::

    BUNDLE/configs/metadata.json    version, task, inputs/outputs, label names, preprocessing, data, metrics
    BUNDLE/configs/inference.json   MONAI transforms + SlidingWindowInferer + Invertd + SaveImaged
    BUNDLE/models/model.ts          the network, TorchScript (what inference.json loads)
    BUNDLE/models/model.pt          the medseg-attn checkpoint without optimiser state (weights_only loadable);
                                    ``medseg-attn predict --model BUNDLE`` reads it
    BUNDLE/docs/README.md           the model card in words

``python -m monai.bundle run --config_file BUNDLE/configs/inference.json --bundle_root BUNDLE --dataset_dir IN
--output_dir OUT`` segments every ``IN/*.nii.gz`` into ``OUT/<same name>``; it needs only torch and MONAI (no
pytorch-ignite: the run loop is a config expression). Preprocessing is the checkpoint's, written as MONAI
transforms; the class probabilities are brought back to the input grid by ``Invertd`` (bilinear) before the
argmax, as ``medseg-attn predict`` does with its own resampling.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write, atomic_write_text
from medseg_attn.networks.export import example_input, export_torchscript
from medseg_attn.segmentation.task import TASK
from medseg_attn.training.card import export_metadata, format_card, model_card
from medseg_attn.training.checkpoint import Checkpoint

logger = logging.getLogger(__name__)

__all__ = ["write_bundle", "inference_config", "bundle_metadata"]

SCHEMA = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
          "meta_schema_20220324.json")


def _preprocessing(prep: dict[str, Any]) -> list[dict[str, Any]]:
    """The checkpoint's preprocessing as MONAI transform configs (same order as medseg-attn's chain)."""
    chain: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": prep["orientation"],
         "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
    ]
    if prep.get("spacing"):
        chain.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(prep["spacing"]), "mode": "bilinear"})
    if prep.get("foreground", "nonzero") == "nonzero":  # checkpoints from before the body mask
        return chain + _nonzero_preprocessing(prep)
    ct = prep["foreground"] == "ct_body"
    chain += [{"_target_": "CopyItemsd", "keys": "image", "names": "body"},
              {"_target_": "Lambdad", "keys": "body", "func": f"$lambda x: torch.as_tensor(@body_mask(x, {ct}))",
               "track_meta": False}]
    if prep.get("crop_foreground"):
        chain.append({"_target_": "CropForegroundd", "keys": ["image", "body"], "source_key": "body",
                      "allow_smaller": True})
    intensity = "ct_window" if prep["intensity"] == "ct" and not prep.get("ct_clip") else prep["intensity"]
    low = {"ct": (prep.get("ct_clip") or [0.0])[0], "ct_window": prep["ct_window"][0]}.get(intensity, 0.0)
    if prep.get("use_mask"):  # everything outside the body -> the lowest value, which normalises to the background
        chain += [{"_target_": "ShiftIntensityd", "keys": "image", "offset": -low},
                  {"_target_": "MaskIntensityd", "keys": "image", "mask_key": "body"},
                  {"_target_": "ShiftIntensityd", "keys": "image", "offset": low}]
    if intensity == "ct":  # clip to the dataset percentiles and z-score: one linear map with clipping
        high, mean, std = prep["ct_clip"][1], prep["ct_mean"], max(prep["ct_std"], 1e-8)
        chain.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": low, "a_max": high,
                      "b_min": (low - mean) / std, "b_max": (high - mean) / std, "clip": True})
    elif intensity == "ct_window":
        window_low, window_high = prep["ct_window"]
        chain.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": window_low,
                      "a_max": window_high, "b_min": 0.0, "b_max": 1.0, "clip": True})
    elif intensity == "zscore":  # masked: the statistics over the body (the background is 0 already)
        chain.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": bool(prep.get("use_mask")),
                      "channel_wise": True})
    chain.append({"_target_": "DeleteItemsd", "keys": "body"})
    return chain


def _nonzero_preprocessing(prep: dict[str, Any]) -> list[dict[str, Any]]:
    chain = []
    if prep.get("crop_foreground"):  # foreground = nonzero in any channel, as those checkpoints crop
        chain.append({"_target_": "CropForegroundd", "keys": "image", "source_key": "image",
                      "select_fn": "$lambda x: (x != 0).any(0, keepdim=True)", "allow_smaller": True})
    if prep["intensity"] in ("ct", "ct_window"):
        low, high = prep["ct_window"]
        chain.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": low, "a_max": high,
                      "b_min": 0.0, "b_max": 1.0, "clip": True})
    elif prep["intensity"] == "zscore":
        chain.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True})
    return chain


# medseg_attn.segmentation.data.foreground.body_mask as one expression (the bundle runs without medseg-attn): per
# channel, Gaussian smoothing (1 voxel), threshold (CT: -500 HU; else p2 + 0.1 (p98 - p2)); union; largest
# component; holes filled in 3D, then slice by slice along the last axis
BODY_MASK = (
    "$lambda image, ct: (lambda union: (lambda filled: numpy.stack([ndimage.binary_fill_holes(filled[..., k]) "
    "for k in range(filled.shape[-1])], -1)[None] if filled.ndim == 3 else filled[None])("
    "ndimage.binary_fill_holes((lambda labelled: labelled[0] == (numpy.argmax(numpy.bincount("
    "labelled[0].ravel())[1:]) + 1) if labelled[1] > 1 else union)(ndimage.label(union)))) if union.any() "
    "else numpy.ones((1, *union.shape), bool))(numpy.any([(lambda smooth: smooth > (-500.0 if ct else "
    "numpy.percentile(smooth, 2) + 0.1 * (numpy.percentile(smooth, 98) - numpy.percentile(smooth, 2))))("
    "ndimage.gaussian_filter(channel, 1.0, mode='nearest', truncate=3.0)) for channel in "
    "numpy.asarray(image, dtype=numpy.float32)], axis=0))"
)


def _paint_expression(order: list[int]) -> str:
    """A region model's painting (:meth:`~medseg_attn.segmentation.measures.regions.Regions.paint`) as a bundle
    expression: (R, *S) probabilities -> (1, *S) labels, each region above 0.5 painted in turn."""
    return (f"$lambda p: (lambda labels: [labels.__setitem__(p[i:i + 1] > 0.5, value) for i, value in "
            f"enumerate({list(map(int, order))})] and labels)(torch.zeros_like(p[:1]))")


def inference_config(checkpoint: Checkpoint) -> dict[str, Any]:
    """configs/inference.json for a checkpoint."""
    config = checkpoint.config
    regions = checkpoint.regions  # a region model: sigmoids painted in regions_class_order, not an argmax
    inference = config.get("inference", {})
    patch = inference.get("patch_size") or config["data"]["patch_size"]
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$from scipy import ndimage"],
        "body_mask": BODY_MASK,
        "bundle_root": ".",
        "dataset_dir": "/workspace/data",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$list(sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz'))))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location=@device)",
        "network": "$@network_def.eval()",
        "preprocessing": {"_target_": "Compose", "transforms": _preprocessing(checkpoint.preprocessing)},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': path} for path in @datalist]",
                    "transform": "@preprocessing"},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(patch),
                    "sw_batch_size": int(inference.get("sw_batch_size", 2)),
                    "overlap": float(inference.get("overlap", 0.5)), "mode": inference.get("blend", "gaussian")},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": not regions, "sigmoid": bool(regions)},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True} if not regions else
            {"_target_": "Lambdad", "keys": "pred", "func": _paint_expression(regions["order"])},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "",
             "separate_folder": False, "resample": False, "output_dtype": "$numpy.uint8"},
        ]},
        "predict_case": "$lambda item: @postprocessing(dict(item, pred=@inferer(item['image'][None].to(@device), "
                        "@network)[0].cpu()))",
        "initialize": ["$torch.set_grad_enabled(False)", "$os.makedirs(@output_dir, exist_ok=True)"],
        "run": ["$[@predict_case(item) for item in @dataset]"],
    }


def bundle_metadata(checkpoint: Checkpoint) -> dict[str, Any]:
    """configs/metadata.json in the model zoo's schema (plus the medseg-attn model card)."""
    card = model_card(checkpoint, TASK)
    dims = int(checkpoint.preprocessing["spatial_dims"])
    labels = {str(k): v for k, v in card["labels"].items()}
    spatial = ["*"] * dims
    versions = card["versions"]
    description = (f"medseg-attn attention-skip U-Net segmenting {', '.join(list(labels.values())[1:])}; "
                   f"{'3D' if dims == 3 else '2D'}, {card['in_channels']} input channel(s)")
    return {
        "schema": SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by medseg-attn " + str(versions.get("medseg_attn", ""))},
        "monai_version": str(versions.get("monai", "")),
        "pytorch_version": str(versions.get("torch", "")).split("+")[0],
        "numpy_version": str(versions.get("numpy", "")),
        "required_packages_version": {},
        "task": f"{'3D' if dims == 3 else '2D'} segmentation",
        "description": description,
        "authors": "medseg-attn user",
        "copyright": "see the training data's licence",
        "data_source": str(card["data"].get("dataset", "not recorded")),
        "data_type": "nibabel",
        "image_classes": f"{card['in_channels']} channel(s), preprocessed: {card['preprocessing']}",
        "label_classes": ", ".join(f"{k}={v}" for k, v in labels.items()),
        "pred_classes": ", ".join(f"{k}={v}" for k, v in labels.items()),
        "eval_metrics": {"mean_dice": card["metrics"]["best"]},
        "intended_use": "research only; not for clinical use",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": str(card["data"].get(
                "modality", "unknown")), "num_channels": card["in_channels"], "spatial_shape": spatial,
                "dtype": "float32", "value_range": [], "is_patch_data": True, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(labels),
                                 "spatial_shape": spatial, "dtype": "float32", "value_range": [],
                                 "is_patch_data": True, "channel_def": labels}},
        },
        "medseg_attn": {"card": {**card, "labels": labels, "colors": {str(k): v for k, v in card["colors"].items()}}},
    }


def write_bundle(network: nn.Module, checkpoint: Checkpoint, source: Path, output: Path) -> Path:
    """Write the bundle folder ``output`` for ``network`` (eval, CPU) and its ``checkpoint``."""
    if not hasattr(network, "divisor"):
        raise UserError(f"{source}: export supports the attention_skip_unet architecture")
    output.mkdir(parents=True, exist_ok=True)
    metadata = export_metadata(checkpoint, str(source), TASK)
    example = example_input(int(checkpoint.preprocessing["spatial_dims"]), int(checkpoint.in_channels),
                            network.divisor)
    export_torchscript(network, example, output / "models" / "model.ts", metadata)
    kept = {key: value for key, value in checkpoint.items() if key not in ("optimizer", "scaler")}
    atomic_write(output / "models" / "model.pt", lambda tmp: torch.save(kept, tmp))
    atomic_write_text(output / "configs" / "inference.json", json.dumps(inference_config(checkpoint), indent=2))
    atomic_write_text(output / "configs" / "metadata.json", json.dumps(bundle_metadata(checkpoint), indent=2))
    card = format_card(model_card(checkpoint, TASK), str(source))
    readme = ["# medseg-attn model (MONAI bundle)", "", "```", *card, "```",
              "", "Run it (torch and MONAI only):", "",
              "```", "python -m monai.bundle run --config_file configs/inference.json --bundle_root . "
              "--dataset_dir IN --output_dir OUT", "```", "",
              "`models/model.ts` is the TorchScript network (any input size); `models/model.pt` the medseg-attn "
              "checkpoint (`medseg-attn predict --model THIS_FOLDER`).", ""]
    atomic_write_text(output / "docs" / "README.md", "\n".join(readme))
    logger.info("MONAI bundle of %s written to %s", source, output)
    return output
