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
A thin command line: the evaluation itself is evaluation.py's, which train.py shares.
"""
import sys

if __name__ == "__main__":  # before the imports below, which take a moment
    from cli import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import argparse
import math
import os

import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from cli import ArgumentParser, exit_code_of
from data import BatchLoader, make_splits
from errors import DataError
from evaluation import (TTA_CHOICES, checked_data, data_dir_of, evaluate_with_report, evaluation_dtype, measure_throughput,
                        peak_memory, quantized_int8, with_tta)
from layout import check_output_path, write_json
from model import MODELS, add_setting_flags, count_parameters, given_settings
from predict import TOP_K, class_names_for, short_name, load_any_image, own_image_files, test_image_files, write_predictions
from runtime import resolve_device


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


def ready_for_inference(args, checkpoint, model, device):
    """(the model on the device, the autocast dtype or None) as --amp and --quantize say: int8
    replaces autocast, so a run's own --eval-amp does not apply to it."""
    if args.quantize:
        return quantized_int8(model, device, evaluation_dtype(args.amp, checkpoint, device) if args.amp else None), None
    return model.to(device), evaluation_dtype(args.amp, checkpoint, device)


def predict_own_images(args, checkpoint, model, data_dir):
    """--predict with --files: label the user's images; needs no prepared data."""
    classes, class_names = class_names_for(checkpoint, data_dir)
    if model.config.num_classes != len(classes):
        raise DataError(f"{args.checkpoint} predicts {model.config.num_classes} classes but lists {len(classes)}")
    device = resolve_device(args.device)
    model, dtype = ready_for_inference(args, checkpoint, model, device)
    rows = write_predictions(model, own_image_files(args.files), load_any_image, lambda path: path,
                             classes, class_names, device, dtype, args.batch_size, args.predict)
    for row in rows[:5]:
        alternatives = [f"{short_name(row[i + 1])} {float(row[i + 2]):.1%}" for i in range(4, len(row), 3) if row[i]][:2]
        print(f"{row[0]}: {short_name(row[2])} ({row[1]}) {float(row[3]):.1%}" + "".join(f", then {a}" for a in alternatives))
    more = " (the first 5 above)" if len(rows) > 5 else ""
    print(f"predictions for {len(rows):,} image{'s' if len(rows) != 1 else ''}, top-{min(TOP_K, len(classes))} each: {args.predict}{more}")
    return rows


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .pt file written by train.py, a folder export.py --hf wrote, or a Lightning .ckpt")
    parser.add_argument("--model", choices=tuple(MODELS),
                        help="the architecture of a checkpoint that does not say (a Lightning .ckpt) when its "
                             "parameter names cannot tell; the study's own checkpoints are recognised; with the "
                             "model settings below where they differ from the model's defaults")
    parser.add_argument("--data-dir", help="prepared data (default: the one the checkpoint was trained on, else data)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="the split to evaluate")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction,
                        help="bf16 autocast (fp16 on GPUs without bf16), as in train.py; off: fp32; default: as the "
                             "checkpoint's run evaluated (train.py --eval-amp), else fp32")
    parser.add_argument("--tta", choices=TTA_CHOICES,
                        help="test-time augmentation (flip: mean of the logits of each image and its mirror image); "
                             "default: what the checkpoint's run evaluated with, else none")
    parser.add_argument("--quantize", choices=("int8",),
                        help="int8: the Linear layers quantized to int8 dynamically (CPU only, fp32 elsewhere); measured "
                             "against fp32 and bf16 in benchmarks/README.md")
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
    parameters = count_parameters(model)  # (before --quantize packs the Linear weights out of the parameters)
    model, dtype = ready_for_inference(args, checkpoint, model, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    memory_before_mb, _ = peak_memory(device)  # on CPU: what the runtime, model and data already hold
    x, y = make_splits(data)[args.split]
    loader = BatchLoader(x, y, args.batch_size, device)
    tta = args.tta or checkpoint.get("config", {}).get("tta") or "none"
    metrics, report = evaluate_with_report(with_tta(model, tta), loader, device, data, dtype)
    first_batch = next(iter(loader))[0]
    memory_mb, memory_what = peak_memory(device)
    metrics = {
        "split": args.split, "checkpoint": args.checkpoint, "weights": checkpoint.get("weights") or ("ema" if args.ema and "ema" in checkpoint else "trained"),
        "tta": tta,
        **metrics, "model": model.model_name, "parameters": parameters,
        "images_per_s": measure_throughput(model, first_batch, device, dtype), "batch_size": len(first_batch),
        "device": str(device), "precision": "int8 (Linear layers)" if args.quantize else str(dtype).replace("torch.", "") if dtype else "fp32",
        "peak_memory_mb": None if math.isnan(memory_mb) else memory_mb, "peak_memory_what": memory_what,
        "peak_memory_added_by_evaluation_mb": None if math.isnan(memory_mb) else memory_mb - memory_before_mb,
        "per_class": report["per_class"], "most_confused": report["most_confused"],
    }
    print_report(metrics)
    if args.json:
        write_json(args.json, metrics)
        print(f"report: {args.json}")
    if args.predict:
        from packing import decode  # the zip's own 64x64 images, converted exactly as the packed data

        rows = write_predictions(model, test_images, decode, os.path.basename, data.classes, data.class_names,
                                 device, dtype, args.batch_size, args.predict)
        print(f"predictions for {len(rows):,} test images: {args.predict}")
    return metrics


def main(argv=None):
    return exit_code_of(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
