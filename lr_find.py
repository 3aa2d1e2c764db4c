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
CLEAR_DROP = 0.9  # a minimum counts when the smoothed loss fell below 90% of its first value
CSV, PLOT = "lr_find.csv", "lr_find.png"
FIELDS = ("step", "lr", "loss", "smoothed_loss")


def lr_at(step, steps, start=START, end=END):
    """The lr of `step` of `steps`: start at step 0, end at the last, geometric in between."""
    return start * (end / start) ** (step / max(steps - 1, 1))


def range_test(model, updater, batches, steps, device, dtype, stop=None):
    """Train model with updater (whose schedule is the sweep's) on up to `steps` batches; one row
    of FIELDS per step, until the loss diverges or stop() (Ctrl-C, SIGTERM) asks to end. The loss
    is read after every step (a sync) since it decides whether to go on: this is a diagnostic of
    seconds, not a run."""
    rows, average, lowest = [], 0.0, math.inf
    model.train()
    for step, (x, y) in zip(range(steps), batches):
        if stop is not None and stop():
            break
        _, loss, _ = updater.train_step(model, x, y, step, device, dtype)
        value = loss.item()
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        rows.append({"step": step, "lr": updater.optimizer.param_groups[0]["lr"], "loss": value, "smoothed_loss": smoothed})
        lowest = min(lowest, smoothed)
        if not math.isfinite(value) or smoothed > DIVERGED * lowest:
            break
    return rows


def lowest_row(rows):
    """The row of the lowest finite smoothed loss, or None."""
    return min((row for row in rows if math.isfinite(row["smoothed_loss"])), key=lambda row: row["smoothed_loss"], default=None)


def suggest(rows):
    """A tenth of the lr at the lowest smoothed loss; None where the curve has no clear minimum:
    the loss never fell below CLEAR_DROP of where it started, or it was still at its lowest on
    the last step (the sweep ended before the loss turned)."""
    lowest = lowest_row(rows)
    first = next((row for row in rows if math.isfinite(row["smoothed_loss"])), None)
    if lowest is None or lowest is rows[-1] or not lowest["smoothed_loss"] < CLEAR_DROP * first["smoothed_loss"]:
        return None
    return lowest["lr"] / 10


def draw(rows, out, suggested):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lrs = [row["lr"] for row in rows]
    ax.plot(lrs, [row["loss"] for row in rows], color="0.75", linewidth=0.8, label="loss")
    ax.plot(lrs, [row["smoothed_loss"] for row in rows], color="C0", label=f"smoothed ({SMOOTHING})")
    if suggested is not None:
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
    path = os.path.join(run_dir, CSV)
    write_csv(path, FIELDS, ([row[key] for key in FIELDS] for row in rows))
    plot_or_note(lambda rows, out: draw(rows, out, suggested), rows, os.path.join(run_dir, PLOT))
    return path


def report(rows, steps, suggested, seconds, stopped):
    lowest = lowest_row(rows)
    diverged = lowest is None or not rows[-1]["smoothed_loss"] <= DIVERGED * lowest["smoothed_loss"]  # (NaN: diverged)
    ended = "stopped by request" if stopped else "the loss diverged" if diverged else "the sweep's end"
    found = (f"lowest smoothed loss {lowest['smoothed_loss']:.3f} at lr {lowest['lr']:.2g}" if lowest else "no finite loss")
    advice = (f"suggested --lr {suggested:.2g}" if suggested is not None else
              "no clear minimum, so no suggestion (more --lr-find-steps, or check the data and the model)")
    return (f"lr range test: {len(rows)} of {steps} steps, lr {rows[0]['lr']:.2g} to {rows[-1]['lr']:.2g} ({ended}), "
            f"{seconds:.0f} s; {found}; {advice}")


def find_lr(model, updater, batches, steps, device, dtype, run_dir, stop=None):
    """The whole test: sweep, suggest, write, say; returns the suggested lr (None: no clear
    minimum). The run directory is made before the sweep: a bad --run-dir costs no sweep."""
    ensure_dir(run_dir, f"--run-dir {run_dir}")
    start = time.perf_counter()
    rows = range_test(model, updater, batches, steps, device, dtype, stop)
    if not rows:
        print("lr range test: stopped before its first step; nothing written")
        return None
    suggested = suggest(rows)
    csv_path = write_results(run_dir, rows, suggested)
    print(report(rows, steps, suggested, time.perf_counter() - start, stop is not None and stop()))
    print(f"csv: {csv_path}")
    return suggested
