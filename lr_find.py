"""The learning-rate range test (train.py --lr-find; L. Smith, "Cyclical Learning Rates for
Training Neural Networks", 2017): a fresh model of the run trains for a few hundred steps with
the run's recipe while the lr grows geometrically from START to END; the loss, smoothed, is
recorded at each lr, and the test stops once it has clearly diverged. It suggests a tenth of the
lr at the lowest smoothed loss (the usual rule: past that point training is already unstable).
It writes lr_find.csv and lr_find.png into the run directory and nothing else: no checkpoint,
config or status, so the folder is never taken for a run and nothing is left to resume.
Not here: the setup of the model, data and recipe (train.py), a run's own loop (train.py).
"""
import math
import os
import time

from figures import plot_or_note, pyplot, save_figure
from layout import ensure_dir, write_csv

START, END = 1e-7, 10.0  # the range swept: wide enough for Adam's and SGD's usual lrs
SMOOTHING = 0.98  # of the loss: an exponential moving average, bias-corrected
DIVERGED = 4.0  # stop once the smoothed loss is 4x its lowest
CSV, PLOT = "lr_find.csv", "lr_find.png"
FIELDS = ("step", "lr", "loss", "smoothed_loss")


def lr_at(step, steps, start=START, end=END):
    """The lr of `step` of `steps`: start at step 0, end at the last, geometric in between."""
    return start * (end / start) ** (step / max(steps - 1, 1))


def range_test(model, updater, batches, steps, device, dtype):
    """Train model with updater (whose schedule is the sweep's) on up to `steps` batches; one row
    of FIELDS per step, until the loss diverges. The loss is read after every step (a sync) since
    it decides whether to go on: this is a diagnostic of seconds, not a run."""
    rows, average, lowest = [], 0.0, math.inf
    model.train()
    for step, (x, y) in zip(range(steps), batches):
        _, loss, _ = updater.train_step(model, x, y, step, device, dtype)
        value = loss.item()
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        rows.append({"step": step, "lr": updater.optimizer.param_groups[0]["lr"], "loss": value, "smoothed_loss": smoothed})
        lowest = min(lowest, smoothed)
        if not math.isfinite(value) or smoothed > DIVERGED * lowest:
            break
    return rows


def suggest(rows):
    """A tenth of the lr at the lowest smoothed loss."""
    return min(rows, key=lambda row: row["smoothed_loss"])["lr"] / 10


def draw(rows, out, suggested):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lrs = [row["lr"] for row in rows]
    ax.plot(lrs, [row["loss"] for row in rows], color="0.75", linewidth=0.8, label="loss")
    ax.plot(lrs, [row["smoothed_loss"] for row in rows], color="C0", label=f"smoothed ({SMOOTHING})")
    ax.axvline(suggested, color="C3", linestyle="--", label=f"suggested --lr {suggested:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    finite = [row["smoothed_loss"] for row in rows if math.isfinite(row["smoothed_loss"])]
    if finite:  # the diverged tail would squash the rest
        ax.set_ylim(min(finite) * 0.95, min(max(finite), DIVERGED * min(finite)) * 1.05)
    ax.legend()
    ax.set_title("learning-rate range test")
    fig.tight_layout()
    save_figure(fig, out)


def write_results(run_dir, rows, suggested):
    """lr_find.csv and (with matplotlib) lr_find.png in run_dir; returns the csv's path."""
    ensure_dir(run_dir, f"--run-dir {run_dir}")
    path = os.path.join(run_dir, CSV)
    write_csv(path, FIELDS, ([row[key] for key in FIELDS] for row in rows))
    plot_or_note(lambda rows, out: draw(rows, out, suggested), rows, os.path.join(run_dir, PLOT))
    return path


def report(rows, steps, suggested, seconds):
    ended = "the loss diverged" if len(rows) < steps else "the sweep's end"
    lowest = min(rows, key=lambda row: row["smoothed_loss"])
    return (f"lr range test: {len(rows)} of {steps} steps, lr {rows[0]['lr']:.2g} to {rows[-1]['lr']:.2g} ({ended}), "
            f"{seconds:.0f} s; lowest smoothed loss {lowest['smoothed_loss']:.3f} at lr {lowest['lr']:.2g}; "
            f"suggested --lr {suggested:.2g}")


def find_lr(model, updater, batches, steps, device, dtype, run_dir):
    """The whole test: sweep, suggest, write, say; returns the suggested lr."""
    start = time.perf_counter()
    rows = range_test(model, updater, batches, steps, device, dtype)
    suggested = suggest(rows)
    csv_path = write_results(run_dir, rows, suggested)
    print(report(rows, steps, suggested, time.perf_counter() - start))
    print(f"csv: {csv_path}")
    return suggested
