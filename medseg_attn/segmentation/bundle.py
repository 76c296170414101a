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

from medseg_attn.io.files import atomic_write, atomic_write_text
from medseg_attn.networks.export import example_input, export_torchscript
from medseg_attn.training.card import export_metadata, format_card, model_card

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
    if prep.get("crop_foreground"):  # foreground = nonzero in any channel, as medseg-attn crops
        chain.append({"_target_": "CropForegroundd", "keys": "image", "source_key": "image",
                      "select_fn": "$lambda x: (x != 0).any(0, keepdim=True)", "allow_smaller": True})
    if prep["intensity"] == "ct":
        low, high = prep["ct_window"]
        chain.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": low, "a_max": high,
                      "b_min": 0.0, "b_max": 1.0, "clip": True})
    elif prep["intensity"] == "zscore":
        chain.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True})
    return chain


def inference_config(payload: dict[str, Any]) -> dict[str, Any]:
    """configs/inference.json for a checkpoint payload."""
    config = payload["config"]
    inference = config.get("inference", {})
    patch = inference.get("patch_size") or config["data"]["patch_size"]
    return {
        "imports": ["$import glob", "$import os", "$import numpy"],
        "bundle_root": ".",
        "dataset_dir": "/workspace/data",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$list(sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz'))))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location=@device)",
        "network": "$@network_def.eval()",
        "preprocessing": {"_target_": "Compose", "transforms": _preprocessing(payload["preprocessing"])},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': path} for path in @datalist]",
                    "transform": "@preprocessing"},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(patch),
                    "sw_batch_size": int(inference.get("sw_batch_size", 2)),
                    "overlap": float(inference.get("overlap", 0.5)), "mode": inference.get("blend", "gaussian")},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "",
             "separate_folder": False, "resample": False, "output_dtype": "$numpy.uint8"},
        ]},
        "predict_case": "$lambda item: @postprocessing(dict(item, pred=@inferer(item['image'][None].to(@device), "
                        "@network)[0].cpu()))",
        "initialize": ["$torch.set_grad_enabled(False)", "$os.makedirs(@output_dir, exist_ok=True)"],
        "run": ["$[@predict_case(item) for item in @dataset]"],
    }


def bundle_metadata(payload: dict[str, Any]) -> dict[str, Any]:
    """configs/metadata.json in the model zoo's schema (plus the medseg-attn model card)."""
    card = model_card(payload)
    dims = int(payload["preprocessing"]["spatial_dims"])
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


def write_bundle(network: nn.Module, payload: dict[str, Any], source: Path, output: Path) -> Path:
    """Write the bundle folder ``output`` for ``network`` (eval, CPU) and its checkpoint ``payload``."""
    if not hasattr(network, "divisor"):
        raise ValueError(f"{source}: export supports the attention_skip_unet architecture")
    output.mkdir(parents=True, exist_ok=True)
    metadata = export_metadata(payload, str(source))
    example = example_input(int(payload["preprocessing"]["spatial_dims"]), int(payload["in_channels"]),
                            network.divisor)
    export_torchscript(network, example, output / "models" / "model.ts", metadata)
    kept = {key: value for key, value in payload.items() if key not in ("optimizer", "scaler")}
    atomic_write(output / "models" / "model.pt", lambda tmp: torch.save(kept, tmp))
    atomic_write_text(output / "configs" / "inference.json", json.dumps(inference_config(payload), indent=2))
    atomic_write_text(output / "configs" / "metadata.json", json.dumps(bundle_metadata(payload), indent=2))
    readme = ["# medseg-attn model (MONAI bundle)", "", "```", *format_card(model_card(payload), str(source)), "```",
              "", "Run it (torch and MONAI only):", "",
              "```", "python -m monai.bundle run --config_file configs/inference.json --bundle_root . "
              "--dataset_dir IN --output_dir OUT", "```", "",
              "`models/model.ts` is the TorchScript network (any input size); `models/model.pt` the medseg-attn "
              "checkpoint (`medseg-attn predict --model THIS_FOLDER`).", ""]
    atomic_write_text(output / "docs" / "README.md", "\n".join(readme))
    logger.info("MONAI bundle of %s written to %s", source, output)
    return output
