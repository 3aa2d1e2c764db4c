"""Evaluate a checkpoint: accuracy and a report on a split of the prepared data.

    python evaluate.py runs/<name>/best.pt                     # the 8,000-image test split
    python evaluate.py runs/<name>/best.pt --split val --json val.json
    python evaluate.py runs/<name>/best.pt --predict predictions.csv   # label test/images
    python evaluate.py runs/<name>/best.pt --predict mine.csv --files a.jpg photos/   # your own images

Reports loss, top-1, top-5, macro-F1, per-class accuracy (with the class names from
words.txt), the most confused class pairs, the parameter count, inference throughput and
peak memory; --json writes all of it.

Accepts checkpoints written by train.py (any model: they carry its name and config) and the
Lightning checkpoints of the notebook and of the study (state_dict keys prefixed `model.`,
recognised by their keys, or named with --model), also from compiled or DDP models. Files
are loaded with weights_only=True (checkpoint.py): tensors and plain values, never code.
"""
import sys

if __name__ == "__main__":  # before the imports below, which take a moment
    from cli import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F

from checkpoint import check_classes, load_checkpoint, model_from_checkpoint
from cli import ArgumentParser, exit_code_of
from data import BatchLoader, batch_buffer, is_laid_out_as_normalize, load_packed, make_splits
from errors import DataError
from layout import check_output_path, write_json
from model import MODELS, add_setting_flags, count_parameters, given_settings
from predict import TOP_K, class_names_for, load_any_image, own_image_files, test_image_files, write_predictions
from runtime import amp_dtype, autocast, resolve_device, synchronize


def pad_batch(x, size):
    """x with zero images appended up to `size`, made as normalize makes a batch when x is one
    of normalize's (a channels-last view of a flat buffer): torch.compile guards on the layout
    and, on torch 2.11 with CUDA, on an input being a view, so anything else is another graph."""
    if not is_laid_out_as_normalize(x):
        return torch.cat([x, x.new_zeros((size - len(x), *x.shape[1:]))])
    padded = batch_buffer(size, *x.shape[1:], like=x)
    padded[: len(x)] = x
    padded[len(x) :] = 0
    return padded


@torch.no_grad()
def evaluate(model, loader, device, dtype=None, pad_to=None, dist=None, num_classes=None):
    """{"loss", "top1", "top5", "images"} over the loader, and with num_classes a "confusion"
    matrix (rows: true class, columns: predicted). With pad_to, a last partial batch is
    zero-padded to that size so a compiled model sees one static shape. With dist, each rank
    holds a shard of the split and the sums are added over ranks: the result is the single
    process's, with every image counted once."""
    model.eval()
    # float32, not float64: Apple's MPS has none; counts stay exact up to 2**24 images
    sums = torch.zeros(4, device=device)  # loss, top-1 hits, top-5 hits, images
    confusion = torch.zeros((num_classes or 0) ** 2, device=device)
    for x, y in loader:
        n = len(y)
        if pad_to and n < pad_to:
            x = pad_batch(x, pad_to)
        with autocast(device, dtype):
            logits = model(x)[:n].float()
        top = top_predictions(logits)
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1:3] += hits(top, y)
        sums[3] += n
        if num_classes:
            # index_add_, not bincount: bincount's output size depends on the data, a sync on CUDA.
            confusion.index_add_(0, y * num_classes + top[:, 0], confusion.new_ones(n))
    if dist is not None:
        dist.all_reduce(sums)
        if num_classes:
            dist.all_reduce(confusion)
    loss, top1, top5, count = sums.tolist()  # one sync
    metrics = {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "images": int(count)}
    if num_classes:
        metrics["confusion"] = confusion.view(num_classes, num_classes).long().cpu()
    return metrics


def top_predictions(logits, k=5):
    """The k most likely classes per row, most likely first."""
    return logits.topk(min(k, logits.shape[1]), dim=1).indices


def hits(top, y):
    """(top-1 hits, top-k hits) as a device tensor."""
    correct = top == y[:, None]
    return torch.stack([correct[:, 0].sum(), correct.any(dim=1).sum()]).float()


def topk_correct(logits, y, k=5):
    """(top-1 hits, top-k hits) as a device tensor."""
    return hits(top_predictions(logits, k), y)


# ---------------------------------------------------------------- reports


