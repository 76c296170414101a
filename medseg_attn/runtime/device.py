"""Device choice shared by training and prediction of every task.

``inference.precision: auto`` resolves the same way in every run on a machine (never from a fresh timing per
process, which made a busy machine choose fp32 and a quiet one bf16, and so gave different label maps):

* CUDA: fp16;
* a CPU without bf16 dot-product instructions (no ``avx512_bf16`` / ``amx_bf16`` in ``/proc/cpuinfo``): fp32;
* a CPU with Intel AMX (``amx_bf16``): bf16;
* any other CPU (AVX-512 bf16 without AMX, e.g. AMD Zen 4, which runs bf16 fast, or an Intel Xeon, which runs it
  slower than fp32; or a system without ``/proc/cpuinfo``): a short bf16/fp32 convolution probe, run once per
  machine and kept in ``$MEDSEG_ATTN_CACHE/precision.json`` (default ``~/.cache/medseg-attn``) under the CPU
  model, torch version and capability; every later run reuses it. Where that file cannot be written, fp32.

The instruction sets the CPU kernels may use can be capped, to measure on any machine as an AVX2-only CPU (a
laptop, an older server) would run: ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN: convolutions) and
``ATEN_CPU_CAPABILITY=avx2`` (ATen: element-wise and reduction kernels), set before torch loads. Under a cap
below AVX-512 bf16, ``auto`` stays fp32 whatever ``/proc/cpuinfo`` says; :func:`cpu_isa` reports what is in effect.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from medseg_attn.errors import UserError

__all__ = ["mps_available", "resolve_device", "inference_dtype", "native_cpu_bf16", "cpu_bf16_speedup",
           "precision_name", "precision_reason", "cpu_model", "cache_dir", "cpu_isa", "isa_caps", "AVX2_CAPS"]

logger = logging.getLogger(__name__)

MPS_FALLBACK = "PYTORCH_ENABLE_MPS_FALLBACK"  # torch reads it once, when it loads
BF16_MIN_SPEEDUP = 1.3  # below this measured gain, auto stays fp32 (bf16 rounding for nothing)
AVX2_CAPS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}  # run as an AVX2-only CPU would
_NO_BF16_ONEDNN = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
_ONEDNN_PROBE = ("import torch\n"
                 "torch._C._verbose.mkldnn_set_verbose(1)\n"
                 "torch.nn.Conv3d(8, 8, 3, padding=1)(torch.randn(2, 8, 8, 8, 8))\n")


def mps_available() -> bool:
    """Whether torch reports Apple's Metal GPU backend usable here (``torch.backends.mps.is_available()``)."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@functools.lru_cache(maxsize=1)
def _announce_mps() -> None:
    """One log line, once per process: auto chose MPS, and what happens to operations MPS lacks."""
    if os.environ.get(MPS_FALLBACK) == "1":
        logger.info("device auto: Apple MPS (torch.backends.mps.is_available()); operations MPS lacks run on the "
                    "CPU (%s=1)", MPS_FALLBACK)
    else:
        logger.warning("device auto: Apple MPS (torch.backends.mps.is_available()); %s is not 1 when torch loaded, "
                       "so an operation MPS lacks stops the run (export %s=1, or --device cpu)", MPS_FALLBACK,
                       MPS_FALLBACK)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else Apple's MPS when torch reports it (operations MPS lacks run on the CPU:
    ``PYTORCH_ENABLE_MPS_FALLBACK=1``, which importing medseg_attn sets on macOS unless set already), else CPU.

    Raises:
        UserError: an unknown device, or CUDA / MPS asked for where torch does not offer it.
    """

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            _announce_mps()
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (expected auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type == "mps" and not mps_available():
        raise UserError(f"device {name!r} requested but torch reports no Apple MPS backend on this machine")
    return device


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How much faster a 3-D convolution runs under CPU bf16 autocast than in fp32 on this machine (the raw probe,
    about 0.1 s; ``auto`` never uses it directly but through the per-machine cache, see the module docstring: a
    16 -> 16 channel 3x3x3 convolution of 2 x 24^3 voxels, fp32 and bf16 interleaved, the fastest of 5 each).

    CPUs with bf16 dot-product instructions differ widely: some run U-Net convolutions much faster in bf16, others
    slower than fp32 (measurements: docs/benchmarks.md, "Timings behind design choices"). Asking the CPU's
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


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, feature flags) of the first CPU in ``/proc/cpuinfo``; ('', empty) where there is none."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    """This machine's CPU model (``/proc/cpuinfo``, else :func:`platform.processor`)."""
    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown CPU"


