"""Runs where its users are: no Unix-only module at import time, prepare_data.py's workers
started by spawn (the macOS and Windows default) pack the same arrays as fork, Windows paths in
what is printed and parsed, and Apple's MPS device chosen and refused as CUDA is."""
import glob
import importlib.util
import ntpath
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import cli
import data
import evaluation
import explain
import prepare_data
import robustness
import rundir
import runtime
import train
import train_flags
import workers
from conftest import ROOT
from models import blocks
from test_zoo import tiny
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from errors import DataError
from layout import PACKED_ARRAYS, VAL_BOXES_FILE, packed_dir

SCRIPTS = sorted(os.path.basename(path)[:-3] for path in glob.glob(os.path.join(ROOT, "*.py")))
BENCHMARKS = sorted(f"benchmarks.{os.path.basename(path)[:-3]}" for path in glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))
                    if not path.endswith("__init__.py"))


def test_every_script_imports_without_resource_fcntl_or_signal_masks_and_memory_says_it_is_not_measured():
    as_on_windows = ("import sys, signal; sys.modules['resource'] = None; sys.modules['fcntl'] = None; "
                     "del signal.pthread_sigmask; ")
    imports = "; ".join(f"import {name}" for name in SCRIPTS + BENCHMARKS)
    check = "import torch, evaluate; print(evaluation.peak_memory(torch.device('cpu')))"
    done = subprocess.run([sys.executable, "-c", as_on_windows + imports + "; " + check], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "(nan, 'peak memory (not measured: this platform has no `resource` module)')" in done.stdout
    assert {"train", "evaluate", "prepare_data", "robustness", "explain"} <= set(SCRIPTS)


def test_workers_started_by_spawn_without_signal_masks_pack_the_same_arrays(tiny_zip, prepared_once, tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "START_METHOD", "spawn")
    # As on Windows: no signal masks (workers.py's own signal module; multiprocessing keeps its own).
    monkeypatch.setattr(workers, "signal", SimpleNamespace(SIGINT=signal.SIGINT, SIG_IGN=signal.SIG_IGN,
                                                                signal=signal.signal))
    data_dir = str(tmp_path / "data")
    assert prepare_data.main(["--zip", tiny_zip, "--data-dir", data_dir]) == 0
    for name in (*(f"{n}.npy" for n in PACKED_ARRAYS), VAL_BOXES_FILE):
        spawned, forked = (np.load(os.path.join(packed_dir(d), name)) for d in (data_dir, prepared_once))
        assert np.array_equal(spawned, forked), name


def test_windows_paths_in_printed_commands_labels_and_resume(monkeypatch):
    """As on Windows (ntpath, backslashes, cmd.exe quoting): commands paste into its shell."""
    monkeypatch.setattr(os, "name", "nt")
    monkeypatch.setattr(os, "sep", "\\")
    monkeypatch.setattr(os, "path", ntpath)
    assert cli.resume_command("runs\\my run") == 'python train.py --resume "runs\\my run\\last.pt"'
    assert cli.short_label("C:\\work\\runs\\cvt\\best.pt") == "cvt/best.pt"
    assert cli.short_label("runs/cvt/best.pt") == "cvt/best.pt"  # forward slashes work there too
    args = train_flags.parse_args(["--resume", "C:\\work\\runs\\a\\last.pt"])
    assert rundir.choose_run_dir(args) == "C:\\work\\runs\\a"


def test_mps_is_chosen_when_present_and_refused_clearly_when_absent(monkeypatch):
    monkeypatch.setattr(runtime, "mps_available", lambda: False)
    with pytest.raises(DataError, match="--device mps: Apple's MPS is not available on this machine"):
        runtime.resolve_device("mps")
    monkeypatch.setattr(runtime, "mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device = runtime.resolve_device("auto")
    assert device == torch.device("mps") and runtime.resolve_device("mps") == device
    # The precision rule: fp32 by default (bf16 on Apple GPUs is not measured here), bf16 with --amp.
    assert runtime.default_amp(device) is False and runtime.amp_dtype(device, True) == torch.bfloat16


def test_dropout_off_the_cpu_is_torchs_own(monkeypatch):
    """The fast dropout mask is built on the CPU: a tensor on any other device (cuda, mps; here
    meta) takes F.dropout, so no CPU mask meets a device tensor."""
    monkeypatch.setattr(blocks, "dropout_mask", None)  # calling it would fail
    x = torch.ones(4, 8, device="meta")
    assert blocks.dropout(x, 0.5, True).device.type == "meta"


class RefuseFloat64On(TorchDispatchMode):
    """Fails the first operation that makes a float64 tensor on the device: Apple's MPS has no
    float64, so such a tensor is a crash there."""

    def __init__(self, device):
        super().__init__()
        self.device = torch.device(device)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type == self.device.type:
                raise AssertionError(f"{func} made a float64 tensor on {t.device} (MPS has none)")
        return out


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_evaluation_robustness_and_box_scores_make_no_float64_on_the_device(device):
    """What runs at every validation (evaluate), robustness.py's sweep and explain.py's box score
    stay in float32 on the compute device (tested here as if that device were MPS)."""
    torch.manual_seed(0)
    device = torch.device(device)
    model = tiny("cvt-simplified", 5).to(device)
    x, y = torch.randint(0, 256, (6, 64, 64, 3), dtype=torch.uint8), torch.randint(0, 5, (6,))
    loader = [(images.to(device), labels.to(device))
              for images, labels in ((data.normalize(x[:4]), y[:4]), (data.normalize(x[4:]), y[4:]))]
    boxes = torch.tensor([[0, 0, 31, 63]]).repeat(6, 1)
    with RefuseFloat64On(device):
        metrics = evaluation.evaluate(model, loader, device, num_classes=5)
        robustness.sweep(model, x, y, device, None, [1], ["zero"], 4)
        methods = ["attention"] + (["gradcam"] if importlib.util.find_spec("captum") else [])  # (captum: the test extras)
        explain.box_score(model, x, y, boxes, device, methods, ["embedding.proj"], 4, "true")
    assert metrics["images"] == 6 and int(metrics["confusion"].sum()) == 6


def test_a_device_index_that_does_not_exist_is_one_line(monkeypatch, capsys):
    """On a machine with CUDA, the index after its last GPU; elsewhere a one-GPU machine as torch
    reports it (is_available, device_count). Every script resolves --device here."""
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(DataError, match=rf"--device {missing}: this machine has {torch.cuda.device_count()} cuda device"):
        runtime.resolve_device(missing)
    assert train.main(["--device", missing, "--data-dir", "nowhere"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert runtime.resolve_device("cuda:0") == torch.device("cuda", 0)
