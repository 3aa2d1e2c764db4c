"""What CPU mixed precision costs in accuracy and buys in speed, for each way to run it.

    python benchmarks/numerics.py                       # the default model
    python benchmarks/numerics.py --model vit --steps 20

Three modes of the same training step: fp32; bf16 autocast as stock CPU autocast runs it
(LayerNorm and the residual stream in bf16); bf16 autocast with model.LayerNorm in fp32 (the
default now; CUDA autocast keeps layer_norm in fp32 the same way). For each bf16 mode:
  - the relative error of the gradient at initialisation against fp32, ||g - g32|| / ||g32||,
    over all parameters and for the worst parameter tensor, on one batch of N(0, 1) images:
    in eval mode (no dropout; attention through SDPA) and in training mode (the same dropout
    masks in both precisions; on CPU attention then takes the explicit softmax path);
  - images/s of train.py's step (forward, loss, backward, optimizer) on one repeated batch.
"""
import contextlib
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from models import blocks  # noqa: E402
from benchmarks.bench import our_step_rate  # noqa: E402
from cli import ArgumentParser  # noqa: E402
from model import DEFAULT_MODEL, MODELS, build_model  # noqa: E402

MODES = {  # name -> (autocast dtype, LayerNorm in fp32)
    "fp32": (None, True),
    "bf16, stock CPU autocast": (torch.bfloat16, False),
    "bf16, LayerNorm in fp32 (default)": (torch.bfloat16, True),
}


@contextlib.contextmanager
def layer_norm_in_fp32(enabled):
    """models/blocks.LayerNorm as itself, or as stock nn.LayerNorm (which CPU autocast leaves in bf16)."""
    saved = blocks.LayerNorm.forward
    if not enabled:
        blocks.LayerNorm.forward = nn.LayerNorm.forward
    try:
        yield
    finally:
        blocks.LayerNorm.forward = saved


def gradients(model, x, y, dtype, training=False):
    model.train(training).zero_grad()
    torch.manual_seed(0)  # the same dropout masks for every precision
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return {name: p.grad.detach().float().clone() for name, p in model.named_parameters()}


def relative_errors(grads, reference):
    """Over all parameters, and the worst single tensor (with its name)."""
    total = torch.cat([(grads[n] - reference[n]).flatten() for n in reference]).norm()
    total /= torch.cat([g.flatten() for g in reference.values()]).norm()
    worst = max(reference, key=lambda n: ((grads[n] - reference[n]).norm() / reference[n].norm().clamp_min(1e-30)).item())
    worst_error = ((grads[worst] - reference[worst]).norm() / reference[worst].norm()).item()
    return total.item(), worst, worst_error


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS))
    parser.add_argument("--batch-size", type=int, default=64, help="train.py's default")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per mode")
    args = parser.parse_args(argv)
    device = torch.device("cpu")

    torch.manual_seed(0)
    net = build_model(args.model, 200)
    x = torch.randn(args.batch_size, 3, 64, 64)
    y = torch.randint(0, 200, (args.batch_size,))
    references = {training: gradients(net, x, y, None, training) for training in (False, True)}

    print(f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| mode | gradient error vs fp32: eval (all) | worst tensor | its error | training, same dropout (all) | train step img/s |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for mode, (dtype, fp32_norm) in MODES.items():
        with layer_norm_in_fp32(fp32_norm):
            if dtype is None:
                errors = ("-", "-", "-", "-")
            else:
                total, worst, worst_error = relative_errors(gradients(net, x, y, dtype), references[False])
                in_training = relative_errors(gradients(net, x, y, dtype, True), references[True])[0]
                errors = (f"{total:.2%}", f"`{worst}`", f"{worst_error:.2%}", f"{in_training:.2%}")
            rate = our_step_rate(args.batch_size, 200, device, args.steps, dtype is not None, False, args.model)
        print(f"| {mode} | {' | '.join(errors)} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
