#!/usr/bin/env python
"""The pictures of docs/explainability.md, from the demo models (small palette PNGs in docs/img/).

    python scripts/make_explain_pictures.py --model DEMO_OUT/run --brain BRAIN.nii.gz --ct CT.nii.gz \\
        --classifier CLS_DEMO/run --picture CLS_DEMO/data/test/05_thalamus/IMAGE.png --output docs/img
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from medseg_attn.classification.predictor import Classifier
from medseg_attn.plots import save_map_overlay_png, save_picture_attention_png
from medseg_attn.segmentation.inference.predictor import Predictor


def small(path: Path) -> None:
    """Re-save as a 256-colour palette PNG (octree: keeps the colour bars smooth), a fifth of the size."""
    Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(path, path.stat().st_size // 1000, "kB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="segmentation demo run (attention on)")
    parser.add_argument("--brain", type=Path, required=True, help="a held-out brain (any orientation)")
    parser.add_argument("--ct", type=Path, help="a volume the model was not trained for")
    parser.add_argument("--classifier", help="classification demo run (attention head)")
    parser.add_argument("--picture", type=Path, help="a 2D test image of the classification demo")
    parser.add_argument("--output", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_checkpoint(args.model, device="cpu")
    result = predictor.predict(args.brain, attention_maps=True, uncertainty=True)
    maps = {"uncertainty": result.uncertainty, "attention level0 (finest, windows)": result.attention["level0"]}
    last = sorted(result.attention)[-1]
    maps[f"attention {last} (coarsest, global)"] = result.attention[last]
    small(save_map_overlay_png(args.output / "explain_brain.png", result.image, result.labels, maps, result.affine,
                               title=f"{args.brain.name} (held-out brain, demo model)", side=170))
    if args.ct:
        result = predictor.predict(args.ct, uncertainty=True)
        small(save_map_overlay_png(args.output / "explain_ct.png", result.image, result.labels,
                                   {"uncertainty": result.uncertainty}, result.affine,
                                   title=f"{args.ct.name}: a CT shown to the brain MRI model", side=170))
    if args.classifier and args.picture:
        from medseg_attn.io.pictures import read_image

        classifier = Classifier.from_checkpoint(args.classifier, device="cpu")
        image, _ = read_image(args.picture)
        small(save_picture_attention_png(args.output / "explain_classify.png", image,
                                         classifier.attention_map(args.picture), title=args.picture.name, side=200))
    return 0


if __name__ == "__main__":
    sys.exit(main())
