"""A run directory's files, named, written and read in one place:

    runs/<name>/
      config.json        the run's settings as plain values (train.py writes it at the start)
      metrics.csv        one row per finished epoch (METRIC_FIELDS)
      status.json        running, then finished, interrupted or crashed (RunStatus)
      test_metrics.json  the test split, once, at the end ({"final": ..., "best": ...})
      curves.png         drawn from metrics.csv (curves.py)
      last.pt, best.pt   checkpoints (their contents: checkpoint.py)
      epoch-NNN.pt       with --save-top-k K: the checkpoints of the K best epochs by val top-1
      corruptions.json   robustness.py --corruptions' rows, where the user wrote them there (compare.py's mean CE)

train.py writes them; runs.py, curves.py, compare.py, resume.py and benchmarks/study.py read them.
Not here: what a checkpoint holds (checkpoint.py), drawing (curves.py).
"""
import csv
import math
import os
import socket
import sys
import time

from cli import resume_command
from errors import DataError
from layout import ensure_dir, read_json, write_csv, write_json

CONFIG, METRICS, STATUS, TEST_METRICS, CURVES = "config.json", "metrics.csv", "status.json", "test_metrics.json", "curves.png"
CORRUPTION_ROWS = "corruptions.json"
LAST, BEST = "last.pt", "best.pt"
METRIC_FIELDS = (
    "epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
    "lr", "seconds", "images_per_s", "skipped_steps", "peak_memory_mb", "elapsed_minutes",
)
DOMINANT = "_dominant_label"  # the suffix of the training accuracy columns under MixUp/CutMix


def epoch_checkpoint(epoch):
    return f"epoch-{epoch:03d}.pt"


def top_epochs(history, k):
    """The k best epochs of a run's history by val top-1, ties going to the lower val loss, then
    the earlier epoch (as best.pt is chosen): a function of the history, so a resumed run keeps
    the same ones."""
    ranked = sorted(history, key=lambda row: (-row["val_top1"], row["val_loss"], row["epoch"]))
    return {row["epoch"] for row in ranked[:k]}


def remove_epoch_checkpoints(run_dir, keep):
    """Delete the epoch-NNN.pt files of the epochs not in keep. A file that cannot be deleted
    (open in another program on Windows, say) is a warning, tried again after the next epoch:
    never a reason to stop training."""
    for name in os.listdir(run_dir):
        stem = name.removeprefix("epoch-").removesuffix(".pt")
        if name != stem and stem.isdigit() and int(stem) not in keep:
            try:
                os.remove(file_of(run_dir, name))
            except OSError as error:
                print(f"warning: could not delete {file_of(run_dir, name)} ({error.strerror or error}); "
                      "trying again after the next epoch", file=sys.stderr)


def file_of(run_dir, name):
    return os.path.join(run_dir, name)


def is_run(run_dir):
    """Whether the folder holds a train.py run (its config.json is written first)."""
    return os.path.exists(file_of(run_dir, CONFIG))


def read_config(run_dir):
    """The run's config.json as a dict, or None (absent or unreadable)."""
    config = read_json(file_of(run_dir, CONFIG))
    return config if isinstance(config, dict) else None


def write_config(run_dir, config):
    write_json(file_of(run_dir, CONFIG), config)


def read_test_metrics(run_dir):
    """test_metrics.json as a dict ({} before the run's test)."""
    metrics = read_json(file_of(run_dir, TEST_METRICS))
    return metrics if isinstance(metrics, dict) else {}


def read_corruption_rows(run_dir, checkpoint):
    """The rows of robustness.py --corruptions in the run's corruptions.json that are this
    checkpoint's (its path, or, for rows written from another folder, its file name where only
    one checkpoint of the file has it), and the rows of the baseline they were normalised by:
    ([], []) when the file is absent or holds no row of the checkpoint."""
    rows = read_json(file_of(run_dir, CORRUPTION_ROWS))
    rows = [row for row in rows if isinstance(row, dict) and isinstance(row.get("checkpoint"), str)] if isinstance(rows, list) else []
    mine = [row for row in rows if os.path.realpath(row["checkpoint"]) == os.path.realpath(checkpoint)]
    if not mine:
        named = {row["checkpoint"] for row in rows if os.path.basename(row["checkpoint"]) == os.path.basename(checkpoint)}
        mine = [row for row in rows if row["checkpoint"] in named] if len(named) == 1 else []
    return mine, [row for row in rows if row.get("baseline")]


