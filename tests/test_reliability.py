"""Stops, crashes and resumes lose nothing: interrupts, mid-epoch resume, failed writes, NaNs."""
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import checkpoint
import layout
import prepare_data
import train
from conftest import ROOT, assert_same_training_state, signal_during_training, train_saying_after_the_first_step, wait_for_line

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
    command = [sys.executable, train_saying_after_the_first_step(tmp_path), "--data-dir", data_dir, "--run-dir",
               str(tmp_path / "r"), "--epochs", "100", "--batch-size", "16", "--device", "cpu", "--no-amp"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_for_line(process.stdout, "first step done")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "--resume" in err
    checkpoint = load(tmp_path / "r" / "last.pt")
    assert checkpoint["progress"]["step"] > 0


@contextlib.contextmanager
def full_disk(kind, folder, free_bytes):
    """A place where writes fail as on a full disk, for real: a tmpfs of `free_bytes` more than
    folder's files, mounted over folder (root only), or every checkpoint's temporary file a link
    to /dev/full (Linux), whose writes fail with ENOSPC."""
    if kind == "tmpfs":
        held = {path: path.read_bytes() for path in folder.iterdir()}
        size = sum(map(len, held.values())) + len(held) * 4096 + free_bytes
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                               capture_output=True).returncode:
            pytest.skip("no tmpfs can be mounted here (root only)")
        try:
            for path, content in held.items():
                path.write_bytes(content)
            yield
        finally:
            held = {path: path.read_bytes() for path in folder.iterdir()}
            subprocess.run(["umount", "-l", str(folder)], check=True)
            for path, content in held.items():  # what the tmpfs holds now, back on the real disk
                path.write_bytes(content)
    else:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full on this system")
        for name in ("last.pt", "best.pt"):
            os.symlink("/dev/full", folder / f"{name}.tmp")
        yield


@pytest.mark.parametrize("kind", ["/dev/full", "tmpfs"])
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(kind, prepared_once, straight_run, tmp_path, capsys):
    """torch.save writing a file itself reports ENOSPC as a RuntimeError ("unexpected pos"): the
    kit writes the bytes with Python, whose OSError says why, and the previous checkpoint stays."""
    run_dir = tmp_path / "r"
    shutil.copytree(straight_run, run_dir)
    before = {name: load(run_dir / name) for name in ("last.pt", "best.pt")}
    with full_disk(kind, run_dir, free_bytes=os.path.getsize(run_dir / "last.pt") // 2):
        assert train.main(["--resume", str(run_dir / "last.pt"), "--data-dir", prepared_once, *FAST, "--epochs", "3"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning: SYNTHETIC")]
    assert len(err) == 1 and "No space left on device" in err[0] and "previous file is intact" in err[0], err
    for name in ("last.pt", "best.pt"):
        assert_same_training_state(before[name], load(run_dir / name))
    assert not [path for path in run_dir.iterdir() if path.suffix == ".tmp" and not path.is_symlink()]  # no half file
    assert json.load(open(run_dir / "status.json"))["state"] == "crashed"


def test_files_reach_the_disk_before_they_replace_the_previous_ones(tiny_zip, tmp_path, monkeypatch):
    """fsync before os.replace (checkpoints, JSON), and the packed arrays fsynced before the
    meta.json that says they are complete: else a power loss after the rename can leave an empty
    file (ext4). Files are followed by inode, which a rename keeps."""
    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd))[1])
    checkpoint.save_checkpoint({"w": torch.ones(3)}, str(tmp_path / "a.pt"))
    layout.write_json(str(tmp_path / "a.json"), {"a": 1})
    assert {os.stat(tmp_path / name).st_ino for name in ("a.pt", "a.json")} <= set(synced)
    synced.clear()
    assert prepare_data.main(["--zip", tiny_zip, "--data-dir", str(tmp_path / "data")]) == 0
    packed = tmp_path / "data" / layout.PACKED_DIR
    arrays = [os.stat(path).st_ino for path in packed.iterdir() if path.name != layout.META_FILE]
    meta = os.stat(packed / layout.META_FILE).st_ino
    assert arrays and set(arrays) <= set(synced[: synced.index(meta)])


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
