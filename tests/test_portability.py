"""Runs where its users are: no Unix-only module at import time, and prepare_data.py's workers
started by spawn (the macOS and Windows default) pack the same arrays as fork."""
import glob
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np

import prepare_data
from conftest import ROOT
from layout import PACKED_ARRAYS, VAL_BOXES_FILE, packed_dir

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
