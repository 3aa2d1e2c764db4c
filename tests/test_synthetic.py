"""synthetic.py: the offline stand-in for Tiny ImageNet."""
import zipfile

import torch

import prepare_data
import train
from layout import read_meta
from synthetic import write_synthetic_zip


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = write_synthetic_zip(str(tmp_path / "a.zip"), classes=3, train_per_class=5, val_per_class=2, seed=7)
    b = write_synthetic_zip(str(tmp_path / "b.zip"), classes=3, train_per_class=5, val_per_class=2, seed=7)
    c = write_synthetic_zip(str(tmp_path / "c.zip"), classes=3, train_per_class=5, val_per_class=2, seed=8)
    assert open(a, "rb").read() == open(b, "rb").read() != open(c, "rb").read()


def test_zip_has_the_official_layout(tmp_path):
    path = write_synthetic_zip(str(tmp_path / "s.zip"), classes=3, train_per_class=5, val_per_class=2, test_images=4)
    names = set(zipfile.ZipFile(path).namelist())
    root = "tiny-imagenet-200/"
    assert {root + "wnids.txt", root + "words.txt", root + "val/val_annotations.txt"} <= names
    wnid = zipfile.ZipFile(path).read(root + "wnids.txt").decode().split()[0]
    assert root + f"train/{wnid}/{wnid}_boxes.txt" in names
    assert root + f"train/{wnid}/images/{wnid}_0.JPEG" in names
    assert sum(n.startswith(root + "val/images/") for n in names) == 6
    assert sum(n.startswith(root + "test/images/") for n in names) == 4


def test_synthetic_data_is_recorded_everywhere(tmp_path, capsys):
    data_dir = str(tmp_path / "d")
    argv = ["--synthetic", "--data-dir", data_dir, "--classes", "3", "--train-per-class", "8", "--val-per-class", "5"]
    assert prepare_data.main(argv) == 0
    assert read_meta(data_dir)["synthetic"] is True
    assert prepare_data.main(argv) == 0 and "nothing to do" in capsys.readouterr().out
    assert prepare_data.main([*argv[:-1], "6"]) == 2  # other parameters: another source, kept without --force
    assert "8 train and 5 val images per class" in capsys.readouterr().err
    assert prepare_data.main([*argv[:-1], "6", "--force"]) == 0
    assert read_meta(data_dir)["counts"]["val"] == 18
    run_dir = tmp_path / "r"
    assert train.main(["--data-dir", data_dir, "--epochs", "1", "--batch-size", "8", "--run-dir", str(run_dir), "--device", "cpu"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().err
    assert torch.load(run_dir / "last.pt", weights_only=True)["synthetic"] is True
