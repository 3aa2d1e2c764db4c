"""train.py and evaluate.py through their real entry points, on tiny prepared data (CPU)."""
import csv
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import evaluate
import prepare_data
import train
from conftest import ROOT, TINY, assert_same_training_state
from data import load_packed, make_splits, normalize
from checkpoint import load_checkpoint, model_from_checkpoint
from runtime import default_amp
from synthetic import write_synthetic_zip

FAST = ["--batch-size", "16", "--eval-batch-size", "16", "--log-every", "2"]


def train_run(data_dir, run_dir, *extra):
    return train.main(["--data-dir", data_dir, "--run-dir", str(run_dir), "--device", "cpu", *FAST, *extra])


@pytest.fixture(scope="module")
def finished_run(prepared_once, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "r"
    assert train_run(prepared_once, run_dir, "--epochs", "2") == 0
    return run_dir


def test_a_run_writes_config_metrics_checkpoints_and_test_results(finished_run, prepared_once):
    assert sorted(os.listdir(finished_run)) == ["best.pt", "config.json", "curves.png", "last.pt", "metrics.csv",
                                                "status.json", "test_metrics.json"]
    assert json.load(open(finished_run / "status.json"))["state"] == "finished"
    rows = list(csv.DictReader(open(finished_run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) >= {"train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "lr", "seconds", "images_per_s"}
    config = json.load(open(finished_run / "config.json"))
    assert config["optimizer"] == "adam" and config["lr"] == 1e-3 and config["batch_size"] == 16
    assert config["amp_dtype"] == ("bfloat16" if default_amp(torch.device("cpu")) else None)
    # The recorded test numbers are the final model's on the notebook's test split, recomputed
    # here with nothing but the checkpoint, the split and plain torch.
    test = json.load(open(finished_run / "test_metrics.json"))["final"]
    x, y = make_splits(load_packed(prepared_once))["test"]
    with torch.no_grad():
        logits = model_from_checkpoint(load_checkpoint(str(finished_run / "last.pt"))).eval()(normalize(x))
    assert test["images"] == len(y) == 32
    assert test["top1"] == (logits.argmax(1) == y).float().mean().item()
    assert test["top5"] == (logits.topk(4, 1).indices == y[:, None]).any(1).float().mean().item()  # 4 classes: top-4
    assert test["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-5)


def test_checkpoints_hold_only_plain_values_and_the_plain_model(finished_run):
    checkpoint = torch.load(finished_run / "last.pt", weights_only=True)
    assert checkpoint["progress"]["epoch"] == 2 and len(checkpoint["classes"]) == 4
    assert checkpoint["model_config"]["num_classes"] == 4
    assert all(not key.startswith(("_orig_mod.", "module.")) for key in checkpoint["model"])
    assert {"optimizer", "scaler", "rng", "config"} <= checkpoint.keys()


def test_evaluate_reproduces_the_test_accuracy_train_reported(finished_run, tmp_path, capsys):
    reported = json.load(open(finished_run / "test_metrics.json"))["final"]
    out = tmp_path / "m.json"
    assert evaluate.main([str(finished_run / "last.pt"), "--batch-size", "16", "--json", str(out)]) == 0
    measured = json.load(open(out))
    assert measured["top1"] == reported["top1"] and measured["top5"] == reported["top5"]
    assert abs(measured["loss"] - reported["loss"]) < 1e-5
    assert "test: loss" in capsys.readouterr().out


def test_evaluate_other_splits(finished_run, tmp_path):
    for split, images in (("val", 8), ("train", 96)):
        out = tmp_path / f"{split}.json"
        assert evaluate.main([str(finished_run / "best.pt"), "--split", split, "--json", str(out)]) == 0
        assert json.load(open(out))["images"] == images


def test_resume_gives_the_same_weights_and_metrics_as_a_straight_run(prepared_once, finished_run, tmp_path):
    """2 epochs straight == 1 epoch, stop, resume for the second: bit-identical on CPU."""
    run_dir = tmp_path / "r"
    assert train_run(prepared_once, run_dir, "--epochs", "1") == 0
    assert train.main(["--data-dir", prepared_once, "--device", "cpu", *FAST, "--epochs", "2", "--resume", str(run_dir / "last.pt")]) == 0
    straight, resumed = (torch.load(d / "last.pt", weights_only=True) for d in (finished_run, run_dir))
    assert_same_training_state(straight, resumed)


def test_resume_with_a_different_model_is_refused(prepared_once, finished_run, capsys):
    code = train.main(["--data-dir", prepared_once, "--device", "cpu", "--epochs", "3", "--embed-dim", "32", "--resume", str(finished_run / "last.pt")])
    assert code == 2
    assert "--embed-dim 32 (the run has 64)" in capsys.readouterr().err


def test_bf16_autocast_trains_in_bf16_and_its_losses_track_fp32(prepared_once, tmp_path, monkeypatch):
    """--amp really runs the forward in bf16 (the logits come out bf16) and its losses follow the
    fp32 run's within bf16 noise; --no-amp is fp32 throughout."""
    logit_dtypes = []
    original_loss = train.Updater.loss
    monkeypatch.setattr(train.Updater, "loss", lambda self, logits, y: logit_dtypes.append(logits.dtype) or original_loss(self, logits, y))
    losses = {}
    for flag in ("--amp", "--no-amp"):
        logit_dtypes.clear()
        assert train_run(prepared_once, tmp_path / flag, "--epochs", "3", flag) == 0
        assert set(logit_dtypes) == {torch.bfloat16 if flag == "--amp" else torch.float32}
        assert json.load(open(tmp_path / flag / "config.json"))["amp_dtype"] == ("bfloat16" if flag == "--amp" else None)
        losses[flag] = [float(r["train_loss"]) for r in csv.DictReader(open(tmp_path / flag / "metrics.csv"))]
    assert losses["--amp"] != losses["--no-amp"]  # not the same computation ...
    assert losses["--amp"] == pytest.approx(losses["--no-amp"], abs=0.05)  # ... but the same training


@pytest.mark.slow
def test_compiled_training_on_cpu_saves_the_plain_model_and_matches_eager(prepared_once, tmp_path):
    """The compiled model computed the test numbers train.py recorded; evaluate.py recomputes
    them with the eager model from the plain checkpoint: compiled outputs equal eager's."""
    assert train_run(prepared_once, tmp_path / "r", "--epochs", "1", "--compile", "--no-amp") == 0
    checkpoint = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert not any(key.startswith("_orig_mod.") for key in checkpoint["model"])
    assert json.load(open(tmp_path / "r" / "config.json"))["compile"] is True
    recorded = json.load(open(tmp_path / "r" / "test_metrics.json"))["final"]
    assert evaluate.main([str(tmp_path / "r" / "last.pt"), "--device", "cpu", "--batch-size", "16", "--json", str(tmp_path / "e.json")]) == 0
    eager = json.load(open(tmp_path / "e.json"))
    assert eager["top1"] == recorded["top1"] and eager["loss"] == pytest.approx(recorded["loss"], rel=1e-4)  # inductor's own reduction order


@pytest.mark.slow
def test_resume_with_other_machine_flags_continues_the_run(prepared_once, tmp_path, monkeypatch):
    """Precision, compilation and device are the machine's, not the run's: each resume may change
    them (bf16 -> fp32 -> fp16, which starts a fresh GradScaler, -> compiled bf16, which drops it;
    on a machine with CUDA, to the GPU and back). A resume that says nothing keeps the run's own
    choice on the same kind of device (an fp32 run stays fp32) and takes the defaults on another."""
    run = tmp_path / "r"
    assert train_run(prepared_once, run, "--epochs", "1", "--device", "cpu", "--amp", "--amp-dtype", "bfloat16") == 0
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    for group in checkpoint["optimizer"]["param_groups"]:
        group["fused"] = True  # as a CUDA run saves them: the kernel choice must not follow the run
    torch.save(checkpoint, run / "last.pt")
    compiled = []  # --compile through dynamo's capture alone: the plumbing, without the C++ compiler's minutes
    monkeypatch.setattr(train, "maybe_compile",
                        lambda model, enabled, mode: compiled.append(enabled) or (torch.compile(model, backend="eager") if enabled else model))
    cpu = ["--device", "cpu"]
    changes = [([*cpu, "--no-amp"], None, False), (cpu, None, False), ([*cpu, "--amp", "--amp-dtype", "float16"], "float16", False),
               ([*cpu, "--amp-dtype", "bfloat16", "--compile"], "bfloat16", True), (cpu, "bfloat16", True)]
    if torch.cuda.is_available():
        changes += [(["--device", "cuda", "--no-compile"], "bfloat16", False), (cpu, "bfloat16" if default_amp(torch.device("cpu")) else None, False)]
    for epoch, (flags, dtype, is_compiled) in enumerate(changes, start=2):
        assert train.main(["--resume", str(run / "last.pt"), "--epochs", str(epoch), *flags]) == 0, flags
        config = json.load(open(run / "config.json"))
        assert (config["amp_dtype"], config["compile"]) == (dtype, is_compiled), flags
        checkpoint = torch.load(run / "last.pt", weights_only=True)
        assert checkpoint["progress"]["epoch"] == epoch and not any(key.startswith("_orig_mod.") for key in checkpoint["model"])
        assert bool(checkpoint["scaler"]) == (dtype == "float16")
        assert {group["fused"] for group in checkpoint["optimizer"]["param_groups"]} == {True if "cuda" in flags else None}
        assert all(t.device.type == "cpu" for t in torch.utils._pytree.tree_leaves(checkpoint) if isinstance(t, torch.Tensor))
    assert compiled == [is_compiled for _, _, is_compiled in changes]


def test_evaluate_accepts_lightning_compiled_and_ddp_checkpoints_with_prefixes_in_any_mix(finished_run, tmp_path):
    plain = torch.load(finished_run / "last.pt", weights_only=True)["model"]
    lightning = {"state_dict": {f"model.{k}": v for k, v in plain.items()}, "epoch": 9, "pytorch-lightning_version": "2.5.1"}
    wrapped = {f"{prefixes}.pt": {"model": {f"{prefixes}{k}": v for k, v in plain.items()}, "config": {"data_dir": None}}
               for prefixes in ("_orig_mod.", "module._orig_mod.", "_orig_mod.module.", "module.module._orig_mod.")}
    reference = json.load(open(finished_run / "test_metrics.json"))["final"]["top1"]
    data_dir = json.load(open(finished_run / "config.json"))["data_dir"]
    for name, payload in (("lightning.ckpt", lightning), *wrapped.items()):
        torch.save(payload, tmp_path / name)
        out = tmp_path / f"{name}.json"
        heads = ["--num-heads", "1"]  # none records its model: the weights cannot tell the heads (test_model)
        assert evaluate.main([str(tmp_path / name), "--data-dir", data_dir, "--batch-size", "16", "--json", str(out), *heads]) == 0
        assert json.load(open(out))["top1"] == reference


# ---------------------------------------------------------------- bad input: one line, exit 2


def last_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def test_unprepared_data_names_the_command(tmp_path, capsys):
    assert train.main(["--data-dir", str(tmp_path / "nothing"), "--device", "cpu"]) == 2
    assert "python prepare_data.py --data-dir" in last_error_line(capsys)
    (tmp_path / "afile").write_text("x")  # a file: preparing it would not help, so no command is suggested
    assert train.main(["--data-dir", str(tmp_path / "afile"), "--device", "cpu"]) == 2
    assert last_error_line(capsys) == (f"error: --data-dir {tmp_path}/afile is a file, not a prepared data directory: "
                                       "give the --data-dir that prepare_data.py prepared")


@pytest.mark.parametrize("flags", [["--epochs", "0"], ["--batch-size", "-1"], ["--lr", "0"], ["--lr", "-1e-3"], ["--optimizer", "lion"]])
def test_invalid_flag_values_exit_2(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(flags)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_unknown_device(prepared_once, capsys):
    assert train.main(["--data-dir", prepared_once, "--device", "tpu"]) == 2
    assert "device" in last_error_line(capsys)


def test_run_dir_holding_another_run_is_refused_and_the_suggested_resume_works(prepared_once, finished_run, capsys):
    assert train_run(prepared_once, finished_run, "--epochs", "1") == 2
    error = last_error_line(capsys)
    assert "already holds a run" in error
    result = run_printed(error.split("`")[1])  # resuming a finished run for its own epochs: nothing to do
    assert result.returncode == 0 and "nothing to do" in result.stdout


def files_of(run_dir):
    return {path.name: path.read_bytes() for path in run_dir.iterdir()}


def test_resume_for_fewer_epochs_is_refused_and_for_as_many_is_nothing_to_do_both_touching_no_file(finished_run, tmp_path, capsys):
    """A 2-epoch run resumed with --epochs 1 would rewrite config.json (runs.py then shows 2/1);
    with 2, or none, it has nothing to do; after a stop before its final test, that test runs."""
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    before, last = files_of(run), str(run / "last.pt")
    assert train.main(["--resume", last, "--epochs", "1", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: cannot resume {last} with --epochs 1: the run has trained 2 epochs; give --epochs 2 or more"]
    for flags in ([], ["--epochs", "2"]):
        assert train.main(["--resume", last, *flags, "--device", "cpu"]) == 0
        assert capsys.readouterr().out.strip() == (f"nothing to do: {last} has trained its 2 epochs and been tested; "
                                                  "to train on, give --epochs 3 or more")
    assert files_of(run) == before
    (run / "test_metrics.json").unlink()  # as if stopped after its last epoch, before the test
    assert train.main(["--resume", last, "--device", "cpu"]) == 0
    assert "test (final weights, epoch 2)" in capsys.readouterr().out and (run / "test_metrics.json").exists()


def test_resume_on_other_data_is_refused_unless_allowed_and_moved_data_resumes(finished_run, prepared_once, tmp_path, capsys):
    """Other images of the same classes (as the mini zip is to the full one) are another data set."""
    other = str(tmp_path / "other")
    zip_path = write_synthetic_zip(str(tmp_path / "other.zip"), **{**TINY, "train_per_class": 12})
    assert prepare_data.main(["--zip", zip_path, "--data-dir", other]) == 0
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    before, last = files_of(run), str(run / "last.pt")
    assert train.main(["--resume", last, "--epochs", "3", "--data-dir", other, "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"error: cannot resume {last}: --data-dir {other} holds other data (other.zip: 48 train + 40 val "
                     "images) than the run trained on (tiny.zip: 96 train + 40 val images); resume with --data-dir "
                     "pointing at the run's data, or give --allow-other-data to go on with this data"]
    assert files_of(run) == before
    moved = tmp_path / "moved"
    shutil.copytree(prepared_once, moved)  # the same data elsewhere: the run goes on
    assert train.main(["--resume", last, "--epochs", "3", "--data-dir", str(moved), "--device", "cpu"]) == 0
    assert train.main(["--resume", last, "--epochs", "4", "--data-dir", other, "--allow-other-data", "--device", "cpu"]) == 0
    config = json.load(open(run / "config.json"))
    assert config["allow_other_data"] is True and config["data"]["counts"]["train"] == 48
    assert config["earlier_data"] == [json.load(open(finished_run / "config.json"))["data"]]


def test_batch_larger_than_the_training_set(prepared_once, tmp_path, capsys):
    assert train.main(["--data-dir", prepared_once, "--device", "cpu", "--batch-size", "1000", "--run-dir", str(tmp_path / "r")]) == 2
    assert "larger than the training set" in last_error_line(capsys)


def write_truncated(source, path):
    path.write_bytes(open(source, "rb").read()[:3000])
    return path


@pytest.mark.parametrize("problem", ["missing", "truncated", "not a checkpoint"])
def test_bad_checkpoints_are_one_line_errors(problem, finished_run, prepared_once, tmp_path, capsys):
    path = tmp_path / "x.pt"
    if problem == "truncated":
        write_truncated(finished_run / "last.pt", path)
    elif problem == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    assert evaluate.main([str(path), "--data-dir", prepared_once]) == 2
    assert last_error_line(capsys).startswith("error: ")
    assert train.main(["--data-dir", prepared_once, "--device", "cpu", "--resume", str(path), "--run-dir", str(tmp_path / "r")]) == 2
    assert last_error_line(capsys).startswith("error: ")


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/cvt-exploit-ran",))


def test_a_code_executing_pickle_is_refused_without_running(tmp_path, capsys):
    marker = "/tmp/cvt-exploit-ran"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Exploit()}, f)
    torch.save({"model": {}, "payload": Exploit()}, tmp_path / "evil2.pt")
    for evil in (path, tmp_path / "evil2.pt"):
        with pytest.raises(Exception):
            load_checkpoint(str(evil))
        assert evaluate.main([str(evil)]) == 2
        assert "cannot load" in last_error_line(capsys)
    assert not os.path.exists(marker)


def test_checkpoint_for_other_classes_is_refused(finished_run, tmp_path, capsys):
    import prepare_data
    from synthetic import write_synthetic_zip

    other = write_synthetic_zip(str(tmp_path / "o.zip"), classes=5, train_per_class=4, val_per_class=4, seed=2)
    assert prepare_data.main(["--zip", other, "--data-dir", str(tmp_path / "d")]) == 0
    assert evaluate.main([str(finished_run / "last.pt"), "--data-dir", str(tmp_path / "d")]) == 2
    assert "classes" in last_error_line(capsys)


def test_evaluate_rejects_an_unknown_split(finished_run):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(finished_run / "last.pt"), "--split", "holdout"])
    assert exit_info.value.code == 2


def test_whole_pickled_models_and_empty_files_get_messages_that_say_what_to_do(tmp_path, capsys):
    from model import CvTConfig, CvTSimplifiedEmbedding

    torch.save(CvTSimplifiedEmbedding(CvTConfig(num_classes=4)), tmp_path / "whole.pt")  # torch.save(model)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    assert evaluate.main([str(tmp_path / "notes.pt")]) == 2
    assert last_error_line(capsys).endswith("notes.pt: it is not a PyTorch checkpoint (neither a zip nor a pickle)")
    assert evaluate.main([str(tmp_path / "whole.pt")]) == 2
    err = last_error_line(capsys)
    assert "it is a PyTorch file" in err and "would run code" in err and "state_dict()" in err
    assert evaluate.main([str(tmp_path / "empty.pt")]) == 2
    assert last_error_line(capsys) == f"error: {tmp_path}/empty.pt is empty (0 bytes): the file was not written completely; use another checkpoint"
    assert evaluate.main([str(tmp_path)]) == 2
    assert "is a directory" in last_error_line(capsys)


# ---------------------------------------------------------------- output paths and printed commands


def run_printed(command):
    """Run a command exactly as the kit printed it (`python ...`), with this interpreter."""
    words = shlex.split(command)
    assert words[0] == "python"
    return subprocess.run([sys.executable, *words[1:]], cwd=ROOT, capture_output=True, text=True)


def printed_command(text, after):
    """The command printed after `after` in text, up to the closing parenthesis or line end."""
    line = next(line for line in text.splitlines() if after in line)
    return line.split(after, 1)[1].strip().rstrip(")")


def test_json_into_a_missing_folder_is_created_and_a_directory_refused_before_any_work(finished_run, tmp_path, capsys):
    out = tmp_path / "not" / "yet" / "r.json"
    assert evaluate.main([str(finished_run / "last.pt"), "--json", str(out)]) == 0
    assert json.load(open(out))["images"] == 32 and f"report: {out}" in capsys.readouterr().out
    capsys.readouterr()
    assert evaluate.main([str(finished_run / "last.pt"), "--json", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: --json {tmp_path} is a directory: give a file name"
    assert "test: loss" not in captured.out  # refused before the evaluation, not after it
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert evaluate.main([str(finished_run / "last.pt"), "--predict", str(blocker / "p.csv")]) == 2
    assert last_error_line(capsys).endswith(f"of --predict {blocker}/p.csv is a file, not a directory")


@pytest.fixture(scope="module")
def epoch_checkpoints(prepared_once, tmp_path_factory):
    """last.pt after 1 and after 2 epochs of the same run (seed 0)."""
    root = tmp_path_factory.mktemp("epochs")
    assert train_run(prepared_once, root / "one", "--epochs", "1") == 0
    assert train_run(prepared_once, root / "two", "--epochs", "2") == 0
    return root / "one" / "last.pt", root / "two" / "last.pt"


def resumable_run(folder, last, best=None, best_epoch=None):
    """A run folder holding last.pt (its progress naming best_epoch) and, if given, best.pt."""
    folder.mkdir()
    checkpoint = torch.load(last, weights_only=True)
    if best_epoch is not None:
        checkpoint["progress"]["best_epoch"] = best_epoch
    torch.save(checkpoint, folder / "last.pt")
    if best is not None:
        torch.save(torch.load(best, weights_only=True), folder / "best.pt")
    return folder / "last.pt"


@pytest.mark.parametrize("case", ["resumed checkpoint is the best", "best.pt beside it", "no best.pt beside it"])
def test_resumed_into_a_new_run_dir_best_pt_comes_along_and_the_printed_command_works(epoch_checkpoints, tmp_path, capsys, case):
    """The reported bug: resuming into a new --run-dir printed an evaluate command for a best.pt
    that was never written (and the test of the best weights looked for it)."""
    after_one, after_two = epoch_checkpoints
    if case == "resumed checkpoint is the best":
        source = resumable_run(tmp_path / "a", after_two, best_epoch=2)
    elif case == "best.pt beside it":
        source = resumable_run(tmp_path / "a", after_two, best=after_one, best_epoch=1)
    else:
        source = resumable_run(tmp_path / "a", after_two, best_epoch=1)
    new_dir = tmp_path / "new"
    epochs = "3" if case == "no best.pt beside it" else "2"  # 2: nothing more is trained, best.pt is what came along
    assert train.main(["--resume", str(source), "--run-dir", str(new_dir), "--epochs", epochs]) == 0
    out = capsys.readouterr().out
    best = torch.load(new_dir / "best.pt", weights_only=True)
    expected = {"resumed checkpoint is the best": (2, after_two), "best.pt beside it": (1, after_one)}.get(case)
    if expected:
        assert best["progress"]["epoch"] == expected[0]
        assert torch.equal(best["model"]["head.2.weight"], torch.load(expected[1], weights_only=True)["model"]["head.2.weight"])
        assert json.load(open(new_dir / "test_metrics.json"))["best"]["epoch"] == expected[0]
    else:
        assert "note: no best.pt of epoch 1 beside" in out and best["progress"]["epoch"] == 3  # the best of the epochs to come
    result = run_printed(printed_command(out, "evaluate again: "))
    assert result.returncode == 0, result.stderr


def test_resume_into_a_folder_holding_another_run_is_refused(epoch_checkpoints, finished_run, capsys):
    after_one, _ = epoch_checkpoints
    before = (finished_run / "best.pt").read_bytes()
    assert train.main(["--resume", str(after_one), "--run-dir", str(finished_run), "--epochs", "2"]) == 2
    assert "already holds a run" in last_error_line(capsys)
    assert (finished_run / "best.pt").read_bytes() == before


def test_the_printed_resume_command_continues_the_run(prepared_once, tmp_path, monkeypatch, capsys):
    from conftest import signal_during_training

    run_dir = tmp_path / "with space"
    signal_during_training(monkeypatch, epoch=0, step=1)
    assert train_run(prepared_once, run_dir, "--epochs", "1") == 130
    err = capsys.readouterr().err
    command = printed_command(err, "continue with: ")
    assert "'" in command and "stopped at step 2 of epoch 1" in err  # the path with a space is quoted
    result = run_printed(command)
    assert result.returncode == 0, result.stderr
    assert "at step 2 of epoch 1" in result.stdout  # the resume numbers the position as the stop did
    assert json.load(open(run_dir / "status.json"))["state"] == "finished"
    assert (run_dir / "test_metrics.json").exists()


def test_a_run_dir_whose_run_stopped_before_any_checkpoint_gets_no_unusable_resume_command(prepared_once, tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")  # what a crash in the first epoch leaves
    assert train_run(prepared_once, run_dir, "--epochs", "1") == 2
    assert last_error_line(capsys) == (f"error: {run_dir} holds a run that stopped before its first checkpoint: "
                                       "delete the folder or choose another --run-dir")


def test_a_run_dir_that_is_a_file_is_refused(prepared_once, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert train_run(prepared_once, tmp_path / "f", "--epochs", "1") == 2
    assert last_error_line(capsys) == f"error: the run directory {tmp_path}/f is a file, not a directory: choose another --run-dir"
