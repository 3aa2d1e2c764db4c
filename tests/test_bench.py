"""benchmarks/bench.py reports every measurement, its ratios consistent with its figures (a quick
run without compilation); benchmarks/models.py a row per model."""
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from runtime import default_amp


def test_bench_prints_the_side_by_side_table(prepared_once, tiny_zip, tmp_path):
    """Every row, and in each the two figures and their ratio as the table and the JSON give them:
    throughputs (img/s) divide ours by the notebook's, times (s) the notebook's by ours; no
    absolute speed is asserted."""
    out = tmp_path / "bench.json"
    command = [sys.executable, "benchmarks/bench.py", "--data-dir", prepared_once, "--zip", tiny_zip,
               "--steps", "2", "--large-batch", "32", "--no-compile", "--device", "cpu", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| measurement | notebook | ours | unit | ours vs notebook | note |"
    rows = [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in table[2:]]
    default = " (train.py default here)"  # the mode train.py picks without flags on this CPU
    modes = [f"eager fp32{'' if default_amp(torch.device('cpu')) else default}",
             f"eager bf16{default if default_amp(torch.device('cpu')) else ''}"]
    policies = ["crop + flip only (the notebook's)", "randaugment", "trivialaugment", "autoaugment",
                "vit-small-data set (AutoAugment, erasing 0.25, MixUp/CutMix)"]
    assert [row[0] for row in rows] == ["loading, batch 64",
                                        *[f"train step, batch {size}, {mode}" for size in (64, 32) for mode in modes],
                                        *[f"end to end, batch 64, {mode}" for mode in modes],
                                        *[f"augmented loading, batch 64, {policy}" for policy in policies],
                                        "prepare (notebook: extract + restructure only)"]
    results = json.load(open(out))
    assert results["flops_per_image_train"] > 0 and results["matmul_peak"]["fp32"] > 0
    for what, notebook, ours, unit, ratio, note in rows:
        figures = results[what]
        assert unit == figures["unit"] == ("s" if what.startswith("prepare") else "img/s"), what
        assert all(math.isfinite(figures[key]) and figures[key] > 0 for key in ("notebook", "ours", "speed-up")), what
        faster = figures["ours"] / figures["notebook"] if unit == "img/s" else figures["notebook"] / figures["ours"]
        assert figures["speed-up"] == pytest.approx(faster, rel=1e-9), what
        assert (notebook, ours, ratio) == (f"{figures['notebook']:,.1f}", f"{figures['ours']:,.1f}", f"{faster:.1f}x"), what
        if what.startswith("train step"):  # the share of the machine's peak at our rate
            peak = results["matmul_peak"]["fp32"]
            assert note == f"{results['flops_per_image_train'] * figures['ours'] / peak:.0%} of fp32 peak", what


def test_model_costs_table_has_a_row_per_model(tmp_path):
    out = tmp_path / "models.json"
    command = [sys.executable, "benchmarks/models.py", "--models", "cvt-simplified", "cnn", "--batch-size", "4",
               "--steps", "1", "--no-compile", "--device", "cpu", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| model | parameters | GFLOPs | train img/s eager | inference img/s eager |"
    assert [line.split(" | ")[0].strip("| ") for line in table[2:]] == ["cvt-simplified", "cnn"]
    rows = json.load(open(out))["rows"]
    assert rows[1]["parameters"] == 13_283_848 and rows[1]["gflops"] == 1_692_286_976 / 1e9
    assert all(row["train_eager"] > 0 and row["inference_eager"] > 0 for row in rows)


def test_hardware_probe_reports_every_operation_and_candidate_with_consistent_figures(tmp_path):
    """benchmarks/hardware.py in its quick mode: every conv shape in the four modes, the matmuls,
    each candidate at each side; GFLOP per image as counted by hand for a conv net; the share of
    the peak consistent with the rate (no absolute speed is asserted)."""
    from benchmarks import hardware

    out = tmp_path / "hw.json"
    assert hardware.main(["--quick", "--sides", "32", "64", "--json", str(out)]) == 0
    results = json.load(open(out))
    assert [(row["channels"], row["side"]) for row in results["conv"]] == list(hardware.CONV_SHAPES)
    rates = [rate for row in results["conv"] + results["matmul"] for rate in row["gflops"]]
    assert all(math.isfinite(rate) and rate > 0 for rate in rates) and results["peak_gflops"] == max(rates)
    rows = {(row["name"], row["side"]): row for row in results["candidates"]}
    assert set(rows) == {(name, side) for name in hardware.CANDIDATES for side in (32, 64)}
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["share"] == pytest.approx(3 * row["gflop"] * row["images_per_s"] / results["peak_gflops"])

    def by_hand(widths, side):  # 2 FLOPs per multiply-add: each block's two 3x3 convs, then the head
        flops, channels = 0, 3
        for width in widths:
            flops += 2 * 9 * side * side * (channels * width + width * width)
            channels, side = width, side // 2
        return (flops + 2 * channels * 200) / 1e9

    for name, widths in hardware.CANDIDATES.items():
        assert rows[name, 32]["gflop"] == pytest.approx(by_hand(widths, 32), rel=1e-6)
        assert rows[name, 64]["gflop"] == pytest.approx(by_hand(widths, 64), rel=1e-6)
