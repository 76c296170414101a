"""What keying the preprocessing cache on file content costs: the SHA-256 of a case's input files (every run reads
them once per process) and the check of its cache entry (every run, before using it), against preprocessing it.

    python benchmarks/cache_hashing.py --cases 3 --size 512 --slices 200 --output bench_hash

Builds N CT cases as ``benchmarks/scale.py`` does (the shared series resized to ``--size``, ``--slices`` slices,
int16 .nii.gz), runs ``medseg-attn preprocess --workers 1`` cold (checks, fingerprint, plan, preprocessing and
QC features of every case) and again cached (everything reused), each in a fresh process, then, in another fresh
process (nothing remembered), times per case: hashing its image and label
(:func:`medseg_attn.segmentation.data.cache.file_identity`) and checking its case entry (``entry.json``, the
size and SHA-256 of each file, the arrays' shapes and label values). Writes OUT/cache_hashing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import build_dataset  # noqa: E402

CHILD = """
import json, sys, time
from pathlib import Path
from medseg_attn.segmentation.data.cache import entry_inputs, entry_problem
from medseg_attn.segmentation.data.datasets import load_dataset
from medseg_attn.segmentation.data.preprocess import _case_problem
dataset, cache = load_dataset(sys.argv[1]), Path(sys.argv[2])
rows = []
for case in dataset.training:
    start = time.perf_counter()
    inputs = entry_inputs(case, ("image", "label"))
    hashed = time.perf_counter() - start
    entry = next(p for p in (cache / "cases").iterdir() if p.name.startswith(case["case"] + "-"))
    start = time.perf_counter()
    classes = len(dataset.labels)
    assert entry_problem(entry, inputs) is None and _case_problem(entry, classes, classes) is None
    checked = time.perf_counter() - start
    rows.append({"case": case["case"], "hash_inputs_s": hashed, "check_entry_s": checked,
                 "input_mb": sum(size for files in inputs.values() for _, size, _ in files) / 2**20,
                 "entry_mb": sum(p.stat().st_size for p in entry.iterdir()) / 2**20})
print(json.dumps(rows))
"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="in-plane voxels")
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--output", type=Path, default=Path("bench_hash"))
    args = parser.parse_args(argv)
    dataset = build_dataset(args.output / "data", args.cases, args.size, args.slices)
    cache = args.output / "cache"
    preprocess = [sys.executable, "-m", "medseg_attn.cli", "-q", "preprocess", "--data", str(dataset), "--cache",
                  str(cache), "--workers", "1"]
    cold, cached = timed(preprocess), timed(preprocess)
    rows = json.loads(subprocess.run([sys.executable, "-c", CHILD, str(dataset), str(cache)], check=True,
                                     capture_output=True, text=True).stdout)
    per_case = cold / args.cases
    summary = {"cases": args.cases, "shape": [args.size, args.size, args.slices], "preprocess_cold_s": cold,
               "preprocess_cached_s": cached, "preprocess_per_case_s": per_case, "per_case": rows,
               "hash_inputs_share": max(r["hash_inputs_s"] for r in rows) / per_case,
               "hash_and_check_share": max(r["hash_inputs_s"] + r["check_entry_s"] for r in rows) / per_case}
    (args.output / "cache_hashing.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
