"""Runs where its users are: no Unix-only module at import time, prepare_data.py's workers
started by spawn (the macOS and Windows default) pack the same arrays as fork, Windows paths in
what is printed and parsed, and Apple's MPS device chosen and refused as CUDA is."""
import glob
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
import model
import prepare_data
import runtime
import train
from conftest import ROOT
from layout import PACKED_ARRAYS, VAL_BOXES_FILE, DataError, packed_dir

SCRIPTS = sorted(os.path.basename(path)[:-3] for path in glob.glob(os.path.join(ROOT, "*.py")))
BENCHMARKS = sorted(f"benchmarks.{os.path.basename(path)[:-3]}" for path in glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))
                    if not path.endswith("__init__.py"))


def test_every_script_imports_without_resource_fcntl_or_signal_masks_and_memory_says_it_is_not_measured():
    as_on_windows = ("import sys, signal; sys.modules['resource'] = None; sys.modules['fcntl'] = None; "
                     "del signal.pthread_sigmask; ")
    imports = "; ".join(f"import {name}" for name in SCRIPTS + BENCHMARKS)
    check = "import torch, evaluate; print(evaluate.peak_memory(torch.device('cpu')))"
    done = subprocess.run([sys.executable, "-c", as_on_windows + imports + "; " + check], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "(nan, 'peak memory (not measured: this platform has no `resource` module)')" in done.stdout
    assert {"train", "evaluate", "prepare_data", "robustness", "explain"} <= set(SCRIPTS)


def test_workers_started_by_spawn_without_signal_masks_pack_the_same_arrays(tiny_zip, prepared_once, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_data, "START_METHOD", "spawn")
    # As on Windows: no signal masks (prepare_data's own signal module; multiprocessing keeps its own).
    monkeypatch.setattr(prepare_data, "signal", SimpleNamespace(SIGINT=signal.SIGINT, SIG_IGN=signal.SIG_IGN,
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
    args = train.parse_args(["--resume", "C:\\work\\runs\\a\\last.pt"])
    assert train.choose_run_dir(args) == "C:\\work\\runs\\a"


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
    monkeypatch.setattr(model, "dropout_mask", None)  # calling it would fail
    x = torch.ones(4, 8, device="meta")
    assert model.dropout(x, 0.5, True).device.type == "meta"
