"""train.py --logger: TensorBoard's event files and W&B's offline run hold what metrics.csv and
test_metrics.json hold, at the optimizer step each value describes, and a resumed run continues
the same curves (no step twice). A missing package is one line."""
import csv
import glob
import json
import struct
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard import SummaryWriter
from wandb.proto import wandb_internal_pb2

import train
from conftest import signal_during_training

FLAGS = ["--batch-size", "16", "--eval-batch-size", "16", "--device", "cpu", "--log-every", "2"]
STEPS_PER_EPOCH = 6  # 96 training images of the tiny data, batch 16


def metrics_csv(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def tensorboard_events(run_dir):
    """The run's events as TensorBoard reads them (what a resume purged, gone)."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events


def tensorboard_scalars(run_dir):
    """{tag: [(step, value)]}"""
    events = tensorboard_events(run_dir)
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_the_metrics_at_their_steps_and_a_resume_continues_the_curves(prepared_once, tmp_path, monkeypatch):
    """Stopped mid-epoch and resumed; a killed process's events after the checkpoint hidden."""
    run_dir = tmp_path / "r"
    argv = ["--data-dir", prepared_once, "--run-dir", str(run_dir), "--epochs", "2", "--logger", "tensorboard", *FLAGS]
    with monkeypatch.context() as patch:
        signal_during_training(patch, epoch=1, step=3)  # stopped in the middle of epoch 2, saved at step 10
        assert train.main(argv) == 130
    with SummaryWriter(str(run_dir)) as dead:  # what a process killed after the checkpoint would have logged past it
        dead.add_scalar("step/loss", 99.0, 12)
        dead.add_scalar("val/top1", 0.99, 12)
    assert train.main(["--resume", str(run_dir / "last.pt"), "--device", "cpu"]) == 0  # the loggers are the run's
    assert len(glob.glob(str(run_dir / "events.out.tfevents.*"))) == 3  # one per process, in the run directory

    scalars = tensorboard_scalars(run_dir)
    rows = metrics_csv(run_dir)
    for tag, column in (("val/top1", "val_top1"), ("train/loss", "train_loss"), ("val/loss", "val_loss"), ("epoch/lr", "lr")):
        assert scalars[tag] == [(int(row["epoch"]) * STEPS_PER_EPOCH, pytest.approx(float(row[column]))) for row in rows], tag
    step_losses = [step for step, _ in scalars["step/loss"]]
    assert step_losses == [2, 4, 6, 8, 10, 12]  # every --log-every steps, each once across the processes
    assert 99.0 not in [value for _, value in scalars["step/loss"]]  # what the dead process logged is hidden
    straight = tmp_path / "straight"  # resume is exact on the CPU: the same losses, the window across the stop included
    assert train.main([*argv[:2], "--run-dir", str(straight), *argv[4:]]) == 0
    assert scalars["step/loss"] == [(step, pytest.approx(value)) for step, value in tensorboard_scalars(straight)["step/loss"]]
    assert [step for step, _ in scalars["step/lr"]] == step_losses
    with open(run_dir / "test_metrics.json") as f:
        assert scalars["test/top1"] == [(12, pytest.approx(json.load(f)["final"]["top1"]))]
    hparams = tensorboard_events(run_dir).PluginTagToContent("hparams")  # the settings, once
    settings = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info.hparams
    assert settings["lr"].number_value == 0.001 and settings["model"].string_value == "cvt-simplified"


def wandb_records(path):
    """The records of a W&B run file (.wandb): a 7-byte header, then LevelDB's log format, which
    W&B's datastore writes: 32 KiB blocks of chunks, each with a 7-byte header (CRC-32C, length,
    type: 1 full, 2 first, 3 middle, 4 last)."""
    with open(path, "rb") as f:
        content = f.read()
    assert content[:4] == b":W&B"
    records, pending, position, block = [], b"", 7, 32768
    while position + 7 <= len(content):
        if block - position % block < 7:  # too little room left for a chunk header: the block's padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", content[position : position + 7])
        pending += content[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(run_dir):
    """[(run id, step, {key: value})] of every history row of every process's offline run (W&B
    makes one row of everything logged at one step)."""
    rows = []
    for path in sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))):
        records = wandb_records(path)
        run_id = next(record.run.run_id for record in records if record.WhichOneof("record_type") == "run")
        rows += [(run_id, record.history.step.num,  # (a key with a slash is stored as its parts)
                  {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
                 for record in records if record.WhichOneof("record_type") == "history"]
    return rows


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline, its own files in tmp_path: no network, nothing in the home directory."""
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": tmp_path / "wandb-home",
                        "WANDB_CONFIG_DIR": tmp_path / "wandb-config", "WANDB_CACHE_DIR": tmp_path / "wandb-cache",
                        "WANDB_DATA_DIR": tmp_path / "wandb-data"}.items():
        monkeypatch.setenv(name, str(value))


def test_wandb_offline_logs_the_metrics_and_a_resume_continues_the_same_run(prepared_once, tmp_path, wandb_offline):
    run_dir = tmp_path / "r"
    argv = ["--data-dir", prepared_once, "--run-dir", str(run_dir), "--logger", "wandb", *FLAGS]
    assert train.main([*argv, "--epochs", "1"]) == 0
    assert train.main(["--resume", str(run_dir / "last.pt"), "--epochs", "2", "--device", "cpu"]) == 0
    with open(run_dir / "config.json") as f:
        run_id = json.load(f)["wandb_id"]
    history = wandb_history(run_dir)
    assert {row_id for row_id, _, _ in history} == {run_id}  # both processes log to the run config.json records
    val_top1 = [(step, values["val/top1"]) for _, step, values in history if "val/top1" in values]
    assert val_top1 == [(int(row["epoch"]) * STEPS_PER_EPOCH, pytest.approx(float(row["val_top1"])))
                        for row in metrics_csv(run_dir)]
    steps = [step for _, step, values in history if "step/loss" in values]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # each step once, across the two processes


def test_a_logger_whose_package_is_missing_is_one_line_before_any_work(prepared_once, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an uninstalled package looks like to importlib
    run_dir = tmp_path / "r"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), "--logger", "wandb", *FLAGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --logger wandb needs the wandb package, which is not installed: "
                   "python -m pip install -r requirements-extras.txt"]
    assert not run_dir.exists()
