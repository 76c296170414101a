"""``--lesions --lesion-overlap --min-lesion-volume --lesion-connectivity --lesion-hd95-max`` of ``evaluate`` and
``cv``: lesion-wise evaluation (see docs/lesions.md)."""

from __future__ import annotations

import argparse

__all__ = ["add_lesion_arguments", "lesion_options"]


def add_lesion_arguments(parser: argparse.ArgumentParser) -> None:
    """The lesion-wise options of a command that evaluates label maps."""
    group = parser.add_argument_group("lesion-wise evaluation (docs/lesions.md)")
    group.add_argument("--lesions", nargs="*", metavar="STRUCTURE",
                       help="also score lesions (connected components) of these structures (names or indices; "
                            "none given: every foreground class): lesions.csv (per case and structure: lesion "
                            "counts, lesion F1, BraTS-2023 lesion-wise Dice and HD95) and lesion_pairs.csv (one row "
                            "per lesion); a named structure with no lesion in any case is an error")
    group.add_argument("--lesion-overlap", default="any", metavar="any|iou:T",
                       help="when a predicted component finds a reference lesion: any shared voxel (default) or an "
                            "intersection over union of at least T, e.g. iou:0.1")
    group.add_argument("--min-lesion-volume", type=float, default=0.0, metavar="ML",
                       help="components smaller than this many ml are no lesions on either side (default 0)")
    group.add_argument("--lesion-connectivity", type=int, default=26, choices=(6, 18, 26),
                       help="voxel neighbourhood of a lesion (default 26)")
    group.add_argument("--lesion-hd95-max", type=float, default=374.0, metavar="MM",
                       help="HD95 of a missed or false lesion in the lesion-wise HD95 (default 374, BraTS's)")


def lesion_options(args: argparse.Namespace):
    """The LesionOptions that the arguments ask for, or None without ``--lesions``."""
    lesion_flags = (args.lesion_overlap != "any", args.min_lesion_volume != 0.0, args.lesion_connectivity != 26,
                    args.lesion_hd95_max != 374.0)
    if args.lesions is None:
        if any(lesion_flags):
            from medseg_attn.errors import UserError

            raise UserError("--lesion-overlap, --min-lesion-volume, --lesion-connectivity and --lesion-hd95-max "
                            "need --lesions")
        return None
    from medseg_attn.segmentation.evaluation.lesion_report import LesionOptions
    from medseg_attn.segmentation.measures.lesions import LesionRules

    rules = LesionRules(connectivity=args.lesion_connectivity, overlap=args.lesion_overlap,
                        min_volume_ml=args.min_lesion_volume, hd95_max_mm=args.lesion_hd95_max)
    return LesionOptions(structures=tuple(args.lesions), rules=rules)
