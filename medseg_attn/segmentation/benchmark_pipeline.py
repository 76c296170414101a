"""Benchmarks of whole pipelines: whole-volume sliding-window prediction (each in a fresh process, so its peak
memory is its own) and the training data pipeline's wait for data; memory and clock helpers for both."""

from __future__ import annotations

import gc
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["InferenceResult", "benchmark_data_pipeline", "benchmark_inference", "current_rss_mb", "peak_memory_mb", "peak_rss_reset",
           "sync"]


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS counter (Linux); CUDA peak statistics too."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class InferenceResult:
    """Whole-volume sliding-window prediction of one pipeline on one volume."""

    name: str
    shape: tuple[int, ...]
    seconds: float
    voxels_per_second: float
    peak_memory_mb: float
    added_memory_mb: float  # peak minus what the process held before


def _ours(shape: tuple[int, ...], overlap: float, device: torch.device) -> Callable[[torch.Tensor], Any]:
    from medseg_attn.config import InferenceConfig
    from medseg_attn.networks import AttentionSkipUNet
    from medseg_attn.segmentation.predictor import Predictor
    from medseg_attn.segmentation.transforms import Preprocessing

    network = AttentionSkipUNet(3, 1, 3).to(device).eval()
    prep = Preprocessing(None, "RAS", "none", (0.0, 1.0), False, 3)
    predictor = Predictor(network, prep, {0: "a", 1: "b", 2: "c"}, (64, 64, 64),
                          InferenceConfig(overlap=overlap, sw_batch_size=2), device)
    return lambda image: predictor.infer(image).argmax(0)


def _monai(shape: tuple[int, ...], overlap: float, device: torch.device) -> Callable[[torch.Tensor], Any]:
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import AttentionUnet

    network = AttentionUnet(3, 1, 3, (16, 32, 64, 128, 256), (2, 2, 2, 2)).to(device).eval()

    def run(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = sliding_window_inference(image[None].to(device), (64, 64, 64), 2, network, overlap=overlap,
                                              mode="gaussian")
        return logits[0].argmax(0)

    return run


def _inference_child(pipeline: str, shape: tuple[int, ...], overlap: float, device: str, threads: int) -> tuple:
    """One whole-volume prediction in a fresh process: (seconds, peak MB, MB held before the prediction)."""
    torch.set_num_threads(threads)
    resolved = torch.device(device)
    run = {"ours": _ours, "monai": _monai}[pipeline](shape, overlap, resolved)
    image = torch.randn(1, *shape)
    run(torch.randn(1, *(min(s, 64) for s in shape)))  # warm up on one window
    gc.collect()
    before = current_rss_mb() if resolved.type == "cpu" else 0.0
    peak_rss_reset()
    start = time.perf_counter()
    labels = run(image)
    sync(resolved)
    seconds = time.perf_counter() - start
    assert tuple(labels.shape) == tuple(shape)
    return seconds, peak_memory_mb(resolved), before


def benchmark_inference(
    shapes: list[tuple[int, int, int]], overlap: float = 0.5, device: torch.device | None = None,
    monai: bool = True,
) -> list[InferenceResult]:
    """Throughput and peak memory of whole-volume prediction (ours, and MONAI + AttentionUnet) per shape.

    Every prediction runs in a fresh process (``spawn``), so its peak memory is its own: not inflated by what
    this process allocated before, nor hidden by memory the allocator kept from earlier runs. ``peak_memory_mb``
    is that process's peak (Python, torch, the network, the volume and the prediction); ``added_memory_mb`` is
    the part the prediction itself added (peak minus the memory held just before it started).
    """
    import multiprocessing

    device = device or torch.device("cpu")
    context = multiprocessing.get_context("spawn")
    names = {"ours": "medseg-attn Predictor (AttentionSkipUNet)",
             "monai": "MONAI sliding_window_inference + AttentionUnet"}
    results = []
    with context.Pool(1, maxtasksperchild=1) as pool:
        for shape in shapes:
            for pipeline in ("ours", "monai") if monai else ("ours",):
                seconds, peak, before = pool.apply(_inference_child, (pipeline, tuple(shape), overlap, str(device),
                                                                      torch.get_num_threads()))
                voxels = float(torch.tensor(shape).prod())
                results.append(InferenceResult(names[pipeline], tuple(shape), seconds, voxels / seconds, peak,
                                               peak - before))
                logger.info("%s %s: %.1f s, %.2f Mvoxels/s, peak %.0f MB (+%.0f MB)", names[pipeline], shape,
                            seconds, voxels / seconds / 1e6, peak, peak - before)
    return results


def benchmark_data_pipeline(work: Path, epochs: int = 2, device: torch.device | None = None) -> dict[str, Any]:
    """How long training waits for data with the demo configuration (its default caching and workers).

    Builds the demo's real brain dataset (20 cases), trains ``epochs`` epochs of the demo config, and reads the
    per-epoch ``data_wait_fraction`` (time in ``next(loader)`` / epoch time) from the run's history. The first
    epoch includes the cache fill's aftermath and DataLoader start-up; the mean over epochs is reported.
    """
    import shutil

    from medseg_attn.demo_data import build_demo_dataset
    from medseg_attn.segmentation.demo import demo_config
    from medseg_attn.segmentation.train import train
    from medseg_attn.training.loop import read_history

    shutil.rmtree(work, ignore_errors=True)
    dataset = build_demo_dataset(work / "data", train_cases=20, test_cases=0, seed=0, progress=False)
    config = demo_config([f"data.dataset={dataset}", "train.minutes=null", f"train.max_epochs={epochs}",
                          f"train.val_interval={epochs + 1}", f"train.device={(device or torch.device('cpu')).type}"])
    started = time.perf_counter()
    train(config, work / "run", progress=False)
    history = read_history(work / "run" / "history.csv")
    fractions = [float(row["data_wait_fraction"]) for row in history]
    result = {"epochs": len(history), "steps": int(history[-1]["step"]), "seconds": time.perf_counter() - started,
              "cache": config.data.cache, "num_workers": config.data.num_workers,
              "data_wait_fraction_per_epoch": fractions, "data_wait_fraction": statistics.mean(fractions)}
    logger.info("data pipeline: %.1f%% of step time waiting for data (%s)", 100 * result["data_wait_fraction"],
                ", ".join(f"{100 * f:.1f}%" for f in fractions))
    shutil.rmtree(work, ignore_errors=True)
    return result
