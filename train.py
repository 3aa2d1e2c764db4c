"""Train the CvT on prepared Tiny ImageNet with a plain PyTorch loop.

    python train.py --epochs 10                      # the notebook's recipe: Adam, lr 1e-3, batch 64
    python train.py --resume runs/<name>/last.pt     # continue a run

Each run writes to its own directory: config.json, metrics.csv (one row per epoch),
last.pt and best.pt (by val top-1), and test_metrics.json (the 8,000-image test split,
evaluated once at the end with the final weights and with best.pt when that differs).
On CUDA it uses bf16 autocast (fp16 + GradScaler on older GPUs), torch.compile, TF32 and a
fused optimizer by default; on CPU it runs fp32 eager unless told otherwise.
"""
import argparse
import csv
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import BatchLoader, load_packed, make_splits
from evaluate import class_difference, evaluate, load_checkpoint, model_from_checkpoint, topk_correct
from layout import DataError
from model import CvTConfig, CvTSimplifiedEmbedding
from runtime import amp_dtype, autocast, configure_backends, default_amp, maybe_compile, resolve_device

METRIC_FIELDS = (
    "epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
    "lr", "seconds", "images_per_s", "skipped_steps",
)


class TrainingError(Exception):
    """Training cannot go on (e.g. the loss diverged); reported as one line, exit code 1."""


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", default="data", help="prepared by prepare_data.py")
    data.add_argument("--batch-size", type=int, default=64, help="the notebook's 64")
    data.add_argument("--eval-batch-size", type=int, default=256)
    model = parser.add_argument_group("model (defaults: the notebook's)")
    model.add_argument("--embed-dim", type=int, default=64)
    model.add_argument("--depth", type=int, default=2)
    model.add_argument("--num-heads", type=int, default=1)
    model.add_argument("--mlp-ratio", type=float, default=4.0)
    model.add_argument("--dropout", type=float, default=0.1)
    optim = parser.add_argument_group("optimisation (defaults: the notebook's)")
    optim.add_argument("--epochs", type=int, default=10)
    optim.add_argument("--optimizer", default="adam", choices=("adam", "adamw"))
    optim.add_argument("--lr", type=float, default=1e-3)
    optim.add_argument("--weight-decay", type=float, default=0.0)
    optim.add_argument("--seed", type=int, default=0, help="model init, dropout, shuffling and augmentation")
    system = parser.add_argument_group("system")
    system.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    system.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast for training (fp16 + GradScaler on GPUs without bf16); "
                             "default: on for CUDA and for CPUs with native bf16 (AMX, AVX512-BF16)")
    system.add_argument("--amp-dtype", default="auto", choices=("auto", "bfloat16", "float16"),
                        help="auto: bf16 where supported, else fp16 with a GradScaler")
    system.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model; default: on for CUDA")
    system.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"))
    system.add_argument("--run-dir", help="output directory (default: runs/<date-time>)")
    system.add_argument("--resume", metavar="CHECKPOINT", help="continue the run saved in this last.pt")
    system.add_argument("--log-every", type=int, default=20, help="steps between progress-bar updates (a CPU-GPU sync)")
    args = parser.parse_args(argv)
    for flag in ("epochs", "batch_size", "eval_batch_size", "log_every", "embed_dim", "depth", "num_heads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    for flag in ("lr", "mlp_ratio"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.weight_decay < 0:
        parser.error(f"--weight-decay must be non-negative, got {args.weight_decay}")
    return args


# ---------------------------------------------------------------- pieces of the loop


def build_optimizer(model, name, lr, weight_decay, device):
    fused = device.type == "cuda"  # CUDA only: one kernel for the whole update
    optimizer_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return optimizer_class(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused or None)


def new_totals(device):
    """Running sums of one epoch's training metrics, kept on the device."""
    zero = torch.zeros((), device=device)
    return {"loss_sum": zero, "correct": torch.zeros(2, device=device), "count": 0, "skipped": zero.clone()}


def summarize(totals):
    count = max(totals["count"], 1)
    loss, (top1, top5) = (totals["loss_sum"] / count).item(), (totals["correct"] / count).tolist()
    return {"loss": loss, "top1": top1, "top5": top5, "images": totals["count"], "skipped_steps": int(totals["skipped"].item())}


def train_one_epoch(model, loader, optimizer, scaler, device, dtype, totals, start_step, log_every, bar, stop=None):
    """Train on the loader's batches from start_step on, adding to totals; return the next step
    (len(loader) unless stop() asked to stop early, which is checked after each step).

    Metrics accumulate on the device; they are read (a CPU-GPU sync) only every log_every steps.
    """
    model.train()
    start = time.perf_counter()
    step = start_step
    for step, (x, y) in enumerate(loader.iterate(start_step), start_step):
        with autocast(device, dtype):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        if scaler.is_enabled():  # fp16: steps skipped for inf/NaN gradients, normal while the scale calibrates
            totals["skipped"] += sum(scaler._found_inf_per_device(optimizer).values())
        scaler.update()
        totals["loss_sum"] += loss.detach() * len(y)
        totals["correct"] += topk_correct(logits.detach().float(), y)
        totals["count"] += len(y)
        bar.update(1)
        if (step + 1) % log_every == 0 or step + 1 == len(loader):
            mean_loss = (totals["loss_sum"] / totals["count"]).item()  # the sync point
            if not math.isfinite(mean_loss):
                raise TrainingError(
                    f"the loss became {mean_loss} at step {step + 1} of epoch {loader.epoch + 1}; "
                    "try a lower --lr or --no-amp (the last good checkpoint is kept)"
                )
            bar.set_postfix(loss=f"{mean_loss:.3f}", img_s=f"{(step + 1 - start_step) * len(y) / (time.perf_counter() - start):.0f}")
        if stop is not None and stop():
            return step + 1
    return len(loader)


class StopSignal:
    """SIGINT (Ctrl-C) or SIGTERM asks the loop to stop after the current step; a second
    SIGINT stops at once (every file is written atomically, so nothing is left half-written)."""

    EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

    def __init__(self):
        self.received = None
        self.previous = {}

    def __enter__(self):
        for signum in self.EXIT_CODES:
            self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to quit at once)", file=sys.stderr)

    def __call__(self):
        return self.received is not None

    @property
    def exit_code(self):
        return self.EXIT_CODES.get(self.received, 0)


