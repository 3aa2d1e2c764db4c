"""metrics.csv as each epoch ends, and curves.png: at the end of training, on demand, and a
clear note when matplotlib is missing."""
import csv
import importlib.util
import json
import sys

import pytest
import torch

import curves
import train
from conftest import signal_during_training

FAST = ["--batch-size", "16", "--eval-batch-size", "16", "--log-every", "2", "--device", "cpu"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# matplotlib is in requirements.txt; a machine without it still runs the test written for that case.
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")


def is_png(path):
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5_000


def crash_in_epoch(monkeypatch, epoch_to_crash):
    """Make training fail with an unexpected error in that epoch (after epoch-1 completed)."""
    original = train.run_epoch

    def run_epoch(r, epoch, stop):
        if epoch == epoch_to_crash:
            raise RuntimeError("simulated crash")
        return original(r, epoch, stop)

    monkeypatch.setattr(train, "run_epoch", run_epoch)


@needs_matplotlib
def test_training_draws_the_curves_at_the_end(prepared_once, tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, "--epochs", "2"]) == 0
    assert is_png(run_dir / "curves.png")
    assert f"curves: {run_dir}/curves.png" in capsys.readouterr().out


@needs_matplotlib
def test_a_crashed_run_keeps_its_history_and_can_be_drawn_on_demand(prepared_once, tmp_path, monkeypatch):
    run_dir = tmp_path / "r"
    crash_in_epoch(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, "--epochs", "4"])
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # written as each epoch ended
    assert not (run_dir / "curves.png").exists()
    assert curves.main([str(run_dir)]) == 0
    assert is_png(run_dir / "curves.png")


@needs_matplotlib
def test_several_runs_in_one_picture(prepared_once, tmp_path):
    for name in ("a", "b"):
        assert train.main(["--data-dir", prepared_once, "--run-dir", str(tmp_path / name), *FAST, "--epochs", "1",
                           "--seed", str(ord(name))]) == 0
    assert curves.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "both.png")]) == 0
    assert is_png(tmp_path / "both.png")


