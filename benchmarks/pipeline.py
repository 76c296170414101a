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

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["PIPELINES", "InferenceResult", "inference_network", "window_count", "window_gflops",
           "benchmark_data_pipeline", "benchmark_inference", "current_rss_mb", "peak_memory_mb",
           "peak_rss_reset", "sync"]


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
    windows: int = 0  # network evaluations of one window
    gflops: float = 0.0  # the plan's forward FLOPs: windows x FLOPs of one window, in GFLOP
    arithmetic: str = "float32"  # the forward pass's autocast dtype (float32 = none)


# key -> (what the row is, pipeline, network, arithmetic). "ours" and "monai" are the two pipelines; arithmetic
# "auto" = what our predictor does by default (inference.precision auto: bf16 autocast on CPUs with AMX, fp16 on
# CUDA, else fp32), "fp32" = plain fp32, what a MONAI script runs unless its author adds autocast. Rows: (a) ours vs
# monai_same_network (the same network and arithmetic: the loop alone), (b) ours vs monai_unet (what a user picks,
# as they run it), monai_unet_autocast (MONAI's UNet given our arithmetic: how much of (b) the arithmetic is),
# (c) MONAI's AttentionUnet, a different and heavier network.
PIPELINES = {
    "ours": ("medseg-attn Predictor + AttentionSkipUNet", "ours", "attention_skip_unet", "auto"),
    "monai_same_network": ("MONAI sliding_window_inference + AttentionSkipUNet", "monai", "attention_skip_unet",
                           "auto"),
    "monai_unet": ("MONAI sliding_window_inference + MONAI UNet", "monai", "monai_unet", "fp32"),
    "monai_unet_autocast": ("MONAI sliding_window_inference + MONAI UNet, our arithmetic", "monai", "monai_unet",
                            "auto"),
    "monai_attention_unet": ("MONAI sliding_window_inference + MONAI AttentionUnet", "monai", "monai_attention_unet",
                             "fp32"),
}
WINDOW = (64, 64, 64)
WINDOW_BATCH = 4


def inference_network(kind: str) -> torch.nn.Module:
    """The networks of the inference rows: our default model, MONAI's ``UNet`` (16..256 channels, 2 residual
    units: what a MONAI user picks) and MONAI's ``AttentionUnet``; 1 input and 3 output channels."""
    from monai.networks.nets import AttentionUnet, UNet

    from medseg_attn.networks import AttentionSkipUNet

    channels = (16, 32, 64, 128, 256)
    if kind == "attention_skip_unet":
        return AttentionSkipUNet(3, 1, 3, channels=channels)
    if kind == "monai_unet":
        return UNet(3, 1, 3, channels, (2, 2, 2, 2), num_res_units=2)
    return AttentionUnet(3, 1, 3, channels, (2, 2, 2, 2))


def window_count(shape: tuple[int, ...], overlap: float) -> int:
    """Windows of :data:`WINDOW` a sliding window with ``overlap`` evaluates over ``shape`` (both pipelines
    step by ``int(window * (1 - overlap))`` and add a last window flush with the far edge)."""
    from medseg_attn.segmentation.inference.sliding import window_starts

    return int(np.prod([len(window_starts(s, w, overlap)) for s, w in zip(shape, WINDOW)]))