def cache_dir() -> Path:
    """Where per-machine results are kept (the same folder as the preprocessing cache): ``$MEDSEG_ATTN_CACHE``,
    else ``$XDG_CACHE_HOME/medseg-attn`` (``~/.cache/medseg-attn``)."""
    if os.environ.get("MEDSEG_ATTN_CACHE"):
        return Path(os.environ["MEDSEG_ATTN_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "medseg-attn"


def isa_caps() -> dict[str, str]:
    """The instruction-set caps set in this environment (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``)."""
    return {name: os.environ[name] for name in AVX2_CAPS if os.environ.get(name)}


@functools.lru_cache(maxsize=1)
def cpu_isa() -> dict[str, str]:
    """The instruction sets this process's CPU kernels use, read, not assumed: ``aten`` from
    ``torch.backends.cpu.get_cpu_capability()`` and ``onednn`` (the convolutions) from oneDNN's own report of one
    small convolution in a child process with this environment (about 2 s, once per process; 'unknown' where it
    cannot be read). A cap the build or the CPU ignores shows here as the ISA actually used."""
    onednn = "unknown"
    try:
        done = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE], capture_output=True, text=True, timeout=120,
                              env=os.environ.copy(), check=False)
        for line in done.stdout.splitlines():
            if ",isa:" in line:
                onednn = line.split(",isa:", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    return {"aten": torch.backends.cpu.get_cpu_capability(), "onednn": onednn}


def _onednn_cap() -> str:
    """``ONEDNN_MAX_CPU_ISA`` as oneDNN reads it ('' when unset)."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()


def _machine_key() -> str:
    cap = _onednn_cap()
    return (f"{cpu_model()} | torch {torch.__version__} | {torch.backends.cpu.get_cpu_capability()}"
            + (f" | oneDNN <= {cap}" if cap else ""))


def _cached_speedup() -> tuple[float | None, str]:
    """This machine's bf16 probe result from the cache file, measured and stored on first use.

    Returns (speedup, how it was obtained); speedup None where the cache cannot be written (auto then stays fp32:
    a per-process timing would make the choice depend on the machine's load).
    """
    from medseg_attn.io.files import atomic_write_text

    path, key = cache_dir() / "precision.json", _machine_key()
    try:
        entries = json.loads(path.read_text()) if path.exists() else {}
        entries = entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        entries = {}
    found = entries.get(key)
    if isinstance(found, dict) and isinstance(found.get("bf16_speedup"), (int, float)):
        return float(found["bf16_speedup"]), f"bf16 probe cached in {path}"
    probe = getattr(cpu_bf16_speedup, "__wrapped__", cpu_bf16_speedup)  # three fresh rounds, the best kept
    speedup = max(probe() for _ in range(3))
    entries[key] = {"bf16_speedup": round(speedup, 3), "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        atomic_write_text(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")
    except OSError as error:
        logger.warning("%s: cannot keep the bf16 probe result (%s); inference.precision auto uses fp32", path, error)
        return None, f"bf16 probe not cacheable ({path})"
    return round(speedup, 3), f"bf16 probe measured once, cached in {path}"


@functools.lru_cache(maxsize=1)
def _cpu_decision() -> tuple[bool, str]:
    _, flags = _cpuinfo()
    cap = _onednn_cap()
    if cap in _NO_BF16_ONEDNN:
        return False, f"oneDNN capped at {cap} (ONEDNN_MAX_CPU_ISA): no bf16 dot products"
    if "amx_bf16" in flags:
        return True, "CPU has Intel AMX (amx_bf16)"
    if flags and not flags & {"avx512_bf16", "amx_bf16", "sve", "bf16"}:
        return False, "CPU has no bf16 dot-product instructions"
    speedup, how = _cached_speedup()
    if speedup is None:
        return False, how
    return speedup >= BF16_MIN_SPEEDUP, f"{how}: bf16 {speedup:.2f} x fp32's speed (bf16 from {BF16_MIN_SPEEDUP})"


def native_cpu_bf16() -> bool:
    """``inference.precision: auto`` uses bf16 on this CPU: it has AMX, or its cached probe measured bf16
    convolutions >= ``BF16_MIN_SPEEDUP`` x faster than fp32 (see the module docstring). The same answer in every
    process on a machine."""
    return _cpu_decision()[0]


def precision_name(dtype: torch.dtype | None) -> str:
    """'fp32', 'bf16' or 'fp16' for an autocast dtype from :func:`inference_dtype`."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def precision_reason(precision: str, device: torch.device) -> str:
    """Why ``precision`` resolves as it does on ``device`` (for run manifests)."""
    if precision != "auto":
        return "set explicitly"
    if device.type == "cuda":
        return "auto on CUDA: fp16"
    if device.type == "mps":
        return "auto on Apple MPS: fp32"
    return _cpu_decision()[1]


def inference_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a forward pass for ``inference.precision`` (None = plain fp32).

    ``auto``: fp16 on CUDA, bf16 on a CPU where it is clearly faster (:func:`native_cpu_bf16`: AMX, or a probe
    cached per machine), fp32 elsewhere (some CPUs run bf16 slower than fp32); the same in every run on a machine.
    ``fp32``, ``bf16``, ``fp16``: as named (fp16 needs CUDA).

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
            raise UserError("inference.precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
        return torch.float16
    raise UserError(f"unknown inference.precision {precision!r} (expected auto, fp32, bf16 or fp16)")
