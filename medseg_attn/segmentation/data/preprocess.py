"""Preprocess once: case checks, fingerprint and preprocessing in worker processes, into the disk cache of
:mod:`medseg_attn.segmentation.data.cache`.

Every step is per case and cached per case, so a second run (or another run on the same data, or another
DDP rank) reads the results instead of recomputing them, and an interrupted run resumes where it stopped:

- :func:`checked_cases`: the header and voxel checks of
  :func:`~medseg_attn.segmentation.data.datasets.check_cases`, one entry per case;
- :func:`fingerprint_cases`: :func:`~medseg_attn.segmentation.data.planning.dataset_fingerprint`'s per-case
  records (each case samples with its own seed, so the result does not depend on the order or the process);
- :func:`preprocess_cases`: the deterministic preprocessing of training (orientation, spacing, body crop,
  normalisation) written as ``.npy`` files, plus the class locations the foreground sampling needs;
- :func:`cached_case_features` / :func:`training_fingerprint`: each training case's QC features on its original
  grid (:mod:`medseg_attn.segmentation.data.fingerprint`), summarised into the fingerprint a checkpoint keeps.

Work runs in ``data.preprocess_workers`` processes (0: every core, divided by the processes torchrun starts on
the machine); each worker holds one case at a time, so memory per worker is bounded by the largest case. The
workers exit when the process that started them is gone, even when it was killed (``kill -9``) and ran no clean-up.

Every entry is checked before it is used (:func:`~medseg_attn.segmentation.data.cache.entry_problem`: the inputs
it was made from, the size and SHA-256 of its files; for cases also their shapes, types and label values); a
damaged one is rebuilt, with one warning line.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.runtime.distributed import Distributed, shard
from medseg_attn.segmentation.data.cache import (
    cache_folder,
    cache_root,
    discard_entry,
    ensure_entry,
    entry_inputs,
    entry_path,
    entry_problem,
    key_of,
)

__all__ = ["cached_case_features", "checked_cases", "fingerprint_cases", "preprocess_cases", "training_fingerprint",
           "workers_for"]

MAX_SAMPLES_PER_CLASS = 20000  # class locations kept per case and class (as the in-memory path)


def workers_for(requested: int, jobs: int) -> int:
    """Worker processes for ``jobs`` cases: ``requested``, or every core this process may use divided by the
    processes torchrun runs on this machine (``LOCAL_WORLD_SIZE``); never more than the jobs."""
    if requested <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        requested = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    return max(1, min(requested, jobs))


def _context() -> multiprocessing.context.BaseContext:
    """Workers forked from a clean server process that has imported this module (and torch) once: a plain
    fork of a process whose OpenMP threads have run can deadlock in the child; spawn re-imports torch per worker."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "medseg_attn.segmentation.data.transforms"])
    return context