@needs_matplotlib
def test_runs_against_wall_clock_minutes_with_the_test_marked_where_each_ended(prepared_once, tmp_path, capsys):
    """--against minutes: each val point at the minute its epoch's validation ended (metrics.csv's
    elapsed_minutes), the test's top-1 at the minute the run ended; a run from before that record
    is refused in one line."""
    for name in ("a", "b"):
        assert train.main(["--data-dir", prepared_once, "--run-dir", str(tmp_path / name), *FAST, "--epochs", "2",
                           "--seed", str(ord(name))]) == 0
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    figure = curves.build_figure(runs, against="minutes")
    top1_ax = figure.axes[1]
    val = [line for line in top1_ax.get_lines() if line.get_label() == "a val"][0]
    assert list(val.get_xdata()) == curves.read_metrics(runs[0])["elapsed_minutes"]
    test = [line for line in top1_ax.get_lines() if line.get_label().startswith("a test ")][0]
    recorded = json.load(open(tmp_path / "a" / "test_metrics.json"))["final"]
    assert (test.get_xdata()[0], test.get_ydata()[0]) == (recorded["elapsed_minutes"], recorded["top1"] * 100)
    assert test.get_xdata()[0] >= val.get_xdata()[-1] and top1_ax.get_xlabel() == "wall-clock minutes since train.py started"
    assert curves.main([*runs, "--against", "minutes", "--out", str(tmp_path / "hour.png")]) == 0 and is_png(tmp_path / "hour.png")
    metrics = tmp_path / "a" / "metrics.csv"
    rows = list(csv.DictReader(open(metrics)))
    with open(metrics, "w", newline="") as f:  # as train.py wrote it before elapsed_minutes
        writer = csv.DictWriter(f, [key for key in rows[0] if key != "elapsed_minutes"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert curves.main([runs[0], "--against", "minutes", "--out", str(tmp_path / "old.png")]) == 2
    assert capsys.readouterr().err.strip().endswith("has no elapsed_minutes (train.py records them since 2026-12-07): "
                                                    "draw it against epochs")
    import matplotlib.pyplot as plt

    plt.close("all")


def test_without_matplotlib_training_says_how_to_install_it_and_carries_on(prepared_once, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    run_dir = tmp_path / "r"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, "--epochs", "1"]) == 0
    assert "pip install matplotlib" in capsys.readouterr().err
    assert not (run_dir / "curves.png").exists() and (run_dir / "test_metrics.json").exists()
    assert curves.main([str(run_dir)]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def test_curves_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert curves.main([str(tmp_path)]) == 2
    assert "no metrics.csv" in capsys.readouterr().err


def test_curves_of_a_run_stopped_in_its_first_epoch_say_so(prepared_once, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "r"
    signal_during_training(monkeypatch, epoch=0, step=1)
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, "--epochs", "2"]) == 130
    capsys.readouterr()
    assert curves.main([str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {run_dir}/ has no finished epoch yet (metrics.csv gets a row as each epoch ends): draw it once one has ended"


@needs_matplotlib
def test_one_epoch_runs_have_whole_epoch_ticks_and_smoothing_is_named_only_when_used(prepared_once, tmp_path):
    plain, smoothed = tmp_path / "plain", tmp_path / "smoothed"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(plain), *FAST, "--epochs", "1"]) == 0
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(smoothed), *FAST, "--epochs", "1",
                       "--label-smoothing", "0.1"]) == 0
    figure = curves.build_figure([str(plain)])
    loss_ax, _, lr_ax = figure.axes
    for ax in figure.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert loss_ax.get_title() == "loss" and lr_ax.get_legend() is None  # one run: nothing to tell apart
    assert curves.build_figure([str(smoothed)]).axes[0].get_title() == "loss (train includes label smoothing)"
    both = curves.build_figure([str(plain), str(smoothed)])
    assert both.axes[0].get_title() == "loss (train of smoothed includes label smoothing)"
    assert [t.get_text() for t in both.axes[2].get_legend().get_texts()] == ["plain", "smoothed"]
    import matplotlib.pyplot as plt

    plt.close("all")


@needs_matplotlib
def test_a_comparison_leaves_out_a_run_with_nothing_to_draw_yet(prepared_once, tmp_path, monkeypatch, capsys):
    done, stopped = tmp_path / "done", tmp_path / "stopped"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(done), *FAST, "--epochs", "1"]) == 0
    signal_during_training(monkeypatch, epoch=0, step=1)
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(stopped), *FAST, "--epochs", "1"]) == 130
    capsys.readouterr()
    assert curves.main([str(done), str(stopped), "--out", str(tmp_path / "both.png")]) == 0
    assert is_png(tmp_path / "both.png")
    assert f"note: left out of the picture: {stopped}/ has no finished epoch yet" in capsys.readouterr().err
    assert curves.main([str(stopped), str(tmp_path), "--out", str(tmp_path / "none.png")]) == 2
    assert "none of the runs has a finished epoch to draw" in capsys.readouterr().err


@needs_matplotlib
def test_out_folder_is_created_and_a_directory_is_refused(prepared_once, tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, "--epochs", "1"]) == 0
    assert curves.main([str(run_dir), "--out", str(tmp_path / "new" / "folder" / "c.png")]) == 0
    assert is_png(tmp_path / "new" / "folder" / "c.png")
    capsys.readouterr()
    assert curves.main([str(run_dir), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_metrics_hold_the_epoch_lr_of_the_schedule(prepared_once, tmp_path):
    run_dir = tmp_path / "r"
    flags = ["--epochs", "2", "--lr-schedule", "cosine", "--min-lr", "0"]
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, *flags]) == 0
    lrs = [float(r["lr"]) for r in csv.DictReader(open(run_dir / "metrics.csv"))]
    assert lrs[0] < 1e-3 and lrs[1] < lrs[0]
    assert torch.load(run_dir / "last.pt", weights_only=True)["progress"]["history"][1]["lr"] == lrs[1]
