"""Average the weights of several checkpoints of one model: the best or last epochs of a run
(`train.py --save-top-k K` keeps them; a uniform average as in SWA), or the seeds of one recipe
started from one checkpoint. Where the model has BatchNorm, its statistics are estimated again
on training batches with the averaged weights (the averaged statistics belong to none of them).
The result is a checkpoint that evaluate.py, compare.py and the analysis scripts read like
any other; it does not resume (it has no optimizer state).

    python average.py runs/r/epoch-008.pt runs/r/epoch-009.pt runs/r/epoch-010.pt -o runs/r/average.pt
    python evaluate.py runs/r/average.pt

The weights averaged are those each checkpoint was evaluated with (its EMA's when it has one).
"""
import sys

if __name__ == "__main__":  # before the imports below, which take a moment
    from cli import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import itertools
import os

import torch
from torch.optim.swa_utils import update_bn

from checkpoint import load_checkpoint, model_entries, model_from_checkpoint, save_checkpoint
from cli import ArgumentParser, exit_code_of
from data import BatchLoader, make_splits
from errors import DataError
from evaluation import checked_data, data_dir_of
from layout import check_output_path
from model import has_batchnorm
from runs import expand_globs
from runtime import resolve_device

CARRIED = ("classes", "class_names", "synthetic", "config")  # what evaluate.py reads besides the weights


def parse_args(argv):
    parser = ArgumentParser(description="Average the weights of checkpoints of one model (BatchNorm re-estimated).")
    parser.add_argument("checkpoints", nargs="+", help="two or more checkpoints of one model and class list")
    parser.add_argument("-o", "--out", required=True, help="the averaged checkpoint to write")
    parser.add_argument("--data-dir", help="training images for BatchNorm (default: the first checkpoint's run's)")
    parser.add_argument("--bn-batches", type=int, default=100, help="training batches that estimate BatchNorm's statistics")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch for BatchNorm's statistics")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    args = parser.parse_args(argv)
    for flag in ("bn_batches", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    return args


def same_file(a, b):
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_paths(paths, out):
    """No checkpoint given twice (it would count double), and -o none of them (it would be lost)."""
    for index, path in enumerate(paths):
        if any(same_file(path, earlier) for earlier in paths[:index]):
            raise DataError(f"{path} is given twice: each checkpoint counts once in the average")
        if same_file(path, out):
            raise DataError(f"-o {out} is one of the checkpoints to average: write the average elsewhere")


def averaged_model(paths):
    """(the first checkpoint, a model holding the mean of all the checkpoints' weights): floating
    tensors averaged in float64, one checkpoint in memory at a time; integer buffers (BatchNorm's
    batch count) the last one's. Each must be the same model on the same classes as the first."""
    first = load_checkpoint(paths[0])
    model = model_from_checkpoint(first, paths[0])
    sums = {key: value.double() for key, value in model.state_dict().items() if value.is_floating_point()}
    last = model.state_dict()
    for path in paths[1:]:
        checkpoint = load_checkpoint(path)
        other = model_from_checkpoint(checkpoint, path)
        if (other.model_name, other.config) != (model.model_name, model.config):
            raise DataError(f"{path} holds another model than {paths[0]} ({other.model_name} {other.config} "
                            f"against {model.model_name} {model.config}): only one model's weights average")
        if checkpoint.get("classes") != first.get("classes"):
            raise DataError(f"{path} was trained on other classes than {paths[0]}")
        last = other.state_dict()
        for key, total in sums.items():
            total += last[key].double()
    state = model.state_dict()
    model.load_state_dict({key: (sums[key] / len(paths)).to(value.dtype) if key in sums else last[key]
                           for key, value in state.items()})
    return first, model


def reestimate_batchnorm(model, checkpoint, path, args, device):
    """BatchNorm's running statistics, estimated anew (a cumulative average) on --bn-batches
    training batches, with the notebook's crop and flip; returns the batches used."""
    data_dir = data_dir_of(checkpoint, args.data_dir)
    data = checked_data(checkpoint, model, path, data_dir)
    images, labels = make_splits(data)["train"]
    loader = BatchLoader(images, labels, min(args.batch_size, len(labels)), device, train=True, seed=0)
    batches = min(args.bn_batches, len(loader))
    with torch.no_grad():  # (update_bn's forward passes need no graph)
        update_bn((x for x, _ in itertools.islice(loader.iterate(0), batches)), model.to(device))
    return batches


def run(args):
    paths = expand_globs(args.checkpoints)  # (Windows shells pass epoch-*.pt through unexpanded)
    if len(paths) < 2:
        raise DataError(f"give at least two checkpoints to average ({' '.join(args.checkpoints)} is {len(paths)})")
    check_paths(paths, args.out)
    check_output_path(args.out, "-o")
    first, model = averaged_model(paths)
    batchnorm = has_batchnorm(model)
    batches = reestimate_batchnorm(model, first, paths[0], args, resolve_device(args.device)) if batchnorm else 0
    payload = {**model_entries(model.cpu()), **{key: first[key] for key in CARRIED if key in first},
               "averaged_from": [os.path.abspath(path) for path in paths], "bn_batches": batches}
    save_checkpoint(payload, args.out)
    bn = f"BatchNorm re-estimated on {batches} training batches" if batchnorm else "no BatchNorm"
    print(f"averaged {len(paths)} checkpoints of {model.model_name} ({bn}) -> {args.out}")


def main(argv=None):
    return exit_code_of(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