def _started(pid: int) -> str | None:
    """A process's start time ('' where /proc cannot tell), None once it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X", "x") else fields[19]
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def _start_worker(parent: int) -> None:
    """A worker's set-up: one thread, and a watcher that ends the worker once ``parent`` (the process that started
    the pool) is gone. The workers are children of the fork server, not of that process, and a ``kill -9`` or
    ``SIGTERM`` of it runs no clean-up: without the watcher they would keep building entries for minutes."""
    import torch

    torch.set_num_threads(1)  # the workers share the cores: one thread each
    born = _started(parent)

    def watch() -> None:
        # gone already (None), or another start time: its process id was reused by another process
        while born is not None and _started(parent) == born:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_parallel(function: Callable[[Any], Any], jobs: list[Any], workers: int, desc: str, progress: bool
                 ) -> list[Any]:
    """``function(job)`` for every job (in ``workers`` processes when more than one); results in job order."""
    from tqdm.auto import tqdm

    results: list[Any] = [None] * len(jobs)
    with tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress or not jobs) as bar:
        if workers <= 1:
            for index, job in enumerate(jobs):
                results[index] = function(job)
                bar.update()
            return results
        pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_start_worker,
                                   initargs=(os.getpid(),))
        try:
            futures = {pool.submit(function, job): index for index, job in enumerate(jobs)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return results


def _cached(folder: Path, cases: list[dict[str, Any]], keys: tuple[str, ...], job: Callable[[tuple], Any],
            extra: tuple, depends: dict[str, Any], workers: int, desc: str, progress: bool,
            dist: Distributed | None, counts: dict[str, int] | None = None,
            check: Callable[[Path], str | None] | None = None) -> list[Path]:
    """Each case's entry under ``folder``, building the missing ones with ``job((case, entry, inputs, *extra))``.

    The inputs' content is hashed in ``workers`` threads. Existing entries are checked (:func:`entry_problem`, then
    ``check(entry)``); a damaged one is removed and built again. Under DDP every rank checks and builds its share,
    then all wait for each other."""
    folder = cache_folder(folder.parent, folder.name)
    with ThreadPoolExecutor(workers_for(workers, len(cases))) as threads:
        inputs = list(threads.map(lambda case: entry_inputs(case, keys), cases))
        entries = [entry_path(folder, case["case"], key_of(made, depends))
                   for case, made in zip(cases, inputs, strict=True)]
        mine = list(zip(cases, entries, inputs, strict=True))
        if dist is not None and dist.enabled:
            mine = shard(mine, dist)  # the same cases on every rank: every entry has one rank that builds it

        def sound(entry: Path, made: dict[str, Any]) -> bool:
            if not entry.is_dir():
                return False
            problem = entry_problem(entry, made) or (check(entry) if check is not None else None)
            if problem:
                discard_entry(entry, problem)
            return not problem

        usable = list(threads.map(lambda item: sound(item[1], item[2]), mine))
    missing = [(case, entry, made, *extra) for (case, entry, made), ok in zip(mine, usable, strict=True) if not ok]
    built = run_parallel(job, missing, workers_for(workers, len(missing)), desc, progress)
    if counts is not None:
        counts["built"] = sum(bool(b) for b in built)  # by this process (another may have built the rest)
    if dist is not None and dist.enabled:
        dist.barrier()
    return entries


def _check_job(job: tuple) -> bool:
    case, entry, inputs, num_classes, channels, ignore = job

    def build(tmp: Path) -> None:
        from medseg_attn.segmentation.data.datasets import check_cases

        problems = check_cases([case], num_classes=num_classes, channels=channels, ignore=ignore)
        (tmp / "problems.json").write_text(json.dumps(problems))

    return ensure_entry(entry, build, inputs)


def checked_cases(cases: list[dict[str, Any]], num_classes: int, cache_dir: str | None = None, workers: int = 0,
                  progress: bool = False, dist: Distributed | None = None, channels: int | None = None,
                  ignore: int | None = None) -> list[str]:
    """The problems :func:`~medseg_attn.segmentation.data.datasets.check_cases` finds, one case per worker,
    remembered per case (an unchanged case is not read again). ``channels``: the image channels dataset.json
    declares (None: not checked); ``ignore``: the sparse labels' ignore value (a case of nothing else is refused)."""
    depends = {"kind": "check", "num_classes": num_classes, "channels": channels, "ignore": ignore}
    entries = _cached(cache_root(cache_dir) / "checks", cases, ("image", "label"), _check_job,
                      (num_classes, channels, ignore), depends, workers, "check", progress, dist)
    return [line for entry in entries for line in json.loads((entry / "problems.json").read_text())]


def _features_job(job: tuple) -> bool:
    case, entry, inputs, labels, ct = job

    def build(tmp: Path) -> None:
        from medseg_attn.segmentation.data.fingerprint import training_case_features

        (tmp / "features.json").write_text(json.dumps(training_case_features(case, labels, ct)))

    return ensure_entry(entry, build, inputs)


