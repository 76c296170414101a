"""Device choice shared by training and prediction of every task."""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "inference_dtype", "native_cpu_bf16"]


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


def native_cpu_bf16() -> bool:
    """The CPU multiplies bf16 matrices in hardware (Intel AMX), where bf16 convolutions run faster than fp32."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # an unusual build without the probe
        return False


def inference_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a forward pass for ``inference.precision`` (None = plain fp32).

    ``auto``: fp16 on CUDA, bf16 on a CPU with native bf16 matrix units (AMX), fp32 elsewhere (a CPU without them
    runs bf16 slower than fp32). ``fp32``, ``bf16``, ``fp16``: as named (fp16 needs CUDA).

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
