"""evaluate.py's report (macro-F1, per-class accuracy with names, confusions, parameters,
throughput, memory) and --predict for the unlabeled test images."""
import csv
import json
import os

import pytest
import torch

import evaluate
import prepare_data
import train
from data import MEAN, STD, load_packed
from evaluate import class_report, model_from_checkpoint, natural_key
from prepare_data import decode
from synthetic import write_synthetic_zip

FAST = ["--batch-size", "16", "--eval-batch-size", "16", "--log-every", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_with_test_images(tmp_path_factory):
    """A trained run on data whose test/images has 12 files (test_10 sorts before test_2 as text)."""
    root = tmp_path_factory.mktemp("predict")
    zip_path = write_synthetic_zip(str(root / "t.zip"), classes=4, train_per_class=16, val_per_class=10, test_images=12, seed=3)
    data_dir = str(root / "data")
    assert prepare_data.main(["--zip", zip_path, "--data-dir", data_dir]) == 0
    run_dir = root / "run"
    assert train.main(["--data-dir", data_dir, "--run-dir", str(run_dir), *FAST, "--epochs", "2"]) == 0
    return data_dir, run_dir


def test_class_report_on_a_known_confusion_matrix():
    # rows: true class, columns: predicted. Class 2 has no images but is predicted once.
    confusion = torch.tensor([[3, 1, 0], [2, 2, 1], [0, 0, 0]])
    report = class_report(confusion, ["a", "b", "c"], ["apple", "bee", "cat"])
    f1 = [2 * 3 / (4 + 5), 2 * 2 / (5 + 3), 0.0]  # 2 TP / (images + predictions)
    assert report["macro_f1"] == pytest.approx(sum(f1) / 3)  # c counts: it was predicted (as scikit-learn does)
    per_class = {c["wnid"]: c for c in report["per_class"]}
    assert per_class["a"] == {"wnid": "a", "name": "apple", "images": 4, "accuracy": 0.75, "f1": pytest.approx(f1[0])}
    assert per_class["b"]["accuracy"] == 0.4 and per_class["c"]["accuracy"] is None
    pairs = [(p["true"], p["predicted"], p["images"]) for p in report["most_confused"]]
    assert pairs == [("b", "a", 2), ("a", "b", 1), ("b", "c", 1)] or pairs == [("b", "a", 2), ("b", "c", 1), ("a", "b", 1)]
    assert report["most_confused"][0]["share_of_true"] == pytest.approx(0.4)


def test_report_in_the_summary_and_in_json(run_with_test_images, tmp_path, capsys):
    data_dir, run_dir = run_with_test_images
    out = tmp_path / "report.json"
    assert evaluate.main([str(run_dir / "best.pt"), "--json", str(out), "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    report = json.load(open(out))
    data = load_packed(data_dir)
    assert report["parameters"] == sum(p.numel() for p in model_from_checkpoint(torch.load(run_dir / "best.pt")).parameters())
    assert report["images_per_s"] > 0 and report["peak_memory_mb"] > 0 and report["batch_size"] == 8
    assert [c["name"] for c in report["per_class"]] == data.class_names  # from words.txt
    assert data.class_names[0].startswith("synthetic")
    assert sum(c["images"] for c in report["per_class"]) == report["images"] == 32
    # per-class accuracies weighted by their images give the top-1
    assert sum(c["accuracy"] * c["images"] for c in report["per_class"]) / report["images"] == pytest.approx(report["top1"])
    assert 0 <= report["macro_f1"] <= 1
    for label in ("macro-F1", f"{report['parameters']:,} parameters", "images/s", "MB", "best classes:", "worst classes:"):
        assert label in printed
    if report["most_confused"]:
        assert "most confused" in printed


def test_results_do_not_depend_on_batch_size_and_amp_is_reported(run_with_test_images, tmp_path):
    _, run_dir = run_with_test_images
    reports = []
    for flags in (["--batch-size", "5"], ["--batch-size", "256"], ["--batch-size", "7", "--amp"]):
        out = tmp_path / "r.json"
        assert evaluate.main([str(run_dir / "best.pt"), "--device", "cpu", "--json", str(out), *flags]) == 0
        reports.append(json.load(open(out)))
    assert reports[0]["top1"] == reports[1]["top1"] and reports[0]["loss"] == pytest.approx(reports[1]["loss"], abs=1e-6)
    assert [r["precision"] for r in reports] == ["fp32", "fp32", "bfloat16"]
    assert abs(reports[2]["loss"] - reports[0]["loss"]) < 0.05


def test_predict_labels_the_test_images_in_file_name_order(run_with_test_images, tmp_path, capsys):
    data_dir, run_dir = run_with_test_images
    out = tmp_path / "predictions.csv"
    assert evaluate.main([str(run_dir / "best.pt"), "--predict", str(out), "--batch-size", "5"]) == 0
    assert "predictions for 12 test images" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out)))
    assert [r["file"] for r in rows] == [f"test_{k}.JPEG" for k in range(12)]
    data = load_packed(data_dir)
    model = model_from_checkpoint(torch.load(run_dir / "best.pt")).eval()
    folder = os.path.join(data_dir, "tiny-imagenet-200", "test", "images")
    for row in rows:
        x = torch.tensor(decode(os.path.join(folder, row["file"]))).permute(2, 0, 1).float() / 255
        x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]  # ToTensor + Normalize
        probabilities = model(x[None]).softmax(1)[0]
        label = int(probabilities.argmax())
        assert row["wnid"] == data.classes[label] and row["class_name"] == data.class_names[label]
        assert float(row["confidence"]) == pytest.approx(probabilities[label].item(), abs=1e-4)


def test_predict_without_the_test_folder_is_a_one_line_error(run_with_test_images, tmp_path, capsys):
    data_dir, run_dir = run_with_test_images
    copy = tmp_path / "data"
    os.makedirs(copy)
    os.symlink(os.path.abspath(os.path.join(data_dir, "packed")), copy / "packed")
    code = evaluate.main([str(run_dir / "best.pt"), "--data-dir", str(copy), "--predict", str(tmp_path / "p.csv")])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "test/images" in errors[0] and "prepare_data.py" in errors[0]
    assert not (tmp_path / "p.csv").exists()


def test_natural_file_order():
    names = ["test_10.JPEG", "test_2.JPEG", "test_1.JPEG", "test_100.JPEG"]
    assert sorted(names, key=natural_key) == ["test_1.JPEG", "test_2.JPEG", "test_10.JPEG", "test_100.JPEG"]
