"""Benchmarks against MONAI's networks, in one process run, reported as ratios.

Absolute times on shared machines are noise; ratios measured in the same run, with the candidates interleaved
repetition by repetition, are not. For each network at the same input: parameters, forward FLOPs
(``torch.utils.flop_counter``), median forward and training-step time (forward + backward + AdamW step), peak
memory, and achieved FLOP/s as a fraction of the machine's measured fp32 matrix-multiply rate. For whole volumes:
sliding-window throughput (voxels per second) and peak memory of our predictor against MONAI's
``sliding_window_inference`` with the same network, with MONAI's ``UNet`` and with its ``AttentionUnet`` (the last on
the smaller volume only), at two volume sizes to show how memory grows.
"""

from __future__ import annotations

import gc
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.commands import machine, machine_line
from benchmarks.pipeline import (
    PIPELINES,
    WINDOW_BATCH,
    InferenceResult,
    benchmark_data_pipeline,
    benchmark_inference,
    current_rss_mb,
    peak_memory_mb,
    peak_rss_reset,
    sync,
)

logger = logging.getLogger(__name__)

__all__ = ["TARGETS", "benchmark_attention_levels", "benchmark_networks", "benchmark_variants", "format_prediction",
           "format_report", "matmul_rate", "run_benchmarks", "run_prediction", "PREDICTION_SHAPES",
           "QUICK_PREDICTION_SHAPES"]

# name -> (what is compared, target ratio, "<=" or ">="). Like with like: (a) the same network through both
# pipelines, (b) our default model + pipeline against what a MONAI user picks (UNet + sliding_window_inference),
# (c) MONAI's AttentionUnet as a secondary row (a different, heavier network: its ratio is the network's, not ours)
TARGETS = {
    "train_step_vs_monai_unet": ("ours / MONAI UNet, training step time", 1.0, "<="),
    "attention_overhead": ("attention on / off, training step time", 1.10, "<="),
    "forward_fraction_of_matmul": ("forward FLOP/s / fp32 matmul FLOP/s", 0.60, ">="),
    "pipeline_vs_monai_same_network": ("(a) our pipeline / MONAI's, same network, voxels per second", 1.0, ">="),
    "inference_throughput_vs_monai_unet": ("(b) ours / MONAI UNet + sliding window, voxels per second", 1.5, ">="),
    "inference_memory_vs_monai_unet": ("(b) ours / MONAI UNet + sliding window, peak memory", 1.0, "<="),
    "inference_throughput_vs_monai_attention_unet": ("(c) ours / MONAI AttentionUnet + sliding window, voxels/s",
                                                     1.0, ">="),
    "inference_peak_memory_gib": ("peak memory of our prediction on the large volume, GiB", 6.0, "<="),
    "data_wait_fraction": ("share of training-step time waiting for data (demo config)", 0.10, "<="),
}


def matmul_rate(device: torch.device, size: int = 2048, repetitions: int = 7) -> float:
    """Median fp32 FLOP/s of a square matrix multiply: the machine's practical peak."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    times = []
    for _ in range(repetitions):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def candidates(size: int) -> dict[str, Callable[[], nn.Module]]:
    """Networks at comparable sizes (16..256 channels where the design allows), 1 input and 3 output channels."""
    from monai.networks.nets import UNETR, AttentionUnet, BasicUNet, SwinUNETR, UNet

    from medseg_attn.networks import AttentionSkipUNet

    channels = (16, 32, 64, 128, 256)
    return {
        "AttentionSkipUNet (attention on)": lambda: AttentionSkipUNet(3, 1, 3, channels=channels),
        "AttentionSkipUNet (attention off)": lambda: AttentionSkipUNet(3, 1, 3, channels=channels, attention=False),
        "MONAI UNet": lambda: UNet(3, 1, 3, channels, (2, 2, 2, 2), num_res_units=2),
        "MONAI AttentionUnet": lambda: AttentionUnet(3, 1, 3, channels, (2, 2, 2, 2)),
        "MONAI BasicUNet": lambda: BasicUNet(3, 1, 3, features=(16, 32, 64, 128, 256, 16)),
        "MONAI SwinUNETR": lambda: SwinUNETR(1, 3, feature_size=24),
        "MONAI UNETR": lambda: UNETR(1, 3, img_size=size, feature_size=16, hidden_size=384, mlp_dim=1536,
                                    num_heads=6),
    }


@dataclass
class NetworkResult:
    """One network's numbers at one input size."""

    name: str
    parameters: int
    forward_gflops: float
    forward_seconds: float
    train_step_seconds: float
    forward_fraction_of_matmul: float
    train_fraction_of_matmul: float
    peak_memory_mb: float  # peak during forward + training step, above what the process held before


