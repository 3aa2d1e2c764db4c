"""Shared fixtures: tiny Tiny-ImageNet zips made by synthetic.py (the same generator as
`prepare_data.py --synthetic`), prepared once per session, and the real mini zip when present."""
import os
import shutil
import signal
import sys

import pytest
import torch

# pytest-xdist's workers (pytest.ini: -n auto) share the cores: each worker, and each process it
# starts, computes with its share of them, so the workers run side by side without
# oversubscribing the CPU (which slows every test several-fold). Set before any test runs.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import prepare_data  # noqa: E402
import train  # noqa: E402
from synthetic import write_synthetic_zip  # noqa: E402

MINI_ZIP = os.path.join(ROOT, "..", "shared", "data", "tiny-imagenet-200-mini.zip")
needs_mini_zip = pytest.mark.skipif(not os.path.exists(MINI_ZIP), reason="../shared/data/tiny-imagenet-200-mini.zip is absent")

# 4 classes x 24 train images, 40 val images (split 8 val / 32 test), 3 grayscale JPEGs.
TINY = dict(classes=4, train_per_class=24, val_per_class=10, test_images=4, seed=1)


@pytest.fixture(scope="session")
def tiny_zip(tmp_path_factory):
    return write_synthetic_zip(str(tmp_path_factory.mktemp("zip") / "tiny.zip"), **TINY)


@pytest.fixture(scope="session")
def prepared_once(tmp_path_factory, tiny_zip):
    data_dir = str(tmp_path_factory.mktemp("prepared") / "data")
    assert prepare_data.main(["--zip", tiny_zip, "--data-dir", data_dir]) == 0
    return data_dir


@pytest.fixture
def prepared(prepared_once, tmp_path):
    """A private copy of the prepared tiny data, free to modify."""
    data_dir = str(tmp_path / "data")
    shutil.copytree(prepared_once, data_dir, symlinks=True)
    return data_dir


@pytest.fixture(scope="session")
def mini_prepared(tmp_path_factory):
    if not os.path.exists(MINI_ZIP):
        pytest.skip("../shared/data/tiny-imagenet-200-mini.zip is absent")
    data_dir = str(tmp_path_factory.mktemp("mini") / "data")
    assert prepare_data.main(["--zip", MINI_ZIP, "--data-dir", data_dir]) == 0
    return data_dir


def assert_same_training_state(a, b):
    """Two train.py checkpoints hold the same weights, optimizer state and metrics (timing aside)."""
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name])
    assert ("ema" in a) == ("ema" in b)
    if "ema" in a:
        assert a["ema"]["updates"] == b["ema"]["updates"]
        for key, value in a["ema"]["model"].items():
            assert torch.equal(value, b["ema"]["model"][key]), f"ema {key}"
    timing = ("seconds", "images_per_s", "peak_memory_mb", "elapsed_minutes")  # the machine's, not the training's
    strip = lambda rows: [{k: v for k, v in row.items() if k not in timing} for row in rows]  # noqa: E731
    assert strip(a["progress"]["history"]) == strip(b["progress"]["history"])


def signal_during_training(monkeypatch, epoch, step, signals=(signal.SIGINT,)):
    """Send `signals` to this process just before the training loader yields batch `step` of `epoch`."""
    original = data.BatchLoader.iterate

    def iterate(self, start_step=0):
        for index, batch in enumerate(original(self, start_step), start_step):
            if self.train and self.epoch == epoch and index == step:
                for signum in signals:
                    os.kill(os.getpid(), signum)
            yield batch

    monkeypatch.setattr(data.BatchLoader, "iterate", iterate)


def assert_resumes_exactly(monkeypatch, data_dir, tmp_path, flags, epoch, step):
    """A run of `flags` stopped by Ctrl-C just before batch `step` of `epoch`, then resumed with
    no flags, ends in exactly the state of the straight run (tmp_path/straight, tmp_path/r)."""
    assert train.main(["--data-dir", data_dir, "--run-dir", str(tmp_path / "straight"), *flags]) == 0
    with monkeypatch.context() as patch:
        signal_during_training(patch, epoch=epoch, step=step)
        assert train.main(["--data-dir", data_dir, "--run-dir", str(tmp_path / "r"), *flags]) == 130
    assert train.main(["--resume", str(tmp_path / "r" / "last.pt"), "--device", "cpu"]) == 0
    assert_same_training_state(*(torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("straight", "r")))


# train.py as its command line runs it, saying "first step done" once its first optimizer step
# has run: a test that signals a training process waits for that line (a handshake, not a sleep).
AFTER_THE_FIRST_STEP = """
import os
import sys
sys.path.insert(0, {root!r})
import recipe
import train

update = recipe.Updater.update


def update_and_say(self, global_step):
    skipped = update(self, global_step)
    if global_step == 0 and os.environ.get("RANK", "0") == "0":  # (under torchrun, rank 0 alone)
        print("first step done", flush=True)
    return skipped


recipe.Updater.update = update_and_say
sys.exit(train.main())
"""


def train_saying_after_the_first_step(folder):
    path = os.path.join(str(folder), "train_saying_after_the_first_step.py")
    with open(path, "w") as f:
        f.write(AFTER_THE_FIRST_STEP.format(root=ROOT))
    return path


def wait_for_line(stream, wanted):
    for line in stream:
        if wanted in line:
            return
    raise AssertionError(f"the process ended without saying {wanted!r}")
