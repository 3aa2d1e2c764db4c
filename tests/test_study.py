"""benchmarks/study.py: a grid of train.py runs, one folder each, restartable (finished runs
skipped, a killed run resumed, not restarted), failures reported without stopping the grid;
and the acceptance check of the study's table: compare.py's figures are evaluate.py's."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import compare
import evaluate
import train
from benchmarks import study as benchmarks_study
from conftest import ROOT
from layout import data_identity, read_meta
from model import cost_row
from recipe import PRESETS

STUDY = os.path.join(ROOT, "benchmarks", "study.py")
FAST = ["--batch-size", "16", "--eval-batch-size", "16", "--log-every", "2", "--device", "cpu"]
SMALL_CNN = "cnn-small=--model cnn --channels 8,16,32,64 --hidden-dim 32"


def study(data_dir, out_dir, *flags, **kwargs):
    command = [sys.executable, STUDY, "--data-dir", data_dir, "--out-dir", str(out_dir), "--quiet", *FAST, *flags]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs)


def progress_lines(output):
    return [line for line in output.splitlines() if line.startswith("[")]


def epochs_in(run_dir):
    return [row["epoch"] for row in csv.DictReader(open(run_dir / "metrics.csv"))]


@pytest.fixture(scope="module")
def grid(prepared_once, tmp_path_factory):
    """Two seeds of the default model and one of a small CNN, one epoch each."""
    out = tmp_path_factory.mktemp("study") / "grid"
    first = study(prepared_once, out, "--seeds", "0", "1", "--epochs", "1", "--no-table")
    second = study(prepared_once, out, "--models", SMALL_CNN, "--seeds", "0", "--epochs", "1")
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    return out, first.stdout, second.stdout


def test_each_run_gets_its_folder_and_a_progress_line(grid):
    out, first, second = grid
    assert sorted(os.listdir(out)) == ["cnn-small-seed-s0", "cvt-simplified-seed-s0", "cvt-simplified-seed-s1"]
    lines = progress_lines(first)
    assert [line.split(":")[0] for line in lines] == ["[1/2] cvt-simplified-seed-s0"] * 2 + ["[2/2] cvt-simplified-seed-s1"] * 2
    assert "python" in lines[0] and "--seed 0" in lines[0] and f"--run-dir {out / 'cvt-simplified-seed-s0'}" in lines[0]
    assert "finished in" in lines[1] and "test top-1" in lines[1]
    assert json.load(open(out / "cnn-small-seed-s0" / "config.json"))["model_config"]["channels"] == [8, 16, 32, 64]
    assert "| cnn (channels 8,16,32,64, hidden-dim 32) | seed (batch 16) | 1 | 1 |" in second  # the table at the end


def test_the_table_matches_evaluate_and_the_model_list(grid, tmp_path):
    """The issue's acceptance check: compare.py on the three folders gives two rows whose
    figures are the mean and std of evaluate.py's reports, and model.py's parameter counts."""
    out, _, _ = grid
    runs = [out / "cvt-simplified-seed-s0", out / "cvt-simplified-seed-s1", out / "cnn-small-seed-s0"]
    assert compare.main([*map(str, runs), "--json", str(tmp_path / "t.json"), "--no-speed"]) == 0
    rows = json.load(open(tmp_path / "t.json"))
    assert [row["seeds"] for row in rows] == [2, 1]
    reports = [evaluate.run(evaluate.parse_args([str(run / "last.pt"), "--device", "cpu"])) for run in runs]
    for name, key in compare.FIGURES.items():
        values = [report[key] for report in reports]
        mean = sum(values[:2]) / 2
        assert rows[0][f"{name}_mean"] == pytest.approx(mean, rel=1e-6), name
        assert rows[0][f"{name}_std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5, rel=1e-5, abs=1e-9), name
        assert rows[1][f"{name}_mean"] == pytest.approx(values[2], rel=1e-6) and rows[1][f"{name}_std"] is None, name
    assert rows[0]["params"] == cost_row("cvt-simplified", 4)["parameters"] == reports[0]["parameters"]
    assert rows[1]["params"] == cost_row("cnn", 4, channels=(8, 16, 32, 64), hidden_dim=32)["parameters"]


def test_finished_runs_are_skipped_and_more_epochs_extend_them(grid, prepared_once):
    out, _, _ = grid
    again = study(prepared_once, out, "--seeds", "0", "1", "--epochs", "1", "--no-table")
    assert again.returncode == 0
    assert [line.split(": ", 1)[1] for line in progress_lines(again.stdout)] == ["finished before (1 epochs), skipped"] * 2
    fewer = study(prepared_once, out, "--models", SMALL_CNN, "--seeds", "0", "--epochs", "1", "--print")
    assert fewer.stdout.strip() == "# cnn-small-seed-s0: finished (1 epochs)"
    more = study(prepared_once, out, "--models", SMALL_CNN, "--seeds", "0", "--epochs", "2", "--print")
    assert len(more.stdout.strip().splitlines()) == 1 and more.stdout.strip().endswith(f"--epochs 2 --seed 0 {' '.join(FAST)} --model cnn --channels 8,16,32,64 --hidden-dim 32 "
                                        f"--recipe seed --resume {out / 'cnn-small-seed-s0' / 'last.pt'}")
    torchrun = study(prepared_once, out, "--seeds", "2", "--print", "--nproc-per-node", "4")
    assert torchrun.stdout.startswith("torchrun --standalone --nproc-per-node=4 ")


@pytest.mark.parametrize("recipe", list(PRESETS))
def test_the_grid_extends_a_run_of_every_recipe_as_train_py_resume_does(recipe, prepared_once, tmp_path):
    """resume.run_differences decides for both: a warm-up that is a share of the run (vit-small-data's
    10%, study's 5 epochs cut to fit 1) and a recipe's model settings (stochastic depth) are the
    run's, not a difference, when the grid asks for more epochs."""
    tiny_vit = ("vit", ["--model", "vit", "--embed-dim", "16", "--depth", "1", "--num-heads", "2"])

    def grid_run(epochs):
        args = SimpleNamespace(out_dir=str(tmp_path), epochs=epochs, data_dir=prepared_once)
        run = benchmarks_study.GridRun(tiny_vit, (recipe, ["--recipe", recipe]), 0, args, FAST)
        run.parsed = benchmarks_study.parse_train_flags(run)
        return run

    data = data_identity(read_meta(prepared_once))
    assert train.main(grid_run(1).train_argv("new")) == 0
    longer = grid_run(2)
    assert longer.state(data) == ("resume", 1)
    assert train.main(longer.train_argv("resume")) == 0
    assert longer.state(data) == ("finished", 2)


def test_a_grid_killed_mid_run_resumes_that_run(prepared_once, tmp_path):
    out = tmp_path / "grid"
    command = [sys.executable, STUDY, "--data-dir", prepared_once, "--out-dir", str(out), "--quiet", "--no-table",
               "--seeds", "0", "1", "--epochs", "3", *FAST]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    second = out / "cvt-simplified-seed-s1"
    deadline = time.monotonic() + 300
    while not ((second / "metrics.csv").exists() and (second / "last.pt").exists()) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the grid and its train.py, with no chance to clean up
    process.wait()
    saved = torch.load(second / "last.pt", weights_only=True)["progress"]["epoch"]  # (metrics.csv may be a row ahead)
    before = list(csv.DictReader(open(second / "metrics.csv")))[:saved]
    assert not (second / "test_metrics.json").exists() and 1 <= saved < 3
    resumed = study(prepared_once, out, "--seeds", "0", "1", "--epochs", "3", "--no-table")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = progress_lines(resumed.stdout)
    assert lines[0] == "[1/2] cvt-simplified-seed-s0: finished before (3 epochs), skipped"
    assert lines[1].startswith(f"[2/2] cvt-simplified-seed-s1: resuming from its last.pt ({len(before)} of 3 epochs done")
    assert "--resume" in lines[1]
    after = list(csv.DictReader(open(second / "metrics.csv")))
    assert epochs_in(second) == [str(e) for e in range(1, 4)] and after[:len(before)] == before  # continued, not redone


def test_a_failed_run_is_reported_and_the_others_go_on(prepared_once, tmp_path):
    result = study(prepared_once, tmp_path / "grid", "--models", "huge=--model cvt-simplified --batch-size 100000",
                   "cvt-simplified", "--seeds", "0", "--epochs", "1", "--no-table")
    assert result.returncode == 1
    lines = progress_lines(result.stdout)
    assert lines[1].startswith("[1/2] huge-seed-s0: FAILED after") and "(exit code 2)" in lines[1]
    assert "--batch-size 100000 is larger than the training set" in lines[1]
    assert lines[3].startswith("[2/2] cvt-simplified-seed-s0: finished in")
    assert result.stdout.splitlines()[-1].startswith("1 of 2 runs finished in ")
    assert "; failed: huge-seed-s0 (see why above" in result.stdout.splitlines()[-1]


def test_a_folder_holding_another_run_is_refused_not_skipped(grid, prepared_once):
    out, _, _ = grid
    other = study(prepared_once, out, "--seeds", "0", "--epochs", "1", "--lr", "0.003", "--no-table")
    assert other.returncode == 1
    assert progress_lines(other.stdout)[0].endswith("holds a run with other settings (--lr 0.003 (the run has 0.001)): "
                                                    "use another --out-dir or label")
    wider = study(prepared_once, out, "--models", "cnn-small=--model cnn", "--seeds", "0", "--epochs", "1", "--no-table")
    assert wider.returncode == 1  # the same label, the model at its defaults: not the run in the folder
    assert "holds a run with other settings (--channels 64,128,256,512 (the run has 8,16,32,64)" in wider.stdout
    assert "--hidden-dim 1024 (the run has 32)" in wider.stdout
    status = out / "cnn-small-seed-s0" / "status.json"
    saved = status.read_text()
    try:  # as if this very process were training it
        json.dump({"state": "running", "pid": os.getpid(), "host": socket.gethostname()}, open(status, "w"))
        busy = study(prepared_once, out, "--models", SMALL_CNN, "--seeds", "0", "--epochs", "1", "--no-table")
    finally:
        status.write_text(saved)
    assert busy.returncode == 1 and "may be training now (running)" in busy.stdout


@pytest.mark.parametrize("flags, message", [
    (["--seed", "3"], "its flags set --seed, which the grid sets"),
    (["--epoch", "3"], "its flags set --epochs, which the grid sets"),
    (["--recipes", "x=--model cnn"], "--model in --model cnn: give models with --models"),
    (["--models", "../x=--model cnn"], "label '../x': a label names a folder"),
    (["--models", "cnn", "--embed-dim", "32"], "cnn-seed-s0: train.py refuses its flags: cnn has no setting --embed-dim"),
    (["--lr", "-1"], "train.py refuses its flags: --lr must be positive, got -1.0"),
    (["--models", "a=--model cnn", "a=--model vit"], "two runs of the grid would share the folder a-seed-s0"),
    (["--recipes", "x=--run-dir elsewhere"], "where runs go is the grid's to say: use --out-dir"),
    (["--models", "x=--model cnn --run-dir elsewhere"], "where runs go is the grid's to say: use --out-dir"),
    (["--models", "cnn", "--model", "vit"], "--model in "),
    (["--models", 'x=--model "vit'], "an entry's flags cannot be read (No closing quotation)"),
])
def test_bad_flags_are_one_line_before_any_training(prepared_once, tmp_path, capsys, flags, message):
    argv = ["--data-dir", prepared_once, "--out-dir", str(tmp_path / "grid"), "--quiet", *FAST, *flags]
    try:  # in this process: nothing may start before the flags are refused
        code = benchmarks_study.main(argv)
    except SystemExit as exit_info:  # the grid's own parser
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "grid").exists()
