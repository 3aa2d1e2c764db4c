"""evaluate.py's report (macro-F1, per-class accuracy with names, confusions, parameters,
throughput, memory) and --predict for the unlabeled test images."""
import csv
import json
import os

import numpy as np
import pytest
import torch

import evaluate
import evaluation
import prepare_data
import train
from constants import MEAN, STD
from data import load_packed, make_splits, normalize
from checkpoint import model_from_checkpoint
from evaluation import class_report
from predict import natural_key
from packing import decode
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


def head_blind_checkpoint(run_dir, tmp_path):
    """best.pt with the classifier's weights zeroed and its bias favouring class 0: every image
    is predicted as class 0, so the confusions and F1 are known in advance."""
    checkpoint = torch.load(run_dir / "best.pt", weights_only=True)
    checkpoint["model"]["head.2.weight"].zero_()  # the final Linear of the notebook's model
    checkpoint["model"]["head.2.bias"].copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.save(checkpoint, tmp_path / "blind.pt")
    return tmp_path / "blind.pt"


def test_report_in_the_summary_and_in_json(run_with_test_images, tmp_path, capsys):
    data_dir, run_dir = run_with_test_images
    out = tmp_path / "report.json"
    assert evaluate.main([str(head_blind_checkpoint(run_dir, tmp_path)), "--json", str(out), "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    report = json.load(open(out))
    data = load_packed(data_dir)
    assert report["parameters"] == sum(p.numel() for p in model_from_checkpoint(torch.load(run_dir / "best.pt")).parameters())
    y = make_splits(data)["test"][1]
    counts = torch.bincount(y, minlength=4).tolist()  # every image predicted as class 0:
    assert report["top1"] == counts[0] / 32
    f1_class0 = 2 * counts[0] / (counts[0] + 32)  # 2 TP / (images of class 0 + predictions of class 0)
    assert report["macro_f1"] == pytest.approx(f1_class0 / 4)  # the other three classes score 0
    assert report["images_per_s"] > 0 and report["peak_memory_mb"] > 0 and report["batch_size"] == 8
    assert [c["name"] for c in report["per_class"]] == data.class_names  # from words.txt
    assert data.class_names[0].startswith("synthetic")
    assert sum(c["images"] for c in report["per_class"]) == report["images"] == 32
    # per-class accuracies weighted by their images give the top-1
    assert sum(c["accuracy"] * c["images"] for c in report["per_class"]) / report["images"] == pytest.approx(report["top1"])
    expected = sorted(((counts[c], data.classes[c]) for c in (1, 2, 3) if counts[c]), key=lambda p: (-p[0], p[1]))
    assert sorted((p["images"], p["true"]) for p in report["most_confused"]) == sorted(expected)
    assert all(p["predicted"] == data.classes[0] and p["share_of_true"] == 1.0 for p in report["most_confused"])
    for label in ("macro-F1", f"{report['parameters']:,} parameters", "images/s", "MB", "best classes:", "worst classes:",
                  "most confused (true -> predicted, images): "):
        assert label in printed


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


def test_predict_rows_hold_the_top_five_classes_in_order(run_with_test_images, tmp_path):
    _, run_dir = run_with_test_images
    out = tmp_path / "p.csv"
    assert evaluate.main([str(run_dir / "best.pt"), "--predict", str(out)]) == 0
    for row in csv.DictReader(open(out)):
        ranked = [float(row["confidence"])] + [float(row[f"confidence_{k}"]) for k in (2, 3, 4)]
        assert ranked == sorted(ranked, reverse=True) and sum(ranked) == pytest.approx(1, abs=1e-3)  # 4 classes
        assert len({row["wnid"], *(row[f"wnid_{k}"] for k in (2, 3, 4))}) == 4 and row["wnid_5"] == ""


def write_own_images(folder):
    """Images as users have them: other sizes, modes and formats, in nested folders, and some
    files that are not images at all."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir()
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 100), dtype=np.uint8), mode="L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (70, 70, 4), dtype=np.uint8), mode="RGBA").save(folder / "sub" / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).convert("P").save(folder / "sub" / "palette.gif")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).convert("CMYK").save(folder / "cmyk.jpg")
    (folder / "notes.txt").write_text("not an image")  # not an image extension: not picked up from a folder
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")  # an image name, unreadable content
    return folder


def test_predict_own_files_of_any_size_and_mode_with_no_prepared_data(run_with_test_images, tmp_path, capsys):
    _, run_dir = run_with_test_images
    folder = write_own_images(tmp_path / "mine")
    single = tmp_path / "single.png"
    from PIL import Image

    Image.new("RGB", (200, 100), (200, 30, 30)).save(single)
    out = tmp_path / "own.csv"
    argv = [str(run_dir / "best.pt"), "--predict", str(out), "--files", str(single), str(folder), str(tmp_path / "missing.jpg"),
            str(folder / "photo.jpg"), "--data-dir", str(tmp_path / "no-data-here")]  # photo.jpg twice: labelled once
    assert evaluate.main(argv) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(open(out)))
    names = [os.path.relpath(r["file"], tmp_path) for r in rows]
    assert names == ["single.png", "mine/cmyk.jpg", "mine/gray.png", "mine/photo.jpg", "mine/sub/alpha.png", "mine/sub/palette.gif"]
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].startswith("skipped 2 unreadable files: ")
    assert "broken.jpg" in skipped[0] and "missing.jpg (No such file or directory)" in skipped[0] and "notes.txt" not in skipped[0]
    assert "predictions for 6 images, top-4 each" in captured.out
    # The probabilities are the model's on the image converted to RGB, centre-cropped and resized to 64x64.
    model = model_from_checkpoint(torch.load(run_dir / "best.pt")).eval()
    expected_pixels = np.array(Image.open(single).crop((50, 0, 150, 100)).resize((64, 64), Image.BILINEAR))
    probabilities = model(normalize(torch.from_numpy(expected_pixels[None]))).softmax(1)[0]
    assert float(rows[0]["confidence"]) == pytest.approx(probabilities.max().item(), abs=1e-4)
    data_classes = torch.load(run_dir / "best.pt")["classes"]
    assert rows[0]["wnid"] == data_classes[int(probabilities.argmax())] and rows[0]["class_name"].startswith("synthetic")


def test_predict_own_files_needs_predict_and_a_readable_image(run_with_test_images, tmp_path, capsys):
    _, run_dir = run_with_test_images
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(run_dir / "best.pt"), "--files", "a.jpg"])
    assert exit_info.value.code == 2 and "--files needs --predict" in capsys.readouterr().err
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert evaluate.main([str(run_dir / "best.pt"), "--predict", str(tmp_path / "o.csv"), "--files", str(tmp_path / "bad.jpg")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: none of the images is readable: nothing to label"
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(run_dir / "best.pt"), "--predict", str(tmp_path / "o.csv"), "--files", "a.jpg", "--json", "r.json"])
    assert exit_info.value.code == 2 and "--files does not run" in capsys.readouterr().err


def test_predict_when_no_test_image_is_readable_is_a_one_line_error(run_with_test_images, tmp_path, capsys):
    import shutil

    data_dir, run_dir = run_with_test_images
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    folder = copy / "tiny-imagenet-200" / "test" / "images"
    for image in folder.iterdir():
        image.write_bytes(b"damaged")
    assert evaluate.main([str(run_dir / "best.pt"), "--data-dir", str(copy), "--predict", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2].startswith("skipped 12 unreadable files: ") and err[-1] == "error: none of the images is readable: nothing to label"


def test_reasons_for_unreadable_files_do_not_repeat_or_garble_the_path():
    from predict import why_unreadable
    from errors import DataError

    assert why_unreadable(FileNotFoundError(2, "No such file or directory", ""), "") == "No such file or directory"
    assert why_unreadable(DataError("cannot decode a.jpg: image file is truncated"), "a.jpg") == "image file is truncated"
    assert why_unreadable(DataError("a.jpg is 80x60, expected 64x64"), "a.jpg") == "it is 80x60, expected 64x64"
    assert why_unreadable(OSError("cannot identify image file 'x'"), "x") == "not an image PIL can read"
    assert why_unreadable(ValueError("odd"), "") == "odd"


def test_a_padded_short_batch_keeps_the_layout_of_full_batches():
    """Under --compile the last eval batch is padded to the batch size: same shape, the same
    channels-last strides as normalize's full batches, and like them a view of a buffer of the
    same shape, or torch.compile builds another graph (it guards on x._base on torch 2.11 + CUDA)."""
    images = torch.randint(0, 256, (6, 64, 64, 3), dtype=torch.uint8)
    full, short = normalize(images[:4]), normalize(images[4:])
    padded = evaluation.pad_batch(short, 4)
    assert padded.shape == full.shape and padded.stride() == full.stride()
    assert padded._base.shape == full._base.shape and padded._base.stride() == full._base.stride()
    assert torch.equal(padded[:2], short) and not padded[2:].any()


def test_flip_tta_is_the_mean_of_the_logits_of_each_image_and_its_mirror():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = (model(x) + model(torch.flip(x, dims=[3]))) / 2
        assert torch.allclose(evaluation.with_tta(model, "flip")(x), expected)
    assert evaluation.with_tta(model, "none") is model


def test_a_run_with_flip_tta_records_it_and_evaluate_reproduces_its_test_figures(prepared_once, tmp_path, capsys):
    """--tta flip applies in validation and test, is recorded in config.json, and evaluate.py on
    the checkpoint uses it unless told otherwise (--tta none: the plain figures)."""
    run = tmp_path / "r"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run), *FAST, "--epochs", "1", "--tta", "flip"]) == 0
    assert "(final weights, flip TTA, epoch 1)" in capsys.readouterr().out
    assert json.load(open(run / "config.json"))["tta"] == "flip"
    recorded = json.load(open(run / "test_metrics.json"))["final"]
    for flags, tta in (([], "flip"), (["--tta", "none"], "none")):
        out = tmp_path / f"{tta}.json"
        assert evaluate.main([str(run / "last.pt"), "--batch-size", "16", "--device", "cpu", "--json", str(out), *flags]) == 0
        report = json.load(open(out))
        assert report["tta"] == tta
        if tta == "flip":
            assert report["top1"] == recorded["top1"] and report["loss"] == pytest.approx(recorded["loss"], abs=1e-6)
        else:
            assert report["loss"] != pytest.approx(recorded["loss"], abs=1e-6)  # the mirror images did count


def test_a_run_with_eval_amp_validates_and_tests_in_bf16_and_evaluate_reproduces_it(prepared_once, tmp_path, capsys):
    """--eval-amp: validation and test under the training's bf16 autocast, recorded, so evaluate.py
    gives the run's test figure; --no-amp gives the fp32 one (by default a run evaluates in fp32)."""
    run = tmp_path / "r"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run), *FAST, "--epochs", "1", "--amp", "--eval-amp"]) == 0
    assert "(final weights, bfloat16, epoch 1)" in capsys.readouterr().out
    assert json.load(open(run / "config.json"))["eval_amp"] is True
    recorded = json.load(open(run / "test_metrics.json"))["final"]
    reports = {}
    for name, flags in (("recorded", []), ("fp32", ["--no-amp"])):
        assert evaluate.main([str(run / "last.pt"), "--batch-size", "16", "--device", "cpu", "--json", str(tmp_path / name),
                              *flags]) == 0
        reports[name] = json.load(open(tmp_path / name))
    assert reports["recorded"]["precision"] == "bfloat16" and reports["fp32"]["precision"] == "fp32"
    assert reports["recorded"]["top1"] == recorded["top1"] and reports["recorded"]["loss"] == pytest.approx(recorded["loss"], abs=1e-6)
    assert reports["fp32"]["loss"] != pytest.approx(recorded["loss"], abs=1e-6)