def cached_case_features(cases: list[dict[str, Any]], labels: dict[int, str], ct: bool, cache_dir: str | None = None,
                         workers: int = 0, progress: bool = False, dist: Distributed | None = None
                         ) -> list[dict[str, Any]]:
    """Each case's QC features (:func:`~medseg_attn.segmentation.data.fingerprint.training_case_features`), one case
    per worker, remembered per case in ``CACHE/qc/`` (an unchanged case is not read again)."""
    from medseg_attn.segmentation.data.fingerprint import FINGERPRINT_VERSION

    labels = {int(k): str(v) for k, v in labels.items()}
    depends = {"kind": "qc", "labels": {str(k): v for k, v in sorted(labels.items())}, "ct": bool(ct),
               "version": FINGERPRINT_VERSION}
    entries = _cached(cache_root(cache_dir) / "qc", cases, ("image", "label"), _features_job, (labels, bool(ct)),
                      depends, workers, "QC fingerprint", progress, dist)
    return [json.loads((entry / "features.json").read_text()) for entry in entries]


def training_fingerprint(cases: list[dict[str, Any]], labels: dict[int, str], ct: bool, progress: bool = False,
                         cache_dir: str | None = None, workers: int = 0, dist: Distributed | None = None
                         ) -> dict[str, Any]:
    """The training set's QC fingerprint (:func:`medseg_attn.segmentation.data.fingerprint.summarise` of every case's
    cached features). Under DDP every rank computes its share: call it on every rank."""
    from medseg_attn.segmentation.data.fingerprint import summarise

    return summarise(cached_case_features(cases, labels, ct, cache_dir, workers, progress, dist), ct)


def _fingerprint_job(job: tuple) -> bool:
    case, entry, inputs, ct = job

    def build(tmp: Path) -> None:
        from medseg_attn.segmentation.data.planning import _case_fingerprint, case_rng

        record, sample = _case_fingerprint(case, ct, case_rng(case))
        (tmp / "record.json").write_text(json.dumps(record))
        np.save(tmp / "sample.npy", np.asarray(sample, dtype=np.float32))

    return ensure_entry(entry, build, inputs)


def fingerprint_cases(cases: list[dict[str, Any]], modality: str | None, cache_dir: str | None = None,
                      workers: int = 0, progress: bool = False, dist: Distributed | None = None) -> dict[str, Any]:
    """:func:`~medseg_attn.segmentation.data.planning.dataset_fingerprint`, in parallel and cached per case."""
    from medseg_attn.segmentation.data.planning import pooled_fingerprint

    if not cases:
        raise UserError("no cases to fingerprint")
    ct = modality == "ct"
    entries = _cached(cache_root(cache_dir) / "fingerprint", cases, ("image", "label"), _fingerprint_job, (ct,),
                      {"kind": "fingerprint", "ct": ct}, workers, "fingerprint", progress, dist)
    records = []
    for case, entry in zip(cases, entries, strict=True):
        records.append({**json.loads((entry / "record.json").read_text()), "case": case["case"]})
    samples = [np.load(entry / "sample.npy") for entry in entries]
    return pooled_fingerprint(records, samples, modality)


def _preprocess_job(job: tuple) -> bool:
    case, entry, inputs, prep, data, num_classes, label_values = job

    def build(tmp: Path) -> None:
        import torch
        from monai import transforms as mt

        from medseg_attn.segmentation.data.transforms import preprocessing

        item = mt.Compose(preprocessing(prep, ("image", "label"), num_classes=label_values))(
            {"image": case["image"], "label": case["label"]})
        image = np.ascontiguousarray(np.asarray(torch.as_tensor(item["image"]), dtype=np.float32))
        label = np.asarray(torch.as_tensor(item["label"]))
        np.save(tmp / "image.npy", image)
        np.save(tmp / "label.npy", label.astype(np.uint8 if label_values <= 256 else np.int16))
        # the class locations exactly as the in-memory path finds them: on the label padded to the patch
        padded = mt.SpatialPadd("label", spatial_size=list(data.patch_size))({"label": item["label"]})
        indices = mt.ClassesToIndicesd("label", num_classes=num_classes, indices_postfix="_indices",
                                       max_samples_per_class=MAX_SAMPLES_PER_CLASS)(padded)["label_indices"]
        np.savez(tmp / "indices.npz", *[np.asarray(torch.as_tensor(i), dtype=np.int64) for i in indices])
        meta = {"case": case["case"], "image": [str(p) for p in np.atleast_1d(case["image"])],
                "label": str(case["label"]), "shape": list(image.shape), "label_dtype": str(item["label"].dtype),
                "preprocessing": prep.to_dict(), "patch_size": list(data.patch_size), "num_classes": num_classes}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

    return ensure_entry(entry, build, inputs)


