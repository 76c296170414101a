"""The benchmark's parts on tiny inputs: they measure real runs and the report shows every ratio with its target.

(No timing is asserted here: speed targets live in ``benchmarks/run.py``, not in unit tests.)
"""

from __future__ import annotations

import torch

from benchmarks.pipeline import PIPELINES, window_count
from benchmarks.suite import (
    TARGETS,
    benchmark_attention_levels,
    benchmark_inference,
    benchmark_networks,
    format_prediction,
    format_report,
    make_report,
    run_prediction,
)
from medseg_attn.networks import AttentionSkipUNet

NAMES = ["AttentionSkipUNet (attention on)", "AttentionSkipUNet (attention off)", "MONAI UNet"]


def test_networks_and_inference_are_measured_and_reported():
    networks, rate = benchmark_networks(size=48, batch=1, repetitions=1, names=NAMES, progress=False)
    assert rate > 1e8  # FLOP/s of a real matrix multiply
    assert [r.name for r in networks] == NAMES
    ours = networks[0]
    assert ours.parameters == sum(p.numel() for p in AttentionSkipUNet(3, 1, 3, channels=(16, 32, 64, 128, 256))
                                  .parameters())
    assert networks[0].forward_gflops > networks[1].forward_gflops > 0  # attention adds FLOPs
    for result in networks:
        assert result.forward_seconds > 0 and result.train_step_seconds > 0
        assert 0 < result.forward_fraction_of_matmul < 2

    # each prediction in a fresh process; the last row only on the first volume
    inference = benchmark_inference([(48, 40, 32), (40, 40, 24)], overlap=0.25,
                                    first_shape_only=("monai_attention_unet",))
    names = [row[0] for row in PIPELINES.values()]
    assert [r.name for r in inference] == names + names[:-1]
    assert {r.arithmetic for r in inference if "MONAI UNet" in r.name and "our arithmetic" not in r.name} == {
        "float32"}  # what a MONAI script runs
    assert all(r.voxels_per_second > 0 and 0 <= r.added_memory_mb < r.peak_memory_mb for r in inference)
    # the same windows for every row; the plan's FLOPs = windows x one window's FLOPs of that row's network
    assert {r.windows for r in inference} == {1}  # 48 x 40 x 32 fits in one 64^3 window
    assert inference[0].gflops == inference[1].gflops > 0  # rows (a): the same network

    pipeline = {"data_wait_fraction": 0.04, "steps": 10, "cache": True, "num_workers": 0}
    report = make_report(networks, rate, inference, pipeline, 0.25, torch.device("cpu"), quick=True)
    assert set(report["ratios"]) == set(TARGETS)
    # each ratio pairs two rows of the same volume: (c) the first, where MONAI's AttentionUnet ran
    assert report["ratios"]["inference_throughput_vs_monai_attention_unet"] == (
        inference[0].voxels_per_second / inference[4].voxels_per_second)
    assert report["ratios"]["inference_throughput_vs_monai_unet"] == (inference[5].voxels_per_second
                                                                      / inference[7].voxels_per_second)
    assert report["arithmetic_gain_monai_unet"] == inference[8].voxels_per_second / inference[7].voxels_per_second
    expected = ours.train_step_seconds / networks[1].train_step_seconds
    assert abs(report["ratios"]["attention_overhead"] - expected) < 1e-12
    assert report["targets"]["data_wait_fraction"]["met"] is True
    text = format_report(report)
    for what, target, sense in TARGETS.values():
        assert what in text and f"(target {sense} {target})" in text
    for row in report["inference"]:
        assert row["limit_seconds"] == row["gflops"] * 1e9 / rate


def test_window_count_matches_monai_sliding_window():
    from monai.data.utils import dense_patch_slices, get_valid_patch_size

    for shape, overlap in (((256, 256, 128), 0.5), ((130, 64, 70), 0.25), ((512, 512, 300), 0.5)):
        roi = get_valid_patch_size(shape, (64, 64, 64))
        interval = [int(r * (1 - overlap)) for r in roi]
        assert window_count(shape, overlap) == len(dense_patch_slices(shape, roi, interval))


def test_attention_levels_are_measured_per_level():
    rows = benchmark_attention_levels(size=64, batch=1, repetitions=1)
    # first_stride 2: skip maps 32^3 (16 ch, 4^3-voxel tokens), 16^3 (32 ch, 2^3), 8^3 (64), 4^3 (128, global)
    assert [r["map"] for r in rows] == [[16, 32, 32, 32], [32, 16, 16, 16], [64, 8, 8, 8], [128, 4, 4, 4]]
    assert [r["token_voxels"] for r in rows] == [4, 2, 1, 1]
    assert [r["window"] for r in rows] == [[4, 4, 4]] * 4
    assert all(r["forward_gflops"] > 0 and r["forward_backward_ms"] > 0 for r in rows)
    report = {"attention_levels": rows}
    text = "\n".join(line for line in format_report_levels(report))
    assert "level 0: map 16x32x32x32, tokens of 4^3 voxels, window 4x4x4 tokens" in text


def format_report_levels(report):
    """The attention-level lines of format_report (the rest of the report needs a full run)."""
    from benchmarks import suite as benchmark

    full = {"device": "cpu", "threads": 1, "torch": "x", "matmul_gflops": 1.0, "networks": [], "inference": [],
            "overlap": 0.5, "data_pipeline": {"cache": True, "num_workers": 0, "data_wait_fraction": 0.0, "steps": 1},
            "targets": {}, "ratios": {}, "memory_growth_per_voxel_ratio": 1.0, **report}
    return [line for line in benchmark.format_report(full).splitlines() if "level" in line]


def test_the_prediction_comparison_names_the_isa_beside_its_ratios(tmp_path):
    import json

    from medseg_attn.runtime.device import cpu_isa

    report = run_prediction(tmp_path, [(48, 40, 32)], device="cpu")
    assert [row["name"] for row in report["rows"]] == [PIPELINES["ours"][0], PIPELINES["monai_unet"][0]]
    ours, monai = report["rows"]
    assert report["ratios"] == [{"shape": [48, 40, 32], "throughput": ours["voxels_per_second"]
                                 / monai["voxels_per_second"],
                                 "peak_memory": ours["peak_memory_mb"] / monai["peak_memory_mb"]}]
    assert monai["arithmetic"] == "float32"
    text = format_prediction(report)
    isa = cpu_isa()
    assert isa["aten"] != "unknown" and f"aten={isa['aten']}" in text and f"onednn={isa['onednn']}" in text
    assert "(b) ours / MONAI UNet + sliding window at 48x40x32" in text
    assert json.loads((tmp_path / "benchmark_prediction.json").read_text())["machine"]["isa"] == isa
