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
    if len(args.checkpoints) < 2:
        parser.error("give at least two checkpoints to average")
    for flag in ("bn_batches", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    return args


def load_models(paths):
    """[(checkpoint, model)] of each path, checked to be the same model on the same classes."""
    loaded = [(checkpoint, model_from_checkpoint(checkpoint, path)) for path, checkpoint in
              ((path, load_checkpoint(path)) for path in paths)]
    (first, first_model), first_path = loaded[0], paths[0]
    for path, (checkpoint, model) in zip(paths[1:], loaded[1:]):
        if (model.model_name, model.config) != (first_model.model_name, first_model.config):
            raise DataError(f"{path} holds another model than {first_path} ({model.model_name} {model.config} "
                            f"against {first_model.model_name} {first_model.config}): only one model's weights average")
        if checkpoint.get("classes") != first.get("classes"):
            raise DataError(f"{path} was trained on other classes than {first_path}")
    return loaded


def average_weights(models):
    """The models' mean state_dict: floating tensors averaged (in float64), integer buffers
    (BatchNorm's batch count) from the last."""
    states = [model.state_dict() for model in models]
    return {key: torch.stack([state[key].double() for state in states]).mean(0).to(value.dtype)
            if value.is_floating_point() else states[-1][key] for key, value in states[0].items()}


def reestimate_batchnorm(model, checkpoint, path, args, device):
    """BatchNorm's running statistics, estimated anew (a cumulative average) on --bn-batches
    training batches, with the notebook's crop and flip; returns the batches used."""
    data_dir = data_dir_of(checkpoint, args.data_dir)
    data = checked_data(checkpoint, model, path, data_dir)
    images, labels = make_splits(data)["train"]
    loader = BatchLoader(images, labels, min(args.batch_size, len(labels)), device, train=True, seed=0)
    batches = [x for x, _ in itertools.islice(loader.iterate(0), args.bn_batches)]
    with torch.no_grad():
        update_bn(batches, model.to(device), device)
    return len(batches)


def run(args):
    device = resolve_device(args.device)
    out = os.path.abspath(args.out)
    if out in map(os.path.abspath, args.checkpoints):
        raise DataError(f"-o {args.out} is one of the checkpoints to average: write the average elsewhere")
    check_output_path(args.out, "-o")
    loaded = load_models(args.checkpoints)
    checkpoints, models = [checkpoint for checkpoint, _ in loaded], [model for _, model in loaded]
    model = models[0]
    model.load_state_dict(average_weights(models))
    batchnorm = has_batchnorm(model)
    batches = reestimate_batchnorm(model, checkpoints[0], args.checkpoints[0], args, device) if batchnorm else 0
    payload = {**model_entries(model.cpu()), **{key: checkpoints[0][key] for key in CARRIED if key in checkpoints[0]},
               "averaged_from": [os.path.abspath(path) for path in args.checkpoints], "bn_batches": batches}
    save_checkpoint(payload, args.out)
    bn = f"BatchNorm re-estimated on {batches} training batches" if batchnorm else "no BatchNorm"
    print(f"averaged {len(models)} checkpoints of {model.model_name} ({bn}) -> {args.out}")


def main(argv=None):
    return exit_code_of(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
