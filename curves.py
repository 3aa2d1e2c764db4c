"""Draw a run's curves: loss and top-1 (train and val) and the learning rate per epoch,
from its metrics.csv, into curves.png in the run directory.

    python curves.py runs/<name>            # -> runs/<name>/curves.png
    python curves.py runs/a runs/b --out compare.png   # several runs on the same axes
    python curves.py runs/a runs/b --against minutes --out hour.png   # against wall-clock minutes, with the test

train.py draws it at the end of a run. matplotlib is in requirements.txt; without it, the rest
of the kit works and this says how to install it.
"""
import os
import sys

from cli import ArgumentParser, exit_quietly_on_ctrl_c
from errors import DataError
from figures import MATPLOTLIB_HINT, pyplot, save_figure
from layout import check_output_path
from rundir import CURVES, read_config, read_metrics, read_test_metrics

INSTALL_HINT = f"{MATPLOTLIB_HINT} to draw curves.png"


AGAINST = {"epoch": "epoch", "minutes": "wall-clock minutes since train.py started"}


def draw_curves(run_dirs, out, against="epoch"):
    """Write the figure to out; raises ImportError when matplotlib is missing."""
    save_figure(build_figure(run_dirs, against), out)
    return out


def build_figure(run_dirs, against="epoch"):
    """Loss, top-1 and lr panels of the runs (a matplotlib Figure), against epochs or against
    wall-clock minutes (metrics.csv's elapsed_minutes), where the test's top-1 is marked at the
    minute the run ended."""
    plt = pyplot()
    runs, run_dirs = read_runs(run_dirs)
    smoothed = [name for (name, _), d in zip(runs, run_dirs) if (read_config(d) or {}).get("label_smoothing")]
    fig, (loss_ax, top1_ax, lr_ax) = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": [3, 3, 2]})
    for index, ((name, m), run_dir) in enumerate(zip(runs, run_dirs)):
        color, label = f"C{index}", f"{name} " if len(runs) > 1 else ""
        x = m["epoch"] if against == "epoch" else minutes_of(run_dir, m)
        for ax, key in ((loss_ax, "loss"), (top1_ax, "top1")):
            scale = 100 if key == "top1" else 1
            mixed = m.get("dominant_label")  # MixUp/CutMix: loss against the mixed targets, top-1 against the dominant label
            train_label = f"train ({'dominant label' if key == 'top1' else 'mixed targets'})" if mixed else "train"
            ax.plot(x, [v * scale for v in m[f"train_{key}"]], color=color, linestyle="--", marker=".", label=f"{label}{train_label}")
            ax.plot(x, [v * scale for v in m[f"val_{key}"]], color=color, marker="o", label=f"{label}val")
        test = read_test_metrics(run_dir).get("final", {})
        if against == "minutes" and "elapsed_minutes" in test:
            top1_ax.plot([test["elapsed_minutes"]], [test["top1"] * 100], color=color, marker="*", markersize=12,
                         linestyle="none", label=f"{label}test {test['top1']:.1%}")
        lr_ax.plot(x, m["lr"], color=color, marker=".", label=name)
    loss_ax.set(title=f"loss{smoothing_note(smoothed, len(runs))}", ylabel="cross-entropy")
    top1_ax.set(title="top-1 accuracy", ylabel="%")
    lr_ax.set(title="learning rate at the end of the epoch", yscale="log")
    set_x_axes((loss_ax, top1_ax, lr_ax), against, max(max(m["epoch"]) for _, m in runs))
    for ax in (loss_ax, top1_ax) + ((lr_ax,) if len(runs) > 1 else ()):
        ax.legend(fontsize="small")
    fig.suptitle(", ".join(name for name, _ in runs))
    fig.tight_layout()
    return fig


def minutes_of(run_dir, metrics):
    """The wall-clock minute at which each epoch's validation ended, or a DataError for a run from
    before metrics.csv recorded it."""
    minutes = metrics.get("elapsed_minutes", [])
    if not minutes or any(value != value for value in minutes):  # (NaN: not recorded)
        raise DataError(f"{run_dir}/metrics.csv has no elapsed_minutes (train.py records them since 2026-12-07): "
                        "draw it against epochs")
    return minutes


def set_x_axes(axes, against, last_epoch):
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xlabel(AGAINST[against])
        if against == "epoch":
            ax.set_xlim(0.5, last_epoch + 0.5)  # room for whole-epoch ticks, even in a 1-epoch run
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        else:
            ax.set_xlim(left=0)


def read_runs(run_dirs):
    """([(name, metrics)], their directories): in a comparison, a run with nothing to draw yet
    (or a folder that is no run) is left out with a note; alone, it is an error."""
    runs, drawn = [], []
    for run_dir in run_dirs:
        try:
            runs.append((os.path.basename(os.path.normpath(run_dir)), read_metrics(run_dir)))
            drawn.append(run_dir)
        except DataError as error:
            if len(run_dirs) == 1:
                raise
            print(f"note: left out of the picture: {error}", file=sys.stderr)
    if not runs:
        raise DataError("none of the runs has a finished epoch to draw")
    return runs, drawn


def smoothing_note(smoothed, num_runs):
    """The loss panel says when a train loss includes label smoothing (val losses never do)."""
    if not smoothed:
        return ""
    if len(smoothed) == num_runs:
        return " (train includes label smoothing)"
    return f" (train of {', '.join(smoothed)} includes label smoothing)"


def draw_curves_or_explain(run_dir):
    """train.py's end of run: draw curves.png, or say why not and carry on."""
    try:
        out = draw_curves([run_dir], os.path.join(run_dir, CURVES))
    except ImportError:
        print(f"note: {INSTALL_HINT}", file=sys.stderr)
        return None
    except (DataError, OSError) as error:
        print(f"note: no curves.png ({error})", file=sys.stderr)
        return None
    print(f"curves: {out}")
    return out


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories written by train.py")
    parser.add_argument("--out", help="the PNG to write (default: RUN_DIR/curves.png for one run)")
    parser.add_argument("--against", choices=tuple(AGAINST), default="epoch",
                        help="the x axis: epochs, or wall-clock minutes since train.py started (then the test top-1 is "
                             "marked where the run ended)")
    args = parser.parse_args(argv)
    if len(args.run_dirs) > 1 and not args.out:
        parser.error("with several runs, name the picture with --out")
    out = args.out or os.path.join(args.run_dirs[0], CURVES)
    try:
        if args.out:
            check_output_path(out, "--out")
        draw_curves(args.run_dirs, out, args.against)
    except ImportError:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write {out}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    exit_quietly_on_ctrl_c()
    sys.exit(main())