def write_test_metrics(run_dir, metrics):
    write_json(file_of(run_dir, TEST_METRICS), metrics)


def read_status(run_dir):
    """status.json as a dict, or None (runs from before it existed)."""
    status = read_json(file_of(run_dir, STATUS))
    return status if isinstance(status, dict) else None


def write_metrics(run_dir, history, mixed=False):
    """metrics.csv; under MixUp/CutMix the training accuracy is against each image's dominant
    label, and its columns say so (train_top1_dominant_label)."""
    # (rows of a run resumed from an older version lack the newer columns: left empty)
    header = [f"{key}{DOMINANT}" if mixed and key in ("train_top1", "train_top5") else key for key in METRIC_FIELDS]
    write_csv(file_of(run_dir, METRICS), header, ([row.get(key, "") for key in METRIC_FIELDS] for row in history))


def read_metrics(run_dir):
    """{column: [value per epoch]} of metrics.csv; under MixUp/CutMix the dominant-label training
    accuracy is read as train_top1 with "dominant_label" set, so that plots can say so."""
    path = file_of(run_dir, METRICS)
    no_epoch = (f"{run_dir}/ has no finished epoch yet (metrics.csv gets a row as each epoch ends): "
                "draw it once one has ended")
    if not os.path.isdir(run_dir):
        raise DataError(f"{run_dir} is not a directory: give a run directory written by train.py")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        if is_run(run_dir):  # a run stopped in its first epoch
            raise DataError(no_epoch) from None
        raise DataError(f"no metrics.csv in {run_dir}/: is it a train.py run directory?") from None
    if not rows:
        raise DataError(no_epoch)
    try:
        # (an empty cell: a column added after the row was written, in a run resumed across versions)
        columns = {key: [float(row[key]) if row[key] != "" else math.nan for row in rows] for key in rows[0]}
    except (TypeError, ValueError):
        raise DataError(f"{path} is damaged (a value is not a number)") from None
    for key in ("train_top1", "train_top5"):
        if key + DOMINANT in columns:
            columns[key] = columns.pop(key + DOMINANT)
            columns["dominant_label"] = True
    return columns


class RunStatus:
    """status.json in the run directory: running, then finished, interrupted (resumable) or
    crashed (with the error), so that a listing (runs.py) can tell them apart. A run killed
    outright stays "running" with the process id that runs.py checks."""

    def __init__(self, run_dir, enabled=True):
        self.path, self.enabled = file_of(run_dir, STATUS), enabled
        self.state = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def set(self, state, detail=None):
        self.state.update(state=state, detail=detail, ended=time.strftime("%Y-%m-%d %H:%M:%S"))
        if self.enabled:
            write_json(self.path, self.state)

    def __enter__(self):
        if self.enabled:
            write_json(self.path, self.state)
        return self

    def __exit__(self, kind, error, traceback):
        if kind is KeyboardInterrupt:
            self.set("interrupted", "stopped at once (second Ctrl-C)")
        elif kind is not None:
            self.set("crashed", str(error).splitlines()[0][:300] if str(error) else kind.__name__)


def choose_run_dir(args):
    if args.run_dir:
        return args.run_dir
    if args.resume:
        return os.path.dirname(args.resume) or "."  # relative as given: printed paths stay short
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))


def prepare_run_dir(run_dir, resume_path):
    """Create the run directory; refuse one that already holds another run (a resumed run may
    continue in its own directory, or in a new one)."""
    holds_a_run = is_run(run_dir)
    own = resume_path and os.path.realpath(run_dir) == os.path.realpath(os.path.dirname(os.path.abspath(resume_path)))
    if holds_a_run and not own:
        if not os.path.exists(file_of(run_dir, LAST)):
            raise DataError(f"{run_dir} holds a run that stopped before its first checkpoint: delete the folder "
                            "or choose another --run-dir")
        raise DataError(f"{run_dir} already holds a run: continue it with `{resume_command(run_dir)}` "
                        "or choose another --run-dir")
    ensure_dir(run_dir, f"the run directory {run_dir}", ": choose another --run-dir")
