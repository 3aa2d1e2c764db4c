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
