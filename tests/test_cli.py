"""What a user sees on the command line: --help with every default, progress in log files,
a quiet Ctrl-C at start-up, and runs.py's listing of run states."""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, signal_during_training

import cli
import compare
import curves
import data
import evaluate
import model
import prepare_data
import rundir
import runs
import synthetic
import train
from benchmarks import bench, study

FAST = ["--batch-size", "16", "--eval-batch-size", "16", "--log-every", "2", "--device", "cpu"]
SCRIPTS = ("prepare_data.py", "train.py", "evaluate.py", "curves.py", "runs.py")


def parser_of(module):
    """The script's real ArgumentParser (the one with --help), caught as main() builds it."""
    built = []
    original = argparse.ArgumentParser.parse_known_args  # (parse_args calls it too)

    def capture(self, *args, **kwargs):
        if not self.add_help:  # train.py's probe for explicitly given flags
            return original(self, *args, **kwargs)
        built.append(self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_known_args = capture
    try:
        with pytest.raises(SystemExit):
            module.main(["x"])
    finally:
        argparse.ArgumentParser.parse_known_args = original
    return built[-1]


@pytest.mark.parametrize("module", [prepare_data, train, evaluate, curves, runs, data, model, synthetic, bench, study, compare])
def test_help_shows_every_default(module):
    """Every flag with a default value says it in --help (switches and unset flags explain
    themselves in words)."""
    parser = parser_of(module)
    text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
            assert action.help, action.option_strings
            assert f"(default: {action.default})" in " ".join(text.split()), action.option_strings


def test_switches_do_not_claim_a_default_value():
    no_ema = next(a for a in parser_of(evaluate)._actions if "--no-ema" in a.option_strings)
    assert "(default:" not in parser_of(evaluate).format_help().split("--no-ema")[1].split("--json")[0]
    assert no_ema.default is True  # argparse's store_false: a "(default: True)" would read as "on by default"


def test_help_names_the_data_dir_epochs_recipe_values_and_synthetic_sizes():
    prepare_help = " ".join(parser_of(prepare_data).format_help().split())
    for fragment in ("(default: data)", "number of synthetic classes (default: 10)", "(default: 200)", "(default: 50)"):
        assert fragment in prepare_help
    train_help = " ".join(parser_of(train).format_help().split())
    for fragment in ("(default: data)", "(default: 10)", "peak learning rate (default: 0.001)", "(default: adam)"):
        assert fragment in train_help


def test_help_from_the_command_line_for_every_script():
    for script in SCRIPTS:
        result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.startswith("usage:"), script
        assert script == "runs.py" or "(default:" in result.stdout, script  # runs.py has no flag with a default


def test_a_default_run_never_imports_torchvision(prepared_once, tmp_path):
    """Importing torchvision costs ~1.6 s, 40% of a script's start-up on 2 cores: only the models
    and augmentations that use it (resnet18, stochastic depth, equalize, MixUp/CutMix) import it."""
    command = [sys.executable, "-X", "importtime", "train.py", "--data-dir", prepared_once, "--epochs", "1",
               "--run-dir", str(tmp_path / "run"), *FAST]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "evaluation" in imported  # the trace covers the whole run
    assert not any(name.split(".")[0] == "torchvision" for name in imported)


@pytest.mark.parametrize("argv", [["train.py", "--epochs", "0"], ["train.py", "--bogus"], ["evaluate.py", "c.pt", "--files", "a.jpg"],
                                  ["prepare_data.py", "--synthetic", "--zip", "z.zip"], ["curves.py"]])
def test_a_bad_flag_is_one_line_with_exit_code_2(argv):
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and ": error: " in result.stderr and "(--help lists the flags)" in result.stderr


# Put on the child's path as sitecustomize (run at start-up, before the script): the first
# submodule torch imports (torch's __init__ has begun, and not ended) says so, then waits.
HOLD_INSIDE_THE_TORCH_IMPORT = """
import signal, sys, time

signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal, even if the runner ignores SIGINT


class HoldInsideTheTorchImport:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("torch."):
            sys.meta_path.remove(self)
            print("importing torch", file=sys.stderr, flush=True)
            time.sleep(120)  # the parent's SIGINT ends this, and the import with it
        return None


sys.meta_path.insert(0, HoldInsideTheTorchImport())
"""


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])  # the scripts that import torch
def test_ctrl_c_while_torch_imports_prints_one_line_not_a_traceback(script, tmp_path):
    """A handshake, no timing guess: the child says when torch has begun importing and holds
    there, so the signal always lands inside `import torch`."""
    (tmp_path / "sitecustomize.py").write_text(HOLD_INSIDE_THE_TORCH_IMPORT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, script, "--help"], cwd=ROOT, env=env, text=True,
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stderr.readline() == "importing torch\n"
        process.send_signal(signal.SIGINT)
        out, rest = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert [line for line in rest.splitlines() if line.strip()] == ["interrupted"]  # no traceback
    assert out == "" and process.returncode in (130, -signal.SIGINT)


def test_progress_in_a_log_file_is_plain_lines_with_time_left(prepared_once, tmp_path, monkeypatch, capsys):
    """Not on a terminal (capsys is not one): no tqdm frames, a plain line every
    PLAIN_PROGRESS_SECONDS with the step, loss, images/s and the time left."""
    monkeypatch.setattr(cli, "PLAIN_PROGRESS_SECONDS", 0)
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(tmp_path / "r"), *FAST, "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("epoch 1/1: ")]
    assert len(lines) == 6  # 96 images / 16: a line per step when the interval is 0
    assert lines[0].startswith("epoch 1/1: 1/6 steps (17%)") and lines[-1].startswith("epoch 1/1: 6/6 steps (100%)")
    assert "loss " in lines[1] and " img/s" in lines[1] and lines[1].endswith(" left")


