"""train.py --save-top-k and average.py: the K best epochs' checkpoints kept as the history ranks
them, and their weights averaged with BatchNorm's statistics estimated anew, into a checkpoint
that evaluate.py reads and train.py does not resume."""
import csv
import itertools
import os

import pytest
import torch

import average
import compare
import evaluate
import train
from checkpoint import load_checkpoint, model_from_checkpoint
from data import BatchLoader, load_packed, make_splits
from rundir import remove_epoch_checkpoints, top_epochs

TINY_RESNET = ["--model", "resnet18", "--depth", "1", "--batch-size", "16", "--eval-batch-size", "16", "--device", "cpu",
               "--optimizer", "sgd", "--lr", "0.05"]


@pytest.fixture(scope="module")
def top_two_of_four(prepared_once, tmp_path_factory):
    """A tiny ResNet (it has BatchNorm) trained 4 epochs, keeping the 2 best epochs' checkpoints."""
    run_dir = tmp_path_factory.mktemp("top") / "r"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), "--epochs", "4", "--save-top-k", "2",
                       *TINY_RESNET]) == 0
    return run_dir


def test_the_top_epochs_are_ranked_as_best_pt_is_chosen():
    history = [{"epoch": 1, "val_top1": 0.5, "val_loss": 1.0}, {"epoch": 2, "val_top1": 0.7, "val_loss": 0.9},
               {"epoch": 3, "val_top1": 0.7, "val_loss": 0.8}, {"epoch": 4, "val_top1": 0.7, "val_loss": 0.8}]
    assert top_epochs(history, 1) == {3}  # the lower loss wins a tie; then the earlier epoch
    assert top_epochs(history, 2) == {3, 4} and top_epochs(history, 3) == {2, 3, 4} and top_epochs(history, 9) == {1, 2, 3, 4}


def test_save_top_k_keeps_the_checkpoints_of_the_k_best_epochs_of_the_metrics(top_two_of_four):
    with open(top_two_of_four / "metrics.csv") as f:
        history = [{key: float(row[key]) for key in ("epoch", "val_top1", "val_loss")} for row in csv.DictReader(f)]
    kept = sorted(name for name in os.listdir(top_two_of_four) if name.startswith("epoch-"))
    assert kept == sorted(f"epoch-{int(epoch):03d}.pt" for epoch in top_epochs(history, 2))
    for name in kept:
        assert load_checkpoint(str(top_two_of_four / name))["progress"]["epoch"] == int(name[6:9])


def test_average_means_the_weights_and_estimates_batchnorm_on_training_batches(top_two_of_four, prepared_once, tmp_path):
    """The convolution weights are the checkpoints' mean; the first BatchNorm's running mean is
    the mean of its inputs' per-batch channel means over the first --bn-batches training batches
    (the definition, computed here with a hook), not the checkpoints' averaged statistics."""
    paths = sorted(str(top_two_of_four / name) for name in os.listdir(top_two_of_four) if name.startswith("epoch-"))
    out = tmp_path / "average.pt"
    assert average.main([*paths, "-o", str(out), "--bn-batches", "3", "--batch-size", "16", "--device", "cpu"]) == 0
    averaged = model_from_checkpoint(load_checkpoint(str(out)))
    sources = [model_from_checkpoint(load_checkpoint(path)).state_dict() for path in paths]
    for key, value in averaged.state_dict().items():
        if value.dim() == 4:  # convolution weights
            assert torch.allclose(value, (sources[0][key] + sources[1][key]) / 2, atol=1e-6), key

    first_bn = next(module for module in averaged.modules() if isinstance(module, torch.nn.BatchNorm2d))
    estimated, name = first_bn.running_mean.clone(), name_of(averaged, first_bn)
    means = []
    first_bn.register_forward_pre_hook(lambda module, inputs: means.append(inputs[0].float().mean((0, 2, 3))))
    images, labels = make_splits(load_packed(prepared_once))["train"]
    with torch.no_grad():
        for x, _ in itertools.islice(BatchLoader(images, labels, 16, "cpu", train=True, seed=0).iterate(0), 3):
            averaged.train()(x)
    assert torch.allclose(estimated, torch.stack(means).mean(0), atol=1e-5)
    assert not torch.allclose(estimated, (sources[0][f"{name}.running_mean"] + sources[1][f"{name}.running_mean"]) / 2)


def name_of(model, module):
    return next(name for name, each in model.named_modules() if each is module)


def test_an_averaged_checkpoint_evaluates_and_does_not_resume(top_two_of_four, tmp_path, capsys):
    paths = sorted(str(top_two_of_four / name) for name in os.listdir(top_two_of_four) if name.startswith("epoch-"))
    out = str(tmp_path / "average.pt")
    assert average.main([*paths, "-o", out, "--bn-batches", "2", "--device", "cpu"]) == 0
    assert evaluate.main([out, "--device", "cpu", "--batch-size", "16"]) == 0
    assert "top-1" in capsys.readouterr().out
    assert compare.read_checkpoint(out, None, torch.device("cpu"), 16)["weights"] == "average of 2 checkpoints"
    assert train.main(["--resume", out, "--device", "cpu"]) == 2
    assert "not a train.py checkpoint" in capsys.readouterr().err


def test_bad_inputs_to_average_are_one_line(top_two_of_four, prepared_once, tmp_path, capsys):
    paths = sorted(str(top_two_of_four / name) for name in os.listdir(top_two_of_four) if name.startswith("epoch-"))
    other = tmp_path / "other"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(other), "--epochs", "1", "--device", "cpu",
                       "--batch-size", "16", "--eval-batch-size", "16", "--embed-dim", "16", "--depth", "1"]) == 0
    capsys.readouterr()
    for argv, said in ((["-o", paths[0]], "is one of the checkpoints to average"),
                       ([str(other / "last.pt"), "-o", str(tmp_path / "x.pt")], "holds another model than")):
        assert average.main([*paths, *argv, "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0]
    for argv, said in (([paths[0]], "at least two checkpoints"), ([*paths, paths[0]], "is given twice")):
        assert average.main([*argv, "-o", str(tmp_path / "x.pt"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0]
    assert not (tmp_path / "x.pt").exists()


def test_epoch_checkpoints_outside_the_top_k_are_deleted_and_one_that_cannot_be_is_a_warning(tmp_path, capsys):
    for epoch in (1, 2, 3):
        (tmp_path / f"epoch-00{epoch}.pt").write_bytes(b"x")
    (tmp_path / "epoch-004.pt").mkdir()  # os.remove fails on it, as on a file another program holds open on Windows
    (tmp_path / "last.pt").write_bytes(b"x")
    remove_epoch_checkpoints(str(tmp_path), keep={2, 3})
    assert sorted(os.listdir(tmp_path)) == ["epoch-002.pt", "epoch-003.pt", "epoch-004.pt", "last.pt"]
    assert "could not delete" in capsys.readouterr().err
