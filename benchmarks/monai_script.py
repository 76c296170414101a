#!/usr/bin/env python
"""What a MONAI user writes for the brain demo task: the peer that `medseg-attn demo` is measured against.

    python benchmarks/monai_script.py --data DEMO/data/dataset.json --minutes 5 --output monai_out

A plain MONAI script, no medseg-attn in it: MONAI's ``UNet`` (16..256 channels, strides 2, 2 residual units),
DiceCE, AdamW (lr 1e-3), 64^3 patches (2 of 3 centred on tissue), batch 2, left-right flips, all training cases
cached at 2 mm, trained for a fixed wall-clock budget with no validation; then every held-out case (imagesTs,
labels in labelsTs) is resampled to 2 mm, predicted by ``sliding_window_inference`` (64^3, overlap 0.5, 4 windows
per pass, Gaussian blending), its probabilities brought back to the case's own grid by ``Invertd`` before the
argmax, and scored with ``DiceMetric`` per class. Writes OUTPUT/result.json (steps, seconds, Dice per case and
class, the CPU's ISA) and prints one line. ``benchmarks/cpu_budget.py`` runs it beside the demo.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    Spacingd,
)
from monai.utils import set_determinism


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plain MONAI UNet script on the demo dataset (the demo's peer)")
    parser.add_argument("--data", type=Path, required=True, help="the demo's dataset.json")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True, help="folder for result.json")
    args = parser.parse_args(argv)
    set_determinism(args.seed)
    root = args.data.parent
    dataset = json.loads(args.data.read_text())
    training = [{k: str(root / v) for k, v in case.items()} for case in dataset["training"]]
    test = [{"image": str(root / p), "label": str(root / p.replace("imagesTs", "labelsTs"))} for p in dataset["test"]]

    base = [LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"]),
            Orientationd(["image", "label"], axcodes="RAS"),
            Spacingd(["image", "label"], pixdim=(2.0, 2.0, 2.0), mode=("bilinear", "nearest")),
            NormalizeIntensityd("image", nonzero=True)]
    train_transforms = Compose(base + [
        RandCropByPosNegLabeld(["image", "label"], "label", spatial_size=(64, 64, 64), pos=2, neg=1, num_samples=1),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=0)])
    loader = DataLoader(CacheDataset(training, train_transforms, progress=False), batch_size=2, shuffle=True,
                        num_workers=0)
    model = UNet(3, 1, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    steps, start = 0, time.perf_counter()
    budget = args.minutes * 60
    model.train()
    while time.perf_counter() - start < budget:
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_function(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() - start >= budget:
                break
    train_seconds = time.perf_counter() - start

    test_transforms = Compose([LoadImaged("image"), EnsureChannelFirstd("image"),
                               Orientationd("image", axcodes="RAS"),
                               Spacingd("image", pixdim=(2.0, 2.0, 2.0), mode="bilinear"),
                               NormalizeIntensityd("image", nonzero=True)])
    invert = Invertd("pred", transform=test_transforms, orig_keys="image", nearest_interp=False)
    label_loader = Compose([LoadImaged("label"), EnsureChannelFirstd("label")])
    metric = DiceMetric(include_background=False, reduction="none")
    model.eval()
    cases = []
    with torch.no_grad():
        for case in test:
            data = test_transforms({"image": case["image"]})
            logits = sliding_window_inference(data["image"][None], (64, 64, 64), 4, model, overlap=0.5,
                                              mode="gaussian")
            data["pred"] = torch.softmax(logits, 1)[0]
            probabilities = invert(data)["pred"]
            label = label_loader({"label": case["label"]})["label"]
            prediction = torch.nn.functional.one_hot(probabilities.argmax(0), 3).permute(3, 0, 1, 2)[None]
            reference = torch.nn.functional.one_hot(label[0].long(), 3).permute(3, 0, 1, 2)[None]
            dice = metric(prediction, reference)[0].tolist()
            cases.append({"case": Path(case["image"]).name, "grey_matter": dice[0], "white_matter": dice[1]})

    result = {"steps": steps, "train_seconds": round(train_seconds, 1), "minutes": args.minutes, "seed": args.seed,
              "isa": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
              "grey_matter": sum(c["grey_matter"] for c in cases) / len(cases),
              "white_matter": sum(c["white_matter"] for c in cases) / len(cases), "cases": cases}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"MONAI UNet script: {steps} steps in {train_seconds:.0f} s, held-out GM {result['grey_matter']:.3f} "
          f"WM {result['white_matter']:.3f} ({result['isa']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
