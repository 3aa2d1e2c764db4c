"""train.py --lr-find: the learning-rate range test, on generated data: a geometric sweep of the
lr, stopped when the loss diverges, its curve and suggestion written, and no run left behind."""
import csv
import os

import pytest

import lr_find
import train
import train_flags

FAST = ["--batch-size", "16", "--device", "cpu", "--embed-dim", "16", "--depth", "1"]


def test_the_sweep_grows_geometrically_from_its_start_to_its_end():
    lrs = [lr_find.lr_at(step, 41) for step in range(41)]
    assert lrs[0] == pytest.approx(lr_find.START) and lrs[-1] == pytest.approx(lr_find.END)
    ratios = [later / earlier for earlier, later in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([(lr_find.END / lr_find.START) ** (1 / 40)] * 40)


def curve(*losses):
    return [{"lr": 10.0 ** (index - 5), "smoothed_loss": loss} for index, loss in enumerate(losses)]


def test_the_suggestion_is_a_tenth_of_the_lr_at_the_lowest_smoothed_loss_where_there_is_a_clear_one():
    assert lr_find.suggest(curve(3.0, 2.0, 1.5, 9.0)) == pytest.approx(1e-4)
    assert lr_find.suggest(curve(float("nan"), 3.0, 1.5, float("nan"))) == pytest.approx(1e-4)  # NaN is no minimum
    assert lr_find.suggest(curve(3.0, 2.9, 2.8, 3.5)) is None  # never fell to 90% of its start: no minimum
    assert lr_find.suggest(curve(3.0, 2.0, 1.5, 1.0)) is None  # still falling at the end: not found yet


def test_lr_find_sweeps_until_the_loss_diverges_writes_its_curve_and_leaves_no_run(prepared_once, tmp_path, capsys):
    """Adam's lr swept to 10 on a tiny CvT: the loss blows up before the last of 60 steps. The
    folder holds the csv and the plot and nothing a run would leave (no checkpoint, config or
    status), and the printed suggestion is the csv's."""
    run_dir = tmp_path / "find"
    assert train.main(["--lr-find", "--lr-find-steps", "60", "--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST]) == 0
    assert sorted(os.listdir(run_dir)) == ["lr_find.csv", "lr_find.png"]
    with open(run_dir / "lr_find.csv") as f:
        rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]
    assert [row["step"] for row in rows] == list(range(len(rows)))
    assert [row["lr"] for row in rows] == pytest.approx([lr_find.lr_at(step, 60) for step in range(len(rows))])
    lowest = min(row["smoothed_loss"] for row in rows)
    assert len(rows) < 60 and not rows[-1]["smoothed_loss"] <= lr_find.DIVERGED * lowest  # stopped where it diverged
    assert all(row["smoothed_loss"] <= lr_find.DIVERGED * lowest for row in rows[:-1])
    out = capsys.readouterr().out
    assert "the loss diverged" in out and f"suggested --lr {lr_find.suggest(rows):.2g}" in out


@pytest.mark.parametrize("flags, said", [
    (["--lr-find", "--resume", "runs/x/last.pt"], "drop --resume"),
    (["--lr-find", "--time-budget", "5"], "drop --time-budget"),
    (["--lr-find", "--epochs", "3"], "drop --epochs"),
    (["--lr-find", "--save-top-k", "2"], "drop --save-top-k"),
    (["--lr-find", "--lr-find-steps", "0"], "--lr-find-steps must be at least 1, got 0"),
    (["--lr-find-steps", "50"], "--lr-find-steps goes with --lr-find"),
])
def test_flags_that_belong_to_a_run_or_to_lr_find_alone_are_refused_in_one_line(flags, said, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_flags.parse_args(flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and said in err[0]


def test_a_run_dir_that_is_a_file_is_refused_before_the_sweep(prepared_once, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    assert train.main(["--lr-find", "--data-dir", prepared_once, "--run-dir", str(tmp_path / "taken"), *FAST]) == 2
    captured = capsys.readouterr()
    assert "is a file" in captured.err and "lr range test:" not in captured.out.replace("lr range test on", "")
