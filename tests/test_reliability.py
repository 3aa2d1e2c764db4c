"""Stops, crashes and resumes lose nothing: interrupts, mid-epoch resume, failed writes, NaNs."""
import errno
import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import prepare_data
import train
from conftest import ROOT, assert_same_training_state, signal_during_training

FAST = ["--batch-size", "16", "--eval-batch-size", "16", "--log-every", "2", "--device", "cpu"]


def train_main(data_dir, run_dir, *extra):
    return train.main(["--data-dir", data_dir, "--run-dir", str(run_dir), *FAST, *extra])


def load(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def straight_run(prepared_once, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "r"
    assert train_main(prepared_once, run_dir, "--epochs", "2") == 0
    return run_dir


@pytest.mark.parametrize("epoch,step", [(0, 2), (1, 4)])
def test_ctrl_c_mid_epoch_then_resume_equals_a_straight_run(prepared_once, straight_run, tmp_path, monkeypatch, capsys, epoch, step):
    run_dir = tmp_path / "r"
    with monkeypatch.context() as patch:
        signal_during_training(patch, epoch, step)
        assert train_main(prepared_once, run_dir, "--epochs", "2") == 130
    err = capsys.readouterr().err
    assert f"python train.py --resume {run_dir}/last.pt" in err
    interrupted = load(run_dir / "last.pt")
    assert interrupted["progress"]["epoch"] == epoch and interrupted["progress"]["step_in_epoch"] == step + 1
    assert not (run_dir / "test_metrics.json").exists()
    assert train.main(["--resume", str(run_dir / "last.pt"), "--data-dir", prepared_once, *FAST, "--epochs", "2"]) == 0
    assert_same_training_state(load(straight_run / "last.pt"), load(run_dir / "last.pt"))


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(prepared_once, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "r"
    signal_during_training(monkeypatch, epoch=1, step=2, signals=(signal.SIGINT, signal.SIGINT))
    assert train_main(prepared_once, run_dir, "--epochs", "2") == 130
    assert "stopped at once" in capsys.readouterr().err
    assert load(run_dir / "last.pt")["progress"]["epoch"] == 1  # the end-of-epoch-1 checkpoint, intact
    assert not (run_dir / "last.pt.tmp").exists()


def test_sigterm_to_a_real_process_writes_a_checkpoint_and_exits_143(tmp_path):
    data_dir = str(tmp_path / "data")
    argv = ["--synthetic", "--data-dir", data_dir, "--classes", "4", "--train-per-class", "200", "--val-per-class", "5"]
    assert prepare_data.main(argv) == 0
    command = [sys.executable, "train.py", "--data-dir", data_dir, "--run-dir", str(tmp_path / "r"), "--epochs", "100",
               "--batch-size", "16", "--device", "cpu", "--no-amp"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout.readline().startswith("training on")
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "--resume" in err
    checkpoint = load(tmp_path / "r" / "last.pt")
    assert checkpoint["progress"]["step"] > 0


def test_a_checkpoint_write_that_fails_half_way_keeps_the_previous_one(prepared_once, straight_run, tmp_path, monkeypatch, capsys):
    before = load(straight_run / "last.pt")
    real_save = torch.save

    def save_half_then_fail(payload, path):
        real_save(payload, path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    resume = ["--resume", str(straight_run / "last.pt"), "--data-dir", prepared_once, *FAST, "--epochs", "3"]
    assert train.main(resume) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No space left on device" in err and "previous file is intact" in err
    after = load(straight_run / "last.pt")
    assert after["progress"]["epoch"] == 2
    assert_same_training_state(before, after)
    assert not (straight_run / "last.pt.tmp").exists()


def test_a_diverging_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(prepared_once, tmp_path, monkeypatch, capsys):
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def nan_after_epoch_one(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 8 else loss  # 6 train steps + 2 val batches in epoch 1

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_after_epoch_one)
    run_dir = tmp_path / "r"
    assert train_main(prepared_once, run_dir, "--epochs", "3") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the loss became nan at step 2 of epoch 2" in err and "--lr" in err
    assert load(run_dir / "last.pt")["progress"]["epoch"] == 1


def test_compile_falls_back_to_eager_with_a_warning(prepared_once, tmp_path, monkeypatch, capsys):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no working C++ compiler")

    monkeypatch.setattr(torch, "compile", broken_compile)
    assert train_main(prepared_once, tmp_path / "r", "--epochs", "1", "--compile") == 0
    assert "torch.compile does not work here" in capsys.readouterr().err


def test_resume_on_a_different_dataset_is_refused(prepared, straight_run, capsys):
    """Same number of classes, other wnids: only the class list tells the datasets apart."""
    meta_path = os.path.join(prepared, "packed", "meta.json")
    meta = json.load(open(meta_path))
    meta["classes"] = [wnid.replace("n9", "n8") for wnid in meta["classes"]]
    json.dump(meta, open(meta_path, "w"))
    resume = ["--resume", str(straight_run / "last.pt"), "--data-dir", prepared, *FAST, "--epochs", "3"]
    assert train.main(resume) == 2
    assert "different class list" in capsys.readouterr().err


def test_fp16_grad_scaler_skipped_steps_are_counted_not_failures(prepared_once, tmp_path, monkeypatch, capsys):
    """A GradScaler skips steps whose scaled fp16 gradients overflow until its scale fits: those
    are counted and reported, and training goes on (fp16 autocast and GradScaler run on CPU).
    Starting at 2^40 instead of 2^16 makes the first steps overflow for sure."""
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0**40))
    run_dir = tmp_path / "r"
    assert train_main(prepared_once, run_dir, "--epochs", "1", "--amp", "--amp-dtype", "float16") == 0
    checkpoint = load(run_dir / "last.pt")
    assert checkpoint["config"]["amp_dtype"] == "float16"
    assert checkpoint["scaler"]["scale"] < 2.0**40  # enabled, and it backed off
    row = checkpoint["progress"]["history"][0]
    assert row["skipped_steps"] >= 1
    assert "fp16 steps skipped by the GradScaler" in capsys.readouterr().out


def test_resuming_from_a_lightning_checkpoint_is_refused_clearly(prepared_once, straight_run, tmp_path, capsys):
    plain = load(straight_run / "last.pt")["model"]
    torch.save({"state_dict": {f"model.{k}": v for k, v in plain.items()}, "epoch": 9}, tmp_path / "lightning.ckpt")
    resume = ["--resume", str(tmp_path / "lightning.ckpt"), "--data-dir", prepared_once, *FAST, "--run-dir", str(tmp_path / "r")]
    assert train.main(resume) == 2
    assert "not a train.py checkpoint" in capsys.readouterr().err