def _case_problem(entry: Path, num_classes: int, label_values: int) -> str | None:
    """What is wrong with a case entry's arrays (None: nothing): the image float32 (C, *S) of ``meta.json``'s
    shape, the label (1, *S) of small integers in ``0..label_values-1``, one list of locations per class."""
    try:
        shape = json.loads((entry / "meta.json").read_text())["shape"]
        image = np.load(entry / "image.npy", mmap_mode="r")
        label = np.load(entry / "label.npy", mmap_mode="r")
        if image.dtype != np.float32 or list(image.shape) != shape:
            return f"image.npy is {image.dtype} {list(image.shape)}, expected float32 {shape}"
        if label.dtype not in (np.uint8, np.int16) or list(label.shape) != [1, *shape[1:]]:
            return f"label.npy is {label.dtype} {list(label.shape)}, expected uint8 or int16 {[1, *shape[1:]]}"
        low, high = int(label.min()), int(label.max())
        if low < 0 or high >= label_values:
            return f"label.npy holds values {low}..{high}, expected 0..{label_values - 1}"
        with np.load(entry / "indices.npz") as arrays:
            if len(arrays.files) != num_classes:
                return f"indices.npz holds {len(arrays.files)} classes' locations, expected {num_classes}"
    except Exception as error:  # noqa: BLE001 - whatever numpy or json says of a damaged file
        return f"unreadable ({type(error).__name__}: {error})"
    return None


def preprocess_cases(cases: list[dict[str, Any]], prep: Any, data: Any, num_classes: int,
                     progress: bool = False, dist: Distributed | None = None,
                     counts: dict[str, int] | None = None, label_values: int | None = None) -> dict[str, Path]:
    """Each case's cache entry (built where missing): case name -> entry folder.

    Args:
        cases: ``{"image", "label", "case"}`` dicts.
        prep: the run's :class:`~medseg_attn.segmentation.data.transforms.Preprocessing`.
        data: the run's resolved ``DataConfig`` (its ``patch_size``, ``cache_dir`` and ``preprocess_workers``).
        num_classes: classes the network predicts (their voxel locations are cached for patch sampling).
        label_values: label values allowed in the maps (checked; default ``num_classes``; one more with sparse
            labels, whose ignore value is the highest and is never sampled).
        counts: filled with ``{"built": entries this process built}``.
    """
    unique = list({case["case"]: case for case in cases}.values())  # DDP partitions repeat cases
    label_values = label_values or num_classes
    depends = {"kind": "case", "preprocessing": prep.to_dict(), "num_classes": num_classes,
               **({"label_values": label_values} if label_values != num_classes else {}),
               "patch_size": list(data.patch_size), "max_samples_per_class": MAX_SAMPLES_PER_CLASS}
    entries = _cached(cache_root(data.cache_dir) / "cases", unique, ("image", "label"), _preprocess_job,
                      (prep, data, num_classes, label_values), depends, data.preprocess_workers, "preprocess",
                      progress, dist, counts, check=lambda entry: _case_problem(entry, num_classes, label_values))
    return {case["case"]: entry for case, entry in zip(unique, entries, strict=True)}
