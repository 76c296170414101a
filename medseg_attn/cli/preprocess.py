"""``medseg-attn preprocess``: check, fingerprint and preprocess a dataset once into the disk cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg_attn.cli.arguments import add_dataset_arguments
from medseg_attn.errors import UserError

__all__ = ["EXAMPLES", "RUNNERS", "add_parsers", "cache_option"]

EXAMPLES = {
    "preprocess": """examples:
  medseg-attn preprocess --data Task09_Spleen/dataset.json
  medseg-attn preprocess --data Task09_Spleen --cache /scratch/medseg-cache --workers 8
  medseg-attn preprocess --config configs/ct_spleen.yaml --data Task09_Spleen --device cuda

checks every case, fingerprints it, plans, and writes each case cropped, resampled and normalised (.npy, read by
memory map during training) with its per-class voxel locations into the cache (default $MEDSEG_ATTN_CACHE or
~/.cache/medseg-attn). Everything is cached per case: a second run, an interrupted run started again, or a
`train` with the same config and device reuses it; a changed case or plan rebuilds what changed. `train` and
`plan` do the same steps themselves; this command does them ahead of time (e.g. on a CPU node). See
docs/scale.md""",
}


def cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, metavar="DIR",
                        help="preprocessing cache folder (sets data.cache_dir; default $MEDSEG_ATTN_CACHE or "
                             "~/.cache/medseg-attn); shareable between runs, users and machines")


def add_parsers(command) -> None:
    parser = command("preprocess", "check, fingerprint and preprocess a dataset once into the disk cache "
                                   "(parallel, resumable)")
    add_dataset_arguments(parser, config_help="YAML config (the plan, hence the cache entries, follow it)",
                          set_example="data.spacing=[1.5,1.5,3]")
    cache_option(parser)
    parser.add_argument("--workers", type=int, metavar="N",
                        help="worker processes (sets data.preprocess_workers; default every core)")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default) or cuda: the voxel budget of the plan, as train would use on it")


def with_cache(config, args: argparse.Namespace):
    """``config`` with ``--cache`` (and ``--workers``, where the command has it) applied."""
    values = {}
    if getattr(args, "cache", None) is not None:
        values["cache_dir"] = str(args.cache)
    if getattr(args, "workers", None) is not None:
        if args.workers < 0:
            raise UserError(f"--workers {args.workers}: expected 0 (every core) or more")
        values["preprocess_workers"] = args.workers
    return config.replace(data=values) if values else config


def _run_preprocess(args: argparse.Namespace) -> int:
    from medseg_attn.config import load_config
    from medseg_attn.segmentation.data.dataset_plan import prepare_dataset

    literals = {"data.dataset": args.data} if args.data else {}
    config = with_cache(load_config(args.config, list(args.overrides), literals=literals), args)
    summary = prepare_dataset(config, args.device, progress=not args.quiet)
    resolved = summary["plan"].resolved.to_dict()  # printed as in plan.json (lists)
    print(f"preprocessed {summary['cases']} cases ({summary['built']} built, "
          f"{summary['cases'] - summary['built']} reused) in {summary['seconds']:.1f} s into {summary['cache']}; "
          f"spacing {resolved['spacing']}, patch {resolved['patch_size']}, intensity {resolved['intensity']}")
    return 0


RUNNERS = {"preprocess": _run_preprocess}
