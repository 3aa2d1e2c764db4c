"""Tiny-ImageNet-C's corruptions: corruptions.py on whole batches against a per-image pipeline,
side by side in one run on one machine.

    python benchmarks/corruptions_bench.py --data-dir data --batch 256 --sample 16 --json corruptions-speed.json

The per-image pipeline is tests/corruption_reference.py: each corruption as the authors' script
computes it, one image at a time in numpy with scipy and PIL (ImageMagick's and OpenCV's steps
written out in numpy): what users run today, less the libraries this kit does not install. For
each corruption and severity: images/s of corrupt() on a batch of the test split (after one
warm-up call), and of the reference on the first --sample images; a markdown table of both and
their ratio. Ratios are what to read: absolute numbers move with the machine and its load.
"""
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from cli import ArgumentParser  # noqa: E402
from corruption_reference import reference_batch  # noqa: E402
from corruptions import SEVERITIES, corrupt, parse_corruptions  # noqa: E402
from data import load_packed, make_splits  # noqa: E402
from layout import write_json  # noqa: E402
from runtime import resolve_device, synchronize  # noqa: E402


def images_per_second(work, images, device, minimum_seconds=1.0):
    """Images/s of work() over whole calls, for at least minimum_seconds."""
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < minimum_seconds:
        work()
        synchronize(device)
        calls += 1
    return calls * images / (time.perf_counter() - start)


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data", help="prepared data: the test split's first images are corrupted")
    parser.add_argument("--batch", type=int, default=256, help="images per corrupt() call")
    parser.add_argument("--sample", type=int, default=16, help="images the per-image reference corrupts per setting")
    parser.add_argument("--device", default="cpu", help="where corrupt() runs (the reference runs on the CPU)")
    parser.add_argument("--corruptions", default="all", help="all, or a comma list (as robustness.py takes)")
    parser.add_argument("--json", help="write the rows as JSON")
    args = parser.parse_args(argv)
    try:
        names = parse_corruptions(args.corruptions)
    except ValueError as error:
        parser.error(f"--corruptions: {error}")
    device = resolve_device(args.device)
    x, _ = make_splits(load_packed(args.data_dir))["test"]
    batch, sample = x[: args.batch].to(device), x[: args.sample]
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"corrupt() on {device} at batch {len(batch)}, the reference on {len(sample)} images")
    print("| corruption | severity | corrupt() img/s | per-image reference img/s | ratio |\n| --- | ---: | ---: | ---: | ---: |")
    rows = []
    for name in names:
        for severity in SEVERITIES:
            generator = torch.Generator(device).manual_seed(0)
            corrupt(batch, name, severity, generator)  # warm-up: imports, caches, the first kernels
            ours = images_per_second(lambda: corrupt(batch, name, severity, generator), len(batch), device)
            reference = images_per_second(lambda: reference_batch(sample, name, severity, torch.Generator().manual_seed(0)),
                                          len(sample), torch.device("cpu"), minimum_seconds=0.5)
            rows.append({"corruption": name, "severity": severity, "batched_images_per_s": ours,
                         "reference_images_per_s": reference})
            print(f"| {name} | {severity} | {ours:,.0f} | {reference:,.0f} | {ours / reference:,.1f}x |", flush=True)
    total_ours = len(rows) / sum(1 / row["batched_images_per_s"] for row in rows)
    total_reference = len(rows) / sum(1 / row["reference_images_per_s"] for row in rows)
    print(f"| all {len(rows)} settings (harmonic mean: one image through every setting) | | {total_ours:,.0f} | "
          f"{total_reference:,.0f} | {total_ours / total_reference:,.1f}x |")
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