def test_prepare_progress_in_a_log_file_has_no_carriage_returns(tiny_zip, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "PLAIN_PROGRESS_SECONDS", 0)
    assert prepare_data.main(["--zip", tiny_zip, "--data-dir", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "pack train: 96/96 images (100%)" in err


def test_shell_commands_quote_paths_with_spaces():
    assert cli.shell_command("train.py", "--resume", "my runs/a/last.pt") == "python train.py --resume 'my runs/a/last.pt'"


# ---------------------------------------------------------------- runs.py


def test_runs_lists_finished_interrupted_crashed_and_killed_runs(prepared_once, tmp_path, monkeypatch, capsys):
    base = ["--data-dir", prepared_once, *FAST]
    assert train.main([*base, "--run-dir", str(tmp_path / "done"), "--epochs", "2", "--recipe", "improved", "--depth", "1"]) == 0
    with monkeypatch.context() as patch:
        signal_during_training(patch, epoch=1, step=1)
        assert train.main([*base, "--run-dir", str(tmp_path / "stopped"), "--epochs", "2"]) == 130
    with monkeypatch.context() as patch:
        patch.setattr(train, "evaluate_test", lambda r: (_ for _ in ()).throw(RuntimeError("disk on fire")))
        with pytest.raises(RuntimeError):
            train.main([*base, "--run-dir", str(tmp_path / "crashed"), "--epochs", "1"])
    killed = tmp_path / "killed"
    assert train.main([*base, "--run-dir", str(killed), "--epochs", "1"]) == 0
    with monkeypatch.context() as patch:  # extended by one epoch, then SIGKILLed: status.json still says
        patch.setattr(train, "evaluate_test", lambda r: {})
        patch.setattr(rundir.RunStatus, "set", lambda self, state, detail=None: None)  # running, with a pid
        assert train.main(["--resume", str(killed / "last.pt"), "--epochs", "2", "--device", "cpu"]) == 0  # that is gone:
    status = json.load(open(killed / "status.json"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    json.dump({**status, "pid": int(dead.stdout)}, open(killed / "status.json", "w"))
    early = tmp_path / "early"  # a second Ctrl-C before the first checkpoint
    early.mkdir()
    json.dump({"epochs": 2, "recipe": "seed"}, open(early / "config.json", "w"))
    json.dump({"state": "interrupted", "detail": "stopped at once (second Ctrl-C)"}, open(early / "status.json", "w"))
    (tmp_path / "picture.png").write_bytes(b"not a run")
    capsys.readouterr()

    assert runs.main([str(tmp_path)]) == 0
    lines = {line.split(" | ")[0].lstrip("| ").split("/")[-1]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert sorted(lines) == ["crashed", "done", "early", "killed", "stopped"]
    done = json.load(open(tmp_path / "done" / "test_metrics.json"))["final"]
    assert "| improved | 2/2 |" in lines["done"] and f"| {done['top1']:.2%} | finished |" in lines["done"]
    assert "| seed | 1/2 |" in lines["stopped"] and f"interrupted: python train.py --resume {tmp_path}/stopped/last.pt" in lines["stopped"]
    assert lines["crashed"].endswith("crashed: disk on fire |") and "| 1/1 |" in lines["crashed"]
    # an extended run is not finished: the shorter run's test figure is not shown as its own
    assert lines["killed"].endswith("| - | killed (no clean stop) |") and "| 2/2 |" in lines["killed"]
    assert lines["early"].endswith("| 0/2 | - | - | interrupted before its first checkpoint |")
    assert "(epoch " in lines["done"] and "| cvt-simplified (depth 1) | improved |" in lines["done"]
    assert "| cvt-simplified | seed |" in lines["stopped"]  # the model and the settings it changed


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="zombies are told apart through /proc")
def test_a_process_that_ended_unreaped_is_not_running(tmp_path):
    """A train.py killed with its parent stays a zombie where nothing reaps orphans (a container
    whose first process is not an init): its status.json must not keep the run 'running'."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def state_while_status_names(pid):
        (run_dir / "status.json").write_text(json.dumps({"state": "running", "host": socket.gethostname(), "pid": pid}))
        return runs.run_state(str(run_dir))

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:  # alive until its stdin closes
        assert not runs.is_zombie(child.pid) and runs.process_alive(child.pid) is True
        assert state_while_status_names(child.pid) == "running"
    finally:
        child.stdin.close()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # returns once it has ended, leaving it unreaped
    assert runs.is_zombie(child.pid)  # kill(pid, 0) still succeeds: only /proc tells
    assert runs.process_alive(child.pid) is False
    assert state_while_status_names(child.pid) == "killed (no clean stop)"
    child.wait()  # reaped: gone altogether
    assert runs.process_alive(child.pid) is False and state_while_status_names(child.pid) == "killed (no clean stop)"


def test_runs_without_any_run_is_a_one_line_error(tmp_path, capsys):
    assert runs.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: no train.py run")


def test_output_piped_into_a_reader_that_stops_early_ends_silently():
    """`python evaluate.py CKPT | head -1`: no BrokenPipeError traceback."""
    script = "import cli; cli.exit_quietly_on_ctrl_c()\nfor _ in range(10**6): print('a line of the report')"
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"a line of the report\n"
    process.stdout.close()  # the reader stops, as head does
    assert process.wait(timeout=60) != 0 and process.stderr.read() == b""
