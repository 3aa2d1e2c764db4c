"""Evaluate a checkpoint: loss, top-1 and top-5 on a split of the prepared data.

    python evaluate.py runs/<name>/best.pt                     # the 8,000-image test split
    python evaluate.py runs/<name>/best.pt --split val --json val.json

Accepts checkpoints written by train.py and the notebook's Lightning checkpoints
(state_dict keys prefixed `model.`), also from compiled or DDP models. Files are loaded
with weights_only=True: a checkpoint can hold tensors and plain values, never code.
"""
import argparse
import os
import sys
import zipfile

import torch
import torch.nn.functional as F

from data import BatchLoader, load_packed, make_splits
from layout import DataError, write_json
from model import CvTConfig, CvTSimplifiedEmbedding, config_from_state_dict
from runtime import amp_dtype, autocast, resolve_device

KEY_PREFIXES = ("model.", "_orig_mod.", "module.")  # Lightning, torch.compile, DDP


@torch.no_grad()
def evaluate(model, loader, device, dtype=None, pad_to=None, dist=None):
    """{"loss", "top1", "top5", "images"} over the loader. With pad_to, a last partial batch is
    zero-padded to that size so a compiled model sees one static shape. With dist, each rank
    holds a shard of the split and the sums are added over ranks: the result is the single
    process's, with every image counted once."""
    model.eval()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top-1 hits, top-5 hits, images
    for x, y in loader:
        n = len(y)
        if pad_to and n < pad_to:
            x = torch.cat([x, x.new_zeros((pad_to - n, *x.shape[1:]))])
        with autocast(device, dtype):
            logits = model(x)[:n].float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1:3] += topk_correct(logits, y)
        sums[3] += n
    if dist is not None:
        dist.all_reduce(sums)
    loss, top1, top5, count = sums.tolist()  # one sync
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "images": int(count)}


def topk_correct(logits, y, k=5):
    """(top-1 hits, top-k hits) as a device tensor."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    hits = top == y[:, None]
    return torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()]).float()


def load_checkpoint(path):
    """The checkpoint's dict, loaded without executing anything in it."""
    if not os.path.isfile(path):
        raise DataError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it holds Python objects other than tensors and plain values, refused for safety"
        raise DataError(f"cannot load {path} as a checkpoint: {reason[:200]}") from None
    except Exception as error:  # unpickling garbage raises anything (UnpicklingError, KeyError, ...)
        raise DataError(f"cannot load {path} as a checkpoint: not a PyTorch checkpoint ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or not ({"model", "state_dict"} & checkpoint.keys()):
        raise DataError(f"{path} is not a model checkpoint (no 'model' or 'state_dict' entry)")
    return checkpoint


def plain_state_dict(state_dict):
    """Strip Lightning's `model.`, torch.compile's `_orig_mod.` and DDP's `module.` prefixes."""
    plain = {}
    for key, value in state_dict.items():
        for prefix in KEY_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        plain[key] = value
    return plain


def model_from_checkpoint(checkpoint, path="checkpoint"):
    """Rebuild the model from the checkpoint alone (config saved by train.py, or inferred)."""
    state_dict = plain_state_dict(checkpoint.get("model") or checkpoint["state_dict"])
    try:
        config = CvTConfig(**checkpoint["model_config"]) if "model_config" in checkpoint else config_from_state_dict(state_dict)
        model = CvTSimplifiedEmbedding(config)
        model.load_state_dict(state_dict, strict=True)
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        raise DataError(f"{path} does not hold this project's model: {str(error).splitlines()[0][:200]}") from None
    return model


def class_difference(saved, classes):
    """'' when the class lists agree, else a short description of how they differ."""
    saved, classes = list(saved), list(classes)
    if saved == classes:
        return ""
    if len(saved) != len(classes):
        return f"{len(saved)} classes in the checkpoint, {len(classes)} in the data"
    index = next(i for i, (a, b) in enumerate(zip(saved, classes)) if a != b)
    return f"class {index} is {saved[index]} in the checkpoint, {classes[index]} in the data"


def check_classes(checkpoint, classes, path):
    saved = checkpoint.get("classes")
    if saved is not None and class_difference(saved, classes):
        raise DataError(f"{path} was trained on other classes than the prepared data: {class_difference(saved, classes)}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .pt file written by train.py (or a Lightning .ckpt)")
    parser.add_argument("--data-dir", help="prepared data (default: the one the checkpoint was trained on, else data)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="bf16/fp16 autocast")
    parser.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def run(args):
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint, args.checkpoint)
    data_dir = args.data_dir or checkpoint.get("config", {}).get("data_dir") or "data"
    data = load_packed(data_dir)
    check_classes(checkpoint, data.classes, args.checkpoint)
    if model.config.num_classes != len(data.classes):
        raise DataError(f"{args.checkpoint} predicts {model.config.num_classes} classes, the data in {data_dir}/ has {len(data.classes)}")
    if data.synthetic or checkpoint.get("synthetic"):
        print("warning: SYNTHETIC data (prepare_data.py --synthetic): a smoke test, not a result", file=sys.stderr)
    device = resolve_device(args.device)
    x, y = make_splits(data)[args.split]
    loader = BatchLoader(x, y, args.batch_size, device)
    metrics = evaluate(model.to(device), loader, device, amp_dtype(device, args.amp))
    metrics["split"] = args.split
    metrics["checkpoint"] = args.checkpoint
    print(f"{args.split}: loss {metrics['loss']:.4f}  top-1 {metrics['top1']:.2%}  top-5 {metrics['top5']:.2%}  ({metrics['images']:,} images)")
    if args.json:
        write_json(args.json, metrics)
    return metrics


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
