"""Every model's cost on this machine, side by side in one run: parameters, forward GFLOPs per
image, and train-step and inference images/s at batch 64, eager and compiled, in train.py's
default precision here (bf16 autocast on CUDA and on CPUs with native bf16, else fp32).

    python benchmarks/models.py                            # every model (22 minutes on 2 CPU cores)
    python benchmarks/models.py --models cvt-simplified cnn vit --no-compile

Random images, no data loading: the model and the optimizer step alone (train.py's
train_one_epoch with the notebook's Adam). The big models take seconds per step on a CPU, so
each rate is timed over a few steps (--steps) after warm-up: read them to about 10%.
"""
import os
import sys
import time
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.bench import machine_description, our_step_rate  # noqa: E402
from cli import ArgumentParser  # noqa: E402
from evaluation import measure_throughput  # noqa: E402
from errors import DataError  # noqa: E402
from layout import check_output_path, write_json  # noqa: E402
from model import MODELS, build_model, count_parameters, flops_per_image  # noqa: E402
from runtime import amp_dtype, default_amp, maybe_compile, resolve_device  # noqa: E402

warnings.filterwarnings("ignore")
NUM_CLASSES = 200


def inference_rate(name, batch_size, device, dtype, compile_model, steps):
    """Images/s of the forward pass in eval mode (what evaluate.py reports)."""
    torch.manual_seed(0)
    model = maybe_compile(build_model(name, NUM_CLASSES).to(device).eval(), compile_model)
    x = torch.randn(batch_size, 3, 64, 64, device=device)
    return measure_throughput(model, x, device, dtype, warmup=2 if compile_model else 1, min_seconds=0, min_batches=steps)


def measure(name, batch_size, device, steps, compile_modes):
    amp = default_amp(device)
    dtype = amp_dtype(device, amp)
    with torch.device("meta"):
        model = build_model(name, NUM_CLASSES)
    row = {"model": name, "parameters": count_parameters(model), "gflops": flops_per_image(model) / 1e9}
    for compile_model in compile_modes:
        mode = "compiled" if compile_model else "eager"
        start = time.perf_counter()
        row[f"train_{mode}"] = our_step_rate(batch_size, NUM_CLASSES, device, steps, amp, compile_model, name,
                                             warmup=2 if compile_model else 1)
        row[f"inference_{mode}"] = inference_rate(name, batch_size, device, dtype, compile_model, steps)
        torch._dynamo.reset()  # each model compiles afresh: no cache limit reached over the grid
        print(f"  {name} {mode}: train {rate(row[f'train_{mode}'])} img/s, inference {rate(row[f'inference_{mode}'])} img/s "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return row


def rate(images_per_s):
    """'1,556' or '2.9': big models run at a few images/s on a CPU."""
    return f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.1f}"


def print_table(rows, modes, machine, precision, batch_size):
    print(f"\n{machine}; batch {batch_size}, {precision}\n")
    columns = [f"{kind} img/s {mode}" for kind in ("train", "inference") for mode in modes]
    print("| model | parameters | GFLOPs | " + " | ".join(columns) + " |")
    print("| --- | ---: | ---: |" + " ---: |" * len(columns))
    for row in rows:
        values = [rate(row[f"{kind}_{mode}"]) for kind in ("train", "inference") for mode in modes]
        print(f"| {row['model']} | {row['parameters']:,} | {row['gflops']:.3f} | " + " | ".join(values) + " |")


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=tuple(MODELS), help="the models to time")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (and inference batches) per measurement")
    parser.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--no-compile", action="store_true", help="eager only (compiling the big models takes minutes)")
    parser.add_argument("--json", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    try:
        if args.json:
            check_output_path(args.json, "--json")
        device = resolve_device(args.device)
    except DataError as error:
        parser.exit(2, f"error: {error}\n")
    modes = ["eager"] if args.no_compile else ["eager", "compiled"]
    dtype = amp_dtype(device, default_amp(device))
    precision = f"{str(dtype).replace('torch.', '')} autocast" if dtype else "fp32"
    print(f"timing {len(args.models)} models on {device} ({precision})...", flush=True)
    rows = [measure(name, args.batch_size, device, args.steps, [mode == "compiled" for mode in modes])
            for name in args.models]
    machine = machine_description(device)
    print_table(rows, modes, machine, precision, args.batch_size)
    if args.json:
        write_json(args.json, {"machine": machine, "precision": precision, "batch_size": args.batch_size, "rows": rows})


if __name__ == "__main__":
    main()