def save_atomically(payload, path):
    """Write to a temporary file and rename, so a crash leaves the previous file intact."""
    try:
        torch.save(payload, path + ".tmp")
        os.replace(path + ".tmp", path)
    except OSError as error:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        raise DataError(f"cannot write {path} ({error.strerror or error}); the previous file is intact") from None


def write_metrics_csv(path, history):
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows({key: row[key] for key in METRIC_FIELDS} for row in history)
    os.replace(path + ".tmp", path)


def write_json(path, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------- setup


def choose_run_dir(args):
    if args.run_dir:
        return args.run_dir
    if args.resume:
        return os.path.dirname(os.path.abspath(args.resume))
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))


def prepare_run_dir(run_dir, resuming):
    """Create the run directory; refuse one that already holds another run."""
    if not resuming and os.path.exists(os.path.join(run_dir, "config.json")):
        raise DataError(f"{run_dir} already holds a run: pass --resume {run_dir}/last.pt or choose another --run-dir")
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the run directory {run_dir}: {error.strerror}") from None


def restore(checkpoint, model, optimizer, scaler, model_config, classes, path):
    """Load a run's state for --resume; refuse a different model or class list."""
    if not {"optimizer", "progress", "model_config", "classes"} <= checkpoint.keys():
        raise DataError(f"cannot resume {path}: it is not a train.py checkpoint (no optimizer state or progress)")
    if checkpoint["model_config"] != asdict(model_config):
        saved = checkpoint["model_config"]
        differences = [f"{k}: {saved.get(k)} -> {v}" for k, v in asdict(model_config).items() if saved.get(k) != v]
        raise DataError(f"cannot resume {path}: the model configuration differs ({', '.join(differences)})")
    if class_difference(checkpoint["classes"], classes):
        raise DataError(f"cannot resume {path}: it was trained on a different class list ({class_difference(checkpoint['classes'], classes)})")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    if torch.cuda.is_available() and checkpoint["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    return checkpoint["progress"]


def resolved_config(args, device, dtype, run_dir):
    config = {key: value for key, value in vars(args).items()}
    config.update(device=str(device), amp_dtype=str(dtype).replace("torch.", "") if dtype else None, run_dir=run_dir)
    return config


# ---------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(argv)
    try:
        with StopSignal() as stop:
            run(args, stop)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopped at once; the last checkpoint is intact", file=sys.stderr)
        return 130
    return stop.exit_code


def run(args, stop):
    device = resolve_device(args.device)
    args.amp = default_amp(device) if args.amp is None else args.amp
    args.compile = device.type == "cuda" if args.compile is None else args.compile
    dtype = amp_dtype(device, args.amp, args.amp_dtype)
    configure_backends(device)
    checkpoint = load_checkpoint(args.resume) if args.resume else None
    data = load_packed(args.data_dir)
    if data.synthetic:
        print("warning: SYNTHETIC data (prepare_data.py --synthetic): a smoke test, not a result", file=sys.stderr)
    splits = make_splits(data)
    if len(splits["train"][1]) < args.batch_size:
        raise DataError(f"--batch-size {args.batch_size} is larger than the training set ({len(splits['train'][1])} images)")
    run_dir = choose_run_dir(args)
    prepare_run_dir(run_dir, resuming=checkpoint is not None)

    torch.manual_seed(args.seed)
    model_config = CvTConfig(
        num_classes=len(data.classes), embed_dim=args.embed_dim, depth=args.depth,
        num_heads=args.num_heads, mlp_ratio=args.mlp_ratio, dropout=args.dropout,
    )
    model = CvTSimplifiedEmbedding(model_config).to(device)
    optimizer = build_optimizer(model, args.optimizer, args.lr, args.weight_decay, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    progress = {
        "epoch": 0, "step": 0, "best_val_top1": -1.0, "best_epoch": 0, "history": [],
        "step_in_epoch": 0, "partial": None,  # set when a run is interrupted mid-epoch
    }
    if checkpoint is not None:
        progress = restore(checkpoint, model, optimizer, scaler, model_config, data.classes, args.resume)
        where = f", step {progress['step_in_epoch']}" if progress["step_in_epoch"] else ""
        print(f"resuming {args.resume} after epoch {progress['epoch']}{where}")
    compiled = maybe_compile(model, args.compile, args.compile_mode)
    config = resolved_config(args, device, dtype, run_dir)
    write_json(os.path.join(run_dir, "config.json"), config)

    train_loader = BatchLoader(*splits["train"], args.batch_size, device, train=True, seed=args.seed)
    val_loader = BatchLoader(*splits["val"], args.eval_batch_size, device)
    pad_to = args.eval_batch_size if args.compile else None

    def checkpoint_payload():
        return {
            "model": model.state_dict(),  # the plain model: no _orig_mod. prefixes
            "model_config": asdict(model_config),
            "classes": list(data.classes),
            "synthetic": data.synthetic,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "progress": progress,
            "config": config,
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
        }

    print(f"training on {device} ({config['amp_dtype'] or 'fp32'}{', compiled' if compiled is not model else ''}): "
          f"{len(splits['train'][1]):,} train / {len(splits['val'][1]):,} val images, "
          f"{len(data.classes)} classes, {args.epochs} epochs -> {run_dir}")
    for epoch in range(progress["epoch"], args.epochs):
        train_loader.set_epoch(epoch)
        start_step, totals, seconds_before = resume_point(progress, device)
        start = time.perf_counter()
        with tqdm(total=len(train_loader), initial=start_step, desc=f"epoch {epoch + 1}/{args.epochs}",
                  leave=False, mininterval=1, disable=None) as bar:
            next_step = train_one_epoch(compiled, train_loader, optimizer, scaler, device, dtype, totals,
                                        start_step, args.log_every, bar, stop)
        seconds = seconds_before + time.perf_counter() - start
        progress["step"] += next_step - start_step
        if next_step < len(train_loader):  # interrupted mid-epoch
            progress.update(step_in_epoch=next_step, partial={**plain_totals(totals), "seconds": seconds})
            save_atomically(checkpoint_payload(), os.path.join(run_dir, "last.pt"))
            print(f"interrupted at step {next_step} of epoch {epoch + 1}; continue with: "
                  f"python train.py --resume {run_dir}/last.pt", file=sys.stderr)
            return None
        progress.update(step_in_epoch=0, partial=None)
        train = summarize(totals)
        val = evaluate(compiled, val_loader, device, None, pad_to)  # always fp32: metrics independent of --amp
        row = {
            "epoch": epoch + 1, **{f"train_{k}": train[k] for k in ("loss", "top1", "top5")},
            **{f"val_{k}": val[k] for k in ("loss", "top1", "top5")},
            "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 2),
            "images_per_s": round(train["images"] / seconds, 1), "skipped_steps": train["skipped_steps"],
        }
        progress["history"].append(row)
        progress["epoch"] = epoch + 1
        improved = val["top1"] > progress["best_val_top1"]
        if improved:
            progress.update(best_val_top1=val["top1"], best_epoch=epoch + 1)
        write_metrics_csv(os.path.join(run_dir, "metrics.csv"), progress["history"])
        payload = checkpoint_payload()
        save_atomically(payload, os.path.join(run_dir, "last.pt"))
        if improved:
            save_atomically(payload, os.path.join(run_dir, "best.pt"))
        skipped = f", {train['skipped_steps']} fp16 steps skipped by the GradScaler" if train["skipped_steps"] else ""
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {train['loss']:.4f} top-1 {train['top1']:.2%} | "
              f"val loss {val['loss']:.4f} top-1 {val['top1']:.2%} top-5 {val['top5']:.2%} | "
              f"{seconds:.0f} s, {row['images_per_s']:.0f} img/s{skipped}{'  *best*' if improved else ''}")
        if stop():
            print(f"stopped after epoch {epoch + 1}; continue with: python train.py --resume {run_dir}/last.pt",
                  file=sys.stderr)
            return None

    test_metrics = evaluate_test(model, compiled, splits["test"], progress, run_dir, device, args, pad_to)
    write_json(os.path.join(run_dir, "test_metrics.json"), test_metrics)
    print(f"run saved in {run_dir}/ (evaluate again: python evaluate.py {run_dir}/best.pt)")
    return test_metrics


def resume_point(progress, device):
    """(first step, metric totals, seconds already spent) for the epoch about to run."""
    partial = progress["partial"]
    if not partial:
        return 0, new_totals(device), 0.0
    totals = {
        "loss_sum": torch.tensor(partial["loss_sum"], device=device),
        "correct": torch.tensor(partial["correct"], device=device),
        "count": partial["count"],
        "skipped": torch.tensor(partial["skipped"], device=device),
    }
    return progress["step_in_epoch"], totals, partial["seconds"]


def plain_totals(totals):
    """Totals as plain numbers for the checkpoint (float32 values survive the round trip exactly)."""
    return {"loss_sum": totals["loss_sum"].item(), "correct": totals["correct"].tolist(), "count": totals["count"],
            "skipped": totals["skipped"].item()}


def evaluate_test(model, compiled, test_split, progress, run_dir, device, args, pad_to):
    """The test split, once, with the final weights (the notebook's trainer.test) and with
    best.pt when the best epoch was not the last."""
    loader = BatchLoader(*test_split, args.eval_batch_size, device)
    results = {"final": {**evaluate(compiled, loader, device, None, pad_to), "epoch": progress["epoch"]}}
    if progress["best_epoch"] not in (0, progress["epoch"]):
        best = model_from_checkpoint(load_checkpoint(os.path.join(run_dir, "best.pt"))).to(device)
        results["best"] = {**evaluate(best, loader, device), "epoch": progress["best_epoch"]}
    else:
        results["best"] = results["final"]
    names = ("final", "best") if results["best"] is not results["final"] else ("final",)
    for name in names:
        metrics = results[name]
        print(f"test ({name} weights, epoch {metrics['epoch']}): loss {metrics['loss']:.4f} "
              f"top-1 {metrics['top1']:.2%} top-5 {metrics['top5']:.2%} ({metrics['images']:,} images)")
    return results


if __name__ == "__main__":
    sys.exit(main())