def class_report(confusion, classes, class_names, top=20):
    """Macro-F1, per-class accuracy and F1, and the most confused (true, predicted) pairs from a
    confusion matrix. Macro-F1 averages F1 over the classes that occur as a label or a
    prediction (scikit-learn's f1_score(average="macro") on the same predictions)."""
    confusion = confusion.double()
    support, predicted, correct = confusion.sum(1), confusion.sum(0), confusion.diagonal()
    f1 = 2 * correct / (support + predicted).clamp(min=1)
    present = (support + predicted) > 0
    per_class = [
        {"wnid": wnid, "name": name, "images": int(support[i]), "accuracy": (correct[i] / support[i]).item() if support[i] else None,
         "f1": f1[i].item()}
        for i, (wnid, name) in enumerate(zip(classes, class_names))
    ]
    mistakes = confusion.clone().fill_diagonal_(0).flatten()
    count = min(top, int((mistakes > 0).sum()))
    values, flat = mistakes.topk(count) if count else (mistakes[:0], mistakes[:0].long())
    confused = [
        {"true": classes[t], "true_name": class_names[t], "predicted": classes[p], "predicted_name": class_names[p],
         "images": int(v), "share_of_true": v.item() / support[t].item()}
        for v, t, p in zip(values, (flat // len(classes)).tolist(), (flat % len(classes)).tolist())
    ]
    return {"macro_f1": f1[present].mean().item() if present.any() else 0.0, "per_class": per_class, "most_confused": confused}


def evaluate_with_report(model, loader, device, data, dtype=None, pad_to=None, dist=None):
    """evaluate()'s figures plus macro-F1 (what train.py records, evaluate.py prints and
    compare.py re-evaluates), and class_report's whole report."""
    metrics = evaluate(model, loader, device, dtype, pad_to, dist, num_classes=len(data.classes))
    report = class_report(metrics.pop("confusion"), data.classes, data.class_names)
    return {**metrics, "macro_f1": report["macro_f1"]}, report


@torch.no_grad()
def measure_throughput(model, x, device, dtype, warmup=2, min_seconds=1.0, min_batches=5):
    """Inference images/s on one batch already in memory (the model alone, no data loading),
    timed after warmup batches and over at least min_seconds and min_batches."""
    model.eval()
    with autocast(device, dtype):
        for _ in range(warmup):
            model(x)
        synchronize(device)
        batches, start = 0, time.perf_counter()
        while batches < min_batches or time.perf_counter() - start < min_seconds:
            model(x)
            batches += 1
        synchronize(device)
    return batches * len(x) / (time.perf_counter() - start)


def peak_memory(device):
    """(megabytes, what was measured): CUDA memory allocated by tensors, or the process's peak
    resident memory on CPU (which includes the data it loaded), where the platform reports it
    (the Unix `resource` module); elsewhere (Windows) NaN, and the reason."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "peak CUDA memory allocated"
    try:
        import resource  # Unix only
    except ImportError:
        return float("nan"), "peak memory (not measured: this platform has no `resource` module)"
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return kilobytes / 1024, "peak resident memory of the process"


def short_name(name):
    """'goldfish, Carassius auratus' -> 'goldfish'."""
    return name.split(",")[0].strip()


def print_report(m, show=5):
    print(f"{m['split']}: loss {m['loss']:.4f}  top-1 {m['top1']:.2%}  top-5 {m['top5']:.2%}  "
          f"macro-F1 {m['macro_f1']:.4f}  ({m['images']:,} images)")
    print(f"model: {m['model']}, {m['parameters']:,} parameters; inference {m['images_per_s']:,.0f} images/s "
          f"(batch {m['batch_size']}, {m['device']}, {m['precision']}, after warm-up); "
          + (f"{m['peak_memory_what']} {m['peak_memory_mb']:,.0f} MB (+{m['peak_memory_added_by_evaluation_mb']:,.0f} MB "
             "during the evaluation)" if m["peak_memory_mb"] is not None else m["peak_memory_what"]))
    scored = sorted((c for c in m["per_class"] if c["accuracy"] is not None), key=lambda c: (-c["accuracy"], c["wnid"]))
    describe = lambda c: f"{short_name(c['name'])} ({c['wnid']}) {c['accuracy']:.0%} of {c['images']}"  # noqa: E731
    print(f"best classes:  {'; '.join(describe(c) for c in scored[:show])}")
    print(f"worst classes: {'; '.join(describe(c) for c in scored[::-1][:show])}")
    if m["most_confused"]:
        pairs = "; ".join(f"{short_name(p['true_name'])} -> {short_name(p['predicted_name'])} ({p['images']})"
                          for p in m["most_confused"][:show])
        print(f"most confused (true -> predicted, images): {pairs}")


def data_dir_of(checkpoint, data_dir=None):
    """The --data-dir given, else the one the checkpoint's run trained on, else data/."""
    return data_dir or checkpoint.get("config", {}).get("data_dir") or "data"


def checked_data(checkpoint, model, path, data_dir):
    """The prepared data in data_dir, checked to have the checkpoint's classes (with a warning on
    stderr when it is synthetic): what every script that evaluates a checkpoint runs it on."""
    data = load_packed(data_dir)
    check_classes(checkpoint, data.classes, path)
    if model.config.num_classes != len(data.classes):
        raise DataError(f"{path} predicts {model.config.num_classes} classes, the data in {data_dir}/ has {len(data.classes)}")
    if data.synthetic or checkpoint.get("synthetic"):
        print("warning: SYNTHETIC data (prepare_data.py --synthetic): a smoke test, not a result", file=sys.stderr)
    return data


def predict_own_images(args, checkpoint, model, data_dir):
    """--predict with --files: label the user's images; needs no prepared data."""
    classes, class_names = class_names_for(checkpoint, data_dir)
    if model.config.num_classes != len(classes):
        raise DataError(f"{args.checkpoint} predicts {model.config.num_classes} classes but lists {len(classes)}")
    device = resolve_device(args.device)
    rows = write_predictions(model.to(device), own_image_files(args.files), load_any_image, lambda path: path,
                             classes, class_names, device, amp_dtype(device, args.amp), args.batch_size, args.predict)
    for row in rows[:5]:
        alternatives = [f"{short_name(row[i + 1])} {float(row[i + 2]):.1%}" for i in range(4, len(row), 3) if row[i]][:2]
        print(f"{row[0]}: {short_name(row[2])} ({row[1]}) {float(row[3]):.1%}" + "".join(f", then {a}" for a in alternatives))
    more = " (the first 5 above)" if len(rows) > 5 else ""
    print(f"predictions for {len(rows):,} image{'s' if len(rows) != 1 else ''}, top-{min(TOP_K, len(classes))} each: {args.predict}{more}")
    return rows


# ---------------------------------------------------------------- command line


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .pt file written by train.py (or a Lightning .ckpt)")
    parser.add_argument("--model", choices=tuple(MODELS),
                        help="the architecture of a checkpoint that does not say (a Lightning .ckpt) when its "
                             "parameter names cannot tell; the study's own checkpoints are recognised; with the "
                             "model settings below where they differ from the model's defaults")
    parser.add_argument("--data-dir", help="prepared data (default: the one the checkpoint was trained on, else data)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="the split to evaluate")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                        help="bf16 autocast (fp16 on GPUs without bf16), as in train.py; off: fp32")
    parser.add_argument("--no-ema", dest="ema", action="store_false",
                        help="evaluate the raw trained weights of a run that kept an EMA (default: the EMA weights)")
    parser.add_argument("--json", metavar="PATH", help="also write the whole report as JSON")
    parser.add_argument("--predict", metavar="OUT.csv",
                        help=f"also label the unlabeled test/images (or the --files): file, then the top {TOP_K} "
                             "classes' wnid, class name and probability")
    parser.add_argument("--files", nargs="+", metavar="PATH",
                        help="with --predict: label these images and the images in these folders instead (any size or "
                             "mode: converted to RGB, centre-cropped and resized to 64x64); no evaluation, no data needed")
    add_setting_flags(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.files and not args.predict:
        parser.error("--files needs --predict OUT.csv (where the labels go)")
    if args.files and args.json:
        parser.error("--json is the report of an evaluation, which --files does not run: drop --json")
    return args


def run(args):
    for path, flag in ((args.json, "--json"), (args.predict, "--predict")):
        if path:  # before any work: an unwritable output must not waste an evaluation
            check_output_path(path, flag)
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint, args.checkpoint, use_ema=args.ema, model_name=args.model,
                                  settings=given_settings(args))
    data_dir = data_dir_of(checkpoint, args.data_dir)
    if args.files:
        return predict_own_images(args, checkpoint, model, data_dir)
    data = checked_data(checkpoint, model, args.checkpoint, data_dir)
    test_images = test_image_files(data_dir) if args.predict else None  # before any work: fail fast
    device = resolve_device(args.device)
    dtype = amp_dtype(device, args.amp)
    model = model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    memory_before_mb, _ = peak_memory(device)  # on CPU: what the runtime, model and data already hold
    x, y = make_splits(data)[args.split]
    loader = BatchLoader(x, y, args.batch_size, device)
    metrics, report = evaluate_with_report(model, loader, device, data, dtype)
    first_batch = next(iter(loader))[0]
    memory_mb, memory_what = peak_memory(device)
    metrics = {
        "split": args.split, "checkpoint": args.checkpoint, "weights": "ema" if args.ema and "ema" in checkpoint else "trained",
        **metrics, "model": model.model_name, "parameters": count_parameters(model),
        "images_per_s": measure_throughput(model, first_batch, device, dtype), "batch_size": len(first_batch),
        "device": str(device), "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
        "peak_memory_mb": None if math.isnan(memory_mb) else memory_mb, "peak_memory_what": memory_what,
        "peak_memory_added_by_evaluation_mb": None if math.isnan(memory_mb) else memory_mb - memory_before_mb,
        "per_class": report["per_class"], "most_confused": report["most_confused"],
    }
    print_report(metrics)
    if args.json:
        write_json(args.json, metrics)
        print(f"report: {args.json}")
    if args.predict:
        from prepare_data import decode  # the zip's own 64x64 images, converted exactly as the packed data

        rows = write_predictions(model, test_images, decode, os.path.basename, data.classes, data.class_names,
                                 device, dtype, args.batch_size, args.predict)
        print(f"predictions for {len(rows):,} test images: {args.predict}")
    return metrics


def main(argv=None):
    return exit_code_of(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