def window_gflops(network: torch.nn.Module) -> float:
    """Forward GFLOPs of one window (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 1, *WINDOW))
    return counter.get_total_flops() / 1e9


def _pipeline(key: str, overlap: float, device: torch.device) -> Callable[[torch.Tensor], Any]:
    from medseg_attn.config import InferenceConfig
    from medseg_attn.runtime.device import inference_dtype
    from medseg_attn.segmentation.data.transforms import Preprocessing
    from medseg_attn.segmentation.inference.predictor import Predictor
    from medseg_attn.segmentation.inference.resample import class_labels

    _, pipeline, kind, arithmetic = PIPELINES[key]
    network = inference_network(kind).to(device).eval()
    if pipeline == "ours":
        prep = Preprocessing(None, "RAS", "none", (0.0, 1.0), False, 3)
        predictor = Predictor(network, prep, {0: "a", 1: "b", 2: "c"}, WINDOW,
                              InferenceConfig(overlap=overlap, sw_batch_size=WINDOW_BATCH), device)
        return lambda image: class_labels(predictor.infer(image))  # as predict: max(0).indices, not argmax(0)

    from monai.inferers import sliding_window_inference

    dtype = inference_dtype("auto", device) if arithmetic == "auto" else None

    def run(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = sliding_window_inference(image[None].to(device), WINDOW, WINDOW_BATCH, network,
                                              overlap=overlap, mode="gaussian")
        return logits[0].argmax(0)  # what a MONAI script writes (AsDiscrete(argmax=True) is the same call)

    return run


def _inference_child(key: str, shape: tuple[int, ...], overlap: float, device: str, threads: int) -> tuple:
    """One whole-volume prediction in a fresh process: (seconds, peak MB, MB held before the prediction)."""
    torch.set_num_threads(threads)
    resolved = torch.device(device)
    run = _pipeline(key, overlap, resolved)
    image = torch.randn(1, *shape)
    run(torch.randn(1, *(min(s, 64) for s in shape)))  # warm up on one window
    gc.collect()
    peak_rss_reset()  # then what the process holds: the peak, reset to the RSS of that moment, is never below it
    before = current_rss_mb() if resolved.type == "cpu" else 0.0
    start = time.perf_counter()
    labels = run(image)
    sync(resolved)
    seconds = time.perf_counter() - start
    assert tuple(labels.shape) == tuple(shape)
    return seconds, peak_memory_mb(resolved), before


def benchmark_inference(
    shapes: list[tuple[int, int, int]], overlap: float = 0.5, device: torch.device | None = None,
    keys: tuple[str, ...] = tuple(PIPELINES), first_shape_only: tuple[str, ...] = (),
) -> list[InferenceResult]:
    """Time and peak memory of whole-volume prediction for each pipeline row of :data:`PIPELINES` per shape.

    Every prediction runs in a fresh process (``spawn``), so its peak memory is its own: not inflated by what
    this process allocated before, nor hidden by memory the allocator kept from earlier runs. ``peak_memory_mb``
    is that process's peak (Python, torch, the network, the volume and the prediction); ``added_memory_mb`` is
    the part the prediction itself added (peak minus the memory held just before it started). Every row uses
    the same windows (64^3), overlap, window batch and Gaussian blending; its arithmetic is in :data:`PIPELINES`.
    Rows in ``first_shape_only`` run on the first shape only (a slow network on a large volume would take most of
    the benchmark's time).
    """
    import multiprocessing

    from medseg_attn.runtime.device import inference_dtype

    device = device or torch.device("cpu")
    context = multiprocessing.get_context("spawn")
    flops = {kind: window_gflops(inference_network(kind)) for kind in {PIPELINES[k][2] for k in keys}}
    ours = str(inference_dtype("auto", device) or torch.float32).replace("torch.", "")  # what "auto" rows run
    results = []
    with context.Pool(1, maxtasksperchild=1) as pool:
        for index, shape in enumerate(shapes):
            windows = window_count(tuple(shape), overlap)
            for key in keys:
                if index and key in first_shape_only:
                    continue
                name, _, kind, arithmetic = PIPELINES[key]
                seconds, peak, before = pool.apply(_inference_child, (key, tuple(shape), overlap, str(device),
                                                                      torch.get_num_threads()))
                voxels = float(np.prod(shape))
                results.append(InferenceResult(name, tuple(shape), seconds, voxels / seconds, peak, peak - before,
                                               windows, windows * flops[kind],
                                               ours if arithmetic == "auto" else "float32"))
                logger.info("%s %s: %.1f s, %.2f Mvoxels/s, peak %.0f MB (+%.0f MB)", name, shape, seconds,
                            voxels / seconds / 1e6, peak, peak - before)
    return results


def benchmark_data_pipeline(work: Path, epochs: int = 2, device: torch.device | None = None) -> dict[str, Any]:
    """How long training waits for data with the demo configuration (its default caching and workers).

    Builds the demo's real brain dataset (20 cases), trains ``epochs`` epochs of the demo config, and reads the
    per-epoch ``data_wait_fraction`` (time in ``next(loader)`` / epoch time) from the run's history. The first
    epoch includes the cache fill's aftermath and DataLoader start-up; the mean over epochs is reported.
    """
    import shutil

    from medseg_attn.demo_data import build_demo_dataset
    from medseg_attn.segmentation.workflows.demo import demo_config
    from medseg_attn.segmentation.workflows.train import train
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
