"""What this machine sustains for the operations that matter to a CPU-hour recipe: 3x3 convolutions
and matrix products, fp32 and bf16 autocast, NCHW and channels_last, as training GFLOP/s
(forward + backward counted as 3x the forward FLOPs); then candidate conv nets for a speed run:
GFLOP per image at each resolution, training images/s, and their share of the measured peak.

    python benchmarks/hardware.py                   # a few minutes on 2 CPU cores
    python benchmarks/hardware.py --quick --json hw.json

Timings are medians of repeated steps after warm-up; nothing else should run meanwhile.
"""
import contextlib
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cli import ArgumentParser  # noqa: E402
from layout import write_json  # noqa: E402

CONV_SHAPES = ((64, 32), (128, 16), (256, 8))  # (channels, side): the stages of a small net at 32 px
CANDIDATES = {  # widths of conv-BN-GELU blocks, each block two convs then a 2x2 max-pool
    "probe 64/192/256": (64, 192, 256),
    "airbench-like 48/192/192": (48, 192, 192),
    "wide 96/192/384": (96, 192, 384),
    "4 blocks 64/128/256/512": (64, 128, 256, 512),
}


class CandidateNet(nn.Module):
    """conv-BN-GELU, conv-BN-GELU, max-pool per block, then global pooling and a linear head."""

    def __init__(self, widths, num_classes=200):
        super().__init__()
        layers, channels = [], 3
        for width in widths:
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.GELU()]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def timed(step, repeats, warmup=2):
    """Median seconds of step() over repeats, after warmup calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def precision(dtype):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


def conv_rate(channels, side, batch, dtype, channels_last, repeats):
    """Training GFLOP/s of one 3x3 convolution (forward + backward of input and weight)."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    x = torch.randn(batch, channels, side, side, requires_grad=True)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.detach().to(memory_format=torch.channels_last).requires_grad_()

    def step():
        with precision(dtype):
            y = conv(x)
        y.float().sum().backward()

    flops = 3 * 2 * batch * channels * channels * 9 * side * side
    return flops / timed(step, repeats) / 1e9


def matmul_rate(size, dtype, repeats, rows=4096):
    """Training GFLOP/s of a (size x size) linear layer on `rows` rows (tokens or images)."""
    layer = nn.Linear(size, size, bias=False)
    x = torch.randn(rows, size, requires_grad=True)

    def step():
        with precision(dtype):
            y = layer(x)
        y.float().sum().backward()

    return 3 * 2 * x.shape[0] * size * size / timed(step, repeats) / 1e9


def candidate_row(widths, side, batch, repeats):
    """(GFLOP per image forward, training images/s) of a candidate in bf16, channels_last, SGD."""
    from torch.utils.flop_counter import FlopCounterMode

    model = CandidateNet(widths).to(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, 3, side, side))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, side, side).to(memory_format=torch.channels_last)
    y = torch.randint(0, 200, (batch,))

    def step():
        with precision("bf16"):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return counter.get_total_flops() / 1e9, batch / timed(step, repeats)


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller batches (a check, not a measurement)")
    parser.add_argument("--json", help="also write the numbers as JSON")
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 48, 64], help="resolutions of the candidates")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    repeats, batch = (2, 16) if args.quick else (10, 128)
    torch.manual_seed(0)
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "conv": [], "matmul": [], "candidates": []}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; training GFLOP/s (3x forward FLOPs)")
    print("| operation | shape | fp32 NCHW | fp32 channels_last | bf16 NCHW | bf16 channels_last |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for channels, side in CONV_SHAPES:
        rates = [conv_rate(channels, side, batch, dtype, last, repeats) for dtype in ("fp32", "bf16") for last in (False, True)]
        results["conv"].append({"channels": channels, "side": side, "batch": batch, "gflops": rates})
        print(f"| conv 3x3 | {channels}->{channels} at {side}x{side}, batch {batch} | " + " | ".join(f"{r:.0f}" for r in rates) + " |")
    for size in (256, 1024):
        rates = [matmul_rate(size, dtype, repeats) for dtype in ("fp32", "bf16")]
        results["matmul"].append({"size": size, "gflops": rates})
        print(f"| matmul | {size}x{size}, 4096 rows | {rates[0]:.0f} | - | {rates[1]:.0f} | - |")
    peak = max(max(row["gflops"]) for row in results["conv"] + results["matmul"])
    results["peak_gflops"] = peak
    print(f"\ncandidates: bf16 autocast, channels_last, SGD, batch {batch}; share of the peak above ({peak:.0f} GFLOP/s)")
    print("| candidate | side | GFLOP/image | train img/s | share of peak |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, widths in CANDIDATES.items():
        for side in args.sides:
            gflop, rate = candidate_row(widths, side, batch, repeats)
            share = 3 * gflop * rate / peak
            results["candidates"].append({"name": name, "side": side, "gflop": gflop, "images_per_s": rate, "share": share})
            print(f"| {name} | {side} | {gflop:.3f} | {rate:.0f} | {share:.0%} |")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
