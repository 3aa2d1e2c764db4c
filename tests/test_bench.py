"""benchmarks/bench.py runs and reports every measurement (a quick run without compilation)."""
import json
import subprocess
import sys

from conftest import ROOT


def test_bench_prints_the_side_by_side_table(prepared_once, tiny_zip, tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "benchmarks/bench.py", "--data-dir", prepared_once, "--zip", tiny_zip,
               "--steps", "2", "--large-batch", "32", "--no-compile", "--device", "cpu", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| measurement | notebook | ours")
    names = [line.split(" | ")[0].strip("| ") for line in table[2:]]
    assert names[0] == "loading, batch 64"
    assert sum(name.startswith("train step") for name in names) == 4
    assert sum(name.startswith("end to end") for name in names) == 2
    augmented = [name for name in names if name.startswith("augmented loading")]
    assert [name.split(", ")[2] for name in augmented] == ["crop + flip only (the notebook's)", "randaugment", "trivialaugment",
                                                           "autoaugment", "vit-small-data set (AutoAugment"]
    assert names[-1].startswith("prepare")
    results = json.load(open(out))
    assert results["flops_per_image_train"] > 0 and results["matmul_peak"]["fp32"] > 0
    assert all(value["ours"] > 0 and value["notebook"] > 0 for key, value in results.items() if isinstance(value, dict) and "ours" in value)


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
