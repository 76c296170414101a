"""Device choice shared by training and prediction of every task."""

from __future__ import annotations

import functools
import logging
import time

import torch

__all__ = ["resolve_device", "inference_dtype", "native_cpu_bf16", "cpu_bf16_speedup"]

logger = logging.getLogger(__name__)

BF16_MIN_SPEEDUP = 1.3  # below this measured gain, auto stays fp32 (bf16 rounding for nothing)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How much faster a 3-D convolution runs under CPU bf16 autocast than in fp32 on this machine (measured once
    per process, about 0.1 s: a 16 -> 16 channel 3x3x3 convolution of 2 x 24^3 voxels, fp32 and bf16
    interleaved, the fastest of 5 each).

    CPUs with bf16 dot-product instructions differ widely: Intel AMX and AMD Zen 4 run U-Net convolutions 1.6-2.3 x
    faster in bf16, while an Intel Xeon with AVX-512 bf16 but no AMX ran them slower than fp32. Asking the CPU's
    feature flags cannot tell these apart; timing can.
    """
    try:
        with torch.random.fork_rng(devices=[]):  # the probe's random weights leave the seeded stream untouched
            conv = torch.nn.Conv3d(16, 16, 3, padding=1, bias=False)
            x = torch.randn(2, 16, 24, 24, 24)
        best = {False: float("inf"), True: float("inf")}
        with torch.no_grad():
            for repetition in range(6):
                for bf16 in (False, True):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        start = time.perf_counter()
                        conv(x)
                        if repetition:  # the first of each builds oneDNN's kernels
                            best[bf16] = min(best[bf16], time.perf_counter() - start)
        speedup = best[False] / best[True]
    except Exception:  # a build without CPU bf16 convolutions
        return 0.0
    logger.debug("CPU bf16 convolution probe: %.2f x fp32's speed", speedup)
    return speedup


def native_cpu_bf16() -> bool:
    """bf16 autocast runs this CPU's convolutions clearly faster than fp32 (:func:`cpu_bf16_speedup` >=
    ``BF16_MIN_SPEEDUP``, e.g. Intel AMX, AMD Zen 4), so ``inference.precision: auto`` uses it."""
    return cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def inference_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a forward pass for ``inference.precision`` (None = plain fp32).

    ``auto``: fp16 on CUDA, bf16 on a CPU where it measures clearly faster (:func:`native_cpu_bf16`), fp32
    elsewhere (some CPUs run bf16 slower than fp32). ``fp32``, ``bf16``, ``fp16``: as named (fp16 needs CUDA).

    Raises:
        ValueError: fp16 asked for on a CPU, or an unknown name.
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and native_cpu_bf16() else None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("inference.precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
        return torch.float16
    raise ValueError(f"unknown inference.precision {precision!r} (expected auto, fp32, bf16 or fp16)")
