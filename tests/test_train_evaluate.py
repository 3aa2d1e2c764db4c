"""train.py and evaluate.py through their real entry points, on tiny prepared data (CPU)."""
import csv
import json
import os
import pickle

import pytest
import torch

import evaluate
import train
from conftest import assert_same_training_state
from evaluate import load_checkpoint
from runtime import default_amp

FAST = ["--batch-size", "16", "--eval-batch-size", "16", "--log-every", "2"]


def train_run(data_dir, run_dir, *extra):
    return train.main(["--data-dir", data_dir, "--run-dir", str(run_dir), "--device", "cpu", *FAST, *extra])


@pytest.fixture(scope="module")
def finished_run(prepared_once, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "r"
    assert train_run(prepared_once, run_dir, "--epochs", "2") == 0
    return run_dir


def test_a_run_writes_config_metrics_checkpoints_and_test_results(finished_run):
    assert sorted(os.listdir(finished_run)) == ["best.pt", "config.json", "curves.png", "last.pt", "metrics.csv", "test_metrics.json"]
    rows = list(csv.DictReader(open(finished_run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) >= {"train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "lr", "seconds", "images_per_s"}
    config = json.load(open(finished_run / "config.json"))
    assert config["optimizer"] == "adam" and config["lr"] == 1e-3 and config["batch_size"] == 16
    assert config["amp_dtype"] == ("bfloat16" if default_amp(torch.device("cpu")) else None)
    test = json.load(open(finished_run / "test_metrics.json"))
    assert test["final"]["images"] == 32 and 0 <= test["final"]["top1"] <= test["final"]["top5"] <= 1


def test_checkpoints_hold_only_plain_values_and_the_plain_model(finished_run):
    checkpoint = torch.load(finished_run / "last.pt", weights_only=True)
    assert checkpoint["progress"]["epoch"] == 2 and len(checkpoint["classes"]) == 4
    assert checkpoint["model_config"]["num_classes"] == 4
    assert all(not key.startswith(("_orig_mod.", "module.")) for key in checkpoint["model"])
    assert {"optimizer", "scaler", "rng", "config"} <= checkpoint.keys()


def test_evaluate_reproduces_the_test_accuracy_train_reported(finished_run, tmp_path, capsys):
    reported = json.load(open(finished_run / "test_metrics.json"))["final"]
    out = tmp_path / "m.json"
    assert evaluate.main([str(finished_run / "last.pt"), "--batch-size", "16", "--json", str(out)]) == 0
    measured = json.load(open(out))
    assert measured["top1"] == reported["top1"] and measured["top5"] == reported["top5"]
    assert abs(measured["loss"] - reported["loss"]) < 1e-5
    assert "test: loss" in capsys.readouterr().out


def test_evaluate_other_splits(finished_run, tmp_path):
    for split, images in (("val", 8), ("train", 96)):
        out = tmp_path / f"{split}.json"
        assert evaluate.main([str(finished_run / "best.pt"), "--split", split, "--json", str(out)]) == 0
        assert json.load(open(out))["images"] == images


def test_resume_gives_the_same_weights_and_metrics_as_a_straight_run(prepared_once, finished_run, tmp_path):
    """2 epochs straight == 1 epoch, stop, resume for the second: bit-identical on CPU."""
    run_dir = tmp_path / "r"
    assert train_run(prepared_once, run_dir, "--epochs", "1") == 0
    assert train.main(["--data-dir", prepared_once, "--device", "cpu", *FAST, "--epochs", "2", "--resume", str(run_dir / "last.pt")]) == 0
    straight, resumed = (torch.load(d / "last.pt", weights_only=True) for d in (finished_run, run_dir))
    assert_same_training_state(straight, resumed)


def test_resume_with_a_different_model_is_refused(prepared_once, finished_run, capsys):
    code = train.main(["--data-dir", prepared_once, "--device", "cpu", "--epochs", "3", "--embed-dim", "32", "--resume", str(finished_run / "last.pt")])
    assert code == 2
    assert "--embed-dim 32 (the run has 64)" in capsys.readouterr().err


@pytest.mark.parametrize("flag,dtype", [("--amp", "bfloat16"), ("--no-amp", None)])
def test_amp_flags_on_cpu(prepared_once, tmp_path, flag, dtype):
    assert train_run(prepared_once, tmp_path / "r", "--epochs", "1", flag) == 0
    config = json.load(open(tmp_path / "r" / "config.json"))
    assert config["amp_dtype"] == dtype
    assert torch.isfinite(torch.tensor(json.load(open(tmp_path / "r" / "test_metrics.json"))["final"]["loss"]))


@pytest.mark.slow
def test_compiled_training_on_cpu_saves_the_plain_model(prepared_once, tmp_path):
    assert train_run(prepared_once, tmp_path / "r", "--epochs", "1", "--compile") == 0
    checkpoint = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert not any(key.startswith("_orig_mod.") for key in checkpoint["model"])
    assert evaluate.main([str(tmp_path / "r" / "last.pt")]) == 0


def test_evaluate_accepts_lightning_and_compiled_checkpoints(finished_run, tmp_path):
    plain = torch.load(finished_run / "last.pt", weights_only=True)["model"]
    lightning = {"state_dict": {f"model.{k}": v for k, v in plain.items()}, "epoch": 9, "pytorch-lightning_version": "2.5.1"}
    compiled = {"model": {f"_orig_mod.{k}": v for k, v in plain.items()}, "config": {"data_dir": None}}
    reference = json.load(open(finished_run / "test_metrics.json"))["final"]["top1"]
    data_dir = json.load(open(finished_run / "config.json"))["data_dir"]
    for name, payload in (("lightning.ckpt", lightning), ("compiled.pt", compiled)):
        torch.save(payload, tmp_path / name)
        out = tmp_path / f"{name}.json"
        assert evaluate.main([str(tmp_path / name), "--data-dir", data_dir, "--batch-size", "16", "--json", str(out)]) == 0
        assert json.load(open(out))["top1"] == reference


# ---------------------------------------------------------------- bad input: one line, exit 2


def last_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def test_unprepared_data_names_the_command(tmp_path, capsys):
    assert train.main(["--data-dir", str(tmp_path / "nothing"), "--device", "cpu"]) == 2
    assert "python prepare_data.py --data-dir" in last_error_line(capsys)


@pytest.mark.parametrize("flags", [["--epochs", "0"], ["--batch-size", "-1"], ["--lr", "0"], ["--lr", "-1e-3"], ["--optimizer", "sgd"]])
def test_invalid_flag_values_exit_2(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(flags)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_unknown_device(prepared_once, capsys):
    assert train.main(["--data-dir", prepared_once, "--device", "tpu"]) == 2
    assert "device" in last_error_line(capsys)


def test_run_dir_holding_another_run_is_refused(prepared_once, finished_run, capsys):
    assert train_run(prepared_once, finished_run, "--epochs", "1") == 2
    assert "already holds a run" in last_error_line(capsys)


def test_batch_larger_than_the_training_set(prepared_once, tmp_path, capsys):
    assert train.main(["--data-dir", prepared_once, "--device", "cpu", "--batch-size", "1000", "--run-dir", str(tmp_path / "r")]) == 2
    assert "larger than the training set" in last_error_line(capsys)


def write_truncated(source, path):
    path.write_bytes(open(source, "rb").read()[:3000])
    return path


@pytest.mark.parametrize("problem", ["missing", "truncated", "not a checkpoint"])
def test_bad_checkpoints_are_one_line_errors(problem, finished_run, prepared_once, tmp_path, capsys):
    path = tmp_path / "x.pt"
    if problem == "truncated":
        write_truncated(finished_run / "last.pt", path)
    elif problem == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    assert evaluate.main([str(path), "--data-dir", prepared_once]) == 2
    assert last_error_line(capsys).startswith("error: ")
    assert train.main(["--data-dir", prepared_once, "--device", "cpu", "--resume", str(path), "--run-dir", str(tmp_path / "r")]) == 2
    assert last_error_line(capsys).startswith("error: ")


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/cvt-exploit-ran",))


def test_a_code_executing_pickle_is_refused_without_running(tmp_path, capsys):
    marker = "/tmp/cvt-exploit-ran"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Exploit()}, f)
    torch.save({"model": {}, "payload": Exploit()}, tmp_path / "evil2.pt")
    for evil in (path, tmp_path / "evil2.pt"):
        with pytest.raises(Exception):
            load_checkpoint(str(evil))
        assert evaluate.main([str(evil)]) == 2
        assert "cannot load" in last_error_line(capsys)
    assert not os.path.exists(marker)


def test_checkpoint_for_other_classes_is_refused(finished_run, tmp_path, capsys):
    import prepare_data
    from synthetic import write_synthetic_zip

    other = write_synthetic_zip(str(tmp_path / "o.zip"), classes=5, train_per_class=4, val_per_class=4, seed=2)
    assert prepare_data.main(["--zip", other, "--data-dir", str(tmp_path / "d")]) == 0
    assert evaluate.main([str(finished_run / "last.pt"), "--data-dir", str(tmp_path / "d")]) == 2
    assert "classes" in last_error_line(capsys)


def test_evaluate_rejects_an_unknown_split(finished_run):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(finished_run / "last.pt"), "--split", "holdout"])
    assert exit_info.value.code == 2