def _flops(network: nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(x)
    return float(counter.get_total_flops())


def benchmark_networks(
    size: int = 64, batch: int = 2, repetitions: int = 5, device: torch.device | None = None,
    names: list[str] | None = None, progress: bool = True,
) -> tuple[list[NetworkResult], float]:
    """Forward/training-step time, FLOPs, memory of every candidate on a (batch, 1, size^3) input.

    Candidates run interleaved (one repetition of each in turn) so machine noise hits them alike; the matmul rate
    is measured in every repetition too, between the networks, so a busy spell on a shared machine lowers both
    sides of the "fraction of matmul rate" rather than only one.

    Returns:
        (results, matmul FLOP/s)
    """
    device = device or torch.device("cpu")
    rates = [matmul_rate(device, repetitions=3)]
    factories = {k: v for k, v in candidates(size).items() if names is None or k in names}
    torch.manual_seed(0)
    x = torch.randn(batch, 1, size, size, size, device=device)
    y = torch.randint(0, 3, (batch, size, size, size), device=device)
    networks = {}
    for name, make in factories.items():
        try:
            networks[name] = make().to(device)
        except ImportError as error:  # SwinUNETR / UNETR need einops (pip install medseg-attn[bench])
            logger.warning("skipping %s: %s", name, str(error).splitlines()[0])
    optimizers = {name: torch.optim.AdamW(net.parameters(), 1e-4, fused=True)  # the engine's optimizer
                  for name, net in networks.items()}
    flops = {name: _flops(net.eval(), x) for name, net in networks.items()}
    forward_times: dict[str, list[float]] = {name: [] for name in networks}
    step_times: dict[str, list[float]] = {name: [] for name in networks}
    peaks: dict[str, float] = {}
    for repetition in range(repetitions + 1):  # the first repetition warms up and is dropped
        for name, net in networks.items():
            gc.collect()
            before = current_rss_mb() if device.type == "cpu" else 0.0
            peak_rss_reset()
            net.eval()
            with torch.no_grad():
                sync(device)
                start = time.perf_counter()
                net(x)
                sync(device)
                forward = time.perf_counter() - start
            net.train()
            sync(device)
            start = time.perf_counter()
            out = net(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            loss = nn.functional.cross_entropy(out, y)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            sync(device)
            step = time.perf_counter() - start
            peaks[name] = max(peaks.get(name, 0.0), peak_memory_mb(device) - before)
            if repetition:
                forward_times[name].append(forward)
                step_times[name].append(step)
            if progress:
                logger.info("rep %d %-34s forward %.3f s, step %.3f s", repetition, name, forward, step)
        rates.append(matmul_rate(device, repetitions=3))
    rate = statistics.median(rates)
    results = []
    for name, net in networks.items():
        forward = statistics.median(forward_times[name])
        step = statistics.median(step_times[name])
        results.append(NetworkResult(
            name, sum(p.numel() for p in net.parameters()), flops[name] / 1e9, forward, step,
            flops[name] / forward / rate, 3 * flops[name] / step / rate, peaks[name]))
    return results, rate


def benchmark_variants(
    size: int = 64, batch: int = 2, repetitions: int = 5, device: torch.device | None = None,
    compile: bool = True, progress: bool = True,
) -> list[dict[str, Any]]:
    """Training-step time of the default AttentionSkipUNet under each optimisation the engine offers.

    Variants (interleaved like :func:`benchmark_networks`): fp32 eager (the reference), bf16 / fp16 autocast
    (``train.amp``), channels-last memory format, and ``torch.compile`` (``train.compile``; its compilation is
    done in the warm-up repetition and reported separately). Returns one dict per variant with the median step
    time and its ratio to fp32 eager.
    """
    from medseg_attn.networks import AttentionSkipUNet

    device = device or torch.device("cpu")
    half = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    channels_last = torch.channels_last_3d
    variants: dict[str, dict[str, Any]] = {
        "fp32 eager": {},
        f"{str(half).split('.')[-1]} autocast": {"amp": half},
        "channels-last": {"memory_format": channels_last},
    }
    if compile:
        variants["torch.compile"] = {"compile": True}
    torch.manual_seed(0)
    x = torch.randn(batch, 1, size, size, size, device=device)
    y = torch.randint(0, 3, (batch, size, size, size), device=device)
    runs = {}
    for name, options in variants.items():
        torch.manual_seed(0)
        network = AttentionSkipUNet(3, 1, 3).to(device).train()
        inputs = x
        if "memory_format" in options:
            network = network.to(memory_format=options["memory_format"])
            inputs = x.contiguous(memory_format=options["memory_format"])
        model = torch.compile(network) if options.get("compile") else network
        runs[name] = (model, torch.optim.AdamW(network.parameters(), 1e-4, fused=True), inputs, options.get("amp"))
    times: dict[str, list[float]] = {name: [] for name in runs}
    warmup: dict[str, float] = {}
    for repetition in range(repetitions + 1):
        for name, (model, optimizer, inputs, amp) in runs.items():
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = nn.functional.cross_entropy(model(inputs).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync(device)
            seconds = time.perf_counter() - start
            if repetition:
                times[name].append(seconds)
            else:
                warmup[name] = seconds
            if progress:
                logger.info("rep %d %-18s step %.3f s", repetition, name, seconds)
    reference = statistics.median(times["fp32 eager"])
    return [{"variant": name, "train_step_seconds": statistics.median(values),
             "ratio_to_fp32_eager": statistics.median(values) / reference, "first_step_seconds": warmup[name]}
            for name, values in times.items()]


def benchmark_attention_levels(size: int = 64, batch: int = 2, repetitions: int = 5,
                               device: torch.device | None = None) -> list[dict[str, Any]]:
    """Forward FLOPs and forward + backward time of each skip level's attention block of the default network.

    The blocks get the (skip, decoder) feature maps a training step gives them on a (batch, 1, size^3) input and
    are timed alone (median of ``repetitions``, after one warm-up), so the cost of each level shows.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from medseg_attn.networks import AttentionSkipUNet

    device = device or torch.device("cpu")
    torch.manual_seed(0)
    network = AttentionSkipUNet(3, 1, 3).to(device).train()
    inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    def keep(level: int) -> Any:
        def hook(module: nn.Module, args: tuple) -> None:
            inputs.setdefault(level, (args[0].detach(), args[1].detach()))
        return hook

    hooks = [block.register_forward_pre_hook(keep(i)) for i, block in enumerate(network.skip_attention)]
    with torch.no_grad():
        network(torch.randn(batch, 1, size, size, size, device=device))
    for hook in hooks:
        hook.remove()
    rows = []
    for level, block in enumerate(network.skip_attention):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            block(*inputs[level])
        skip, gate = (t.clone().requires_grad_() for t in inputs[level])
        times = []
        for repetition in range(repetitions + 1):
            sync(device)
            start = time.perf_counter()
            block(skip, gate).sum().backward()
            sync(device)
            if repetition:
                times.append(time.perf_counter() - start)
        window = block.window_for([-(-s // block.pool) for s in skip.shape[2:]])
        rows.append({"level": level, "map": list(skip.shape[1:]), "token_voxels": block.pool, "window": list(window),
                     "forward_gflops": counter.get_total_flops() / 1e9,
                     "forward_backward_ms": 1000 * statistics.median(times)})
    return rows


def _ratio(results: list[NetworkResult], top: str, bottom: str, field: str) -> float | None:
    by_name = {r.name: r for r in results}
    if top in by_name and bottom in by_name:
        return getattr(by_name[top], field) / getattr(by_name[bottom], field)
    return None


def run_benchmarks(output: Path, quick: bool = False, device: str = "auto") -> dict[str, Any]:
    """Run everything, write ``benchmark.json`` and a PNG into ``output``; returns the report dict."""
    from medseg_attn.runtime.device import resolve_device

    resolved = resolve_device(device)
    torch.set_grad_enabled(True)
    repetitions = 3 if quick else 11
    networks, rate = benchmark_networks(64, 2, repetitions, resolved)
    variants = benchmark_variants(64, 2, repetitions, resolved, compile=not quick)
    levels = benchmark_attention_levels(64, 2, repetitions, resolved)
    if quick:
        shapes, overlap = [(128, 128, 64), (256, 256, 128)], 0.25
    else:
        shapes, overlap = [(256, 256, 128), (512, 512, 300)], 0.5
    inference = benchmark_inference(shapes, overlap, resolved, first_shape_only=("monai_attention_unet",))
    pipeline = benchmark_data_pipeline(output / "data_pipeline", epochs=1 if quick else 3, device=resolved)
    report = make_report(networks, rate, inference, pipeline, overlap, resolved, quick)
    report["variants"] = variants
    report["attention_levels"] = levels
    output.mkdir(parents=True, exist_ok=True)
    (output / "benchmark.json").write_text(json.dumps(report, indent=2))
    _plot(networks, output / "benchmark.png")
    return report


PREDICTION_SHAPES = [(256, 256, 128), (512, 512, 300)]
QUICK_PREDICTION_SHAPES = [(128, 128, 64), (256, 256, 128)]


def run_prediction(output: Path, shapes: list[tuple[int, int, int]], device: str = "auto") -> dict[str, Any]:
    """Whole-volume prediction alone (``benchmark_prediction.json``): our predictor against MONAI ``UNet`` +
    ``sliding_window_inference`` in fp32, the (b) ratios per volume."""
    from medseg_attn.runtime.device import resolve_device

    resolved = resolve_device(device)
    rows = benchmark_inference(shapes, 0.5, resolved, keys=("ours", "monai_unet"))
    by = {(r.name, r.shape): r for r in rows}
    ours, theirs = PIPELINES["ours"][0], PIPELINES["monai_unet"][0]
    ratios = [{"shape": list(shape), "throughput": by[ours, shape].voxels_per_second
               / by[theirs, shape].voxels_per_second,
               "peak_memory": by[ours, shape].peak_memory_mb / by[theirs, shape].peak_memory_mb}
              for shape in map(tuple, shapes)]
    report = {"device": str(resolved), "torch": str(torch.__version__), "threads": torch.get_num_threads(),
              "machine": machine(), "overlap": 0.5, "rows": [asdict(r) for r in rows], "ratios": ratios}
    output.mkdir(parents=True, exist_ok=True)
    (output / "benchmark_prediction.json").write_text(json.dumps(report, indent=2))
    return report


def format_prediction(report: dict[str, Any]) -> str:
    lines = [f"device {report['device']}, {report['threads']} threads, torch {report['torch']}",
             machine_line(report.get("machine", {})), "",
             f"whole-volume prediction (64^3 windows, overlap {report['overlap']}, {WINDOW_BATCH} windows per pass):"]
    for r in report["rows"]:
        lines.append(f"  {r['name']:54s} {r['arithmetic']:8s} {str(tuple(r['shape'])):16s} {r['seconds']:7.1f} s "
                     f"{r['voxels_per_second'] / 1e6:6.2f} Mvox/s  peak {r['peak_memory_mb']:7.0f} MB")
    for ratio in report["ratios"]:
        lines.append(f"  (b) ours / MONAI UNet + sliding window at {'x'.join(map(str, ratio['shape']))}: "
                     f"{ratio['throughput']:.2f}x voxels/s (target >= 1.5), peak memory {ratio['peak_memory']:.2f}x "
                     f"(target <= 1.0)")
    return "\n".join(lines)


def make_report(networks: list[NetworkResult], rate: float, inference: list[InferenceResult],
                pipeline: dict[str, Any], overlap: float, device: torch.device, quick: bool) -> dict[str, Any]:
    """The ratios against their targets, with every measurement behind them (``benchmark.json``)."""
    rows = {key: [r for r in inference if r.name == row[0]] for key, row in PIPELINES.items()}
    ours = rows["ours"]

    def versus(key: str, field: str, mine: str = "ours") -> float | None:
        """Ours / theirs on the largest volume both rows were measured on."""
        pairs = [(a, b) for a in rows[mine] for b in rows[key] if a.shape == b.shape]
        return getattr(pairs[-1][0], field) / getattr(pairs[-1][1], field) if pairs else None

    ratios = {
        "train_step_vs_monai_unet": _ratio(networks, "AttentionSkipUNet (attention on)", "MONAI UNet",
                                           "train_step_seconds"),
        "attention_overhead": _ratio(networks, "AttentionSkipUNet (attention on)",
                                     "AttentionSkipUNet (attention off)", "train_step_seconds"),
        "forward_fraction_of_matmul": next(r.forward_fraction_of_matmul for r in networks
                                           if r.name == "AttentionSkipUNet (attention on)"),
        "pipeline_vs_monai_same_network": versus("monai_same_network", "voxels_per_second"),
        "inference_throughput_vs_monai_unet": versus("monai_unet", "voxels_per_second"),
        "inference_memory_vs_monai_unet": versus("monai_unet", "peak_memory_mb"),
        "inference_throughput_vs_monai_attention_unet": versus("monai_attention_unet", "voxels_per_second"),
        "inference_peak_memory_gib": ours[-1].peak_memory_mb / 1024,
        "data_wait_fraction": pipeline["data_wait_fraction"],
    }
    small, large = ours[0], ours[-1]
    growth = (large.added_memory_mb / max(small.added_memory_mb, 1e-6)) / (
        float(torch.tensor(large.shape).prod()) / float(torch.tensor(small.shape).prod()))
    report = {
        "device": str(device), "torch": str(torch.__version__), "threads": torch.get_num_threads(),
        "machine": machine(), "quick": quick, "matmul_gflops": rate / 1e9, "overlap": overlap,
        "networks": [asdict(r) for r in networks],
        "inference": [{**asdict(r), "limit_seconds": r.gflops * 1e9 / rate} for r in inference],
        "data_pipeline": pipeline,
        "ratios": ratios, "memory_growth_per_voxel_ratio": growth,
        # how much of (b) is arithmetic: MONAI's UNet under our autocast vs in fp32 (None when not measured)
        "arithmetic_gain_monai_unet": versus("monai_unet", "voxels_per_second", "monai_unet_autocast"),
        "ours_vs_monai_unet_same_arithmetic": versus("monai_unet_autocast", "voxels_per_second"),
        "targets": {k: {"what": w, "target": t, "sense": s, "met": _met(ratios[k], t, s)}
                    for k, (w, t, s) in TARGETS.items()},
    }
    return report


def _met(value: float | None, target: float, sense: str) -> bool | None:
    if value is None:
        return None
    return value <= target if sense == "<=" else value >= target


def _plot(results: list[NetworkResult], path: Path) -> None:
    from medseg_attn.plots import plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r.name.replace("AttentionSkipUNet", "ours").replace("MONAI ", "") for r in results]
    left.barh(names, [r.train_step_seconds for r in results], color="tab:blue")
    left.set_xlabel("training step (s), batch 2 x 64^3")
    left.invert_yaxis()
    right.barh(names, [100 * r.forward_fraction_of_matmul for r in results], color="tab:orange")
    right.set_xlabel("forward FLOP/s, % of fp32 matmul rate")
    right.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_report(report: dict[str, Any]) -> str:
    """Human-readable table of results and ratios with their targets."""
    lines = [f"device {report['device']}, {report['threads']} threads, torch {report['torch']}, "
             f"fp32 matmul {report['matmul_gflops']:.0f} GFLOP/s", machine_line(report.get("machine", {})), "",
             f"{'network':36s} {'params':>8s} {'GFLOP':>7s} {'fwd s':>7s} {'step s':>7s} {'fwd %mm':>8s} "
             f"{'peak MB':>8s}"]
    for r in report["networks"]:
        lines.append(f"{r['name']:36s} {r['parameters'] / 1e6:7.2f}M {r['forward_gflops']:7.1f} "
                     f"{r['forward_seconds']:7.3f} {r['train_step_seconds']:7.3f} "
                     f"{100 * r['forward_fraction_of_matmul']:7.1f}% {r['peak_memory_mb']:8.0f}")
    lines += ["", f"whole-volume prediction (64^3 windows, overlap {report['overlap']}, {WINDOW_BATCH} windows per "
                  f"pass; limit = the plan's FLOPs / the fp32 matmul rate):"]
    for r in report["inference"]:
        lines.append(f"  {r['name']:62s} {r.get('arithmetic', 'float32'):8s} {str(tuple(r['shape'])):16s} "
                     f"{r['seconds']:7.1f} s (limit "
                     f"{r['limit_seconds']:5.1f} s, {r['windows']} windows, {r['gflops']:.0f} GFLOP) "
                     f"{r['voxels_per_second'] / 1e6:6.2f} Mvox/s  peak {r['peak_memory_mb']:7.0f} MB "
                     f"(+{r['added_memory_mb']:.0f} MB)")
    if report.get("variants"):
        lines += ["", "training step of AttentionSkipUNet under each optimisation (batch 2 x 64^3):"]
        for v in report["variants"]:
            lines.append(f"  {v['variant']:18s} {v['train_step_seconds']:7.3f} s  x{v['ratio_to_fp32_eager']:.2f} "
                         f"of fp32 eager  (first step {v['first_step_seconds']:.1f} s)")
    if report.get("attention_levels"):
        lines += ["", "attention blocks of AttentionSkipUNet, alone, on the feature maps of a 2 x 64^3 training step:"]
        for r in report["attention_levels"]:
            lines.append(f"  level {r['level']}: map {'x'.join(map(str, r['map']))}, tokens of {r['token_voxels']}^3 "
                         f"voxels, window {'x'.join(map(str, r['window']))} tokens: {r['forward_gflops']:.3f} GFLOP "
                         f"forward, {r['forward_backward_ms']:.1f} ms forward + backward")
    pipe = report["data_pipeline"]
    lines += ["", f"data pipeline (demo config, cache={pipe['cache']}, workers={pipe['num_workers']}): "
                  f"{100 * pipe['data_wait_fraction']:.1f}% of step time waiting for data over {pipe['steps']} steps"]
    lines += ["", "ratios (target):"]
    for key, target in report["targets"].items():
        value = report["ratios"][key]
        mark = {True: "met", False: "NOT met", None: "n/a"}[target["met"]]
        shown = "n/a" if value is None else f"{value:.2f}"
        lines.append(f"  {target['what']:62s} {shown:>6s}  (target {target['sense']} {target['target']}) {mark}")
    lines.append(f"  memory growth per voxel, large / small volume: {report['memory_growth_per_voxel_ratio']:.2f} "
                 f"(1.0 = linear)")
    for key, what in (("arithmetic_gain_monai_unet",
                       "MONAI UNet under our autocast / in fp32 (the arithmetic's share)"),
                      ("ours_vs_monai_unet_same_arithmetic", "ours / MONAI UNet, both under our autocast")):
        if report.get(key) is not None:
            lines.append(f"  {what}: {report[key]:.2f}x")
    return "\n".join(lines)
